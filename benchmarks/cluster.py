"""`--cluster` measured: the engine's overhead, the coordinator's ceiling, and the gain against a
latency-bound server. Benchmarks, not tests: the machine is shared, so take the ratios (each
measured within one run, medians of `--repeat`) and not the absolute numbers.

    python benchmarks/cluster.py overhead [--repeat 3]   # --cluster local:1 vs one process
    python benchmarks/cluster.py latency [--repeat 3]    # local:2 vs one process, 5 ms server
    python benchmarks/cluster.py coordinator [--files 200000] [--repeat 3]  # stub workers

`overhead` and `latency` run `bulkdrive upload` as a program against `bulkdrive serve` (its own
process, a fresh root per run) and compare the run's own `elapsed_seconds` from `--report`:
the time from the start of the walk to the last outcome, without the few seconds a LocalCluster
takes to start its worker processes (paid once per command, whatever the tree's size). Each
side's CPU seconds are shown twice: the whole processes' (their start and end included) and
during the run itself (sampled from /proc). `latency` also runs one process at 16 transfers,
as a reference beside the row: the cluster's 16 uploads in flight, without a cluster.
`coordinator` runs the whole coordinator (walk, journal, batches through Dask, outcomes) in this
process with workers whose task returns "uploaded" at once, on `--files` files and on twice
as many, `--repeat` runs of each interleaved, and reports the medians of files/s, CPU per file
and the process's peak RSS, with its RSS over each run (flat memory: the same peak for twice
the files, both runs past the ramp of the first batches).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

KiB, MiB = 1024, 1024 * 1024
USER, PASSWORD, SHARE = "bench", "bench-pass", "1"


# --- trees --------------------------------------------------------------------------------


def make_tree(root: Path, count: int, size: int, per_folder: int = 100) -> Path:
    """`count` files of `size` random-ish bytes, `per_folder` to a folder; built once."""
    done = root / ".complete"
    if done.exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    block = os.urandom(max(size, 1))
    for i in range(count):
        folder = root / f"d{i // per_folder:05d}"
        if i % per_folder == 0:
            folder.mkdir(parents=True, exist_ok=True)
        # Different bytes per file without the cost of os.urandom per small file.
        data = i.to_bytes(8, "big") + block[8:size] if size >= 8 else block[:size]
        (folder / f"f{i:07d}.bin").write_bytes(data)
    done.write_text("")
    return root


def large_tree(root: Path, count: int, size: int) -> Path:
    done = root / ".complete"
    if done.exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    for i in range(count):
        with (root / f"large-{i}.bin").open("wb") as out:
            for _ in range(size // MiB):
                out.write(os.urandom(MiB))
    done.write_text("")
    return root


# --- one upload against a fresh emulator --------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _server_root() -> Path:
    shm = Path("/dev/shm")
    if shm.is_dir() and shutil.disk_usage(shm).free > 3 * 1024 * MiB:
        return Path(tempfile.mkdtemp(prefix="bulkdrive-cluster-bench-", dir=shm))
    return Path(tempfile.mkdtemp(prefix="bulkdrive-cluster-bench-"))


def _cpu_of_children() -> float:
    """CPU seconds (user + system) of this process's children that ended, and theirs."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


#: How often `_CpuSampler` reads the processes' CPU times (seconds).
CPU_EVERY = 0.05
#: The server busier than this share of a core is in the run (it idles while the upload
#: starts, a LocalCluster its workers, and ends; the run kept it ~40-50 % busy here).
SERVER_BUSY = 0.2


