"""The end of a run: per-file outcomes, the run's tally and summary, and what is written about it.

`RunTally` is fed by the scheduler and keeps O(1) memory: counters, plus the first
`max_failures` failed files in full (the rest are only counted). `RunSummary` is its frozen
result. The only I/O here is in the writers: `FileReportWriter` (one NDJSON line per file,
streamed) and `render_summary` (the table people read at the end); the `--report` document is
`report_json`'s.
"""

from __future__ import annotations

import datetime
import enum
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any, NamedTuple

from rich.console import Console
from rich.table import Table
from rich.text import Text

from bulkdrive import errors
from bulkdrive.errors import BulkdriveError

DEFAULT_MAX_FAILURES = 1000


class Outcome(enum.StrEnum):
    UPLOADED = "uploaded"
    RESUMED = "resumed"
    SKIPPED = "skipped"
    FAILED = "failed"


# Enum members on each small file's path, read as module names (why: `bulkdrive.session`).
_SKIPPED, _FAILED = Outcome.SKIPPED, Outcome.FAILED


class FileOutcome(NamedTuple):
    """How one file ended. `relative` is its path under SRC, with forward slashes.

    A named tuple, not a frozen dataclass: a run builds one per file, and a frozen dataclass
    of 13 fields costs several times as much to build (as `journal.FileRecord`)."""

    relative: str
    remote_path: str
    size: int
    outcome: Outcome
    file_guid: str | None = None
    attempts: int = 0
    seconds: float = 0.0
    bytes_sent: int = 0  # bytes the server accepted in this run (a resumed file: its tail)
    reason: str | None = None  # one line, for failed/skipped
    exit_class: str | None = None  # error class name for failures, e.g. "SourceChanged"
    hint: str | None = None  # what to do
    skip_kind: str | None = None  # for skipped files: the kind of reason the summary counts
    # failed by the error that stopped the run: that error is told once, on stderr, so the
    # displays do not list this file's copy of it
    stopped_run: bool = False


# --- text safe for a terminal or a CI log ---------------------------------------------------

# C0/C1 controls, DEL, lone surrogates (undecodable file names) and the bidi overrides that can
# make a name display as another; a hostile file name must not move the cursor or lie.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # a byte of a name that is not UTF-8 (surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str) -> str:
    """`text` with every control, bidi and surrogate character escaped (`\\n`, `\\x1b`, ...)."""
    return _UNSAFE.sub(_escape, text)


def utc_stamp(seconds: float) -> str:
    """`2026-11-29T16:09:49.123Z`: ISO-8601, UTC, milliseconds — the time of log lines."""
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def one_line(text: str) -> str:
    """A message folded to one printable line."""
    return printable(" ".join(text.split()))


# --- human units ------------------------------------------------------------------------------

_UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB", "EiB")


def format_bytes(n: float) -> str:
    """1024-based: "512 B", "1.5 KiB", "1.5 GiB"."""
    if n < 1024:
        return f"{max(n, 0):.0f} B"
    value = float(n)
    for unit in _UNITS:
        value /= 1024
        if value < 1024 or unit == _UNITS[-1]:
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")  # pragma: no cover


def format_rate(bytes_per_second: float) -> str:
    return f"{format_bytes(bytes_per_second)}/s"


