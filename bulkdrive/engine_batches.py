"""The run's batch path, under an engine (`--cluster`): each batch the dispatcher hands out
goes to the engine whole, and its files' ends come back together.

    dispatcher ──(a batch, its files marked in flight and committed)──▶ engine.upload_batch
               ◀── each file's result or error, its events replayed ──

The coordinator then holds one task per batch out (at most `engine.batches`; the dispatcher,
and so the walk, wait for a free one), not one per file: no per-file task, future or event
object. Each file is still checked (name, folder created, an old version's session discarded)
and accounted (journal, tally, progress, report line) exactly as on one machine.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import NamedTuple, Protocol

import anyio
import anyio.abc

from bulkdrive import errors
from bulkdrive.file_events import EventSinks, FileEvents
from bulkdrive.journal import Journal
from bulkdrive.names import remote_name
from bulkdrive.outcomes import Completed, Done, RunOutcomes
from bulkdrive.progress import Reporter
from bulkdrive.remote_folders import RemotePaths
from bulkdrive.report import FileOutcome, RunSummary
from bulkdrive.resume import ReadyFile
from bulkdrive.session import ResumePoint
from bulkdrive.upload import UploadEvents
from bulkdrive.walk import FileEntry


class EngineFile(NamedTuple):
    """A file handed to an engine: where it goes, and what the journal knew of it."""

    entry: FileEntry
    remote_folder: str
    remote_name: str
    resume: ResumePoint | None
    known_digests: bytes


#: The events of the i-th file of a batch, made when first asked for.
EventsOf = Callable[[int], UploadEvents]


class FileEngine(Protocol):
    """Where the files' uploads run when not in this process (`--cluster`).

    `upload_batch` uploads a batch of the walk's files and tells the i-th file's `events(i)`
    what `upload_file` would have told them, beyond its end (a file that only completed has
    nothing to tell: most files, and no events object is made for them); it returns, in
    order, each file's result or the error it ended with (a file's error is never raised).
    `left` is how many files of the tree are still to go out after these, when the run
    knows (an upper bound): the last batches may go out in smaller pieces.
    At most `batches` batches of at most `batch_files` files are out at once; `summarize`
    adds the engine's own figures to the run's summary."""

    batches: int

    @property
    def batch_files(self) -> int:
        """Files the run hands over at most in its next batch."""
        ...

    @property
    def most_batch_files(self) -> int:
        """The most `batch_files` says."""
        ...

    async def upload_batch(
        self, files: Sequence[EngineFile], events: EventsOf, left: int | None = None
    ) -> list[Completed | Exception]: ...

    def summarize(self, summary: RunSummary) -> RunSummary: ...


#: A file's checks before it goes (name, folder, an old version's session): False when it
#: already ended (its outcome told); raises what the file fails with.
Prepare = Callable[[FileEntry, bool, FileEvents, float], Awaitable[bool]]


class EngineBatches:
    """The hand-out under an engine: `put` a dispatched batch, it goes out as one."""

    def __init__(
        self,
        engine: FileEngine,
        *,
        prepare: Prepare,
        check_name: Callable[[str], None] | None,
        outcomes: RunOutcomes,
        sinks: EventSinks,
        reporter: Reporter,
        paths: RemotePaths,
        stop: Callable[[errors.RunFailed], None],
        stopping: Callable[[], bool],
        clock: Callable[[], float],
        journal: Journal | None,
        files_total: Callable[[], int | None] = lambda: None,
    ) -> None:
        self._engine = engine
        #: The tree's files, once the run knows.
        self._files_total = files_total
        self._journal = journal
        self._prepare = prepare
        self._check_name = check_name
        self._outcomes = outcomes
        self._sinks = sinks
        self._reporter = reporter
        self._paths = paths
        self._stop = stop
        self._stopping = stopping
        self._clock = clock
        self._slots = anyio.Semaphore(max(1, engine.batches))
        self._task_group: anyio.abc.TaskGroup | None = None
        self.started = 0
        self.in_flight = 0
        self.max_in_flight = 0

    def start(self, task_group: anyio.abc.TaskGroup) -> None:
        self._task_group = task_group

    async def put(self, ready: list[ReadyFile]) -> None:
        """The dispatcher's hand-out: returns once the batch is out (it waits for a slot).
        The batch's files are marked in flight in the journal, in one mark for the batch
        (a file whose old version's session is to be discarded first is marked on its own,
        after that); the mark is committed before its first file goes, while the dispatcher
        goes on with the next batch, and deleted once the files' ends are recorded."""
        assert self._task_group is not None
        journal = self._journal
        mark = 0
        if journal is not None:
            marked = [(e.relative, e.size, e.mtime_ns) for e, stale, _, _, _ in ready if not stale]
            if marked:
                mark = await journal.mark_in_flight(marked)
        await self._slots.acquire()
        try:
            self._task_group.start_soon(self._send, ready, mark)
        except BaseException:
            self._slots.release()
            raise

    async def _send(self, ready: list[ReadyFile], mark: int) -> None:
        journal = self._journal
        try:
            files, made = await self._checked(ready)
            if files:
                if journal is not None and mark:
                    # The in-flight mark is on disk before any of these files goes (a stale
                    # file, not in it, was marked and committed on its own in `_checked`).
                    await journal.flush_mark(mark)
                await self._upload(files, made)
            if journal is not None and mark:
                # Every file's end is queued: the mark goes with them (or after). A batch
                # cut short leaves its mark, for the next run to ask the server.
                journal.unmark(mark)
        finally:
            self._slots.release()

    def _left(self) -> int | None:
        """Files of the tree still to go out after those started so far, once the run knows
        its total (an upper bound: files the journal skips count as still to go)."""
        total = self._files_total()
        return None if total is None else max(0, total - self.started)

    async def _checked(
        self, ready: list[ReadyFile]
    ) -> tuple[list[EngineFile], dict[int, FileEvents]]:
        """The batch's files that may go, each started as one process starts it, and the
        events made so far (by index in the files that go).

        A file's full check (`prepare`) waits for its folder; the files after it in the same
        folder (the walk sends them together) need only their name checked once it passed."""
        began = self._clock()
        outcomes = self._outcomes
        files: list[EngineFile] = []
        made: dict[int, FileEvents] = {}
        checked_parent: str | None = None  # the folder whose files passed `prepare`
        remote_folder = ""
        check_name = self._check_name
        file_started = self._reporter.file_started
        stopping = self._stopping
        started = 0
        for entry, stale, _content, resume, digests in ready:
            if stopping():
                break  # the run is stopping: start nothing new
            started += 1
            relative = entry.relative
            file_started(relative, entry.size)
            parent, _, name = relative.rpartition("/")
            events: FileEvents | None = None
            try:
                if stale or parent != checked_parent:
                    checked_parent = None
                    events = FileEvents(self._sinks, entry)
                    if not await self._prepare(entry, stale, events, began):
                        continue
                    if not stale:
                        checked_parent = parent
                    remote_folder = self._paths.folder_of(relative)
                elif check_name is not None:
                    check_name(relative)
            except Exception as exc:
                if isinstance(exc, errors.RunFailed):
                    self._stop(exc)
                events = events or FileEvents(self._sinks, entry)
                outcomes.finish(await outcomes.failed(entry, exc, events, self._clock() - began))
                continue
            if events is not None:
                made[len(files)] = events
            files.append(EngineFile(entry, remote_folder, remote_name(name), resume, digests))
        self.started += started
        return files, made

    async def _upload(self, files: list[EngineFile], made: dict[int, FileEvents]) -> None:
        began = self._clock()
        sinks = self._sinks

        def events_of(index: int) -> FileEvents:
            events = made.get(index)
            if events is None:
                events = made[index] = FileEvents(sinks, files[index].entry)
            return events

        self.in_flight += len(files)
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            results = await self._engine.upload_batch(files, events_of, self._left())
        finally:
            # Interrupted: nothing of these files was accounted yet, nothing is told.
            self.in_flight -= len(files)
        seconds = self._clock() - began
        outcomes = self._outcomes
        failed: list[FileOutcome] = []
        done: list[Done] = []
        for index, (file, result) in enumerate(zip(files, results, strict=True)):
            entry, folder, name, _, _ = file
            if isinstance(result, Exception):
                if isinstance(result, errors.RunFailed):
                    self._stop(result)
                failed.append(await outcomes.failed(entry, result, events_of(index), seconds))
                continue
            events = made.get(index) if made else None
            if events is None:
                accepted = entry.size  # told nothing but its end: all of it sent now
            else:
                events.completed()
                accepted = events.accepted
            # The file's remote path, as `RemotePaths.path_of` spells it.
            done.append((entry, result, accepted, ("" if folder == "\\" else folder) + "\\" + name))
        # The batch's DONE records in one journal call, each file's outcome told.
        await outcomes.completed_many(done, seconds)
        finish = outcomes.finish
        for outcome in failed:
            finish(outcome)
