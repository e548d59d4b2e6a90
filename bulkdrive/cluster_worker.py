"""`--cluster`, the worker side: `upload_batch` is the Dask task, a coroutine on the worker's
event loop.

Each worker process keeps one client per run (a module cache keyed by the run id), on the
worker's own event loop (uvloop for the workers `--cluster local:N` starts), and uploads its
batch with `bulkdrive.upload.upload_file` at
most `transfers` files at once per process (§8 recovery, integrity, retries as on one
machine). A batch that Dask runs again (its worker died) first asks the server about each
file: a file it holds whole is not sent again, a partial one continues from the server's
offset (its session answers the initiate with 409). Every file's end travels back as data
(`FileReport`), with the events the coordinator replays into its accounting.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import anyio
import distributed

from bulkdrive import errors
from bulkdrive.client import EdgeDriveClient
from bulkdrive.cluster_wire import (
    CANCELLED,
    Batch,
    BatchFile,
    BatchReport,
    FileReport,
    WorkerAccess,
    batch_key,
    marker_name,
    plugin_name,
)
from bulkdrive.config import SMALL_FILE_BATCH, SMALL_FILE_READ_AHEAD
from bulkdrive.protocol import mtime_seconds
from bulkdrive.session import ResumePoint
from bulkdrive.source import ChunkBuffers, InlineReads, LocalContent
from bulkdrive.upload import upload_file
from bulkdrive.work_queue import WorkQueue


class _Recorder:
    """A file's upload events, kept compactly for the coordinator to replay."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []
        self.request_id: str | None = None
        self.digests = bytearray()
        self.accepted = 0
        self._server_offset = 0
        self._heard = False
        self._rising = True

    def _offset(self, offset: int) -> None:
        rise = offset - self._server_offset
        self.accepted += rise if rise > 0 else offset if rise < 0 else 0
        last = self.events[-1] if self.events else None
        if last is not None and last[0] == "offset" and offset >= last[1] and self._rising:
            self.events[-1] = ("offset", offset)  # still rising: only the top matters
        else:
            self._rising = last is None or last[0] != "offset" or offset >= last[1]
            self.events.append(("offset", offset))
        self._server_offset = offset
        self._heard = True

    def completed(self, size: int) -> None:
        """The server holds the whole file (its last reply need not carry an offset)."""
        rise = size - self._server_offset
        self.accepted += rise if rise > 0 else size if rise < 0 else 0

    def confirmed_more(self, n: int) -> None:
        pass

    def offset_confirmed(self, request_id: str, offset: int) -> None:
        self.request_id = request_id
        self._offset(offset)

    def retrying(self, error: errors.BulkdriveError, attempt: int, wait: float) -> None:
        self.events.append(("retrying", type(error).__name__, str(error), attempt, wait))

    def resumed(self, offset: int) -> None:
        if not self._heard:
            self._server_offset = offset
        self.events.append(("resumed", offset))

    def block_confirmed(self, index: int, digest: bytes) -> None:
        del self.digests[index * 32 :]
        self.digests += digest


class _WorkerRun:
    """One run's client in one worker process and its `transfers` upload tasks, on the
    worker's own event loop: one task (`_serve`) holds them for the run, as a blocking
    portal's thread did before (that thread's loop and Dask's took the interpreter lock in
    turns, and each batch waited in an executor thread for the portal)."""

    def __init__(self, access: WorkerAccess) -> None:
        self.access = access
        self.config = access.config
        self.uploads = _Uploads(self)
        #: Small files read on the event loop while quick, as one process does (in a
        #: worker thread beside the busy loop, each read's system calls wait for the GIL).
        self.reads = InlineReads(SMALL_FILE_READ_AHEAD)
        #: The chunk buffers of the files in flight here, reused from file to file.
        self.buffers = ChunkBuffers(self.config.chunk_size, most=self.config.chunks_held)
        self._client: EdgeDriveClient | None = None
        self._failure: Exception | None = None
        self._ready = anyio.Event()
        self._served: asyncio.Task[None] | None = None

    @property
    def client(self) -> EdgeDriveClient:
        assert self._client is not None, "the run's client is not ready"
        return self._client

    def start(self) -> None:
        self._served = asyncio.get_running_loop().create_task(self._serve())

    async def ready(self) -> None:
        """Once the client is logged in; its error if it could not be."""
        await self._ready.wait()
        if self._failure is not None:
            raise RuntimeError(
                f"this worker could not reach the server: {type(self._failure).__name__}: "
                f"{self._failure}"
            )

    async def close(self) -> None:
        """The run is over: the upload tasks end (once the queue is empty), the client
        goes."""
        self.uploads.close()
        if self._served is not None:
            await self._served

    async def _serve(self) -> None:
        access = self.access
        try:
            async with (
                EdgeDriveClient.connect(
                    access.url, access.credentials, share_id=access.share_id, config=self.config
                ) as client,
                anyio.create_task_group() as uploads,
            ):
                self._client = client
                for _ in range(max(1, self.config.transfers)):
                    uploads.start_soon(self.uploads.work)
                self._ready.set()
        except Exception as exc:  # a batch waiting for the client reports it
            self._failure = exc
        finally:
            self._ready.set()


