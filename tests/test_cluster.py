"""`--cluster`: one run across Dask worker processes, with the guarantees of one process.

One LocalCluster of 2 worker processes (nannies: a killed worker comes back) serves the whole
module; the coordinator is `bulkdrive upload --cluster tcp://…` in a subprocess, or the run
itself in this process where a test inspects what reaches the workers.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import os
import shutil
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from test_cli_upload import cli_env, run_cli, stored, upload_args
from test_resume import (
    STARTS,
    applied,
    completed,
    journals,
    started,
    tree_size,
    wait_quiet,
    write_random,
)

from bulkdrive.client import EdgeDriveClient
from bulkdrive.cluster import (
    TICK_INTERVAL,
    ClusterOptions,
    batches_out,
    coordinator_config,
    open_cluster,
)
from bulkdrive.cluster_engine import (
    BATCH_FILES,
    START_TASK_FILES,
    TAIL_FILES,
    TASK_SECONDS,
    ClusterEngine,
)
from bulkdrive.cluster_wire import BatchReport, FileReport
from bulkdrive.config import Credentials, Secret, TransferConfig
from bulkdrive.emulator import Emulator
from bulkdrive.emulator.app import UploadRecord
from bulkdrive.engine_batches import EngineFile
from bulkdrive.names import InvalidNames
from bulkdrive.scheduler import RunPlan, TreeUpload
from bulkdrive.walk import FileEntry

from conftest import PASSWORD, SHARE_ID, USER, EmulatorFactory
from trees import assert_stored, make_tree

distributed = pytest.importorskip("distributed")

pytestmark = pytest.mark.anyio

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def dask_cluster() -> Iterator[Any]:
    """Two worker processes of two threads, on loopback, for every test of the module."""
    cluster = distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=2,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
        memory_limit=0,
        silence_logs=logging.ERROR,
    )
    try:
        yield cluster
    finally:
        cluster.close()


def worker_pids(cluster: Any) -> dict[str, int]:
    with distributed.Client(cluster) as client:
        pids: dict[str, int] = client.run(os.getpid)
        return pids


def all_stored_once(records: Iterable[UploadRecord], source: Path) -> None:
    """Every byte the server stored was sent once: per file, the bodies it applied start
    where the last one ended (no chunk the server had accepted was sent again), and they add
    up to the file's size; a file was completed once."""
    by_path: dict[str, list[UploadRecord]] = {}
    for r in records:
        if r.status == 200 and r.body_bytes and r.path:
            by_path.setdefault(r.path, []).append(r)
    for path, mine in by_path.items():
        offset = 0
        for r in mine:
            assert r.offset_before == offset, f"{path}: a chunk stored twice ({r})"
            offset += r.body_bytes
        local = source.joinpath(*path.strip("\\").split("\\"))
        assert offset == local.stat().st_size, path
    done = Counter(r.path for r in records if r.eof and r.status == 200)
    assert all(n == 1 for n in done.values()), [p for p, n in done.items() if n > 1]


def cluster_args(emulator: Emulator, source: Path, cluster: Any, *extra: str) -> list[str]:
    return upload_args(emulator, source, "--cluster", cluster.scheduler_address, *extra)


@contextlib.asynccontextmanager
async def _on_cluster(
    dask_cluster: Any, emulator: Emulator, source: Path, config: TransferConfig
) -> AsyncIterator[tuple[EdgeDriveClient, ClusterEngine]]:
    """A logged-in client and the cluster's engine for `source`, as `bulkdrive upload
    --cluster` opens them."""
    credentials = Credentials(user=USER, password=Secret(PASSWORD))
    async with (
        EdgeDriveClient.connect(
            emulator.base_url, credentials, share_id=SHARE_ID, config=config
        ) as client,
        open_cluster(
            ClusterOptions(address=dask_cluster.scheduler_address, source=source),
            client,
            emulator.base_url,
            config,
        ) as engine,
    ):
        yield client, engine


