"""`--cluster`: one migration across Dask workers; batches out, per-file outcomes in.

    coordinator (`bulkdrive upload`)                         workers (stateless processes)
    walk → journal → folders → ClusterEngine ──batches──▶ upload_batch: the same upload_file
                  ◀── outcomes, bytes, events (per file) ──

The coordinator is the ordinary run (`scheduler.TreeUpload`): the walk and filters, the
journal (its only writer: a file is marked in flight before its batch is submitted), the
remote folders (created before any of their files is handed out), progress, summary, reports
and exit code. Only the upload of each file's bytes moves: the run hands each file to
`ClusterEngine.upload_file`, which groups the waiting files into batches (at most
`BATCH_FILES` files or `BATCH_BYTES` bytes; the first few batches smaller, so that every
worker starts at once), submits one Dask task per batch with at most `in_flight` batches out,
and replays each file's outcome into the run as if the upload had run here. Coordinator memory
is the files waiting or out (≤ `slots`), whatever the tree's size.

Workers: `upload_batch` runs in a Dask worker thread. Each worker process keeps one client per
run (a module cache keyed by the run id), on one event loop thread of its own, and uploads its
batch with `bulkdrive.upload.upload_file` at most `transfers` files at once per process (§8
recovery, integrity, retries as on one machine). A batch that Dask runs again (its worker
died) first asks the server about each file: a file it holds whole is not sent again, a
partial one continues from the server's offset (its session answers the initiate with 409).

Credentials: the coordinator logs in; workers get its token and the Login's deviceId (so they
can renew it, as one process does), in a Dask worker plugin registered once per run (the
scheduler also gives it to a worker that joins or restarts later); never the password, and
never in a task's arguments.
The token dies with the coordinator's Logout at the end of the run (or its idle lifetime).
Across hosts, turn on Dask's TLS (`tls://` addresses, `distributed.comm.require-encryption`)
so that the token and the batches travel encrypted; see the README.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread

from bulkdrive import errors

try:
    import distributed
except ImportError:
    raise errors.ConfigError(
        "--cluster needs Dask distributed: pip install 'bulkdrive[cluster]'"
    ) from None

from bulkdrive.client import EdgeDriveClient
from bulkdrive.config import Credentials, TransferConfig
from bulkdrive.progress import Reporter
from bulkdrive.protocol import mtime_seconds
from bulkdrive.report import RunSummary, WorkerFigures
from bulkdrive.session import ResumePoint
from bulkdrive.upload import UploadEvents, UploadResult, upload_file
from bulkdrive.walk import FileEntry

log = logging.getLogger("bulkdrive.cluster")

#: A batch holds at most this many files, or this many bytes (a larger file goes alone).
BATCH_FILES = 512
BATCH_BYTES = 1 << 30
#: The first batches are smaller (16, 32, 64, ... files) so that every worker gets work at
#: once, even from a small tree.
FIRST_BATCH_FILES = 16
#: How long a batch that is not full waits for more files before it goes.
LINGER_SECONDS = 0.02
#: Dask runs a task again this many times if it raises (a worker that dies is Dask's own
#: business: the scheduler reruns its tasks elsewhere).
TASK_RETRIES = 2
CANCELLED = "its batch was cancelled on the worker (the coordinator went away)"


# --- what travels -------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerAccess:
    """What a worker needs to reach the server: broadcast once per run, never the password
    (`Secret` values show as ******** in any repr or log)."""

    run_id: str
    url: str
    share_id: str | None
    credentials: Credentials
    config: TransferConfig


@dataclass(frozen=True, slots=True)
class BatchFile:
    path: str  # as the workers see it (`--worker-path`)
    size: int
    mtime_ns: int
    remote_folder: str
    remote_name: str
    resume: ResumePoint | None
    known_digests: bytes


@dataclass(frozen=True, slots=True)
class FileReport:
    """One file's outcome on a worker, with what the run needs to account for it: the
    server's offsets as they moved (turning points only), resumes, retries, block digests."""

    ok: bool
    file_guid: str = ""
    attempts: int = 1
    resumes: int = 0
    restarts: int = 0
    bytes_sent: int = 0
    integrity_verified: bool = False
    request_id: str | None = None
    #: ("resumed", offset) | ("offset", offset) | ("retrying", class, message, attempt, wait)
    events: tuple[tuple[Any, ...], ...] = ()
    digests: bytes = b""
    error_class: str = ""
    error_message: str = ""
    already_there: bool = False