class _Batch:
    """A batch being uploaded in this process: its files' reports, as they end."""

    def __init__(self, files: Sequence[BatchFile], rerun: bool, wanted: Callable[[], bool]) -> None:
        unwanted = FileReport(ok=False, error_class="RetriesExhausted", error_message=CANCELLED)
        self.files = files
        self.rerun = rerun
        self.wanted = wanted
        self.results: list[tuple[FileReport, int]] = [(unwanted, 0)] * len(files)
        self.left = len(files)
        self.done = anyio.Event()

    def ended(self) -> None:
        self.left -= 1
        if not self.left:
            self.done.set()


class _Uploads:
    """The run's uploads in this worker process: `transfers` tasks on its event loop take
    the files of every batch running here from one queue (the process's limit, shared by the
    batches side by side), as one process's workers take them from its hand-out. A memory
    stream and a limiter round per file cost ~30 µs of CPU per file here (three loop passes),
    a deque ~2. At most a group of small files' contents waits in the queue, and each batch
    reads the next while it waits (`put`)."""

    def __init__(self, run: _WorkerRun) -> None:
        self._run = run
        self._queue: WorkQueue[tuple[_Batch, int, LocalContent | None]] = WorkQueue()
        self._full: deque[anyio.Event] = deque()  # batches waiting for room to put

    async def put(self, batch: _Batch, start: int, contents: list[LocalContent | None]) -> None:
        """Queue `batch`'s files from `start` on (their contents read ahead, or None), once
        the queue holds less than a group."""
        while len(self._queue) >= SMALL_FILE_BATCH:
            room = anyio.Event()
            self._full.append(room)
            await room.wait()
        self._queue.put_many(
            (batch, start + offset, content) for offset, content in enumerate(contents)
        )

    async def work(self) -> None:
        queue, run = self._queue, self._run
        while (item := await queue.get()) is not None:
            batch, index, content = item
            if len(queue) < SMALL_FILE_BATCH and self._full:
                self._full.popleft().set()
            try:
                if batch.wanted():
                    batch.results[index] = await _upload_one(
                        run, batch.files[index], batch.rerun, content
                    )
            finally:
                batch.ended()

    def close(self) -> None:
        """The run is over: the tasks end (once the queue is empty)."""
        self._queue.close()


_RUNS: dict[str, _WorkerRun] = {}


async def _worker_run(access: WorkerAccess) -> _WorkerRun:
    """The run's client in this process: made by its first batch, waited for by the others
    (all on the worker's event loop)."""
    run = _RUNS.get(access.run_id)
    if run is None:
        run = _RUNS[access.run_id] = _WorkerRun(access)
        run.start()
    try:
        await run.ready()
    except Exception:
        if _RUNS.get(access.run_id) is run:
            del _RUNS[access.run_id]  # the next batch tries again
        raise
    return run


async def close_worker_run(run_id: str) -> bool:
    """Run on every worker at the end of a run: its client and upload tasks go."""
    run = _RUNS.pop(run_id, None)
    if run is None:
        return False
    await run.close()
    return True


class AccessPlugin(distributed.WorkerPlugin):
    """How the run's access reaches each worker: registered once per run, and sent by the
    scheduler to every worker, also one that joins or restarts later (the tasks carry only
    the plugin's name). At the end of the run its teardown closes the worker's client."""

    idempotent = True

    def __init__(self, access: WorkerAccess) -> None:
        self.access = access
        self.name = plugin_name(access.run_id)

    def setup(self, worker: Any) -> None:
        pass  # the client is made by the first batch

    async def teardown(self, worker: Any) -> None:
        await close_worker_run(self.access.run_id)


