"""`--cluster`: one migration across Dask workers; batches out, per-file outcomes in.

    coordinator (`bulkdrive upload`)                            workers (stateless processes)
    walk → journal → folders → dispatcher ─batches─▶ ClusterEngine ─tasks─▶ upload_batch
                                 ◀── each file's outcome, replayed into the run ──

The coordinator is the ordinary run (`scheduler.TreeUpload`): the walk and filters, the
journal (its only writer: a batch's files are marked in flight and committed before it is
submitted), the remote folders (created before any of their files goes), progress, summary,
reports and exit code. Under an engine the run hands out whole batches (`engine_batches`):
one task per batch on the coordinator, not one per file. The rooms:

- `cluster` (here): connecting to (or starting) the cluster, handing the workers their access.
- `cluster_engine`: the coordinator's engine, batches out as Dask tasks (at most `batches`
  of the run's batches out at once; coordinator memory ≤ that many batches of 512 files).
- `cluster_replay`: a worker's report of a file replayed into the run's accounting.
- `cluster_worker`: the Dask task, on the workers (one client per worker process per run,
  the same `upload_file` with §8 recovery, integrity and retries).
- `cluster_wire`: what travels between them.

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
import logging
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from bulkdrive import collector, errors

try:
    import distributed
except ImportError:
    raise errors.ConfigError(
        "--cluster needs Dask distributed: pip install 'bulkdrive[cluster]'"
    ) from None

from bulkdrive.client import EdgeDriveClient
from bulkdrive.cluster_engine import ClusterEngine
from bulkdrive.cluster_wire import WorkerAccess, plugin_name
from bulkdrive.cluster_worker import AccessPlugin
from bulkdrive.config import TransferConfig
from bulkdrive.progress import Reporter

__all__ = [
    "ClusterEngine",
    "ClusterOptions",
    "batches_out",
    "coordinator_config",
    "local_cluster",
    "open_cluster",
]

#: Dask's "low-level logs" on the coordinator: each connection keeps its last messages (a
#: task's message holds its batch: up to 1 000 of them, hundreds of MiB at 512 files a
#: task), the scheduler its last transitions. Kept short, the coordinator's memory is flat.
LOW_LEVEL_LOG_LENGTH = 16
#: How often a local cluster's scheduler and nannies (in the coordinator's process) sample
#: the host's CPU, memory, disk and network with psutil, for a dashboard nobody opens:
#: Dask's default of 500 ms cost ~2 % of the coordinator's event loop.
SYSTEM_MONITOR_INTERVAL = "5s"
#: How often the event loops of a local cluster's processes (its workers, and the scheduler
#: and client in the coordinator's) wake up to measure their own lag, for a warning when one
#: was blocked for more than 3 s: Dask's 20 ms tick cost an idle `local:2` cluster ~11 ms of
#: CPU a second in each worker and ~20 ms in the coordinator, about four-fifths of what it
#: spends idle, and 150 wake-ups a second on a machine whose cores the uploads share.
TICK_INTERVAL = "1s"
#: The workers' statistical profiler (a thread walking every thread's stack each 10 ms, for
#: the dashboard): ~6 % of a `--cluster local:N` worker's CPU in py-spy on small files. Off
#: for the workers a local cluster starts (they take the coordinator's Dask settings);
#: a running cluster's workers keep their own settings.
WORKER_PROFILE = False
#: The environment Dask sets in the worker processes a local cluster spawns, less its
#: MALLOC_TRIM_THRESHOLD_ (65 536): an explicit trim threshold turns off glibc's adaptive
#: mmap threshold, so every block of 128 KiB or more is a fresh mmap, faulted in page by page
#: and unmapped when freed. Files are now read into reused buffers (`source.ChunkBuffers`)
#: and sent without a large copy, so it matters little now (medians of 3, `local:1` worker
#: with / without it: 32 × 128 MiB `--no-verify` 32 k / 31 k minor faults, 7.7 / 7.8 CPU s;
#: 1 000 × 1 MiB 24 k / 23 k faults, 3.05 / 2.82 s); it was 296 k against 32 k faults for
#: large files before the first piece of a chunk's body was made small.
WORKER_ENVIRON_UNSET = ("MALLOC_TRIM_THRESHOLD_",)


def worker_event_loop() -> str:
    """The event loop of the workers a local cluster starts, where their uploads run: uvloop
    where it is installed, as one process uses (asyncio's own loop cost about a third more
    CPU per request); BULKDRIVE_LOOP=asyncio keeps asyncio's. A running cluster's workers
    keep their own setting (Dask's `distributed.admin.event-loop`)."""
    if os.environ.get("BULKDRIVE_LOOP", "").lower() == "asyncio":
        return "asyncio"
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


@contextlib.contextmanager
def coordinator_config() -> Iterator[None]:
    """Settings for the coordinator's process (its Dask client, and a local scheduler):
    Dask's, and its garbage collector's (what exists when it starts, the modules mostly,
    is frozen out of the collections; collections are rarer)."""
    import dask

    with (
        collector.fewer_collections(),
        dask.config.set(
            {
                "distributed.admin.low-level-log-length": LOW_LEVEL_LOG_LENGTH,
                "distributed.admin.system-monitor.interval": SYSTEM_MONITOR_INTERVAL,
                "distributed.admin.tick.interval": TICK_INTERVAL,
                "distributed.worker.profile.enabled": WORKER_PROFILE,
                # None unsets a variable Dask would set (`distributed.nanny`).
                **{
                    f"distributed.nanny.pre-spawn-environ.{name}": None
                    for name in WORKER_ENVIRON_UNSET
                },
                # Read only where Dask makes a loop: a local cluster's worker processes.
                "distributed.admin.event-loop": worker_event_loop(),
            }
        ),
    ):
        yield


def batches_out(threads: int, workers: int) -> int:
    """How many batches the coordinator keeps out: twice what the workers run at once (a
    thread each, and one per worker for its read-ahead), so that the next batch waits on
    the scheduler when one ends. A batch's round trip through the coordinator (its journal
    commit, Dask's messages) took ~0.25 s on the stub benchmark, workers idle meanwhile."""
    return 2 * (threads + workers)


def local_cluster(workers: int) -> Any:
    """`--cluster local:N`: N worker processes of 2 threads on this host, its scheduler in
    this process (enter it with `async with`)."""
    return distributed.LocalCluster(  # type: ignore[no-untyped-call]
        n_workers=workers,
        host="127.0.0.1",  # local: nothing listens beyond this host
        threads_per_worker=2,
        processes=True,
        asynchronous=True,
        dashboard_address=None,
        memory_limit=0,  # no memory monitor: the workers hold two batches' small files
        silence_logs=logging.ERROR,
    )


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
        stack.enter_context(coordinator_config())
        if options.address.startswith("local:"):
            workers = int(options.address.partition(":")[2])
            cluster = await stack.enter_async_context(local_cluster(workers))
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
        # Asked of the scheduler: an asynchronous client's `scheduler_info()` is a cache
        # without its workers (it said 0, and one batch at a time went out).
        identity = await dask.scheduler.identity(n_workers=-1)
        workers_info = identity["workers"]
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
            in_flight=batches_out(threads, len(workers_info)),
            path_map=path_map,
            reporter=reporter,
            verbose=options.verbose,
        )
        try:
            yield engine
        finally:
            with (
                anyio.CancelScope(shield=True),
                anyio.move_on_after(30),
                contextlib.suppress(Exception),
            ):
                await dask.unregister_worker_plugin(plugin_name(run_id))
