"""A finished file, accounted once: its journal record, its outcome (kind, reason, hint), its
log line, the tally, the progress display and the `--report-files` line."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from bulkdrive import errors
from bulkdrive.file_events import FileEvents, RunCounters
from bulkdrive.journal import FileState, Journal
from bulkdrive.progress import Reporter
from bulkdrive.remote_folders import RemotePaths
from bulkdrive.report import FileOutcome, FileReportWriter, Outcome, RunTally, outcome_to_json
from bulkdrive.resume import journal_record
from bulkdrive.upload import UploadResult
from bulkdrive.walk import FileEntry

log = logging.getLogger("bulkdrive.run")

# Enum members on each small file's path, read as module names (why: `bulkdrive.session`).
_UPLOADED, _RESUMED, _FAILED = Outcome.UPLOADED, Outcome.RESUMED, Outcome.FAILED


class Completed(Protocol):
    """What a completed upload's outcome and DONE record need of its result (an
    `UploadResult`, or a `--cluster` worker's report of the file)."""

    @property
    def file_guid(self) -> str: ...
    @property
    def attempts(self) -> int: ...
    @property
    def resumes(self) -> int: ...
    @property
    def integrity_verified(self) -> bool: ...


#: A completed file of a batch: its entry, its result, the bytes the server accepted from this
#: run, its remote path.
Done = tuple[FileEntry, Completed, int, str]


