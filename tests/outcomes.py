"""Outcomes for the reporter and report tests, built as the scheduler builds them."""

from __future__ import annotations

from bulkdrive.errors import BulkdriveError, SourceChanged
from bulkdrive.report import FileOutcome, Outcome, RunTally, one_line


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


def outcome(name: str, size: int, kind: Outcome, **extra: object) -> FileOutcome:
    return FileOutcome(
        relative=name,
        remote_path="\\dest\\" + name.replace("/", "\\"),
        size=size,
        outcome=kind,
        **extra,  # type: ignore[arg-type]
    )


def mixed_run() -> RunTally:
    """5 files found: 2 uploaded (100 + 300), 1 resumed (1000, 400 sent), 1 skipped (50),
    1 failed (7, SourceChanged); 3 retries, 1 resume."""
    tally = RunTally()
    for size in (100, 300, 1000, 50, 7):
        tally.found(size)
    tally.walk_finished()
    tally.finished(outcome("a.txt", 100, Outcome.UPLOADED, file_guid="g1", bytes_sent=100))
    tally.finished(outcome("d/b.bin", 300, Outcome.UPLOADED, file_guid="g2", bytes_sent=300))
    tally.finished(outcome("d/e/big", 1000, Outcome.RESUMED, file_guid="g3", bytes_sent=400))
    tally.finished(
        outcome(
            "same",
            50,
            Outcome.SKIPPED,
            reason="the server has it already",
            skip_kind="already on the server",
        )
    )
    tally.filtered(3)
    tally.finished(
        failed_outcome("hot.log", "\\dest\\hot.log", 7, SourceChanged("size changed while sent"))
    )
    for _ in range(3):
        tally.retried()
    tally.resumed()
    return tally
