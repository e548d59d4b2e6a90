"""Log lines a machine can read: one event per line, ISO-8601 UTC times, never wrapped.

`--log-format text` (the default) gives `2026-11-29T16:09:49.123Z INFO bulkdrive.job: message`;
`--log-format json` gives one JSON object per line with the fields `time`, `level`, `event`,
`path`, `message` and `fields`. A log call names its event and file with
`extra={"event": ..., "path": ..., "fields": {...}}`; without them the event is the logger's
last name and `path` is null.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.logging import RichHandler

from bulkdrive import errors
from bulkdrive.report import one_line, utc_stamp


class TextFormatter(logging.Formatter):
    """One plain line per event: time, level, logger, message (folded to one line)."""

    def format(self, record: logging.LogRecord) -> str:
        line = (
            f"{utc_stamp(record.created)} {record.levelname} {record.name}: "
            f"{one_line(record.getMessage())}"
        )
        if record.exc_info:
            # a traceback (only at -vv) stays one event: its lines folded with " | "
            line += " | " + " | ".join(self.formatException(record.exc_info).splitlines())
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, event, path, message, fields."""

    def format(self, record: logging.LogRecord) -> str:
        fields: Any = getattr(record, "fields", None)
        entry: dict[str, Any] = {
            "time": utc_stamp(record.created),
            "level": record.levelname.lower(),
            "event": getattr(record, "event", None) or record.name.rsplit(".", 1)[-1],
            "path": getattr(record, "path", None),
            "message": record.getMessage(),
            "fields": dict(fields) if isinstance(fields, Mapping) else {},
        }
        if record.exc_info:
            entry["fields"]["traceback"] = self.formatException(record.exc_info)
        # ensure_ascii: undecodable file names (lone surrogates) stay writable
        return json.dumps(entry, ensure_ascii=True, default=str, separators=(",", ":"))


def event_formatter(log_format: str) -> logging.Formatter:
    if log_format == "json":
        return JsonFormatter()
    return TextFormatter()


# --- where the lines go ---------------------------------------------------------------------


def setup_logging(
    console: Console, verbosity: int, log_file: Path | None, log_format: str = "text"
) -> None:
    """-vv: protocol detail on the console; --log-file: per-file lines (and -vv detail), ending
    with the summary. On a terminal the detail goes through rich (above the live display);
    anywhere else, and in every file, one plain event per line with an ISO-8601 UTC time, or
    one JSON object per line with --log-format json."""
    logger = logging.getLogger("bulkdrive")
    logger.handlers.clear()
    logger.propagate = False
    # The reporter shows failures and warnings; without a handler of ours, logging's
    # last-resort handler would print them a second time, raw, on stderr.
    logger.addHandler(logging.NullHandler())
    detail = logging.DEBUG if verbosity >= 2 else logging.INFO
    logger.setLevel(
        detail if log_file is not None else logging.DEBUG if verbosity >= 2 else logging.WARNING
    )
    formatter = event_formatter(log_format)
    if log_file is not None:
        try:
            # A name that is not UTF-8 is logged escaped (\udcXX), never a logging error.
            handler: logging.Handler = logging.FileHandler(
                log_file, encoding="utf-8", errors="backslashreplace"
            )
        except OSError as exc:
            raise errors.ConfigError(
                f"--log-file: cannot write {log_file}: {exc.strerror}"
            ) from None
        handler.setFormatter(formatter)
        handler.setLevel(detail)
        logger.addHandler(handler)
    if json_screen(console, log_format):
        # stdout is one JSON object per line: the events (per file with -v, protocol detail
        # with -vv), warnings and errors, and the summary last; the reporter prints nothing
        screen_json = logging.StreamHandler(console.file)
        screen_json.setFormatter(formatter)
        screen_json.setLevel(logging.DEBUG)
        screen_json.addFilter(_screen_events(verbosity))
        logger.addHandler(screen_json)
        logger.setLevel(min(logger.level, logging.INFO))
    elif verbosity >= 2:
        # Protocol detail; per-file lines come from the reporter itself.
        if console.is_terminal and log_format == "text":
            # through the reporter's console, so that log lines never tear the live display
            screen: logging.Handler = RichHandler(console=console, show_path=False, markup=False)
        else:
            screen = logging.StreamHandler(console.file)
            screen.setFormatter(formatter)
        screen.setLevel(logging.DEBUG)
        screen.addFilter(logging.Filter("bulkdrive.client"))
        logger.addHandler(screen)


def json_screen(console: Console, log_format: str) -> bool:
    """--log-format json off a terminal: stdout carries JSON lines only."""
    return log_format == "json" and not console.is_terminal


CLOSING_EVENTS = ("summary", "dry_run")  # on the JSON screen even with -q


def _screen_events(verbosity: int) -> Callable[[logging.LogRecord], bool]:
    def keep(record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING or getattr(record, "event", None) in CLOSING_EVENTS:
            return True
        if record.name.startswith("bulkdrive.client"):
            return verbosity >= 2
        return verbosity >= 1 and record.levelno >= logging.INFO

    return keep