@dataclass(frozen=True, slots=True)
class BatchReport:
    worker: str
    files: tuple[FileReport, ...]
    started: float  # the worker's clock
    ended: float
    accepted: int  # bytes the server accepted from this batch
    rerun: bool


# --- the worker side ----------------------------------------------------------------------


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
    """One run's client in one worker process, on an event loop thread of its own."""

    def __init__(self, access: WorkerAccess) -> None:
        self._stack = contextlib.ExitStack()
        options = {"use_uvloop": True} if _have_uvloop() else {}
        self.portal = self._stack.enter_context(
            anyio.from_thread.start_blocking_portal("asyncio", backend_options=options)
        )
        try:
            self.client = self._stack.enter_context(
                self.portal.wrap_async_context_manager(
                    EdgeDriveClient.connect(
                        access.url,
                        access.credentials,
                        share_id=access.share_id,
                        config=access.config,
                    )
                )
            )
            self.limiter: anyio.CapacityLimiter = self.portal.call(
                _limiter, access.config.transfers
            )
        except BaseException:
            self._stack.close()
            raise
        self.config = access.config

    def close(self) -> None:
        self._stack.close()


async def _limiter(total: int) -> anyio.CapacityLimiter:
    return anyio.CapacityLimiter(total)


_RUNS: dict[str, _WorkerRun] = {}
_RUNS_LOCK = threading.Lock()


def _worker_run(access: WorkerAccess) -> _WorkerRun:
    with _RUNS_LOCK:
        run = _RUNS.get(access.run_id)
        if run is None:
            run = _RUNS[access.run_id] = _WorkerRun(access)
        return run


def close_worker_run(run_id: str) -> bool:
    """Run on every worker at the end of a run: its client and loop thread go."""
    with _RUNS_LOCK:
        run = _RUNS.pop(run_id, None)
    if run is None:
        return False
    run.close()
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
        pass  # the client is made by the first batch, on the thread that runs it

    def teardown(self, worker: Any) -> None:
        close_worker_run(self.access.run_id)


def plugin_name(run_id: str) -> str:
    return f"bulkdrive-access-{run_id}"


def upload_batch(run_id: str, batch_id: int, files: list[BatchFile]) -> BatchReport:
    """The Dask task: upload a batch of files, return each one's outcome."""
    from distributed import Event, get_worker

    worker = get_worker()
    plugin = worker.plugins.get(plugin_name(run_id))
    if not isinstance(plugin, AccessPlugin):
        raise RuntimeError("this worker has no access for the run (its plugin is missing)")
    access = plugin.access
    # Set once per batch: a batch that finds it set is being run again (its first worker
    # died), so the server may hold some of its files already, whole or in part.
    marker: Any = Event(_marker_name(access.run_id, batch_id))  # type: ignore[no-untyped-call]
    rerun: bool = marker.is_set()
    marker.set()
    run = _worker_run(access)
    key = worker.get_current_task()

    def wanted() -> bool:
        # A batch whose coordinator is gone (killed: Dask released its task) starts no
        # more files; the re-run of the job continues them from the journal.
        task = worker.state.tasks.get(key)
        return task is not None and task.state not in ("cancelled", "released", "forgotten")

    started = time.time()
    reports = run.portal.call(_upload_all, run, files, rerun, wanted)
    return BatchReport(
        worker=worker.address,
        files=tuple(report for report, _ in reports),
        started=started,
        ended=time.time(),
        accepted=sum(accepted for _, accepted in reports),
        rerun=rerun,
    )


def _marker_name(run_id: str, batch_id: int) -> str:
    return f"bulkdrive-{run_id}-{batch_id}"


