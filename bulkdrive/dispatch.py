"""The dispatcher: walk items in batches from the backlog; what to skip (journal, server);
the in-flight marks; the small files read ahead; the hand-out to the workers.

A batch costs one journal read, one read of all its small files and one journal commit,
rather than a thread hop each per file.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING

import anyio
import anyio.lowlevel
from anyio.streams.memory import MemoryObjectReceiveStream

from bulkdrive import errors
from bulkdrive.client import EdgeDriveClient
from bulkdrive.config import SMALL_FILE_BATCH, SMALL_FILE_READ_AHEAD
from bulkdrive.journal import FileRecord, FileState, Journal
from bulkdrive.names import remote_name
from bulkdrive.outcomes import RunOutcomes
from bulkdrive.progress import Reporter
from bulkdrive.remote_folders import RemotePaths, name_of
from bulkdrive.report import FileOutcome, Outcome
from bulkdrive.resume import (
    SKIP_ON_SERVER,
    SKIP_UNCHANGED,
    ReadyFile,
    is_stale,
    journal_record,
    ready_file,
    was_in_flight,
)
from bulkdrive.source import InlineReads, LocalContent
from bulkdrive.upload import read_small_files
from bulkdrive.walk import FileEntry, SkippedEntry, WalkFailure, WalkItem

if TYPE_CHECKING:
    from bulkdrive.check import Version

#: Walk items handed out together: one journal read, one read of the small files and one
#: journal commit serve them all.
DISPATCH_BATCH = SMALL_FILE_BATCH
#: Remote folder listings kept for --check-remote; files arrive grouped by folder.
_LISTINGS_KEPT = 4
#: While a batch lingers, how often it looks at the backlog again.
_LINGER_STEP = 0.002


async def next_batch(
    receive: MemoryObjectReceiveStream[WalkItem], most: int = DISPATCH_BATCH, linger: float = 0.0
) -> list[WalkItem]:
    """Wait for one walk item, then take what else the backlog holds, up to `most` files;
    with a `linger`, wait up to that many seconds for the batch to fill (a batch that goes
    whole to a cluster is worth its size).

    Folders, skips and walk failures come along without counting (up to `most` of them too):
    a batch costs its stages the same waits whatever it holds, and a tree's batches of 64
    items held only ~54 files (one folder per ~5.6 files), so a tree was dispatched ~15 %
    slower per file than a flat folder."""
    try:
        first = await receive.receive()
    except anyio.EndOfStream:
        return []
    batch = [first]
    files = int(isinstance(first, FileEntry))
    deadline = anyio.current_time() + linger if linger > 0 else 0.0
    while files < most and len(batch) - files < most:
        try:
            item = receive.receive_nowait()
        except anyio.WouldBlock:
            if anyio.current_time() >= deadline:
                break
            await anyio.sleep(min(_LINGER_STEP, linger))
            continue
        except anyio.EndOfStream:
            break
        batch.append(item)
        files += isinstance(item, FileEntry)
    return batch


#: A file of a dispatched batch: its walk entry, whether the journal holds an older version's
#: unfinished session (stale), and its journal record.
Chosen = tuple[FileEntry, bool, FileRecord | None]


async def _read_small_files(paths: list[str], into: list[LocalContent | None]) -> None:
    into.extend(await anyio.to_thread.run_sync(read_small_files, paths, SMALL_FILE_READ_AHEAD))


class _MarkedBatch:
    """A batch's mark in the journal, and how many of its files have not ended yet."""

    __slots__ = ("left", "mark")

    def __init__(self, mark: int, left: int) -> None:
        self.mark = mark
        self.left = left