class _CpuSampler:
    """The CPU seconds of the upload (its coordinator), its worker processes and the server
    during the run itself. The processes' totals also hold the upload's start and end (the
    imports, a LocalCluster starting and stopping its processes: ~3 CPU seconds for
    `--cluster local:2`), which its `elapsed_seconds` leave out. Read from /proc every
    CPU_EVERY s (~0.1 ms a read, where psutil's search for children took ~2 ms); the run is
    the `elapsed_seconds` that end where the server was last busy. Nothing where there is no
    /proc."""

    def __init__(self, upload: int, server: int) -> None:
        self._upload = upload
        self._server = server
        self._samples: list[tuple[float, dict[str, float]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        workers: dict[int, float] = {}  # each worker process's last CPU seconds
        pids: list[int] = []
        for turn in itertools.count():
            if self._stop.is_set():
                return
            now = time.monotonic()
            coordinator, server = _cpu_of(self._upload), _cpu_of(self._server)
            if coordinator is None or server is None:  # the upload ended (or no /proc)
                return
            if turn % 10 == 0:  # they start with the cluster, long before the run
                pids = _descendants(self._upload)
            for pid in pids:
                seconds = _cpu_of(pid)
                if seconds is not None:  # else gone (the run's end): its last sample stands
                    workers[pid] = seconds
            sample = {
                "coordinator": coordinator,
                "workers": sum(workers.values()),
                "server": server,
            }
            self._samples.append((now, sample))
            self._stop.wait(CPU_EVERY)

    def during_run(self, elapsed: float) -> dict[str, float]:
        """Each side's CPU seconds over the `elapsed` seconds that end where the server was
        last busy (more than SERVER_BUSY of a core over two samples: a stray clock tick
        charged to an idle server is not that); empty when the samples show no run."""
        samples = self._samples
        end = next(
            (
                i
                for i in range(len(samples) - 1, 1, -1)
                if samples[i][1]["server"] - samples[i - 2][1]["server"]
                > SERVER_BUSY * (samples[i][0] - samples[i - 2][0])
            ),
            None,
        )
        if end is None or samples[end][0] - elapsed < samples[0][0]:
            return {}
        began = samples[end][0] - elapsed
        start = max(i for i, (at, _) in enumerate(samples) if at <= began)
        return {
            side: samples[end][1][side] - samples[start][1][side]
            for side in ("coordinator", "workers", "server")
        }


_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _cpu_of(pid: int) -> float | None:
    """A process's CPU seconds (user + system) from /proc; None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rpartition(b")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime


def _descendants(pid: int) -> list[int]:
    """A process's children, theirs, and so on (/proc's list of each thread's children)."""
    found: list[int] = []
    parents = [pid]
    while parents:
        parent = parents.pop()
        try:
            threads = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for thread in threads:
            try:
                with open(f"/proc/{parent}/task/{thread}/children") as children:
                    kids = [int(kid) for kid in children.read().split()]
            except OSError:
                continue
            found += kids
            parents += kids
    return found


def _serve(root: Path, serve_extra: list[str]) -> tuple[subprocess.Popen[bytes], int]:
    """`bulkdrive serve` in its own process, on a free port; returns once it listens."""
    port = _free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bulkdrive",
            "serve",
            "--port",
            str(port),
            "--root",
            str(root),
            "--user",
            f"{USER}:{PASSWORD}",
            "--share",
            f"{SHARE}:bench",
            *serve_extra,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return server, port
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                server.terminate()
                server.wait(timeout=30)
                raise
            time.sleep(0.05)


def upload_once(source: Path, extra: list[str], serve_extra: list[str]) -> dict[str, Any]:
    """One `bulkdrive upload` against a fresh `bulkdrive serve`; its --report, plus wall time
    and the CPU seconds of the upload (with its Dask workers) and of the server."""
    cpu: dict[str, float] = {}
    root = _server_root()
    work = Path(tempfile.mkdtemp(prefix="bulkdrive-cluster-run-"))
    bulkdrive = [sys.executable, "-m", "bulkdrive"]
    server, port = _serve(root, serve_extra)
    try:
        env = {**os.environ, "BULKDRIVE_PASSWORD": PASSWORD, "BULKDRIVE_STATE_DIR": str(work)}
        report = work / "report.json"
        command = [
            *bulkdrive,
            "upload",
            str(source),
            "--url",
            f"http://127.0.0.1:{port}/webconsole/api",
            "--user",
            USER,
            "--share",
            SHARE,
            "--no-progress",
            "-q",
            "--journal",
            str(work / "journal.sqlite"),
            "--report",
            str(report),
            *extra,
        ]
        began, cpu_before = time.monotonic(), _cpu_of_children()
        upload = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        sampler = _CpuSampler(upload.pid, server.pid)
        sampler.start()
        try:
            _, stderr = upload.communicate()
        finally:
            sampler.stop()
        wall = time.monotonic() - began
        cpu["upload"] = _cpu_of_children() - cpu_before
        if upload.returncode != 0:
            raise RuntimeError(f"{' '.join(extra)}: exit {upload.returncode}: {stderr!r}")
        data: dict[str, Any] = json.loads(report.read_text())
        data["wall_seconds"] = wall
        data["cpu_seconds"] = cpu
        data["run_cpu_seconds"] = sampler.during_run(data["elapsed_seconds"])
        return data
    finally:
        before_server = _cpu_of_children()
        server.terminate()
        server.wait(timeout=30)
        cpu["server"] = _cpu_of_children() - before_server
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


def compare(
    name: str,
    source: Path,
    contenders: dict[str, list[str]],
    serve_extra: list[str],
    repeat: int,
    unit: str,
) -> dict[str, float]:
    """Medians of `repeat` runs per contender, interleaved (a noisy neighbour hurts all alike)."""
    seconds: dict[str, list[float]] = {c: [] for c in contenders}
    walls: dict[str, list[float]] = {c: [] for c in contenders}
    cpus: dict[str, list[dict[str, float]]] = {c: [] for c in contenders}
    runs_cpu: dict[str, list[dict[str, float]]] = {c: [] for c in contenders}
    amount = 0.0
    for _ in range(repeat):
        for contender, extra in contenders.items():
            data = upload_once(source, extra, serve_extra)
            seconds[contender].append(data["elapsed_seconds"])
            walls[contender].append(data["wall_seconds"])
            cpus[contender].append(data["cpu_seconds"])
            runs_cpu[contender].append(data["run_cpu_seconds"])
            amount = data["files"]["uploaded"] if unit == "files" else data["bytes"]["sent"]
    medians = {c: statistics.median(s) for c, s in seconds.items()}
    for contender in contenders:
        rate = amount / medians[contender]
        shown = f"{rate:,.0f} files/s" if unit == "files" else f"{rate / 1e6:,.0f} MB/s"
        print(
            f"{name:<14} {contender:<22} run {medians[contender]:7.2f} s  {shown:>14}"
            f"   (wall {statistics.median(walls[contender]):.2f} s; runs "
            + ", ".join(f"{s:.2f}" for s in seconds[contender])
            + ")"
        )
        # The machine has few cores: what each side cost says whether the ratio is the
        # engine's or the machine's.
        upload = statistics.median(c["upload"] for c in cpus[contender])
        server = statistics.median(c.get("server", 0.0) for c in cpus[contender])
        print(
            f"{'':<14} {'':<22} CPU seconds: bulkdrive (with its workers) {upload:.1f},"
            f" server {server:.1f} (whole processes, start and end included);"
            f" cores on this machine: {os.cpu_count()}"
        )
        in_run = [c for c in runs_cpu[contender] if c]
        if in_run:
            side = {k: statistics.median(c[k] for c in in_run) for k in in_run[0]}
            busy = sum(side.values()) / medians[contender] / (os.cpu_count() or 1)
            print(
                f"{'':<14} {'':<22} CPU seconds during the run: bulkdrive"
                f" {side['coordinator']:.2f}"
                + (f" + its workers {side['workers']:.2f}" if side["workers"] else "")
                + f", server {side['server']:.2f} ({busy:.0%} of the cores;"
                f" sampled every {CPU_EVERY:g} s, medians of {len(in_run)})"
            )
    return medians


def overhead(data_dir: Path, repeat: int) -> None:
    large = large_tree(data_dir / "cluster-large", 8, 128 * MiB)
    small = make_tree(data_dir / "cluster-small", 10_000, 4 * KiB)
    for name, source, unit in (("large", large, "bytes"), ("small", small, "files")):
        flags = ["--transfers", "8"] + (["--no-verify"] if name == "large" else [])
        m = compare(
            name,
            source,
            {"one process": flags, "--cluster local:1": [*flags, "--cluster", "local:1"]},
            [],
            repeat,
            unit,
        )
        print(f"{name}: --cluster local:1 at {m['one process'] / m['--cluster local:1']:.2f}×")


def latency(data_dir: Path, repeat: int) -> None:
    small = make_tree(data_dir / "cluster-small", 10_000, 4 * KiB)
    delay = ["--faults", "delay", "--fault-rate", "1", "--fault-delay-seconds", "0.005"]
    flags = ["--transfers", "8"]
    # A reference beside the row: one process with the cluster's 16 uploads in flight, no
    # coordination at all; what 16 in flight against this server get on this machine.
    reference = "one process ×16 (ref.)"
    m = compare(
        "5 ms server",
        small,
        {
            "one process": flags,
            "--cluster local:2": [*flags, "--cluster", "local:2"],
            reference: ["--transfers", "16"],
        },
        delay,
        repeat,
        "files",
    )
    print(f"5 ms server: --cluster local:2 at {m['one process'] / m['--cluster local:2']:.2f}×")
    print(
        f"reference: one process at --transfers 16 at {m['one process'] / m[reference]:.2f}×"
        " one process at 8 (not the row: the same 16 uploads in flight, without a cluster)"
    )


# --- the coordinator alone, with stub workers ----------------------------------------------


async def _coordinate(
    source: Path, journal_path: Path, sampling: tuple[threading.Thread, threading.Event] | None
) -> dict[str, Any]:
    import distributed
    from cluster_stub import stub_batch

    from bulkdrive.client import EdgeDriveClient
    from bulkdrive.cluster import batches_out, coordinator_config, local_cluster
    from bulkdrive.cluster_engine import ClusterEngine
    from bulkdrive.config import Credentials, Secret, TransferConfig
    from bulkdrive.journal import JobKey, Journal
    from bulkdrive.scheduler import RunPlan, TreeUpload

    # The server in its own process, as a real coordinator's is (it creates the remote
    # folders): in this process it shared the coordinator's event loop and interpreter lock.
    root = Path(tempfile.mkdtemp(prefix="bulkdrive-coordinator-bench-"))
    server, port = _serve(root, [])
    url = f"http://127.0.0.1:{port}/webconsole/api"
    try:
        with coordinator_config():
            async with (
                # The LocalCluster `--cluster local:2` starts (its scheduler in this process).
                local_cluster(2) as cluster,
                distributed.Client(cluster, asynchronous=True) as dask,
                EdgeDriveClient.connect(
                    url,
                    Credentials(USER, Secret(PASSWORD)),
                    share_id=SHARE,
                    config=TransferConfig(),
                ) as client,
                Journal.open(
                    journal_path, JobKey.of(url, SHARE, "", source), exclusive=True
                ) as journal,
            ):
                # SRC's path on the workers, as `open_cluster` gives it to a real run.
                path_map = (os.fspath(source), os.path.abspath(source))
                # The batches out at once `open_cluster` allows this cluster (2 × 2 threads).
                engine = ClusterEngine(
                    dask,
                    "bench",
                    in_flight=batches_out(threads=2 * 2, workers=2),
                    task=stub_batch,
                    path_map=path_map,
                )
                run = TreeUpload(client, RunPlan(source=source), journal=journal, engine=engine)
                cpu, main_thread = _process_cpu(), time.thread_time()
                if sampling is not None:
                    sampling[0].start()
                try:
                    summary = await run.run()
                finally:
                    if sampling is not None:
                        sampling[1].set()
                return {
                    "files": summary.files.uploaded,
                    "seconds": summary.elapsed_seconds,
                    # The run's CPU: the whole process (its threads: the journal's commits,
                    # the count pass, the walk's reads) and the event loop's thread alone.
                    "cpu_seconds": _process_cpu() - cpu,
                    "main_thread_cpu_seconds": time.thread_time() - main_thread,
                }
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(root, ignore_errors=True)


def _process_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MiB


def _sample_rss(samples: list[tuple[float, float]], stop: threading.Event) -> None:
    """The process's RSS every RSS_EVERY seconds, from the start of the run to its end."""
    began = time.monotonic()
    while not stop.is_set():
        samples.append((time.monotonic() - began, _rss_mib()))
        stop.wait(RSS_EVERY)


#: How often the coordinator's RSS is sampled during a run (seconds).
RSS_EVERY = 0.25


def coordinator_child(source: Path) -> None:
    import anyio

    from bulkdrive.cli import _loop_options

    work = Path(tempfile.mkdtemp(prefix="bulkdrive-coordinator-journal-"))
    samples: list[tuple[float, float]] = []
    stop = threading.Event()
    sampler = threading.Thread(target=_sample_rss, args=(samples, stop), daemon=True)
    try:
        # The event loop `bulkdrive upload` runs on (uvloop where it is installed).
        result = anyio.run(
            _coordinate,
            source,
            work / "journal.sqlite",
            (sampler, stop),
            backend_options=_loop_options(),
        )
    finally:
        stop.set()
        shutil.rmtree(work, ignore_errors=True)
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    # The RSS over the run, in tenths of its time (the highest sample of each tenth).
    seconds = max((t for t, _ in samples), default=0.0) or 1.0
    tenths = [0.0] * 10
    for at, rss in samples:
        tenth = min(9, int(at / seconds * 10))
        tenths[tenth] = max(tenths[tenth], rss)
    result["rss_by_tenth_mib"] = tenths
    # CPU of the children that ended: the stub workers' processes and the server.
    result["children_cpu_seconds"] = _cpu_of_children()
    print(json.dumps(result))


def coordinator(data_dir: Path, files: int, repeat: int) -> None:
    """The coordinator with stub workers on `files` and on twice as many files, `repeat` runs
    of each, interleaved; medians. Memory is flat when the larger tree's peak RSS is no
    higher than the smaller one's: both runs are long past the ramp of the first batches."""
    sizes = (files, 2 * files)
    sources = {
        count: make_tree(data_dir / f"cluster-stub-{count}", count, 0, per_folder=500)
        for count in sizes
    }
    runs: dict[int, list[dict[str, Any]]] = {count: [] for count in sizes}
    for _ in range(repeat):
        for count in sizes:
            done = subprocess.run(
                [sys.executable, __file__, "coordinator-child", str(sources[count])],
                capture_output=True,
                check=True,
            )
            result = json.loads(done.stdout.decode().strip().splitlines()[-1])
            runs[count].append(result)
            n = result["files"]
            print(
                f"  {n:,} files in {result['seconds']:.2f} s = {n / result['seconds']:,.0f}"
                f" files/s; peak RSS {result['peak_rss_mib']:.0f} MiB; RSS by tenth of the run "
                + " ".join(f"{r:.0f}" for r in result["rss_by_tenth_mib"]),
                flush=True,
            )
    for count in sizes:
        results = runs[count]
        n = results[0]["files"]

        def median(key: str, of: list[dict[str, Any]] = results) -> float:
            return float(statistics.median(r[key] for r in of))

        rates = sorted(r["files"] / r["seconds"] for r in results)
        print(
            f"coordinator, stub workers: {n:,} files: median {statistics.median(rates):,.0f}"
            f" files/s (runs " + ", ".join(f"{r:,.0f}" for r in rates) + ");"
            f" CPU µs per file: process {median('cpu_seconds') / n * 1e6:.0f},"
            f" event loop {median('main_thread_cpu_seconds') / n * 1e6:.0f},"
            f" stub workers and server {median('children_cpu_seconds') / n * 1e6:.0f};"
            f" peak RSS {median('peak_rss_mib'):.0f} MiB"
            f" (runs " + ", ".join(f"{r['peak_rss_mib']:.0f}" for r in results) + ")"
        )
    small, large = (statistics.median(r["peak_rss_mib"] for r in runs[c]) for c in sizes)
    print(
        f"memory: peak RSS {large:.0f} MiB for {sizes[1]:,} files against {small:.0f} MiB for"
        f" {sizes[0]:,} ({large / small:.2f}×)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["overhead", "latency", "coordinator", "coordinator-child"])
    parser.add_argument("source", nargs="?", type=Path)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--files", type=int, default=200_000)
    parser.add_argument("--data-dir", type=Path, default=Path("bench-data"))
    args = parser.parse_args()
    if args.what == "coordinator-child":
        coordinator_child(args.source)
    elif args.what == "coordinator":
        coordinator(args.data_dir, args.files, args.repeat)
    elif args.what == "overhead":
        overhead(args.data_dir, args.repeat)
    else:
        latency(args.data_dir, args.repeat)


if __name__ == "__main__":
    main()