async def _upload_all(
    run: _WorkerRun, files: list[BatchFile], rerun: bool, wanted: Callable[[], bool]
) -> list[tuple[FileReport, int]]:
    unwanted = FileReport(ok=False, error_class="RetriesExhausted", error_message=CANCELLED)
    results: list[tuple[FileReport, int]] = [(unwanted, 0)] * len(files)

    async def one(index: int, file: BatchFile) -> None:
        async with run.limiter:
            if wanted():
                results[index] = await _upload_one(run, file, rerun)

    async with anyio.create_task_group() as tg:
        for index, file in enumerate(files):
            tg.start_soon(one, index, file)
    return results


async def _upload_one(run: _WorkerRun, file: BatchFile, rerun: bool) -> tuple[FileReport, int]:
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
    report = FileReport(
        ok=True,
        file_guid=result.file_guid,
        attempts=result.attempts,
        resumes=result.resumes,
        restarts=result.restarts,
        bytes_sent=result.bytes_sent,
        integrity_verified=result.integrity_verified,
        request_id=recorder.request_id,
        events=tuple(recorder.events),
        digests=bytes(recorder.digests),
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


def _have_uvloop() -> bool:
    if os.environ.get("BULKDRIVE_LOOP", "").lower() == "asyncio":
        return False
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


# --- the coordinator side -----------------------------------------------------------------


@dataclass
class _Waiting:
    file: BatchFile
    done: anyio.Event = field(default_factory=anyio.Event)
    report: FileReport | None = None
    error: BaseException | None = None


@dataclass
class _Worker:
    files: int = 0
    bytes: int = 0
    batches: int = 0
    first: float = float("inf")
    last: float = 0.0


class ClusterEngine:
    """The run's `FileEngine` for `--cluster`: see the module's docstring."""

    def __init__(
        self,
        dask: Any,
        run_id: str,
        *,
        in_flight: int,
        path_map: tuple[str, str] | None = None,
        task: Callable[..., Any] | None = None,
        reporter: Reporter | None = None,
        verbose: bool = False,
        batch_files: int = BATCH_FILES,
        batch_bytes: int = BATCH_BYTES,
    ) -> None:
        self._dask = dask
        self._run_id = run_id
        self._in_flight = max(1, in_flight)
        self._path_map = path_map
        #: The Dask task that uploads a batch (a benchmark gives a stub).
        self._task = task or upload_batch
        self._reporter = reporter
        self._verbose = verbose
        self._batch_files = batch_files
        self._batch_bytes = batch_bytes
        self.slots = (self._in_flight + 1) * batch_files
        self._waiting: deque[_Waiting] = deque()
        self._waiting_bytes = 0
        self._arrived = anyio.Event()
        self._batches = 0
        self._workers: dict[str, _Worker] = {}
        self._reruns = 0

    # --- FileEngine ----------------------------------------------------------------------

    async def upload(
        self,
        entry: FileEntry,
        remote_folder: str,
        *,
        remote_name: str,
        events: UploadEvents,
        resume: ResumePoint | None,
        known_digests: bytes,
    ) -> UploadResult:
        size = entry.size
        waiting = _Waiting(
            BatchFile(
                path=self._worker_path(entry.path),
                size=size,
                mtime_ns=entry.mtime_ns,
                remote_folder=remote_folder,
                remote_name=remote_name,
                resume=resume,
                known_digests=known_digests,
            )
        )
        self._waiting.append(waiting)
        self._waiting_bytes += size
        self._arrived.set()
        await waiting.done.wait()
        if waiting.error is not None:
            raise waiting.error
        assert waiting.report is not None
        return _replay(waiting.report, events, entry.path, remote_folder, remote_name, size)

    def summarize(self, summary: RunSummary) -> RunSummary:
        workers = tuple(
            WorkerFigures(
                address=address,
                files=w.files,
                bytes=w.bytes,
                seconds=max(0.0, w.last - w.first),
                batches=w.batches,
            )
            for address, w in sorted(self._workers.items())
        )
        return dataclasses.replace(summary, workers=workers)

    def statistics(self) -> dict[str, int]:
        return {
            "batches": self._batches,
            "waiting": len(self._waiting),
            "reruns": self._reruns,
            "workers": len(self._workers),
        }

    # --- batches -------------------------------------------------------------------------

    async def run(self) -> None:
        """Form and submit batches until cancelled; at most `in_flight` out at once."""
        slots = anyio.Semaphore(self._in_flight)
        async with anyio.create_task_group() as tg:
            while True:
                while not self._waiting:
                    self._arrived = anyio.Event()
                    await self._arrived.wait()
                await slots.acquire()
                limit = min(self._batch_files, FIRST_BATCH_FILES << min(self._batches, 16))
                with anyio.move_on_after(LINGER_SECONDS):
                    while len(self._waiting) < limit and self._waiting_bytes < self._batch_bytes:
                        self._arrived = anyio.Event()
                        await self._arrived.wait()
                batch: list[_Waiting] = []
                size = 0
                while self._waiting and len(batch) < limit:
                    if batch and size + self._waiting[0].file.size > self._batch_bytes:
                        break
                    waiting = self._waiting.popleft()
                    self._waiting_bytes -= waiting.file.size
                    size += waiting.file.size
                    batch.append(waiting)
                self._batches += 1
                tg.start_soon(self._submit, self._batches, batch, slots)

    async def _submit(self, batch_id: int, batch: list[_Waiting], slots: anyio.Semaphore) -> None:
        future = None
        try:
            future = self._dask.submit(
                self._task,
                self._run_id,
                batch_id,
                [w.file for w in batch],
                key=f"bulkdrive-batch-{self._run_id}-{batch_id}",
                retries=TASK_RETRIES,
                pure=False,
            )
            report: BatchReport = await future
        except Exception as exc:  # the cluster could not run the batch: its files fail
            error = errors.RetriesExhausted(
                f"the cluster could not upload its batch: {type(exc).__name__}: {exc}"
            )
            for waiting in batch:
                waiting.error = error
                waiting.done.set()
            return
        finally:
            if future is not None:
                future.release()
            slots.release()
        with contextlib.suppress(Exception):
            await self._clear_marker(batch_id)
        self._record(report)
        for waiting, file_report in zip(batch, report.files, strict=True):
            waiting.report = file_report
            waiting.done.set()

    async def _clear_marker(self, batch_id: int) -> None:
        from distributed import Event

        marker: Any = Event(  # type: ignore[no-untyped-call]
            _marker_name(self._run_id, batch_id), client=self._dask
        )
        await marker.clear()

    def _record(self, report: BatchReport) -> None:
        worker = self._workers.setdefault(report.worker, _Worker())
        worker.files += len(report.files)
        worker.bytes += report.accepted
        worker.batches += 1
        worker.first = min(worker.first, report.started)
        worker.last = max(worker.last, report.ended)
        if report.rerun:
            self._reruns += 1
        if self._reporter is not None and self._verbose:
            self._reporter.message(
                f"worker {report.worker}: {len(report.files)} files, {report.accepted} bytes "
                f"in {report.ended - report.started:.2f}s"
                + (" (a batch run again)" if report.rerun else "")
            )

    def _worker_path(self, local_path: str) -> str:
        """The file's path on the workers: SRC as the walk spelled it (maybe relative to the
        coordinator's folder) becomes `--worker-path`, or else SRC's absolute path."""
        if self._path_map is None:
            return os.path.abspath(local_path)
        source, prefix = self._path_map
        tail = local_path[len(source) :]
        if tail and tail[0] not in "/\\":  # SRC given as "src/": "src/a" leaves "a"
            tail = os.sep + tail
        return prefix + tail


def _rebuild(name: str, message: str) -> Exception:
    """A worker's error, as the class it was (an unknown name: a bug, reported as such)."""
    cls = getattr(errors, name, None)
    if isinstance(cls, type) and issubclass(cls, errors.BulkdriveError):
        return cls(message)
    return RuntimeError(message)


def _replay(
    report: FileReport,
    events: UploadEvents,
    local_path: str,
    remote_folder: str,
    remote_name: str,
    size: int,
) -> UploadResult:
    """Tell the run what the worker's upload of this file went through, in order, then end
    it as the worker's did: its result, or its error raised here."""
    if report.digests:
        # All blocks at once: the journal's records of this file carry the last digests.
        events.block_confirmed(0, report.digests)
    for event in report.events:
        kind = event[0]
        if kind == "resumed":
            events.resumed(event[1])
        elif kind == "offset":
            events.offset_confirmed(report.request_id or "", event[1])
        elif kind == "retrying":
            error = _rebuild(event[1], event[2])
            if isinstance(error, errors.BulkdriveError):
                events.retrying(error, event[3], event[4])
    if not report.ok:
        raise _rebuild(report.error_class, report.error_message)
    if report.already_there:
        # Completed by a worker that died before it could say so: nothing sent now.
        events.resumed(size)
    return UploadResult(
        local_path=local_path,
        remote_path=remote_folder.rstrip("\\") + "\\" + remote_name,
        size=size,
        file_guid=report.file_guid,
        bytes_sent=report.bytes_sent,
        attempts=report.attempts,
        resumes=report.resumes,
        restarts=report.restarts,
        integrity_verified=report.integrity_verified,
    )


# --- starting and stopping ----------------------------------------------------------------


@dataclass(frozen=True)
class ClusterOptions:
    address: str  # "local:N" or a scheduler's address
    source: Path
    worker_path: str | None = None
    verbose: bool = False


@contextlib.asynccontextmanager
async def open_cluster(
    options: ClusterOptions,
    client: EdgeDriveClient,
    url: str,
    config: TransferConfig,
    reporter: Reporter | None = None,
) -> AsyncIterator[ClusterEngine]:
    """Connect to (or start) the Dask cluster, hand the workers their access, yield the
    engine; at the end close the workers' clients and a local cluster."""
    run_id = uuid.uuid4().hex
    async with contextlib.AsyncExitStack() as stack:
        if options.address.startswith("local:"):
            workers = int(options.address.partition(":")[2])
            cluster = await stack.enter_async_context(
                distributed.LocalCluster(  # type: ignore[no-untyped-call]
                    n_workers=workers,
                    host="127.0.0.1",  # local: nothing listens beyond this host
                    threads_per_worker=2,
                    processes=True,
                    asynchronous=True,
                    dashboard_address=None,
                    memory_limit=0,
                    silence_logs=logging.ERROR,
                )
            )
            address: Any = cluster
        else:
            address = options.address
        try:
            dask = await stack.enter_async_context(
                distributed.Client(  # type: ignore[no-untyped-call]
                    address, asynchronous=True, timeout=30
                )
            )
        except (OSError, TimeoutError) as exc:
            raise errors.ConfigError(
                f"--cluster: cannot reach the Dask scheduler at {options.address}: {exc}"
            ) from None
        try:
            await dask.wait_for_workers(1, timeout=60)
        except TimeoutError:
            raise errors.ConfigError(
                f"--cluster: the Dask scheduler at {options.address} has no workers"
            ) from None
        workers_info = dask.scheduler_info()["workers"]
        threads = sum(w["nthreads"] for w in workers_info.values())
        access = WorkerAccess(
            run_id=run_id,
            url=url,
            share_id=client.share_id,
            credentials=client.handoff(),
            config=config,
        )
        await dask.register_plugin(AccessPlugin(access))
        # The walk's paths start with SRC as given; the workers get them absolute, or under
        # --worker-path.
        given = os.fspath(options.source)
        prefix = options.worker_path or os.path.abspath(given)
        path_map = (given, prefix.rstrip("/\\"))
        engine = ClusterEngine(
            dask,
            run_id,
            in_flight=threads + len(workers_info),
            path_map=path_map,
            reporter=reporter,
            verbose=options.verbose,
        )
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(engine.run)
                try:
                    yield engine
                finally:
                    tg.cancel_scope.cancel()
        finally:
            with (
                anyio.CancelScope(shield=True),
                anyio.move_on_after(30),
                contextlib.suppress(Exception),
            ):
                await dask.unregister_worker_plugin(plugin_name(run_id))