class Handout:
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
        # One future per waiting worker, woken one per file: with thousands of workers (a
        # --cluster run's slots) a shared event would wake them all for every batch. The
        # event loop's own futures, not `anyio.Event`s: nearly every small file is taken
        # after a wait (transfers outnumber a batch's files), and an Event's wait, built on a
        # future of its own, cost ~3 µs more per file (a tenth of the hand-out's CPU).
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None  # the workers' loop, once one waits
        self._emptied = anyio.Event()
        self._emptied.set()
        #: Times a worker found the hand-out empty and waited for a batch (a dispatcher
        #: behind its workers), and times the dispatcher waited for a batch to be taken.
        self.worker_waits = 0
        self.put_waits = 0

    async def put(self, files: Iterable[ReadyFile]) -> None:
        if not self._emptied.is_set():
            self.put_waits += 1
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
            self.worker_waits += 1
            loop = self._loop
            if loop is None:
                # Asked once: each `get_running_loop` costs a getpid system call (asyncio's
                # check for a fork), and nearly every small file is taken after a wait.
                loop = self._loop = asyncio.get_running_loop()
            waiter = loop.create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                # Cancelled (the run is stopping), or cancelled after a wake-up that this
                # worker will not use: hand that wake-up to the next waiter.
                if waiter.done() and not waiter.cancelled():
                    self._wake(1)
                raise
        ready = self._files.popleft()
        if not self._files:
            self._emptied.set()
        return ready

    def _wake(self, count: int) -> None:
        waiters = self._waiters
        while count > 0 and waiters:
            waiter = waiters.popleft()
            if not waiter.done():  # not cancelled while it waited
                waiter.set_result(None)
                count -= 1

    def close(self) -> None:
        """No more batches: the workers end once the files handed out are taken."""
        self._closed = True
        self._wake(len(self._waiters))

    def __enter__(self) -> Handout:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class Dispatcher:
    """Decides, batch by batch, what each file of the walk needs: skipped (with the reason),
    listed for a dry run, or marked in flight and handed out."""

    def __init__(
        self,
        *,
        client: EdgeDriveClient | None,
        journal: Journal | None,
        paths: RemotePaths,
        outcomes: RunOutcomes,
        reporter: Reporter,
        handout: Callable[[list[ReadyFile]], Awaitable[None]],
        dry_run: bool,
        check_remote: bool,
        read_ahead: bool,
        commit_marks: bool = True,
        reads: InlineReads | None = None,
    ) -> None:
        self._client = client
        self._journal = journal
        self._paths = paths
        self._outcomes = outcomes
        self._reporter = reporter
        self._handout = handout
        self._dry_run = dry_run
        self._check_remote = check_remote
        self._read_ahead = read_ahead
        #: False: the hand-out marks the batch's files in flight itself (one mark for the
        #: batch, `Journal.mark_in_flight`) and commits it before their first request, and
        #: the dispatcher goes on with the next batch.
        self._commit_marks = commit_marks
        self._listings: OrderedDict[str, dict[str, Version]] = OrderedDict()
        #: The marked batch of each file handed out and not ended yet.
        self._marked: dict[str, _MarkedBatch] = {}
        #: Small files read ahead (tests hand in theirs, with its own policy).
        self._reads = reads if reads is not None else InlineReads(SMALL_FILE_READ_AHEAD)
        self.would_upload_files = 0
        self.would_upload_bytes = 0

    async def choose(self, batch: list[WalkItem]) -> list[Chosen]:
        """The first stage: what each item of a batch needs. Folders were sent to be created
        when the walk found them; skips and walk failures end here; the files to upload are
        looked up in the journal (one read for the batch) and marked in flight (queued, one
        call for the batch). What is left goes to `hand_out`."""
        files: list[FileEntry] = []
        for item in batch:
            if isinstance(item, FileEntry):
                files.append(item)
            elif isinstance(item, SkippedEntry):
                self._outcomes.finish(
                    FileOutcome(
                        relative=item.relative,
                        remote_path=self._paths.path_of(item.relative),
                        size=0,
                        outcome=Outcome.SKIPPED,
                        reason=item.reason,
                        skip_kind=item.kind,
                    )
                )
            elif isinstance(item, WalkFailure):
                self._outcomes.finish(
                    FileOutcome(
                        relative=item.relative,
                        remote_path=self._paths.path_of(item.relative),
                        size=0,
                        outcome=Outcome.FAILED,
                        reason=item.reason,
                        exit_class=item.error.__name__,
                        hint=item.error.hint,
                    )
                )
            # A FolderEntry: its creation started when the walk found it.
        if not files:
            return []
        records: dict[str, FileRecord] = {}
        if self._journal is not None:
            records = await self._journal.lookup_many((f.relative for f in files), first_look=True)
        chosen: list[Chosen] = []
        marked: list[tuple[str, int, int]] = []  # in flight: one journal mark for the batch
        journaled = self._journal is not None
        if not records and not self._check_remote and not self._dry_run:
            # Nothing known of these files and nothing to ask (every batch of a first run):
            # each goes, as the loop below would send it (no skip, not stale, never in flight
            # before), without its calls per file. Under an engine the batch is marked there.
            if journaled and self._commit_marks:
                await self._mark([(entry.relative, entry.size, entry.mtime_ns) for entry in files])
            return [(entry, False, None) for entry in files]
        for entry in files:
            record = records.get(entry.relative)
            skip = await self._skip_reason(entry, record)
            if skip is not None:
                reason, kind = skip
                self._outcomes.finish(
                    self._outcomes.outcome(entry, Outcome.SKIPPED, reason=reason, skip_kind=kind)
                )
            elif self._dry_run:
                self.would_upload_files += 1
                self.would_upload_bytes += entry.size
                self._reporter.message(f"would upload {entry.relative} ({entry.size} bytes)")
            else:
                stale = is_stale(record, entry)
                if (
                    not stale
                    and journaled
                    and self._commit_marks
                    and not was_in_flight(record, entry)
                ):
                    marked.append((entry.relative, entry.size, entry.mtime_ns))
                chosen.append((entry, stale, record))
        if marked:
            await self._mark(marked)
        return chosen

    async def _mark(self, marked: list[tuple[str, int, int]]) -> None:
        """The batch's files (relative, size, mtime_ns) marked in flight in one row (a PENDING
        record each cost a fifth of a small file's CPU: a row written, and rewritten at its
        end), committed before their first request (`hand_out`), deleted once every one of
        them has ended (`ended`). A run killed before that leaves the mark: the next one reads
        it as a PENDING record of each file that has no newer one."""
        assert self._journal is not None
        mark = _MarkedBatch(await self._journal.mark_in_flight(marked), len(marked))
        for relative, _, _ in marked:
            self._marked[relative] = mark

    def ended(self, relative: str) -> None:
        """The file's end is recorded (queued in the journal): its batch's mark goes once
        every file of the batch has ended, committed with their records or after them."""
        batch = self._marked.pop(relative, None)
        if batch is not None:
            batch.left -= 1
            if batch.left == 0 and self._journal is not None:
                self._journal.unmark(batch.mark)

    async def hand_out(self, chosen: list[Chosen]) -> None:
        """The second stage: the small files read (on the event loop while that is quick, the
        rest in one thread hop while the in-flight marks are committed), then the files handed
        out. In a run it works beside `choose` (the scheduler's `_hand_out`): each stage waits
        on a worker thread, and one after the other they took longer than the workers took to
        send a batch of small files (measured: all workers idle for 6-22 % of a run)."""
        small = (
            [e for e, stale, _ in chosen if not stale and e.size <= SMALL_FILE_READ_AHEAD]
            if self._read_ahead
            else []
        )
        read: list[LocalContent | None] = []
        paths = [e.path for e in small]
        inline = self._reads.read(paths, read)
        failure: errors.RunFailed | None = None
        async with anyio.create_task_group() as tg:
            if inline < len(paths):
                self._reads.files_in_thread += len(paths) - inline
                tg.start_soon(_read_small_files, paths[inline:], read)
            if self._journal is not None and self._commit_marks:
                # The in-flight marks are on disk before the first request of these files.
                try:
                    await self._journal.flush()
                except errors.RunFailed as exc:
                    failure = exc
        if failure is not None:
            raise failure
        # A stop (SIGINT) can cancel the read before its thread starts while the commit, under
        # its shield, runs on: the read is then missing, and this is the place to stop too.
        await anyio.lowlevel.checkpoint_if_cancelled()
        contents = {e.relative: c for e, c in zip(small, read, strict=True)}
        await self._handout(
            [
                ready_file(entry, stale, contents.get(entry.relative), record)
                if record is not None
                # What ready_file makes of a file the journal does not know, without its call.
                else ReadyFile(entry, stale, contents.get(entry.relative), None, b"")
                for entry, stale, record in chosen
            ]
        )

    @property
    def files_read_inline(self) -> int:
        return self._reads.files_inline

    @property
    def files_read_in_thread(self) -> int:
        return self._reads.files_in_thread

    async def mark_started(self, entry: FileEntry, record: FileRecord | None) -> None:
        """Queue a record that the file is in flight, committed before its first request.

        If the run is killed after the server completed the file but before its DONE record
        was committed, the re-run finds the mark and asks the server (`_completed_remotely`)
        instead of sending the file again."""
        if self._journal is None or was_in_flight(record, entry):
            return
        await self._journal.record(journal_record(entry, FileState.PENDING))

    async def _skip_reason(
        self, entry: FileEntry, record: FileRecord | None
    ) -> tuple[str, str] | None:
        """Why to skip the file, and the kind of reason; None to upload it."""
        if record is not None:
            if record.is_done_for(entry.size, entry.mtime_ns):
                return "unchanged since the last run (journal)", SKIP_UNCHANGED
            if was_in_flight(record, entry) and await self._completed_remotely(entry):
                return "completed on the server before the last run stopped", SKIP_ON_SERVER
        if self._check_remote:
            # `check` (the `bulkdrive check` command's comparison, and its listing) is
            # imported only by the runs that compare: ~10 ms of every upload's start.
            from bulkdrive.check import Version, difference

            listing = await self._remote_listing(self._paths.folder_of(entry.relative))
            remote = listing.get(remote_name(name_of(entry.relative)))
            if difference(Version.local(entry.size, entry.mtime_ns), remote) is None:
                return "the server has it already (same size and modified time)", SKIP_ON_SERVER
        return None

    async def _completed_remotely(self, entry: FileEntry) -> bool:
        """A file in flight when the last run stopped may have completed after its last
        journal commit: the server says whether it holds it whole (then it is recorded done)."""
        if self._client is None:
            return False
        from bulkdrive.check import Version, difference  # a resumed run only (see above)

        try:
            resource = await self._client.metadata(self._paths.path_of(entry.relative))
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
        if self._journal is not None and not self._dry_run:
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
        from bulkdrive.check import Version

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
