"""Outcomes for the reporter and report tests, built as the scheduler builds them."""

from __future__ import annotations

from bulkdrive.errors import BulkdriveError
from bulkdrive.report import FileOutcome, Outcome, one_line


def failed_outcome(
    relative: str,
    remote_path: str,
    size: int,
    error: BulkdriveError,
    *,
    attempts: int = 0,
    seconds: float = 0.0,
    bytes_sent: int = 0,
) -> FileOutcome:
    """The FAILED outcome for `error`: its one-line message, class name and hint."""
    return FileOutcome(
        relative=relative,
        remote_path=remote_path,
        size=size,
        outcome=Outcome.FAILED,
        attempts=attempts,
        seconds=seconds,
        bytes_sent=bytes_sent,
        reason=one_line(str(error)) or type(error).__name__,
        exit_class=type(error).__name__,
        hint=error.hint or None,
    )