async def test_two_workers_upload_a_tree_byte_identical(
    dask_cluster: Any, emulator: Emulator, tmp_path: Path
) -> None:
    source = make_tree(tmp_path / "src", small_files=300, large=(9 * MiB + 7,))
    report = tmp_path / "report.json"
    done = await run_cli(
        *cluster_args(emulator, source, dask_cluster, "--report", str(report), "-v"),
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr.decode()
    files = assert_stored(source, stored(emulator))
    records = list(emulator.upload_log)
    all_stored_once(records, source)
    assert sum(applied(records).values()) == tree_size(source)
    data = json.loads(report.read_text())
    assert data["files"]["uploaded"] == files
    workers = data["workers"]
    assert len(workers) == 2, workers  # both processes took batches
    assert sum(w["files"] for w in workers) == files
    assert sum(w["bytes"] for w in workers) == data["bytes"]["sent"] == tree_size(source)
    assert all(w["address"].startswith("tcp://127.0.0.1:") for w in workers)
    text = done.stdout.decode()
    assert "worker tcp://127.0.0.1:" in text  # -v: a line per batch, and the summary's lines


async def test_a_worker_killed_mid_run_costs_nothing(
    dask_cluster: Any, make_emulator: EmulatorFactory, tmp_path: Path
) -> None:
    # Every upload request waits 20 ms: the kill lands while both workers are busy.
    emulator = await make_emulator(fault_rate=1.0, faults=("delay",), fault_delay_seconds=0.02)
    source = make_tree(tmp_path / "src", small_files=200)
    for i in range(2):
        write_random(source / f"big-{i}.bin", 24 * MiB + 1)
    args = cluster_args(emulator, source, dask_cluster, "--transfers", "4", "-v")
    log_path = tmp_path / "run.log"
    with log_path.open("wb") as run_log, anyio.fail_after(120):
        process = await anyio.open_process(
            [sys.executable, "-m", "bulkdrive", *args],
            cwd=tmp_path,
            env=cli_env(home=tmp_path),
            stdout=run_log,
            stderr=run_log,
        )
        async with process:
            while True:
                records = list(emulator.upload_log)
                big_started = sum(1 for p, n in applied(records).items() if "big" in p and n)
                if len(completed(records)) >= 30 and big_started:
                    break
                assert process.returncode is None, log_path.read_text()
                await anyio.sleep(0.02)
            busy = [w.address for w in dask_cluster.scheduler.workers.values() if w.processing]
            assert busy
            os.kill(worker_pids(dask_cluster)[busy[0]], signal.SIGKILL)
            code = await process.wait()
    output = log_path.read_text()
    assert code == 0, output
    assert "(a batch run again)" in output  # Dask ran the dead worker's batch elsewhere
    assert_stored(source, stored(emulator))
    records = list(emulator.upload_log)
    all_stored_once(records, source)
    assert sum(applied(records).values()) == tree_size(source)


async def test_the_coordinator_killed_then_rerun_resumes(
    dask_cluster: Any, make_emulator: EmulatorFactory, tmp_path: Path
) -> None:
    emulator = await make_emulator(fault_rate=1.0, faults=("delay",), fault_delay_seconds=0.01)
    source = make_tree(tmp_path / "src", small_files=250)
    args = cluster_args(emulator, source, dask_cluster, "--transfers", "2")
    env = cli_env(home=tmp_path)
    with anyio.fail_after(60):
        process = await anyio.open_process(
            [sys.executable, "-m", "bulkdrive", *args], cwd=tmp_path, env=env
        )
        async with process:
            try:
                while len(completed(emulator.upload_log)) < 30:
                    assert process.returncode is None
                    await anyio.sleep(0.02)
            finally:
                process.kill()
            assert await process.wait() == -signal.SIGKILL
    # The batches out when it died end on the workers (or stop starting files): let them.
    await wait_quiet(emulator, settle=0.5, limit=30)
    first = list(emulator.upload_log)
    done_first = completed(first)
    assert journals(tmp_path)
    again = await run_cli(*args, "--report", "r2.json", cwd=tmp_path, env=env)
    assert again.returncode == 0, again.stderr.decode()
    assert_stored(source, stored(emulator))
    second = list(emulator.upload_log)[len(first) :]
    assert second, "the re-run sent nothing: the kill came too late"
    assert not started(second) & done_first  # done files are not initiated again
    all_stored_once(list(emulator.upload_log), source)


class _CaptureSpecs(distributed.SchedulerPlugin):  # type: ignore[misc]
    """A scheduler plugin (in this process) that keeps every task's spec, pickled: what the
    scheduler sends the workers to run."""

    name = "bulkdrive-test-capture"

    def __init__(self, scheduler: Any) -> None:
        self.scheduler = scheduler
        self.specs: list[bytes] = []

    def transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        if finish == "processing":
            task = self.scheduler.tasks.get(key)
            if task is not None and task.run_spec is not None:
                import cloudpickle

                self.specs.append(cloudpickle.dumps(task.run_spec))


def _held_by_worker(dask_worker: Any) -> bytes:
    """What the run gave this worker besides the tasks: its data and its plugins."""
    import cloudpickle

    plugins = [p for name, p in dask_worker.plugins.items() if name.startswith("bulkdrive")]
    held = [*dask_worker.data.values(), *plugins]
    return b"".join(cloudpickle.dumps(value) for value in held)


def _log_everything(dask_worker: Any) -> None:
    logger = logging.getLogger("bulkdrive")
    logger.setLevel(logging.DEBUG)
    logger.addHandler(dask_worker._deque_handler)


async def test_the_password_never_reaches_the_workers(
    dask_cluster: Any, emulator: Emulator, tmp_path: Path
) -> None:
    source = make_tree(tmp_path / "src", small_files=60)
    capture = _CaptureSpecs(dask_cluster.scheduler)
    dask_cluster.scheduler.add_plugin(capture, name=capture.name)
    config = TransferConfig(transfers=4)
    secrets = [PASSWORD.encode(), __import__("base64").b64encode(PASSWORD.encode())]
    try:
        async with _on_cluster(dask_cluster, emulator, source, config) as (client, engine):
            # Batches out at once: twice a task per worker thread and one more per worker.
            assert engine.batches == batches_out(threads=2 * 2, workers=2) == 12
            dask = engine._dask
            await dask.run(_log_everything)
            plan = RunPlan(source=source, config=config)
            summary = await TreeUpload(client, plan, engine=engine).run()
            held = await dask.run(_held_by_worker)
            logs = await dask.get_worker_logs()
    finally:
        dask_cluster.scheduler.remove_plugin(name=capture.name)
    assert summary.files.failed == 0 and summary.files.uploaded > 60
    assert_stored(source, stored(emulator))
    assert capture.specs, "no task seen"
    sent = b"".join(capture.specs) + b"".join(held.values())
    for secret in secrets:
        assert secret not in sent
    # Sensitive enough to see a secret: the workers do hold the run's token.
    assert all(b"QSDK " in data for data in held.values())
    text = repr(logs)
    assert "bulkdrive" in text or logs  # the workers' logs were read
    assert PASSWORD not in text and secrets[1].decode() not in text
    assert STARTS  # (the kinds of upload that start a session, as test_resume counts them)


async def test_workers_read_src_under_worker_path(
    dask_cluster: Any, emulator: Emulator, tmp_path: Path
) -> None:
    source = make_tree(tmp_path / "src", small_files=20)
    # The workers' view of SRC: a copy (same sizes and times) whose one file differs, so that
    # what the server stores shows which of the two the workers read.
    mount = tmp_path / "mnt" / "projects"
    shutil.copytree(source, mount, copy_function=shutil.copy2)
    changed = mount / "a" / "b" / "c" / "deep.txt"
    times = changed.stat()
    changed.write_bytes(b"DEEP")
    os.utime(changed, ns=(times.st_atime_ns, times.st_mtime_ns))
    # SRC relative to the coordinator's folder, with a trailing slash: the workers' current
    # folder is another one, so only the mapping finds the files.
    args = cluster_args(emulator, Path("src/"), dask_cluster, "--worker-path", str(mount))
    args[1] = "src/"
    done = await run_cli(*args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr.decode()
    assert assert_stored(mount, stored(emulator)) > 20
    assert stored(emulator, "a", "b", "c", "deep.txt").read_bytes() == b"DEEP"


def test_tasks_hold_about_a_second_of_a_workers_time() -> None:
    """A task's files follow the workers' pace: as many as allowed while tasks end at once
    (the coordinator benchmark's stub), about TASK_SECONDS' worth of quick uploads, and
    START_TASK_FILES at least."""
    engine = ClusterEngine(None, "run", in_flight=1)
    assert engine._task_files == START_TASK_FILES

    def took(files: int, seconds: float) -> BatchReport:
        reports = (FileReport(ok=True),) * files
        return BatchReport(
            worker="w", files=reports, started=10.0, ended=10.0 + seconds, accepted=0, rerun=False
        )

    for _ in range(30):
        engine._paced(took(512, 0.0))
    assert engine._task_files == engine.batch_files == engine.most_batch_files == BATCH_FILES
    for _ in range(30):
        engine._paced(took(512, 0.5))  # 1 024 files a second
    assert abs(engine._task_files - 1024 * TASK_SECONDS) <= 1024 * TASK_SECONDS * 0.02
    engine._tasks = 100  # past the first, smaller tasks
    files = [
        EngineFile(FileEntry(f"/src/f{i}", f"f{i}", 1, 0), "\\", f"f{i}", None, b"")
        for i in range(3000)
    ]
    sizes = [len(p) for p in engine._pieces(files, engine._task_files)]
    assert sizes == [len(p) for p in _chunks(3000, engine._task_files)]
    for _ in range(30):
        engine._paced(took(10, 60.0))  # large files: never fewer than the first tasks had
    assert engine._task_files == START_TASK_FILES


def test_local_workers_run_their_uploads_on_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    """A local cluster's worker processes take the coordinator's Dask settings: their event
    loop, where a batch runs (`upload_batch` is a coroutine), is uvloop unless
    BULKDRIVE_LOOP=asyncio asks for asyncio's own."""
    import dask

    from bulkdrive.cluster_worker import upload_batch

    assert inspect.iscoroutinefunction(upload_batch)
    monkeypatch.delenv("BULKDRIVE_LOOP", raising=False)
    with coordinator_config():
        assert dask.config.get("distributed.admin.event-loop") == "uvloop"
    monkeypatch.setenv("BULKDRIVE_LOOP", "asyncio")
    with coordinator_config():
        assert dask.config.get("distributed.admin.event-loop") == "asyncio"


def test_local_clusters_tick_once_a_second() -> None:
    """Dask's event loops measure their own lag each `tick.interval` (20 ms by default: ~80 %
    of what an idle `local:2` cluster spent); under the coordinator's settings, which a local
    cluster's worker processes take, once a second."""
    import dask

    assert dask.config.get("distributed.admin.tick.interval") == "20ms"
    with coordinator_config():
        assert dask.config.get("distributed.admin.tick.interval") == TICK_INTERVAL == "1s"


class _TaskFiles(distributed.SchedulerPlugin):  # type: ignore[misc]
    """A scheduler plugin (in this process) that notes each batch task's files, by batch id
    (the order the coordinator submitted them in)."""

    name = "bulkdrive-test-task-files"

    def __init__(self, scheduler: Any) -> None:
        self.scheduler = scheduler
        self.files: dict[int, int] = {}

    def transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        task = self.scheduler.tasks.get(key)
        if start == "released" and task is not None and task.run_spec is not None:
            _run_id, batch_id, batch = task.run_spec.args
            self.files.setdefault(batch_id, len(batch.files))


async def test_the_last_tasks_are_short_so_the_workers_end_together(
    dask_cluster: Any, emulator: Emulator, tmp_path: Path
) -> None:
    """Toward the end of the tree a batch goes out in pieces of its share of the files still
    to go (over the tasks the workers run at once): the last tasks are short, and the worker
    that takes one ends about when the others end. Before, the last task was the rest of a
    batch of 512 files (here 398), and one worker ran it alone."""
    source = make_tree(tmp_path / "src", small_files=900)
    capture = _TaskFiles(dask_cluster.scheduler)
    dask_cluster.scheduler.add_plugin(capture, name=capture.name)
    config = TransferConfig(transfers=4)
    try:
        async with _on_cluster(dask_cluster, emulator, source, config) as (client, engine):
            plan = RunPlan(source=source, config=config)
            summary = await TreeUpload(client, plan, engine=engine).run()
    finally:
        dask_cluster.scheduler.remove_plugin(name=capture.name)
    files = assert_stored(source, stored(emulator))
    assert summary.files.uploaded == files and summary.files.failed == 0
    sizes = [capture.files[batch] for batch in sorted(capture.files)]
    assert sum(sizes) == files and len(sizes) == engine.statistics()["batches"]
    # The last batch goes out once the walk is through (the run knows what is left): its
    # tasks carry at most the whole tree's share of the 6 tasks the workers run at once.
    assert engine.tasks_at_once == 6
    share = -(-files // engine.tasks_at_once)
    assert max(sizes[-3:]) <= share < 200, sizes
    assert engine.tail_task_files(1200) == 200
    assert engine.tail_task_files(10) == TAIL_FILES
    # Far from the end a task holds a batch's files: at least START_TASK_FILES, more when the
    # workers' pace lets a task hold more (a quiet machine: 593 seen), so not pinned here.
    assert engine.tail_task_files(10**6) == engine.batch_files >= START_TASK_FILES


def _chunks(total: int, size: int) -> list[range]:
    return [range(start, min(total, start + size)) for start in range(0, total, size)]


async def test_a_name_refused_in_a_folder_fails_that_file_alone(
    dask_cluster: Any, emulator: Emulator, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The files after a folder's first are checked by name only (their folder was waited for
    once): under --invalid-names fail a bad name among them fails alone."""
    # The failed file's log line holds its undecodable name, which pytest-xdist cannot send
    # back from its worker process with the test's report.
    caplog.set_level(logging.CRITICAL, logger="bulkdrive")
    source = tmp_path / "src"
    (source / "d").mkdir(parents=True)
    for name in (b"a.txt", b"b\xe9.txt", b"c.txt"):
        with open(os.path.join(os.fsencode(source / "d"), name), "wb") as f:
            f.write(name * 3)
    (source / "e").mkdir()
    (source / "e" / "x.txt").write_bytes(b"x")
    config = TransferConfig(transfers=4)
    async with _on_cluster(dask_cluster, emulator, source, config) as (client, engine):
        plan = RunPlan(source=source, config=config, invalid_names=InvalidNames.FAIL)
        summary = await TreeUpload(client, plan, engine=engine).run()
    assert (summary.files.uploaded, summary.files.failed) == (3, 1)
    assert stored(emulator, "d", "a.txt").read_bytes() == b"a.txt" * 3
    assert stored(emulator, "d", "c.txt").read_bytes() == b"c.txt" * 3
    assert stored(emulator, "e", "x.txt").read_bytes() == b"x"
    assert sorted(p.name for p in stored(emulator, "d").iterdir()) == ["a.txt", "c.txt"]


def test_local_workers_keep_glibcs_adaptive_mmap_threshold() -> None:
    """Dask spawns workers with MALLOC_TRIM_THRESHOLD_ set, which turns glibc's adaptive mmap
    threshold off: every chunk buffer became a fresh mmap faulted in page by page (1.3 M
    minor faults for 4 GiB of large files against 52 k in one process). A local cluster's
    workers are spawned without it."""
    from distributed.nanny import _get_env_variables

    assert "MALLOC_TRIM_THRESHOLD_" in _get_env_variables("distributed.nanny.pre-spawn-environ")
    with coordinator_config():
        spawned = _get_env_variables("distributed.nanny.pre-spawn-environ")
    assert "MALLOC_TRIM_THRESHOLD_" not in spawned
    assert spawned["OMP_NUM_THREADS"] == "1"  # the rest of Dask's environment is kept