def format_duration(seconds: float) -> str:
    """ "0.4s", "45s", "2m03s", "1h02m03s"."""
    if seconds < 10:
        return f"{max(seconds, 0.0):.1f}s"
    total = int(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


# --- the tally and the summary ----------------------------------------------------------------


@dataclass(frozen=True)
class FileCounts:
    uploaded: int
    resumed: int
    skipped: int
    failed: int
    total: int  # files found by the walk (so far, if the walk did not complete)


@dataclass(frozen=True)
class ByteCounts:
    uploaded: int  # sizes of the files uploaded whole in this run
    resumed: int  # sizes of the files completed by resuming an earlier upload
    skipped: int
    failed: int
    total: int  # sizes of all files found
    sent: int  # bytes the server accepted in this run, whatever became of their files


@dataclass(frozen=True)
class RunError:
    """The run-level error that stopped the run (wrong password, no permission, quota...)."""

    reason: str
    exit_class: str
    hint: str | None


@dataclass(frozen=True)
class LimitChange:
    """One change of `--transfers auto`'s limit: seconds into the run, from, to, and why."""

    seconds: float
    old: int
    new: int
    reason: str


@dataclass(frozen=True)
class TransfersUsed:
    """`--transfers auto`: the most files in flight the tuner allowed, and the limit's mean
    over the run's time; the first of its changes (what a benchmark's run that missed did)."""

    peak: int
    mean: float
    changes: int
    steps: tuple[LimitChange, ...] = ()


@dataclass(frozen=True)
class WorkerFigures:
    """What one worker process of a `--cluster` run did: files it finished (uploaded or
    failed), bytes the server accepted from it, seconds from its first batch to its last."""

    address: str
    files: int
    bytes: int
    seconds: float
    batches: int


@dataclass(frozen=True)
class RunSummary:
    files: FileCounts
    bytes: ByteCounts
    elapsed_seconds: float
    throughput: float  # bytes sent / elapsed seconds
    retries: int
    resumes: int
    failures: tuple[FileOutcome, ...]
    failures_omitted: int
    exit_code: int
    interrupted: bool
    walk_complete: bool = True
    run_error: RunError | None = None
    #: Skipped files per kind of reason (what the user asked for: journal, symbolic links...).
    skipped_by_kind: tuple[tuple[str, int], ...] = ()
    #: Files and folders the filters (--include/--exclude/--min-size/--max-size) left out.
    filtered: int = 0
    #: Seconds into the run when the total was final (the count-only pass or the walk ended).
    total_known_seconds: float | None = None
    #: Under `--transfers auto`; None with a fixed number.
    transfers: TransfersUsed | None = None
    #: Per worker process, in a `--cluster` run.
    workers: tuple[WorkerFigures, ...] = ()


class RunTally:
    """Counts a run as the scheduler reports it. Memory is O(1) plus at most `max_failures`."""

    def __init__(self, *, max_failures: int = DEFAULT_MAX_FAILURES) -> None:
        self._max_failures = max_failures
        self._files_found = 0
        self._bytes_found = 0
        self._walk_complete = False
        self._files = dict.fromkeys(Outcome, 0)
        self._bytes = dict.fromkeys(Outcome, 0)
        self._bytes_sent = 0
        self._retries = 0
        self._resumes = 0
        self._failures: list[FileOutcome] = []
        self._failures_omitted = 0
        self._skipped_by_kind: dict[str, int] = {}  # a handful of fixed kinds
        self._filtered = 0
        self._total_known: float | None = None

    def filtered(self, count: int) -> None:
        self._filtered += count

    def total_known(self, seconds: float) -> None:
        """The total is final `seconds` into the run (the first time counts)."""
        if self._total_known is None:
            self._total_known = seconds

    def sent_by_unfinished(self, accepted: int) -> None:
        """Bytes the server accepted of a file that never finished (the run was interrupted):
        they were sent in this run all the same."""
        self._bytes_sent += accepted

    def found(self, size: int) -> None:
        self._files_found += 1
        self._bytes_found += size

    def walk_finished(self) -> None:
        self._walk_complete = True

    @property
    def files_walked(self) -> int | None:
        """The files the walk found, once it went through the whole tree (None before)."""
        return self._files_found if self._walk_complete else None

    def finished(self, outcome: FileOutcome) -> None:
        self._files[outcome.outcome] += 1
        self._bytes[outcome.outcome] += outcome.size
        self._bytes_sent += outcome.bytes_sent
        if outcome.outcome is _SKIPPED:
            kind = outcome.skip_kind or "other"
            self._skipped_by_kind[kind] = self._skipped_by_kind.get(kind, 0) + 1
        elif outcome.outcome is _FAILED:
            if len(self._failures) < self._max_failures:
                self._failures.append(outcome)
            else:
                self._failures_omitted += 1

    def retried(self) -> None:
        self._retries += 1

    def resumed(self) -> None:
        self._resumes += 1

    @property
    def failed(self) -> int:
        return self._files[Outcome.FAILED]

    def summary(
        self,
        elapsed: float,
        *,
        interrupted: bool = False,
        run_error: BaseException | None = None,
    ) -> RunSummary:
        """The frozen figures; the exit code is `errors.exit_code`'s."""
        finished = sum(self._files.values())
        failed = self._files[Outcome.FAILED]
        exit_code = errors.exit_code(
            run_error=run_error, interrupted=interrupted, files_failed=failed
        )
        return RunSummary(
            files=FileCounts(
                uploaded=self._files[Outcome.UPLOADED],
                resumed=self._files[Outcome.RESUMED],
                skipped=self._files[Outcome.SKIPPED],
                failed=failed,
                # a caller that finishes files it never reported as found still gets a sane total
                total=max(self._files_found, finished),
            ),
            bytes=ByteCounts(
                uploaded=self._bytes[Outcome.UPLOADED],
                resumed=self._bytes[Outcome.RESUMED],
                skipped=self._bytes[Outcome.SKIPPED],
                failed=self._bytes[Outcome.FAILED],
                total=max(self._bytes_found, sum(self._bytes.values())),
                sent=self._bytes_sent,
            ),
            elapsed_seconds=elapsed,
            throughput=self._bytes_sent / elapsed if elapsed > 0 else 0.0,
            retries=self._retries,
            resumes=self._resumes,
            failures=tuple(self._failures),
            failures_omitted=self._failures_omitted,
            exit_code=exit_code,
            interrupted=interrupted,
            walk_complete=self._walk_complete,
            skipped_by_kind=tuple(sorted(self._skipped_by_kind.items())),
            filtered=self._filtered,
            total_known_seconds=self._total_known,
            run_error=None
            if run_error is None
            else RunError(
                reason=one_line(str(run_error)) or type(run_error).__name__,
                exit_class=type(run_error).__name__,
                hint=(run_error.hint if isinstance(run_error, BulkdriveError) else None) or None,
            ),
        )


# --- --report-files FILE.ndjson ---------------------------------------------------------------


def outcome_to_json(outcome: FileOutcome) -> dict[str, Any]:
    """One `--report-files` line (schema in the README)."""
    return {
        "path": outcome.relative,
        "remote_path": outcome.remote_path,
        "size": outcome.size,
        "outcome": outcome.outcome.value,
        "file_guid": outcome.file_guid,
        "attempts": outcome.attempts,
        "seconds": round(outcome.seconds, 3),
        "bytes_sent": outcome.bytes_sent,
        "reason": outcome.reason,
        "exit_class": outcome.exit_class,
        "hint": outcome.hint,
        "skip_kind": outcome.skip_kind,
    }


class FileReportWriter:
    """Streams one JSON line per finished file. Open it before the run so a bad path fails
    early; memory is one write buffer, whatever the number of files.

    Lines go straight to the final path (not via a temporary file), so a run killed midway
    still leaves every line that reached the disk."""

    BUFFER_SIZE = 1 << 16

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines = 0
        # ensure_ascii keeps undecodable names (lone surrogates) writable and the file pure ASCII
        self._file: IO[str] | None = open(  # noqa: SIM115 - closed in close()
            path, "w", encoding="utf-8", buffering=self.BUFFER_SIZE, newline="\n"
        )

    def write(self, outcome: FileOutcome) -> None:
        if self._file is None:
            raise ValueError("FileReportWriter is closed")
        self._file.write(json.dumps(outcome_to_json(outcome), separators=(",", ":")) + "\n")
        self.lines += 1

    def close(self) -> None:
        if self._file is None:
            return
        file, self._file = self._file, None
        try:
            file.flush()
            os.fsync(file.fileno())
        finally:
            file.close()

    def __enter__(self) -> FileReportWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# --- the table at the end ---------------------------------------------------------------------


def render_summary(summary: RunSummary, console: Console) -> None:
    """The end-of-run table, then each failed file with its reason and what to do."""
    if summary.run_error is not None:
        title = "upload stopped"  # by the error printed on stderr, once
    elif summary.interrupted:
        title = "upload interrupted"
    else:
        title = "upload finished"
    console.print(Text(title, style="bold"), soft_wrap=True)
    table = Table(show_edge=False, pad_edge=False)
    table.add_column("outcome", no_wrap=True)
    table.add_column("files", justify="right", no_wrap=True)
    table.add_column("bytes", justify="right", no_wrap=True)
    files, sizes = summary.files, summary.bytes
    rows: tuple[tuple[str, int, int, str], ...] = (
        ("uploaded", files.uploaded, sizes.uploaded, "green"),
        ("resumed", files.resumed, sizes.resumed, "green"),
        ("skipped", files.skipped, sizes.skipped, ""),
        ("failed", files.failed, sizes.failed, "bold red" if files.failed else ""),
    )
    for label, count, size, style in rows:
        table.add_row(label, f"{count:,}", format_bytes(size), style=style or None)
    total_label = "total" if summary.walk_complete else "total (walk incomplete)"
    table.add_row(total_label, f"{files.total:,}", format_bytes(sizes.total), end_section=True)
    console.print(table)
    skipped = [f"{count:,} {kind}" for kind, count in summary.skipped_by_kind]
    if summary.filtered:
        skipped.append(f"{summary.filtered:,} left out by filters")
    if skipped:
        console.print(Text(f"skipped: {', '.join(skipped)}"), soft_wrap=True)
    console.print(
        Text(
            f"elapsed {format_duration(summary.elapsed_seconds)}, "
            f"mean throughput {format_rate(summary.throughput)} "
            f"({format_bytes(sizes.sent)} sent), "
            f"retries {summary.retries:,}, resumes {summary.resumes:,}"
        ),
        soft_wrap=True,
    )
    for worker in summary.workers:
        console.print(
            Text(
                f"worker {worker.address}: {worker.files:,} files, {format_bytes(worker.bytes)} "
                f"in {format_duration(worker.seconds)} ({worker.batches:,} batches)"
            ),
            soft_wrap=True,
        )
    if summary.transfers is not None:
        used = summary.transfers
        console.print(
            Text(
                f"transfers auto: peak {used.peak}, time-weighted mean {used.mean:.1f}, "
                f"{used.changes} change(s)"
            ),
            soft_wrap=True,
        )
    listed = [failure for failure in summary.failures if not failure.stopped_run]
    if listed:
        console.print(Text(f"failed files ({files.failed:,}):", style="bold red"), soft_wrap=True)
        for failure in listed:
            console.print(failure_line(failure), soft_wrap=True)
    if summary.failures_omitted:
        console.print(
            Text(
                f"... and {summary.failures_omitted:,} more failed files, not listed "
                "(--report-files lists every file)"
            ),
            soft_wrap=True,
        )


def failure_line(outcome: FileOutcome) -> Text:
    """ "FAILED path: reason (Class); what to do" — one line, safe to print."""
    line = Text()
    line.append("FAILED ", style="bold red")
    line.append(printable(outcome.relative))
    line.append(f": {one_line(outcome.reason or 'failed')}")
    if outcome.exit_class:
        line.append(f" ({outcome.exit_class})")
    if outcome.hint:
        line.append(f"; {one_line(outcome.hint)}")
    return line