class RunOutcomes:
    """Where each file's end goes. `save` is the run's guarded journal write (a journal that
    fails stops the run, never a file's accounting)."""

    def __init__(
        self,
        *,
        paths: RemotePaths,
        tally: RunTally,
        reporter: Reporter,
        counters: RunCounters,
        journal: Journal | None,
        file_report: FileReportWriter | None,
        save: Callable[[Awaitable[None]], Awaitable[None]],
    ) -> None:
        self._paths = paths
        self._tally = tally
        self._reporter = reporter
        self._counters = counters
        self._journal = journal
        self._file_report = file_report
        self._save = save

    def outcome(self, entry: FileEntry, outcome: Outcome, **details: object) -> FileOutcome:
        return FileOutcome(
            relative=entry.relative,
            remote_path=self._paths.path_of(entry.relative),
            size=entry.size,
            outcome=outcome,
            **details,  # type: ignore[arg-type]
        )

    async def succeeded(
        self, entry: FileEntry, result: UploadResult, events: FileEvents, seconds: float
    ) -> FileOutcome:
        if self._journal is not None:
            # `record` of the file's DONE record, built once with its times.
            done = (entry.relative, entry.size, entry.mtime_ns, result.file_guid, result.attempts)
            await self._save(self._journal.record_done_many(((*done, result.integrity_verified),)))
            # Not waited for: a file the server completed whose DONE record a SIGKILL lost
            # is still marked in flight, and the re-run asks the server about it first.
        return self.success(entry, result, events.accepted, seconds)

    async def completed_many(self, done: Sequence[Done], seconds: float) -> None:
        """A batch's completed files, each (entry, result, accepted bytes, remote path): their
        DONE records queued in one journal call, then each one's outcome (`success`) told as
        `finish` tells it. One pass with what every file shares looked up once: a `--cluster`
        coordinator ends thousands of files a second this way."""
        if not done:
            return
        if self._journal is not None:
            rows = [
                (e.relative, e.size, e.mtime_ns, r.file_guid, r.attempts, r.integrity_verified)
                for e, r, _, _ in done
            ]
            await self._save(self._journal.record_done_many(rows))
        uploaded, resumed = Outcome.UPLOADED, Outcome.RESUMED
        outcome_of = FileOutcome._make
        ended = [
            outcome_of(
                (
                    entry.relative,
                    path,
                    entry.size,
                    resumed if result.resumes else uploaded,
                    result.file_guid,
                    result.attempts,
                    seconds,
                    accepted,
                    None,
                    None,
                    None,
                    None,
                    False,
                )
            )
            for entry, result, accepted, path in done
        ]
        self._counters.files_done += len(ended)
        finished = self._tally.finished
        file_finished = self._reporter.file_finished
        logged = log.isEnabledFor(logging.INFO)
        for outcome in ended:
            if logged:
                self._log(outcome)
            finished(outcome)
            file_finished(outcome)
            if self._file_report is not None:
                self._write_report(outcome)

    def success(
        self,
        entry: FileEntry,
        result: Completed,
        accepted: int,
        seconds: float,
        remote_path: str | None = None,
    ) -> FileOutcome:
        """A completed file's outcome (its journal record queued by the caller): `accepted`
        the bytes the server accepted from this run (`FileEvents.accepted`); its
        `remote_path` when the caller knows it already."""
        relative = entry.relative
        return FileOutcome(
            relative,
            self._paths.path_of(relative) if remote_path is None else remote_path,
            entry.size,
            _RESUMED if result.resumes else _UPLOADED,
            result.file_guid,
            result.attempts,
            seconds,
            accepted,
        )

    async def failed(
        self,
        entry: FileEntry,
        exc: Exception,
        events: FileEvents,
        seconds: float,
        *,
        journaled: bool = True,
    ) -> FileOutcome:
        stopped_run = isinstance(exc, errors.RunFailed)
        reason, exit_class, hint = failure(exc)
        if self._journal is not None and journaled:
            await self._save(
                self._journal.record(
                    journal_record(
                        entry,
                        FileState.FAILED,
                        request_id=events.request_id,
                        offset=events.offset,
                        digests=events.digests,
                        attempts=events.attempts,
                        last_error=reason,
                    )
                )
            )
        return self.outcome(
            entry,
            Outcome.FAILED,
            reason=reason,
            exit_class=exit_class,
            hint=hint,
            attempts=events.attempts,
            seconds=seconds,
            bytes_sent=events.accepted,
            stopped_run=stopped_run,
        )

    def finish(self, outcome: FileOutcome) -> None:
        if outcome.outcome is _FAILED:
            log.error(
                "failed %s: %s (%s)",
                outcome.relative,
                outcome.reason,
                outcome.hint,
                extra=_log_event(outcome),
            )
        elif log.isEnabledFor(logging.INFO):
            self._log(outcome)
        if outcome.outcome is _UPLOADED or outcome.outcome is _RESUMED:
            self._counters.files_done += 1
        self._tally.finished(outcome)
        self._reporter.file_finished(outcome)
        if self._file_report is not None:
            self._write_report(outcome)

    def _log(self, outcome: FileOutcome) -> None:
        log.info(
            "%s %s (%d bytes)%s",
            outcome.outcome,
            outcome.relative,
            outcome.size,
            f": {outcome.reason}" if outcome.reason else "",
            extra=_log_event(outcome),
        )

    def _write_report(self, outcome: FileOutcome) -> None:
        assert self._file_report is not None
        try:
            self._file_report.write(outcome)
        except OSError as exc:
            self._reporter.message(
                f"cannot write --report-files: {exc.strerror or exc}; no more lines go there",
                level=logging.ERROR,
            )
            self._file_report = None


def failure(exc: Exception) -> tuple[str, str, str]:
    """A failed file's reason, exit class and hint."""
    if isinstance(exc, errors.FolderNotCreated):
        return str(exc), type(exc).__name__, exc.folder_hint
    if isinstance(exc, errors.ServerFailing):
        # The run's one line says why; the file only stopped with it.
        reason = "not finished: the run stopped, the server is failing"
        return reason, type(exc).__name__, "re-run the same command to resume it"
    if isinstance(exc, errors.BulkdriveError):
        return str(exc), type(exc).__name__, exc.hint
    reason = f"internal error: {type(exc).__name__}: {exc}"
    return reason, "InternalError", "please report this as a bug"


def _log_event(outcome: FileOutcome) -> dict[str, Any]:
    """The structured half of a file's log line (`--log-format json`)."""
    return {
        "event": outcome.outcome.value,
        "path": outcome.relative,
        "fields": outcome_to_json(outcome),
    }
