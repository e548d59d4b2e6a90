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
from collections.abc import Mapping
from typing import Any

from bulkdrive.report import one_line, utc_stamp

LOG_FORMATS = ("text", "json")


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
