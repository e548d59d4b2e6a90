"""The run: one task group, the walker the only producer into a bounded backlog, at most
`transfers` file uploads in flight.

    walk ──(bounded stream: backlog)──▶ dispatcher ──(hand-out: one batch)──▶ worker × transfers

Remote folders are created as the walk finds them, concurrently and ahead of their files
(`remote_folders`). The dispatcher (`dispatch`) decides what to skip (journal, remote listing),
and stops handing out files as soon as a run-level error (wrong credentials, no permission,
unknown share, quota) is seen; files in flight then end on their own. Each file's events go
through `file_events`, its end through `outcomes`; `--transfers auto` is `auto_transfers`.
When the backlog is full the walker blocks, so memory stays flat however large the tree: file
data ≤ transfers × 2 × chunk_size, plus the backlog, plus a constant.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream

from bulkdrive import errors
from bulkdrive.auto_transfers import AutoTransfers
from bulkdrive.client import EdgeDriveClient
from bulkdrive.config import TransferConfig
from bulkdrive.dispatch import DISPATCH_BATCH, Chosen, Dispatcher, Handout, next_batch
from bulkdrive.engine_batches import EngineBatches, FileEngine
from bulkdrive.file_events import EventSinks, FileEvents, RunCounters
from bulkdrive.journal import Journal
from bulkdrive.names import InvalidNames, check_name, remote_name
from bulkdrive.outcomes import RunOutcomes
from bulkdrive.progress import NullReporter, Reporter
from bulkdrive.protocol import UploadReply, mtime_seconds
from bulkdrive.remote_folders import RemoteFolders, RemotePaths, name_of
from bulkdrive.report import FileOutcome, FileReportWriter, RunSummary, RunTally
from bulkdrive.resume import ReadyFile
from bulkdrive.source import ChunkBuffers, LocalContent
from bulkdrive.upload import ResumePoint, UploadResult, upload_file
from bulkdrive.walk import FileEntry, FolderEntry, WalkFilters, WalkItem, count_files, walk

#: Under an engine a dispatched batch goes out whole: up to `engine.batch_files` files (one
#: journal read and commit each; the engine says how many, batch by batch), gathered from
#: the backlog for at most `ENGINE_LINGER` seconds; the backlog holds two of its largest.
ENGINE_LINGER = 0.02

__all__ = ["FileEngine", "RunPlan", "SchedulerStatistics", "TreeUpload", "upload_tree"]


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
    #: Under --transfers auto: what the tuner saw (503/429 answers and requests with no answer
    #: in time, every request's) and did.
    pushbacks: int
    transfers_changes: int
    #: Seconds from the run's start until the count-only pass fixed the totals (None: not yet,
    #: or the upload's own walk finished first).
    total_known_after: float | None = None
    #: Files that found their remote folder still being created, and waited for it.
    files_waited_for_folder: int = 0
    #: The most folder creations that ran at once.
    folders_at_once: int = 0
    #: Times a worker found no file handed out and waited (the dispatcher was behind).
    workers_waited: int = 0


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
        self._reporter = reporter = reporter or NullReporter()
        self._journal = journal
        self._clock = clock
        self._engine = engine
        # Under an engine, room for two of its batches: the walk keeps one ready.
        self._backlog_size = (
            plan.backlog if engine is None else max(plan.backlog, 2 * engine.most_batch_files)
        )
        self._tally = RunTally()
        self._run_error: errors.RunFailed | None = None
        self._interrupted = False
        self._walk_scope = anyio.CancelScope()
        # The tree's files by the count pass, once it is through (`_files_total`).
        self._files_counted: int | None = None
        self._count_scope = anyio.CancelScope()
        self._total_known_after: float | None = None
        self._began = 0.0
        self._run_scope = anyio.CancelScope()
        self._started = 0
        self._in_flight = 0
        self._max_in_flight = 0
        self._max_backlog = 0
        self._backlog_used: Callable[[], int] = lambda: 0
        self._paths = RemotePaths(plan.remote_folder)
        # The chunk buffers of the files in flight, reused from file to file.
        self._buffers = ChunkBuffers(plan.config.chunk_size, most=plan.config.chunks_held)
        self._folders = RemoteFolders(
            client,
            self._paths,
            invalid_names=plan.invalid_names,
            reporter=reporter,
            transfers=plan.config.transfers,
            stop=self._stop,
            stopping=lambda: self._run_error is not None,
        )
        self._counters = RunCounters()
        self._sinks = EventSinks(self._counters, self._tally, reporter, journal)
        self._outcomes = RunOutcomes(
            paths=self._paths,
            tally=self._tally,
            reporter=reporter,
            counters=self._counters,
            journal=journal,
            file_report=file_report,
            save=self._save,
        )
        self._handout = Handout()
        # Only `--invalid-names fail` refuses a name (`check_name`): the others ask nothing.
        self._refuse_invalid_names = plan.invalid_names is InvalidNames.FAIL
        self._batches: EngineBatches | None = None
        if engine is not None:
            self._batches = EngineBatches(
                engine,
                prepare=self._prepare,
                # Only `--invalid-names fail` refuses a name (`check_name`).
                check_name=(
                    (lambda relative: check_name(relative, plan.invalid_names))
                    if plan.invalid_names is InvalidNames.FAIL
                    else None
                ),
                outcomes=self._outcomes,
                sinks=self._sinks,
                reporter=reporter,
                paths=self._paths,
                stop=self._stop,
                stopping=lambda: self._run_error is not None,
                clock=clock,
                journal=journal,
                files_total=self._files_total,
            )
        self._dispatcher = Dispatcher(
            client=client,
            journal=journal,
            paths=self._paths,
            outcomes=self._outcomes,
            reporter=reporter,
            handout=self._handout.put if self._batches is None else self._batches.put,
            dry_run=plan.dry_run,
            check_remote=plan.check_remote,
            # Under an engine the workers read the files; nothing is read ahead here.
            read_ahead=engine is None,
            commit_marks=engine is None,
        )
        # --transfers auto: the limit, and how it moved (fixed otherwise).
        self._auto = AutoTransfers(
            plan.config.transfers,
            reporter=reporter,
            counters=self._counters,
            pushbacks=self._pushbacks,
            clock=clock,
            follow=self._folders.follow_transfers,
            chunk_size=plan.config.chunk_size,
        )

    # --- public --------------------------------------------------------------------------

    @property
    def run_error(self) -> errors.RunFailed | None:
        return self._run_error

    def _pushbacks(self) -> int:
        """The server's push-back the client met so far (`ClientStatistics.pushbacks`)."""
        return 0 if self._client is None else self._client.statistics().pushbacks

    def statistics(self) -> SchedulerStatistics:
        batches = self._batches
        return SchedulerStatistics(
            files_started=self._started if batches is None else batches.started,
            in_flight=self._in_flight if batches is None else batches.in_flight,
            max_in_flight=self._max_in_flight if batches is None else batches.max_in_flight,
            backlog_used=self._backlog_used(),
            max_backlog_used=self._max_backlog,
            backlog_size=self._backlog_size,
            folders_created=self._folders.created,
            would_upload_files=self._dispatcher.would_upload_files,
            would_upload_bytes=self._dispatcher.would_upload_bytes,
            transfers_limit=self._auto.limit,
            pushbacks=self._pushbacks(),
            transfers_changes=self._auto.changes,
            total_known_after=self._total_known_after,
            files_waited_for_folder=self._folders.statistics().files_waited,
            folders_at_once=self._folders.most_at_once,
            workers_waited=self._handout.worker_waits,
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
        send, receive = anyio.create_memory_object_stream[WalkItem](self._backlog_size)
        self._backlog_used = lambda: receive.statistics().current_buffer_used
        # Under --cluster the workers' own limits hold; the coordinator only hands out.
        auto = plan.config.auto_transfers and not plan.dry_run and engine is None

        def dispatch_batch() -> int:
            return DISPATCH_BATCH if engine is None else engine.batch_files

        linger = 0.0 if engine is None else ENGINE_LINGER
        try:
            with self._run_scope:
                async with anyio.create_task_group() as tg:
                    self._folders.start(tg)
                    tg.start_soon(self._walk, send)
                    if not plan.dry_run:
                        tg.start_soon(self._count, started)
                    if self._batches is not None:
                        self._batches.start(tg)
                    # Under an engine, batches go out whole: no per-file workers here.
                    workers = 0 if plan.dry_run or engine is not None else plan.config.transfers
                    if auto:
                        tg.start_soon(self._auto.tune, self._auto.start(workers, started))
                    for _ in range(workers):
                        if auto:
                            tg.start_soon(self._auto.worker, self._handout.get, self._start)
                        else:
                            tg.start_soon(self._worker)
                    # The dispatcher's two stages work side by side: a batch is chosen
                    # (journal) while the one before is read and committed, then handed out.
                    # The stages meet without a buffer: one batch in each, one handed out.
                    chosen, to_hand_out = anyio.create_memory_object_stream[list[Chosen]](0)
                    tg.start_soon(self._hand_out, to_hand_out)
                    with receive, chosen:
                        await self._folders.ensure_root(create=not plan.dry_run)
                        while self._run_error is None:
                            self._max_backlog = max(self._max_backlog, self._backlog_used())
                            batch = await next_batch(receive, dispatch_batch(), linger)
                            if not batch:
                                break
                            try:
                                files = await self._dispatcher.choose(batch)
                                if files:
                                    await chosen.send(files)
                            except errors.RunFailed as exc:
                                self._stop(exc)
                            except anyio.BrokenResourceError:
                                break  # the hand-out stopped the run
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
                summary = replace(summary, transfers=self._auto.used(started, ended))
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
            self._files_counted = counted[0]
            self._reporter.totals_counted(*counted)

    def _files_total(self) -> int | None:
        """The tree's files, once known: what the walk found once it is through, else what
        the count pass found (the tree may change meanwhile: an estimate)."""
        walked = self._tally.files_walked
        return walked if walked is not None else self._files_counted

    async def _walk(self, send: anyio.abc.ObjectSendStream[WalkItem]) -> None:
        on_folder = None if self._plan.dry_run else self._folder_found
        with self._walk_scope:
            try:
                stats = await walk(
                    self._plan.source,
                    self._plan.filters,
                    send,
                    on_file=self._found,
                    on_folder=on_folder,
                )
            finally:
                self._folders.close()  # no more folders: the creators end when done
            self._tally.filtered(stats.filtered)
        self._count_scope.cancel()  # the walk is through: the count can tell no more
        if not self._walk_scope.cancel_called:  # a stopped walk's total is not the tree's
            self._tally.total_known(self._clock() - self._began)
            self._tally.walk_finished()
            self._reporter.walk_finished()

    async def _hand_out(self, chosen: MemoryObjectReceiveStream[list[Chosen]]) -> None:
        """The dispatcher's second stage, beside the first: each chosen batch read, committed
        and handed out (to the workers, or to the engine); the workers end when it does."""
        with chosen, self._handout:
            async for files in chosen:
                try:
                    await self._dispatcher.hand_out(files)
                except errors.RunFailed as exc:
                    self._stop(exc)
                    return

    def _folder_found(self, entry: FolderEntry) -> None:
        self._folders.found(entry.relative)

    # --- the workers ---------------------------------------------------------------------

    async def _worker(self) -> None:
        """One of `transfers` workers: uploads the files handed to it, one at a time (what
        `_start` does, without its coroutine: once per file)."""
        get = self._handout.get
        while (ready := await get()) is not None:
            if self._begin():
                await self._upload(*ready)

    async def _start(self, ready: ReadyFile) -> None:
        """One file, for `--transfers auto`'s workers."""
        if self._begin():
            await self._upload(*ready)

    def _begin(self) -> bool:
        """A file about to start, counted in flight; False when the run is stopping (then
        nothing new starts)."""
        if self._run_error is not None:
            return False
        self._started += 1
        self._in_flight += 1
        if self._in_flight > self._max_in_flight:
            self._max_in_flight = self._in_flight
        return True

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
        events = FileEvents(self._sinks, entry)
        self._reporter.file_started(relative, entry.size)
        outcomes = self._outcomes
        outcome: FileOutcome | None = None
        try:
            if not await self._prepare(entry, stale, events, began):
                return
            result = await self._send(entry, events, content, resume, known)
        except errors.BulkdriveError as exc:
            if isinstance(exc, errors.RunFailed):
                self._stop(exc)
            outcome = await outcomes.failed(entry, exc, events, self._clock() - began)
        except Exception as exc:  # a bug must cost one file, not the run
            outcome = await outcomes.failed(entry, exc, events, self._clock() - began)
        else:
            events.completed()
            outcome = await outcomes.succeeded(entry, result, events, self._clock() - began)
        finally:
            self._in_flight -= 1
            if outcome is None:  # interrupted: what the server accepted still counts
                self._tally.sent_by_unfinished(events.accepted)
        outcomes.finish(outcome)
        self._dispatcher.ended(relative)

    async def _prepare(
        self, entry: FileEntry, stale: bool, events: FileEvents, began: float
    ) -> bool:
        """A file's checks before its first byte goes: its name, its folder created, an old
        version's session discarded (then the file is marked in flight). False when the file
        already ended here (its outcome told); raises what the file fails with."""
        relative = entry.relative
        if self._refuse_invalid_names:
            check_name(relative, InvalidNames.FAIL)
        folder_error = await self._folders.wait_for_folder_of(relative)
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
                outcomes = self._outcomes
                outcomes.finish(
                    await outcomes.failed(
                        entry, exc, events, self._clock() - began, journaled=False
                    )
                )
                return False
            await self._dispatcher.mark_started(entry, None)
            if self._journal is not None:
                await self._journal.flush()
        return True

    def _send(
        self,
        entry: FileEntry,
        events: FileEvents,
        content: LocalContent | None,
        resume: ResumePoint | None,
        known: bytes,
    ) -> Awaitable[UploadResult]:
        """The file's bytes, from this process (the upload itself, awaited by the caller: a
        coroutine less for each of its requests to pass through)."""
        assert self._client is not None
        folder = self._paths.folder_of(entry.relative)
        name = remote_name(name_of(entry.relative))
        return upload_file(
            self._client,
            entry.path,
            folder,
            remote_name=name,
            config=self._plan.config,
            events=events,
            content=content,
            resume=resume,
            known_digests=known,
            buffers=self._buffers,
        )

    async def _discard_stale_session(self, entry: FileEntry) -> None:
        """The last run left this file unfinished, and it changed since: an unfinished session
        on the server holds the old version's first bytes. Continuing it (a 409 gives no way
        to tell) would store a mix of both versions when nothing checks integrity, so discard
        it: a forceRestart initiate replaces it with an empty session at offset 0."""
        assert self._client is not None
        client = self._client
        folder = self._paths.folder_of(entry.relative)

        def discard() -> Awaitable[UploadReply]:
            # Safe to repeat: each one discards whatever the server holds for this file.
            return client.initiate(
                name=remote_name(name_of(entry.relative)),
                folder=folder,
                size=entry.size,
                mtime=mtime_seconds(entry.mtime_ns),
                body=b"",
                eof=False,
                verify=self._plan.config.verify,
                force_restart=True,
            )

        what = f"discard the old session of {self._paths.path_of(entry.relative)}"
        await client.repeat(discard, what)

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