async def upload_batch(run_id: str, batch_id: int, batch: Batch) -> BatchReport:
    """The Dask task, a coroutine that Dask runs on the worker's event loop: upload a batch
    of files, return each one's outcome."""
    files = batch.files
    from distributed import get_worker

    worker = get_worker()
    plugin = worker.plugins.get(plugin_name(run_id))
    if not isinstance(plugin, AccessPlugin):
        raise RuntimeError("this worker has no access for the run (its plugin is missing)")
    access = plugin.access
    # Set once per batch: a batch that finds it set is being run again (its first worker
    # died), so the server may hold some of its files already, whole or in part. A Dask
    # Event's calls, made on the worker's own connection to the scheduler (no Dask client
    # in the worker).
    marker = marker_name(access.run_id, batch_id)
    rerun = bool(await worker.scheduler.event_is_set(name=marker))
    await worker.scheduler.event_set(name=marker)
    run = await _worker_run(access)
    key = batch_key(run_id, batch_id)
    tasks = worker.state.tasks

    def wanted() -> bool:
        # A batch whose coordinator is gone (killed: Dask released its task) starts no
        # more files; the re-run of the job continues them from the journal.
        task = tasks.get(key)
        return task is not None and task.state not in ("cancelled", "released", "forgotten")

    started = time.time()
    reports = await _upload_all(run, files, rerun, wanted)
    return BatchReport(
        worker=worker.address,
        files=tuple(report for report, _ in reports),
        started=started,
        ended=time.time(),
        accepted=sum(accepted for _, accepted in reports),
        rerun=rerun,
    )


async def _upload_all(
    run: _WorkerRun, files: Sequence[BatchFile], rerun: bool, wanted: Callable[[], bool]
) -> list[tuple[FileReport, int]]:
    """The batch's files through the process's uploads (`transfers` at once per worker
    process, shared by the batches running side by side). As on one machine, small files are
    read a group at a time, the next group while this one goes, on the event loop while each
    read is quick (`InlineReads`), else in one thread hop per group (a thread hop per file
    cost as much CPU as its upload's request): a batch holds at most two groups of
    read-ahead content."""
    batch = _Batch(files, rerun, wanted)
    if not files:
        return batch.results
    for start in range(0, len(files), SMALL_FILE_BATCH):
        group = files[start : start + SMALL_FILE_BATCH]
        small = [i for i, f in enumerate(group) if f.size <= SMALL_FILE_READ_AHEAD]
        contents: list[LocalContent | None] = [None] * len(group)
        if small:
            read = await run.reads.read_all([group[i].path for i in small])
            for i, content in zip(small, read, strict=True):
                contents[i] = content
        await run.uploads.put(batch, start, contents)
    await batch.done.wait()
    return batch.results


async def _upload_one(
    run: _WorkerRun, file: BatchFile, rerun: bool, content: LocalContent | None
) -> tuple[FileReport, int]:
    recorder = _Recorder()
    resume = file.resume
    try:
        if rerun:
            if await _held_whole(run.client, file):
                return FileReport(ok=True, already_there=True), 0
            # Its first worker may have left a session of it: continue that one.
            resume = resume or ResumePoint("", 0)
        result = await upload_file(
            run.client,
            file.path,
            file.remote_folder,
            remote_name=file.remote_name,
            config=run.config,
            events=recorder,
            resume=resume,
            known_digests=file.known_digests,
            content=content,
            buffers=run.buffers,
        )
    except Exception as exc:  # every error travels back as data: this file's outcome
        if isinstance(exc, errors.BulkdriveError):
            name, message = type(exc).__name__, str(exc)
        else:  # a bug: the run reports it as an internal error of this file
            name, message = "InternalError", f"{type(exc).__name__}: {exc}"
        report = FileReport(
            ok=False,
            request_id=recorder.request_id,
            events=tuple(recorder.events),
            digests=bytes(recorder.digests),
            error_class=name,
            error_message=message,
        )
        return report, recorder.accepted
    recorder.completed(file.size)
    events = tuple(recorder.events)
    if events == (("offset", file.size),):
        # Its end alone (the server's offsets rose to the whole file): what the coordinator
        # tells a file that completed anyway, so nothing to replay there.
        events = ()
    report = FileReport(
        ok=True,
        file_guid=result.file_guid,
        attempts=result.attempts,
        resumes=result.resumes,
        restarts=result.restarts,
        bytes_sent=result.bytes_sent,
        integrity_verified=result.integrity_verified,
        request_id=recorder.request_id if events else None,
        events=events,
        # No digests: they serve to continue an unfinished upload, and this one is done.
    )
    return report, recorder.accepted


async def _held_whole(client: EdgeDriveClient, file: BatchFile) -> bool:
    path = file.remote_folder.rstrip("\\") + "\\" + file.remote_name
    try:
        resource = await client.metadata(path)
    except errors.RunFailed:
        raise
    except errors.BulkdriveError:
        return False  # unknown: the upload finds out
    return (
        resource is not None
        and not resource.is_directory
        and (resource.size, resource.modified_time) == (file.size, mtime_seconds(file.mtime_ns))
    )
