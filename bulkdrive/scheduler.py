"""The run: one task group, the walker the only producer into a bounded backlog, at most
`transfers` file uploads in flight.

    walk ──(bounded stream: backlog)──▶ dispatcher ──(hand-out: one batch)──▶ worker × transfers

Remote folders are created as the walk finds them, concurrently and ahead of their files (a
folder waits only for its parent, a file only for its own folder; at most `transfers` creations
at once). The dispatcher decides what to skip (journal, remote listing), and stops handing out
files as soon as a run-level error (wrong credentials, no permission, unknown share, quota) is
seen; files in flight then end on their own. When the backlog is full the walker blocks, so
memory stays flat however large the tree: file data ≤ transfers × 2 × chunk_size, plus the
backlog, plus a constant.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream

from bulkdrive import errors, tuner
from bulkdrive.check import Version, difference
from bulkdrive.client import EdgeDriveClient
from bulkdrive.config import SMALL_FILE_BATCH, SMALL_FILE_READ_AHEAD, TransferConfig
from bulkdrive.journal import FileRecord, FileState, Journal
from bulkdrive.names import InvalidNames, check_name, remote_name
from bulkdrive.progress import NullReporter, Reporter
from bulkdrive.protocol import UploadReply, mtime_seconds, remote_child, split_remote_path
from bulkdrive.report import (
    FileOutcome,
    FileReportWriter,
    Outcome,
    RunSummary,
    RunTally,
    TransfersUsed,
    outcome_to_json,
)
from bulkdrive.resume import (
    SKIP_ON_SERVER,
    SKIP_UNCHANGED,
    ReadyFile,
    is_stale,
    journal_record,
    ready_file,
    was_in_flight,
)
from bulkdrive.upload import (
    LocalContent,
    ResumePoint,
    UploadEvents,
    UploadResult,
    read_small_files,
    upload_file,
)
from bulkdrive.walk import (
    FileEntry,
    FolderEntry,
    SkippedEntry,
    WalkFailure,
    WalkFilters,
    WalkItem,
    count_files,
    walk,
)

log = logging.getLogger("bulkdrive.run")

#: Walk items handed out together: one journal read, one read of the small files and one
#: journal commit serve them all.
DISPATCH_BATCH = SMALL_FILE_BATCH
CLUSTER_DISPATCH_BATCH = 512

#: Block digests (bytes) below which the journal gets them after every block.
DIGESTS_COPIED_EACH_BLOCK = 64 * 32

#: Remote folder listings kept for --check-remote; files arrive grouped by folder.
_LISTINGS_KEPT = 4

#: Seconds between two looks of `--transfers auto` at the run's counters.
TUNE_TICK = 0.25
#: Under `--transfers auto`, the limit the run starts with.
AUTO_START = 4
#: Folders that could not be created, remembered so that their files fail with the folder's
#: reason without a request each (past this, the oldest are forgotten: the server says).
_FAILED_FOLDERS_KEPT = 16384


class FileEngine(Protocol):
    """Where the files' uploads run when not in this process (`--cluster`): `upload` does
    what `upload_file` does for one file of the walk, and tells `events` the same; `slots`
    files may wait on it at once (it groups them); `summarize` adds its own figures."""

    slots: int

    async def upload(
        self,
        entry: FileEntry,
        remote_folder: str,
        *,
        remote_name: str,
        events: UploadEvents,
        resume: ResumePoint | None,
        known_digests: bytes,
    ) -> UploadResult: ...

    def summarize(self, summary: RunSummary) -> RunSummary: ...


@dataclass(frozen=True)
class RunPlan:
    """What to upload where, and how."""

    source: Path
    remote_folder: str = "\\"
    filters: WalkFilters = field(default_factory=WalkFilters)
    config: TransferConfig = field(default_factory=TransferConfig)
    #: Walk items waiting for an upload slot; bounds the walker's lead.
    backlog: int = 1000
    check_remote: bool = False
    dry_run: bool = False
    invalid_names: InvalidNames = InvalidNames.ESCAPE


@dataclass(frozen=True)
class SchedulerStatistics:
    files_started: int
    in_flight: int
    max_in_flight: int
    backlog_used: int
    max_backlog_used: int
    backlog_size: int
    folders_created: int
    would_upload_files: int
    would_upload_bytes: int
    #: The limit of files in flight now (fixed, or the tuner's under --transfers auto).
    transfers_limit: int
    #: Under --transfers auto: what the tuner saw (503/429 answers and timeouts) and did.
    pushbacks: int
    transfers_changes: int
    #: Seconds from the run's start until the count-only pass fixed the totals (None: not yet,
    #: or the upload's own walk finished first).
    total_known_after: float | None = None


class TreeUpload:
    """One run of `bulkdrive upload`: construct, `await run()`, read `statistics()`."""

    def __init__(
        self,
        client: EdgeDriveClient | None,
        plan: RunPlan,
        *,
        reporter: Reporter | None = None,
        journal: Journal | None = None,
        file_report: FileReportWriter | None = None,
        clock: Callable[[], float] = time.monotonic,
        engine: FileEngine | None = None,
    ) -> None:
        if client is None and not plan.dry_run:
            raise ValueError("a client is needed unless this is a dry run")
        self._client = client
        self._plan = plan
        self._reporter = reporter or NullReporter()
        self._journal = journal
        self._file_report = file_report
        self._clock = clock
        self._engine = engine
        self._tally = RunTally()
        self._run_error: errors.RunFailed | None = None
        self._interrupted = False
        self._walk_scope = anyio.CancelScope()
        self._count_scope = anyio.CancelScope()
        self._total_known_after: float | None = None
        self._began = 0.0
        self._run_scope = anyio.CancelScope()
        self._listings: OrderedDict[str, dict[str, Version]] = OrderedDict()
        self._started = 0
        self._in_flight = 0
        self._max_in_flight = 0
        self._max_backlog = 0
        self._folders_created = 0
        self._would_upload_files = 0
        self._would_upload_bytes = 0
        self._backlog_used: Callable[[], int] = lambda: 0
        self._folders = _Folders()
        self._folder_slots = anyio.CapacityLimiter(max(1, plan.config.transfers))
        self._task_group: anyio.abc.TaskGroup | None = None
        # --transfers auto: what the tuner measures, and how the limit moved.
        self._bytes_confirmed = 0
        self._files_done = 0
        self._pushbacks = 0
        self._limit = plan.config.transfers
        self._limit_peak = 0
        self._limit_area = 0.0
        self._limit_since = 0.0
        self._limit_changes = 0
        self._limiter: anyio.CapacityLimiter | None = None
        self._tune_scope = anyio.CancelScope()
        self._workers_left = 0

    # --- public --------------------------------------------------------------------------

    @property
    def run_error(self) -> errors.RunFailed | None:
        return self._run_error

    def statistics(self) -> SchedulerStatistics:
        return SchedulerStatistics(
            files_started=self._started,
            in_flight=self._in_flight,
            max_in_flight=self._max_in_flight,
            backlog_used=self._backlog_used(),
            max_backlog_used=self._max_backlog,
            backlog_size=self._plan.backlog,
            folders_created=self._folders_created,
            would_upload_files=self._would_upload_files,
            would_upload_bytes=self._would_upload_bytes,
            transfers_limit=self._limit,
            pushbacks=self._pushbacks,
            transfers_changes=self._limit_changes,
            total_known_after=self._total_known_after,
        )

    def interrupt(self) -> None:
        """Stop now (SIGINT/SIGTERM): cancel the walk and the uploads in flight."""
        self._interrupted = True
        self._run_scope.cancel()

    async def run(self) -> RunSummary:
        started = self._began = self._clock()
        plan = self._plan
        engine = self._engine
        self._reporter.start(str(plan.source), plan.remote_folder)
        send, receive = anyio.create_memory_object_stream[WalkItem](plan.backlog)
        self._backlog_used = lambda: receive.statistics().current_buffer_used
        self._handout = _Handout()
        # Under --cluster the workers' own limits hold; the coordinator only hands out.
        auto = plan.config.auto_transfers and not plan.dry_run and engine is None
        # An engine groups files by the hundred: hand them out (one journal read and commit
        # each) in groups as large.
        dispatch_batch = DISPATCH_BATCH if engine is None else CLUSTER_DISPATCH_BATCH
        try:
            with self._run_scope:
                async with anyio.create_task_group() as tg:
                    self._task_group = tg
                    self._folders.add("")  # the remote folder SRC goes to
                    tg.start_soon(self._walk, send)
                    if not plan.dry_run:
                        tg.start_soon(self._count, started)
                    workers = plan.config.transfers if engine is None else engine.slots
                    workers = 0 if plan.dry_run else workers
                    self._workers_left = workers
                    if auto:
                        settings = tuner.TunerSettings(
                            start=min(AUTO_START, workers), maximum=workers
                        )
                        self._limiter = anyio.CapacityLimiter(settings.start)
                        self._set_limit(settings.start, started)
                        tg.start_soon(self._tune, settings)
                    for _ in range(workers):
                        tg.start_soon(self._tuned_worker if auto else self._worker)
                    with receive, self._handout:
                        try:
                            if not plan.dry_run:
                                await self._ensure_remote_root()
                        finally:
                            self._folders.finish("", None)
                        while self._run_error is None:
                            self._max_backlog = max(self._max_backlog, self._backlog_used())
                            batch = await _next_batch(receive, dispatch_batch)
                            if not batch:
                                break
                            try:
                                await self._dispatch(batch)
                            except errors.RunFailed as exc:
                                self._stop(exc)
                        self._walk_scope.cancel()
        except BaseExceptionGroup as group:
            # Our tasks catch what they expect; hand back a lone error as it was raised.
            raise errors.alone(group) from None
        finally:
            if self._journal is not None:
                with anyio.CancelScope(shield=True):
                    await self._save(self._journal.flush())
            ended = self._clock()
            summary = self._tally.summary(
                ended - started,
                run_error=self._run_error,
                interrupted=self._interrupted,
            )
            if auto:
                summary = replace(summary, transfers=self._transfers_used(started, ended))
            if engine is not None:
                summary = engine.summarize(summary)
            # Also when an error escapes: a live display must never be left running.
            self._reporter.close(summary)
        return summary

    # --- the producer --------------------------------------------------------------------

    async def _count(self, started: float) -> None:
        """The count-only pass: `count_files` in a worker thread, with the same filters; it
        keeps nothing per file (memory stays flat) and runs far ahead of the upload's walk,
        which the uploads hold back, so the totals the progress shows are final early."""
        stop = threading.Event()
        with self._count_scope:
            try:
                counted = await anyio.to_thread.run_sync(
                    count_files, self._plan.source, self._plan.filters, stop, abandon_on_cancel=True
                )
            except OSError:
                return  # only a forecast: the upload's own walk reports what goes wrong
            finally:
                stop.set()  # a cancelled count ends at its next folder
            if counted is None:
                return
            self._total_known_after = self._clock() - started
            self._tally.total_known(self._total_known_after)
            self._reporter.totals_counted(*counted)

    async def _walk(self, send: anyio.abc.ObjectSendStream[WalkItem]) -> None:
        on_folder = None if self._plan.dry_run else self._folder_found
        with self._walk_scope:
            stats = await walk(
                self._plan.source,
                self._plan.filters,
                send,
                on_file=self._found,
                on_folder=on_folder,
            )
            self._tally.filtered(stats.filtered)
        self._count_scope.cancel()  # the walk is through: the count can tell no more
        if not self._walk_scope.cancel_called:  # a stopped walk's total is not the tree's
            self._tally.total_known(self._clock() - self._began)
            self._tally.walk_finished()
            self._reporter.walk_finished()

    # --- remote folders, ahead of their files --------------------------------------------

    def _folder_found(self, entry: FolderEntry) -> None:
        """The walk found a folder (before any file in it): start creating it now."""
        assert self._task_group is not None
        self._folders.add(entry.relative)
        self._task_group.start_soon(self._make_folder, entry.relative)

    async def _make_folder(self, relative: str) -> None:
        error: errors.FolderNotCreated | None = None
        try:
            error = await self._folders.wait(_parent_of(relative))
            if error is None and self._run_error is None:
                try:
                    check_name(relative, self._plan.invalid_names)
                    async with self._folder_slots:
                        await self._create_folder(relative)
                except errors.BulkdriveError as exc:
                    if isinstance(exc, errors.RunFailed):
                        self._stop(exc)
                    remote = self._remote_path(relative)
                    self._reporter.message(
                        f"cannot create folder {remote}: {exc}", level=logging.WARNING
                    )
                    error = errors.FolderNotCreated(
                        f"its remote folder {remote} could not be created: {exc}",
                        folder_hint=exc.hint,
                    )
        finally:
            self._folders.finish(relative, error)

    # --- the dispatcher ------------------------------------------------------------------

    async def _dispatch(self, batch: list[WalkItem]) -> None:
        """Hand out a batch of walk items: folders first (they precede their files in the
        stream), then the files, with one journal read, one read of all small files and one
        journal commit for the whole batch rather than a thread hop each per file."""
        files: list[FileEntry] = []
        for item in batch:
            if isinstance(item, FileEntry):
                files.append(item)
            elif isinstance(item, SkippedEntry):
                self._finish(
                    FileOutcome(
                        relative=item.relative,
                        remote_path=self._remote_path(item.relative),
                        size=0,
                        outcome=Outcome.SKIPPED,
                        reason=item.reason,
                        skip_kind=item.kind,
                    )
                )
            elif isinstance(item, WalkFailure):
                self._finish(
                    FileOutcome(
                        relative=item.relative,
                        remote_path=self._remote_path(item.relative),
                        size=0,
                        outcome=Outcome.FAILED,
                        reason=item.reason,
                        exit_class=item.error.__name__,
                        hint=item.error.hint,
                    )
                )
            # A FolderEntry: its creation started when the walk found it (_folder_found).
        if not files:
            return
        records: dict[str, FileRecord] = {}
        if self._journal is not None:
            records = await self._journal.lookup_many(f.relative for f in files)
        chosen: list[tuple[FileEntry, bool, FileRecord | None]] = []
        for entry in files:
            record = records.get(entry.relative)
            skip = await self._skip_reason(entry, record)
            if skip is not None:
                reason, kind = skip
                self._finish(self._outcome(entry, Outcome.SKIPPED, reason=reason, skip_kind=kind))
            elif self._plan.dry_run:
                self._would_upload_files += 1
                self._would_upload_bytes += entry.size
                self._reporter.message(f"would upload {entry.relative} ({entry.size} bytes)")
            else:
                stale = is_stale(record, entry)
                if not stale:
                    await self._mark_started(entry, record)
                chosen.append((entry, stale, record))
        small = [
            e
            for e, stale, _ in chosen
            if not stale and e.size <= SMALL_FILE_READ_AHEAD and self._engine is None
        ]
        contents: dict[str, LocalContent | None] = {}
        if small:
            read = await anyio.to_thread.run_sync(
                read_small_files, [e.path for e in small], SMALL_FILE_READ_AHEAD
            )
            contents = {e.relative: c for e, c in zip(small, read, strict=True)}
        if self._journal is not None and chosen:
            # The in-flight marks are on disk before the first request of any of these files.
            await self._journal.flush()
        ready = [
            ready_file(entry, stale, contents.get(entry.relative), record)
            for entry, stale, record in chosen
        ]
        if ready:
            await self._handout.put(ready)

    async def _worker(self) -> None:
        """One of `transfers` workers: uploads the files handed to it, one at a time."""
        while (ready := await self._handout.get()) is not None:
            if self._run_error is not None:
                continue  # the run is stopping: start nothing new
            self._started += 1
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
            await self._upload(*ready)

    async def _tuned_worker(self) -> None:
        """A worker under --transfers auto: one of `transfers` (the most the tuner may
        allow), each file upload holding one of the limiter's tokens."""
        limiter = self._limiter
        assert limiter is not None
        try:
            while True:
                async with limiter:
                    ready = await self._handout.get()
                    if ready is None:
                        return
                    if self._run_error is not None:
                        continue  # the run is stopping: start nothing new
                    self._started += 1
                    self._in_flight += 1
                    self._max_in_flight = max(self._max_in_flight, self._in_flight)
                    await self._upload(*ready)
        finally:
            self._workers_left -= 1
            if self._workers_left == 0:
                self._tune_scope.cancel()  # nothing left to tune

    async def _tune(self, settings: tuner.TunerSettings) -> None:
        """Feed the tuner the run's counters; apply and explain each change of the limit."""
        state = tuner.start(settings)
        with self._tune_scope:
            while True:
                await anyio.sleep(TUNE_TICK)
                now = self._clock()
                measurement = tuner.Measurement(
                    now, self._bytes_confirmed, self._files_done, self._pushbacks
                )
                state, change = tuner.observe(settings, state, measurement)
                self._reporter.message(
                    f"tuner: t={now:.3f} limit={state.limit} bytes={measurement.bytes_done} "
                    f"files={measurement.files_done} pushbacks={measurement.pushbacks}",
                    level=logging.DEBUG,
                )
                if change is not None:
                    self._set_limit(change.new, now)
                    self._reporter.message(
                        f"transfers {change.old} → {change.new}: {change.reason}"
                    )

    def _set_limit(self, limit: int, now: float) -> None:
        if self._limit_peak:  # not the first: account the time at the old limit
            self._limit_area += self._limit * (now - self._limit_since)
            self._limit_changes += 1
        self._limit, self._limit_since = limit, now
        self._limit_peak = max(self._limit_peak, limit)
        if self._limiter is not None:
            self._limiter.total_tokens = limit
            # Folder creations meet the same server: they follow the same limit.
            self._folder_slots.total_tokens = limit
        self._reporter.transfers_changed(limit)

    def _transfers_used(self, started: float, ended: float) -> TransfersUsed:
        area = self._limit_area + self._limit * (ended - self._limit_since)
        seconds = ended - started
        mean = area / seconds if seconds > 0 else float(self._limit)
        return TransfersUsed(peak=self._limit_peak, mean=mean, changes=self._limit_changes)

    async def _skip_reason(
        self, entry: FileEntry, record: FileRecord | None
    ) -> tuple[str, str] | None:
        """Why to skip the file, and the kind of reason; None to upload it."""
        if record is not None:
            if record.is_done_for(entry.size, entry.mtime_ns):
                return "unchanged since the last run (journal)", SKIP_UNCHANGED
            if was_in_flight(record, entry) and await self._completed_remotely(entry):
                return "completed on the server before the last run stopped", SKIP_ON_SERVER
        if self._plan.check_remote:
            listing = await self._remote_listing(self._remote_folder(entry.relative))
            remote = listing.get(remote_name(_name_of(entry.relative)))
            if difference(Version.local(entry.size, entry.mtime_ns), remote) is None:
                return "the server has it already (same size and modified time)", SKIP_ON_SERVER
        return None

    async def _completed_remotely(self, entry: FileEntry) -> bool:
        """A file in flight when the last run stopped may have completed after its last
        journal commit: the server says whether it holds it whole (then it is recorded done)."""
        if self._client is None:
            return False
        try:
            resource = await self._client.metadata(self._remote_path(entry.relative))
        except errors.RunFailed:
            raise
        except errors.BulkdriveError:
            return False  # unknown: the upload itself will find out
        if (
            resource is None
            or resource.is_directory
            or difference(
                Version.local(entry.size, entry.mtime_ns),
                Version(resource.size, resource.modified_time),
            )
            is not None
        ):
            return False
        if self._journal is not None and not self._plan.dry_run:
            await self._journal.record(
                journal_record(
                    entry,
                    FileState.DONE,
                    offset=entry.size,
                    file_guid=resource.guid or None,
                )
            )
        return True

    async def _remote_listing(self, folder: str) -> dict[str, Version]:
        listing = self._listings.get(folder)
        if listing is not None:
            self._listings.move_to_end(folder)
            return listing
        assert self._client is not None
        listing = {}
        try:
            async for resource in self._client.list_folder(folder):
                if not resource.is_directory:
                    listing[resource.name] = Version(resource.size, resource.modified_time)
        except (errors.FolderNotFound, errors.SessionGone):
            pass  # nothing there yet: every file is new
        except errors.RunFailed:
            raise
        except errors.BulkdriveError as exc:
            # Not known: upload the folder's files, each reports what goes wrong for it.
            self._reporter.message(f"cannot list {folder}: {exc}", level=logging.WARNING)
            return {}
        self._listings[folder] = listing
        if len(self._listings) > _LISTINGS_KEPT:
            self._listings.popitem(last=False)
        return listing

    async def _ensure_remote_root(self) -> None:
        parts = split_remote_path(self._plan.remote_folder)
        for depth in range(1, len(parts) + 1):
            try:
                await self._create_remote(parts[: depth - 1], parts[depth - 1])
            except errors.RunFailed as exc:
                self._stop(exc)
            except errors.BulkdriveError as exc:
                folder = remote_child("\\", *parts[:depth])
                self._reporter.message(f"cannot create folder {folder}: {exc}")

    async def _create_folder(self, relative: str) -> None:
        *parents, name = [remote_name(part) for part in _parts(relative)]
        await self._create_remote((*split_remote_path(self._plan.remote_folder), *parents), name)

    async def _create_remote(self, parent: tuple[str, ...], name: str) -> None:
        assert self._client is not None
        # The client repeats createfolder on transient errors: 201, or 409 when it exists.
        if await self._client.create_folder(remote_child("\\", *parent), name):
            self._folders_created += 1

    # --- one file ------------------------------------------------------------------------

    async def _upload(
        self,
        entry: FileEntry,
        stale: bool,
        content: LocalContent | None,
        resume: ResumePoint | None,
        known: bytes,
    ) -> None:
        assert self._client is not None
        relative = entry.relative
        began = self._clock()
        events = _FileEvents(self, entry)
        self._reporter.file_started(relative, entry.size)
        outcome: FileOutcome | None = None
        try:
            check_name(relative, self._plan.invalid_names)
            folder_error = await self._folders.wait(_parent_of(relative))
            if folder_error is not None:
                hint = folder_error.folder_hint
                raise errors.FolderNotCreated(str(folder_error), folder_hint=hint)
            if stale:
                try:
                    await self._discard_stale_session(entry)
                except errors.BulkdriveError as exc:
                    # The old version's session may still be there: keep the journal's old
                    # record, so that the next run discards it before sending this version.
                    if isinstance(exc, errors.RunFailed):
                        self._stop(exc)
                    self._finish(
                        await self._failed(
                            entry, exc, events, self._clock() - began, journaled=False
                        )
                    )
                    return
                await self._mark_started(entry, None)
                if self._journal is not None:
                    await self._journal.flush()
            if self._engine is not None:
                result = await self._engine.upload(
                    entry,
                    self._remote_folder(entry.relative),
                    remote_name=remote_name(_name_of(entry.relative)),
                    events=events,
                    resume=resume,
                    known_digests=known,
                )
            else:
                result = await upload_file(
                    self._client,
                    entry.path,
                    self._remote_folder(entry.relative),
                    remote_name=remote_name(_name_of(entry.relative)),
                    config=self._plan.config,
                    events=events,
                    content=content,
                    resume=resume,
                    known_digests=known,
                )
        except errors.BulkdriveError as exc:
            if isinstance(exc, errors.RunFailed):
                self._stop(exc)
            outcome = await self._failed(entry, exc, events, self._clock() - began)
        except Exception as exc:  # a bug must cost one file, not the run
            outcome = await self._failed(entry, exc, events, self._clock() - began)
        else:
            events.completed()
            outcome = await self._succeeded(entry, result, events, self._clock() - began)
        finally:
            self._in_flight -= 1
            if outcome is None:  # interrupted: what the server accepted still counts
                self._tally.sent_by_unfinished(events.accepted)
        self._finish(outcome)

    async def _mark_started(self, entry: FileEntry, record: FileRecord | None) -> None:
        """Queue a record that the file is in flight, committed before its first request.

        If the run is killed after the server completed the file but before its DONE record
        was committed, the re-run finds the mark and asks the server (`_completed_remotely`)
        instead of sending the file again."""
        if self._journal is None or was_in_flight(record, entry):
            return
        await self._journal.record(journal_record(entry, FileState.PENDING))

    async def _discard_stale_session(self, entry: FileEntry) -> None:
        """The last run left this file unfinished, and it changed since: an unfinished session
        on the server holds the old version's first bytes. Continuing it (a 409 gives no way
        to tell) would store a mix of both versions when nothing checks integrity, so discard
        it: a forceRestart initiate replaces it with an empty session at offset 0."""
        assert self._client is not None
        client = self._client
        folder = self._remote_folder(entry.relative)

        def discard() -> Awaitable[UploadReply]:
            # Safe to repeat: each one discards whatever the server holds for this file.
            return client.initiate(
                name=remote_name(_name_of(entry.relative)),
                folder=folder,
                size=entry.size,
                mtime=mtime_seconds(entry.mtime_ns),
                body=b"",
                eof=False,
                verify=self._plan.config.verify,
                force_restart=True,
            )

        what = f"discard the old session of {self._remote_path(entry.relative)}"
        await client.repeat(discard, what)

    async def _succeeded(
        self, entry: FileEntry, result: UploadResult, events: _FileEvents, seconds: float
    ) -> FileOutcome:
        if self._journal is not None:
            await self._save(
                self._journal.record(
                    journal_record(
                        entry,
                        FileState.DONE,
                        offset=entry.size,
                        file_guid=result.file_guid,
                        attempts=result.attempts,
                        verified=result.integrity_verified,
                    )
                )
            )
            # Not waited for: a file the server completed whose DONE record a SIGKILL lost
            # is still marked in flight, and the re-run asks the server about it first.
        return self._outcome(
            entry,
            Outcome.RESUMED if result.resumes else Outcome.UPLOADED,
            file_guid=result.file_guid,
            attempts=result.attempts,
            seconds=seconds,
            bytes_sent=events.accepted,
        )

    async def _failed(
        self,
        entry: FileEntry,
        exc: Exception,
        events: _FileEvents,
        seconds: float,
        *,
        journaled: bool = True,
    ) -> FileOutcome:
        stopped_run = isinstance(exc, errors.RunFailed)
        if isinstance(exc, errors.FolderNotCreated):
            reason, exit_class, hint = str(exc), type(exc).__name__, exc.folder_hint
        elif isinstance(exc, errors.ServerFailing):
            # The run's one line says why; the file only stopped with it.
            reason = "not finished: the run stopped, the server is failing"
            exit_class, hint = type(exc).__name__, "re-run the same command to resume it"
        elif isinstance(exc, errors.BulkdriveError):
            reason, exit_class, hint = str(exc), type(exc).__name__, exc.hint
        else:
            reason = f"internal error: {type(exc).__name__}: {exc}"
            exit_class, hint = "InternalError", "please report this as a bug"
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
        return self._outcome(
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

    # --- bookkeeping ---------------------------------------------------------------------

    def _stop(self, exc: errors.RunFailed) -> None:
        if self._run_error is None:
            self._run_error = exc  # told once, by whoever reads run_error at the end
        self._walk_scope.cancel()
        self._count_scope.cancel()

    def _found(self, entry: FileEntry) -> None:
        # Counted as the file enters the backlog, so the total is whole when the walk ends.
        self._tally.found(entry.size)
        self._reporter.file_found(entry.size)

    async def _save(self, write: Awaitable[None]) -> None:
        """A journal write that must not cost the run more than its journal: the run stops
        starting files (JournalFailed), and the files in flight end and are reported."""
        try:
            await write
        except errors.RunFailed as exc:
            self._stop(exc)

    def _finish(self, outcome: FileOutcome) -> None:
        if outcome.outcome is Outcome.FAILED:
            log.error(
                "failed %s: %s (%s)",
                outcome.relative,
                outcome.reason,
                outcome.hint,
                extra=_log_event(outcome),
            )
        elif log.isEnabledFor(logging.INFO):
            log.info(
                "%s %s (%d bytes)%s",
                outcome.outcome,
                outcome.relative,
                outcome.size,
                f": {outcome.reason}" if outcome.reason else "",
                extra=_log_event(outcome),
            )
        if outcome.outcome is Outcome.UPLOADED or outcome.outcome is Outcome.RESUMED:
            self._files_done += 1
        self._tally.finished(outcome)
        self._reporter.file_finished(outcome)
        if self._file_report is not None:
            try:
                self._file_report.write(outcome)
            except OSError as exc:
                self._reporter.message(
                    f"cannot write --report-files: {exc.strerror or exc}; no more lines go there",
                    level=logging.ERROR,
                )
                self._file_report = None

    def _remote_folder(self, relative: str) -> str:
        """The remote folder of a file: names mapped by `--invalid-names escape`."""
        return remote_child(self._plan.remote_folder, *_parts(remote_name(relative))[:-1])

    def _remote_path(self, relative: str) -> str:
        return remote_child(self._plan.remote_folder, *_parts(remote_name(relative)))

    def _outcome(self, entry: FileEntry, outcome: Outcome, **details: object) -> FileOutcome:
        return FileOutcome(
            relative=entry.relative,
            remote_path=self._remote_path(entry.relative),
            size=entry.size,
            outcome=outcome,
            **details,  # type: ignore[arg-type]
        )


def _log_event(outcome: FileOutcome) -> dict[str, Any]:
    """The structured half of a file's log line (`--log-format json`)."""
    return {
        "event": outcome.outcome.value,
        "path": outcome.relative,
        "fields": outcome_to_json(outcome),
    }


def _parts(relative: str) -> list[str]:
    """The names along a "/"-separated path relative to SRC ("." is SRC itself)."""
    return [] if relative in ("", ".") else relative.split("/")


def _name_of(relative: str) -> str:
    return relative.rpartition("/")[2]


def _parent_of(relative: str) -> str:
    """The folder of a path relative to SRC ("" for SRC itself)."""
    return relative.rpartition("/")[0]


def _is_pushback(error: errors.BulkdriveError) -> bool:
    """The server says it has too much to do: 503 or 429, or no answer in time."""
    if isinstance(error, errors.RequestTimeout):
        return True
    return isinstance(error, errors.ServerBusy) and error.status in (429, 503)


async def _next_batch(
    receive: MemoryObjectReceiveStream[WalkItem], most: int = DISPATCH_BATCH
) -> list[WalkItem]:
    """Wait for one walk item, then take what else the backlog holds, up to `most`."""
    try:
        batch = [await receive.receive()]
    except anyio.EndOfStream:
        return []
    while len(batch) < most:
        try:
            batch.append(receive.receive_nowait())
        except (anyio.WouldBlock, anyio.EndOfStream):
            break
    return batch


class _Folders:
    """The remote folders being created, and those that could not be: a file (or folder) waits
    only for its own parent. Memory: the folders being created (at most the walk's backlog
    ahead) plus a bounded memory of failed ones; a created folder is forgotten at once (a
    folder not known here was created, or its creation failed long ago and the server says)."""

    def __init__(self) -> None:
        self._pending: dict[str, tuple[anyio.Event, list[errors.FolderNotCreated]]] = {}
        self._failed: OrderedDict[str, errors.FolderNotCreated] = OrderedDict()

    def add(self, relative: str) -> None:
        self._pending[relative] = (anyio.Event(), [])

    def finish(self, relative: str, error: errors.FolderNotCreated | None) -> None:
        done, outcome = self._pending.pop(relative)
        if error is not None:
            outcome.append(error)
            self._failed[relative] = error
            if len(self._failed) > _FAILED_FOLDERS_KEPT:
                self._failed.popitem(last=False)
        done.set()

    async def wait(self, relative: str) -> errors.FolderNotCreated | None:
        """None once `relative` exists remotely; else why it could not be created."""
        pending = self._pending.get(relative)
        if pending is None:
            return self._failed.get(relative)
        done, outcome = pending
        await done.wait()
        return outcome[0] if outcome else None


class _Handout:
    """The files of one dispatched batch, taken by the workers one at a time.

    A zero-buffer memory stream costs a rendezvous per file (a checkpoint, an event and a task
    switch on whichever side waits): a tenth of the run's CPU with small files. Here a worker
    takes the next file from a deque without waiting, and waits only when the batch is used
    up; the dispatcher puts the next batch out once the last one is taken (so at most two
    batches of read-ahead content are held: the one handed out and the one in preparation).
    """

    def __init__(self) -> None:
        self._files: deque[ReadyFile] = deque()
        self._closed = False
        # One event per waiting worker, woken one per file: with thousands of workers (a
        # --cluster run's slots) a shared event would wake them all for every batch.
        self._waiters: deque[anyio.Event] = deque()
        self._emptied = anyio.Event()
        self._emptied.set()

    async def put(self, files: Iterable[ReadyFile]) -> None:
        await self._emptied.wait()
        self._files.extend(files)
        if self._files:
            self._emptied = anyio.Event()
            self._wake(len(self._files))

    async def get(self) -> ReadyFile | None:
        """The next file, or None once the hand-out is closed and empty."""
        while not self._files:
            if self._closed:
                return None
            waiter = anyio.Event()
            self._waiters.append(waiter)
            await waiter.wait()
        ready = self._files.popleft()
        if not self._files:
            self._emptied.set()
        return ready

    def _wake(self, count: int) -> None:
        while count > 0 and self._waiters:
            self._waiters.popleft().set()
            count -= 1

    def close(self) -> None:
        """No more batches: the workers end once the files handed out are taken."""
        self._closed = True
        self._wake(len(self._waiters))

    def __enter__(self) -> _Handout:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class _FileEvents:
    """Carries one upload's progress to the reporter, the tally and the journal."""

    def __init__(self, run: TreeUpload, entry: FileEntry) -> None:
        self._run = run
        self._entry = entry
        self._relative = entry.relative
        self.request_id: str | None = None
        self.offset = 0
        self.attempts = 1
        self._digests = bytearray()  # 32 bytes per 4 MiB block the server holds
        self.digests = b""  # what the journal gets: all of it, at longer intervals past 2 KiB
        #: Bytes the server accepted from this run: each rise of its offset (after a restart,
        #: which starts over from 0, the whole new offset), not what an earlier run left.
        self.accepted = 0
        self._server_offset = 0
        self._heard = False

    def _server_at(self, offset: int) -> None:
        rise = offset - self._server_offset
        self.accepted += rise if rise > 0 else offset if rise < 0 else 0
        self._server_offset = offset
        self._heard = True

    def completed(self) -> None:
        """The server holds the whole file (its last reply need not carry an offset)."""
        self._server_at(self._entry.size)

    def bytes_confirmed(self, n: int) -> None:
        # The reporter follows offsets, which also go back when a file restarts; the tuner
        # counts what the server confirmed.
        self._run._bytes_confirmed += n

    def offset_confirmed(self, request_id: str, offset: int) -> None:
        self._server_at(offset)
        self.request_id, self.offset = request_id, offset
        self._run._reporter.bytes_done(self._relative, offset)
        journal = self._run._journal
        if journal is not None and offset < self._entry.size:
            journal.note(
                journal_record(
                    self._entry,
                    FileState.PARTIAL,
                    request_id=request_id,
                    offset=offset,
                    digests=self.digests,
                    attempts=self.attempts,
                )
            )

    def retrying(self, error: errors.BulkdriveError, attempt: int, wait: float) -> None:
        self.attempts = attempt + 1
        if _is_pushback(error):
            self._run._pushbacks += 1
        log.warning("retrying %s in %.1fs (attempt %d): %s", self._relative, wait, attempt, error)
        self._run._tally.retried()
        self._run._reporter.file_retrying(self._relative, str(error), attempt, wait)

    def block_confirmed(self, index: int, digest: bytes) -> None:
        del self._digests[index * 32 :]
        self._digests += digest
        size = len(self._digests)
        # A copy per block while small; past 64 blocks one per 64, so that a huge file's
        # digests are not copied once per chunk (quadratic) for the journal.
        if size <= DIGESTS_COPIED_EACH_BLOCK or size % DIGESTS_COPIED_EACH_BLOCK == 0:
            self.digests = bytes(self._digests)

    def resumed(self, offset: int) -> None:
        if not self._heard:  # the session was left by an earlier run: not sent now
            self._server_offset = offset
        self._run._tally.resumed()
        self._run._reporter.file_resumed(self._relative, offset)


async def upload_tree(
    client: EdgeDriveClient,
    source: Path,
    remote_folder: str = "\\",
    *,
    filters: WalkFilters | None = None,
    config: TransferConfig | None = None,
    reporter: Reporter | None = None,
    journal: Journal | None = None,
) -> RunSummary:
    """Upload every file under `source` into `remote_folder` of the client's share, with the
    client's TransferConfig unless `config` is given."""
    plan = RunPlan(
        source=source,
        remote_folder=remote_folder,
        filters=filters or WalkFilters(),
        config=config or client.config,
    )
    return await TreeUpload(client, plan, reporter=reporter, journal=journal).run()
