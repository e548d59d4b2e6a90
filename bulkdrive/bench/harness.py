"""The measurement core of `bulkdrive bench` and `make bench`.

For each workload and repetition, every contender runs as its own child process against a fresh
emulator, itself a separate process, so that the child's resource usage (`os.wait4`: peak RSS,
user + system CPU seconds) is the contender's own and the server's work is not counted. The
wall time is the child's whole life: start-up, login and the upload, what a user waits for.

Rules learnt from measuring (design/performance-notes.md):
- every run writes into a fresh emulator root; big trees are never deleted between runs of
  many-file workloads (ext4 is slow to create files for ~30 s after a mass delete), only at the
  end; roots holding a few big files are removed right after their check;
- dirty pages of the previous run are flushed (`os.sync`) before each measured run, the
  contenders' order rotates between repetitions, so no contender always runs after the same one,
  and the workloads' repetitions interleave (see `schedule`), so no workload always runs later;
- stored bytes are checked after every run: a fast wrong upload is not a measurement.

Nothing here imports bulkdrive's upload code: the contenders are commands, so the harness
measures exactly what a user runs.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bulkdrive.bench import workloads
from bulkdrive.bench.contenders import (
    BULKDRIVE_CONTENDERS,
    CONTENDERS,
    contender_command,
    inner_seconds,
    total_known_seconds,
)
from bulkdrive.bench.processes import (
    Server,
    local_emulator,
    precompile,
    process_cpu_seconds,
    run_measured,
)
from bulkdrive.bench.profiling import hot_spots
from bulkdrive.bench.results import (
    MB,
    Measurement,
    MiB,
    ratios,
    summarize,
    targets,
)
from bulkdrive.bench.verify import verify_local, verify_remote

CHUNK_SIZE = 4 * MiB
SWEEP = (1, 2, 4, 8, 16, 32)
#: Roots holding at most this many files are removed right after their check (cheap to
#: delete); bigger trees wait for the end of the whole run (the ext4 trap).
EAGER_DELETE_MAX_FILES = 100


@dataclass(frozen=True)
class BenchConfig:
    workloads: tuple[str, ...] = ("large", "small", "mixed")
    repeat: int = 3
    transfers: int = 8
    sweep: tuple[int, ...] = ()  # extra --transfers values, for --plot
    contenders: tuple[str, ...] = tuple(CONTENDERS)
    data_dir: Path = Path("bench-data")
    chunk_size: int = CHUNK_SIZE
    python: str = sys.executable
    remote: Server | None = None  # a real server instead of local emulators
    timeout: float = 3600.0  # seconds per contender run
    keep: bool = False  # keep the emulators' stored trees
    #: More `bulkdrive serve` options, e.g. ("--latency", "0.02s") for the network sweep.
    emulator_args: tuple[str, ...] = ()
    profile_dir: Path | None = None  # py-spy the bulkdrive contenders into this folder
    #: Where the emulators store uploads. None: a RAM file system (/dev/shm) when it has room,
    #: so the client is measured rather than the disk's write-back; else DATA_DIR/runs.
    server_dir: Path | None = None


Log = Callable[[str], None]


def _stderr_log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# --- workloads -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    name: str
    source: Path
    files: int
    bytes: int


def prepare_workload(name: str, data_dir: Path, log: Log = _stderr_log) -> Workload:
    """Build the workload under DATA_DIR/workloads once; later runs reuse it."""
    if name not in workloads.WORKLOADS:
        raise ValueError(f"unknown workload {name!r} (known: {', '.join(workloads.WORKLOADS)})")
    root = data_dir / "workloads" / name
    marker = root.with_name(name + ".complete")
    if not marker.exists() or marker.read_text() != workloads.fingerprint(name):
        log(f"building workload {name} in {root} (once per definition; reused by later runs)")
    workloads.build(name, root)
    files = total = 0
    for _, size in workloads.WORKLOADS[name]():
        files += 1
        total += size
    return Workload(name, root, files, total)


def warm_page_cache(source: Path) -> None:
    """Read the tree once so that no contender pays for the first read from disk."""
    for dirpath, _, filenames in os.walk(source):
        for name in filenames:
            with open(os.path.join(dirpath, name), "rb", buffering=0) as fh:
                while fh.read(8 * MiB):
                    pass


def prefault_storage(directory: Path, nbytes: int) -> None:
    """Write and delete `nbytes` where the emulators will store, before the first run.

    On a virtual machine the guest's never-touched or returned memory costs a trip to the
    hypervisor per page: measured here, a second 2 GiB written to /dev/shm took 5.8 s of kernel
    time against 0.75 s for the first. Whichever contender ran first on a workload paid that
    (bulkdrive's first large run: 8.5 s of server CPU instead of 3.4 s). Pages written once
    and freed are reused by the next writer at the normal cost.
    """
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f".prefault-{os.getpid()}"
    piece = bytes(8 * MiB)
    try:
        with open(path, "wb", buffering=0) as fh:
            for _ in range(0, nbytes, len(piece)):
                fh.write(piece)
    except OSError:
        pass  # best effort: a full disk here is the run's own problem to report
    finally:
        with contextlib.suppress(OSError):
            path.unlink()


# --- one contender run, measured -------------------------------------------------------------


def _tail(path: Path, limit: int = 300) -> str:
    with contextlib.suppress(OSError):
        text = path.read_text(errors="replace").strip()
        return " | ".join(text.splitlines()[-3:])[-limit:]
    return ""


# --- the whole benchmark ---------------------------------------------------------------------


RAM_DIR = Path("/dev/shm")


def _in_ram(path: Path) -> bool:
    return RAM_DIR in path.parents


def default_server_dir(workload_bytes: int) -> Path | None:
    """/dev/shm when it exists with room for two copies of the biggest workload, else None."""
    try:
        st = os.statvfs(RAM_DIR)
    except OSError:
        return None
    free = st.f_bavail * st.f_frsize
    return (
        RAM_DIR if os.access(RAM_DIR, os.W_OK) and free > 2 * workload_bytes + 1024 * MiB else None
    )


def _server_root(config: BenchConfig, run_root: Path, tag: str) -> Path:
    base = config.server_dir
    if base is None:
        return run_root / tag / "server"
    return base / f"bulkdrive-bench-{os.getpid()}-{run_root.name}" / tag


def _server(
    stack: contextlib.ExitStack,
    config: BenchConfig,
    workload: Workload,
    root: Path,
    run_dir: Path,
) -> Server:
    """The server a contender's run uploads to: the remote one, or a fresh local emulator
    (stopped with `stack`) that, for a tree, refuses files whose folders were not created."""
    if config.remote is not None:
        return config.remote
    return stack.enter_context(
        local_emulator(
            root,
            config.python,
            run_dir / "emulator.log",
            strict_parents=workload.name in workloads.STRICT_PARENTS,
            extra_args=config.emulator_args,
        )
    )


def _order(contenders: Sequence[str], repetition: int) -> list[str]:
    k = repetition % len(contenders)
    return list(contenders[k:]) + list(contenders[:k])


@dataclass(frozen=True)
class Step:
    """One measured run of the schedule."""

    workload: int  # index into the prepared workloads
    repetition: int
    transfers: int
    contender: str


def schedule(
    workload_count: int,
    repeat: int,
    transfer_values: Sequence[int],
    contenders: Sequence[str],
    default_transfers: int,
) -> list[Step]:
    """The order of the runs: repetition by repetition, every workload in each (tree,
    tree-flat, tree, tree-flat, …), so that a change of the machine's load lands on every
    workload alike rather than on whichever ran last; ratios across workloads depend on it as
    ratios across contenders do. Contenders rotate between repetitions; a sequential contender
    runs once per repetition, at the default transfers."""
    steps = []
    for repetition in range(repeat):
        for workload in range(workload_count):
            for transfers in transfer_values:
                for contender in _order(contenders, repetition):
                    concurrent = CONTENDERS[contender].concurrent
                    if not concurrent and transfers != default_transfers:
                        continue
                    steps.append(
                        Step(workload, repetition, transfers if concurrent else 1, contender)
                    )
    return steps


def measure_one(
    config: BenchConfig,
    workload: Workload,
    contender: str,
    transfers: int,
    repetition: int,
    run_root: Path,
    log: Log,
) -> Measurement:
    """One contender, one repetition: a fresh emulator (unless remote), run, check."""
    tag = f"{workload.name}-{contender}-t{transfers}-r{repetition}"
    run_dir = run_root / tag
    run_dir.mkdir(parents=True)
    server_root = _server_root(config, run_root, tag)
    folder = f"\\bench-{run_root.name}\\{tag}"
    stdout, stderr = run_dir / "stdout.txt", run_dir / "stderr.txt"
    with contextlib.ExitStack() as stack:
        server = _server(stack, config, workload, server_root, run_dir)
        argv, env = contender_command(
            contender,
            workload.source,
            server,
            folder,
            transfers,
            config.chunk_size,
            run_dir,
            config.python,
        )
        os.sync()  # the previous run's dirty pages are not this run's cost
        server_cpu = process_cpu_seconds(server.pid)
        usage = run_measured(argv, env, run_dir, stdout, stderr, config.timeout, config.python)
        server_after = process_cpu_seconds(server.pid)
        if server_cpu is not None and server_after is not None:
            server_cpu = server_after - server_cpu
        else:
            server_cpu = None
        error = ""
        if usage.timed_out:
            error = f"timed out after {config.timeout:.0f} s"
        elif usage.exit_code != 0:
            error = f"exit {usage.exit_code}: {_tail(stderr) or _tail(stdout)}"
        if not error:
            if server.storage is not None:
                stored = server.storage.joinpath(*[p for p in folder.split("\\") if p])
                error = verify_local(workload.source, stored)
            else:
                error = verify_remote(server, folder, workload.source)
    if (
        server.storage is not None
        and not config.keep
        and (_in_ram(server_root) or workload.files <= EAGER_DELETE_MAX_FILES)
    ):
        shutil.rmtree(server_root, ignore_errors=True)
    m = Measurement(
        workload=workload.name,
        contender=contender,
        transfers=transfers,
        repetition=repetition,
        files=workload.files,
        bytes=workload.bytes,
        wall_seconds=usage.wall_seconds,
        cpu_seconds=usage.user_seconds + usage.system_seconds,
        user_seconds=usage.user_seconds,
        system_seconds=usage.system_seconds,
        peak_rss_bytes=usage.peak_rss_bytes,
        exit_code=usage.exit_code,
        verified=not error,
        inner_seconds=inner_seconds(contender, run_dir, stdout),
        total_known_seconds=total_known_seconds(contender, run_dir),
        server_cpu_seconds=server_cpu,
        error=error,
    )
    status = "ok" if m.ok else f"FAILED: {m.error}"
    log(
        f"  {tag:<40} {m.wall_seconds:8.2f} s {m.mb_per_s:9.1f} MB/s {m.files_per_s:9.1f} "
        f"files/s  rss {m.peak_rss_bytes / MiB:7.1f} MiB  cpu {m.cpu_seconds:6.2f} s  "
        f"server cpu {m.server_cpu_seconds or 0:6.2f} s  {status}"
    )
    return m


def run_benchmark(config: BenchConfig, log: Log = _stderr_log) -> dict[str, Any]:
    """Measure every contender on every workload; the results document (see `--json`)."""
    contenders = [c for c in config.contenders if c in CONTENDERS]
    if config.remote is not None:
        contenders = [c for c in contenders if CONTENDERS[c].remote_ok]
    if not contenders:
        raise ValueError("no contender to measure")
    transfer_values = sorted({config.transfers, *config.sweep})
    # Contenders run in their own folders: every path they are given must be absolute.
    config = replace(
        config,
        data_dir=config.data_dir.resolve(),
        profile_dir=(config.profile_dir.resolve() if config.profile_dir else None),
    )
    config.data_dir.mkdir(parents=True, exist_ok=True)
    run_root = config.data_dir / "runs" / time.strftime("%Y%m%d-%H%M%S")
    run_root = _unique(run_root)
    measurements: list[Measurement] = []
    profiles: dict[str, Any] = {}
    started = time.time()
    prepared = [prepare_workload(name, config.data_dir, log) for name in config.workloads]
    precompile(config.python)
    if config.server_dir is None and config.remote is None:
        config = replace(config, server_dir=default_server_dir(max(w.bytes for w in prepared)))
    if config.remote is None:
        where = config.server_dir or run_root
        log(f"emulator storage: {where} ({'RAM' if _in_ram(where / 'x') else 'disk'})")
    try:
        storage = _server_root(config, run_root, "x").parent
        if config.remote is None and _in_ram(storage):
            # Before the warm-up: it uses RAM too.
            prefault_storage(storage, max(w.bytes for w in prepared))
        for workload in prepared:
            log(
                f"workload {workload.name}: {workload.files} files, "
                f"{workload.bytes / MB:.1f} MB; {config.repeat} repetition(s), "
                f"transfers {transfer_values}"
            )
            warm_page_cache(workload.source)
        for step in schedule(
            len(prepared), config.repeat, transfer_values, contenders, config.transfers
        ):
            measurements.append(
                measure_one(
                    config,
                    prepared[step.workload],
                    step.contender,
                    step.transfers,
                    step.repetition,
                    run_root,
                    log,
                )
            )
        if config.profile_dir is not None:
            for workload in prepared:
                profiles[workload.name] = profile_bulkdrive(config, workload, run_root, log)
    finally:
        if not config.keep:
            shutil.rmtree(run_root, ignore_errors=True)
            if config.server_dir is not None:
                shutil.rmtree(_server_root(config, run_root, "x").parent, ignore_errors=True)
    return results_document(config, contenders, measurements, profiles, time.time() - started)


def _unique(path: Path) -> Path:
    candidate, n = path, 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}-{n}")
    return candidate


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
    }


def results_document(
    config: BenchConfig,
    contenders: Sequence[str],
    measurements: Sequence[Measurement],
    profiles: dict[str, Any],
    seconds: float,
) -> dict[str, Any]:
    summary = summarize(measurements)
    rs = ratios(summary, config.workloads, config.transfers)
    return {
        "version": 1,
        "machine": machine(),
        "config": {
            "workloads": list(config.workloads),
            "repeat": config.repeat,
            "transfers": config.transfers,
            "sweep": sorted({config.transfers, *config.sweep}),
            "chunk_size": config.chunk_size,
            "contenders": list(contenders),
            "server": config.remote.url if config.remote else "local emulator (subprocess)",
        },
        "seconds": round(seconds, 1),
        "runs": [m.to_json() for m in measurements],
        "summary": summary,
        "ratios": rs,
        "targets": targets(summary, rs, config.workloads, config.transfers, config.chunk_size),
        "profiles": profiles,
    }


# --- profiles --------------------------------------------------------------------------------


def profile_bulkdrive(
    config: BenchConfig, workload: Workload, run_root: Path, log: Log
) -> dict[str, Any]:
    """One extra, unmeasured run of each bulkdrive contender under py-spy; the hot spots."""
    assert config.profile_dir is not None
    spy = shutil.which("py-spy") or str(Path(config.python).with_name("py-spy"))
    if not Path(spy).exists() and shutil.which(spy) is None:
        log("profile skipped: py-spy not found (pip install py-spy)")
        return {}
    config.profile_dir.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {}
    for contender in BULKDRIVE_CONTENDERS:
        if contender not in config.contenders:
            continue
        tag = f"{workload.name}-{contender}-profile"
        run_dir = run_root / tag
        run_dir.mkdir(parents=True)
        folder = f"\\bench-{run_root.name}\\{tag}"
        raw_file = config.profile_dir / f"{workload.name}-{contender}.txt"
        with contextlib.ExitStack() as stack:
            server = _server(stack, config, workload, _server_root(config, run_root, tag), run_dir)
            argv, env = contender_command(
                contender,
                workload.source,
                server,
                folder,
                config.transfers,
                config.chunk_size,
                run_dir,
                config.python,
            )
            # --gil: only the thread holding the GIL is sampled, so idle worker threads (which
            # py-spy otherwise counts as busy in Condition.wait) do not drown the hot path.
            spy_argv = [
                spy,
                "record",
                "--gil",
                "--rate",
                "250",
                "--format",
                "raw",
                "--output",
                str(raw_file),
                "--",
                *argv,
            ]
            usage = run_measured(
                spy_argv,
                env,
                run_dir,
                run_dir / "stdout.txt",
                run_dir / "stderr.txt",
                config.timeout,
                config.python,
            )
        shutil.rmtree(_server_root(config, run_root, tag), ignore_errors=True)
        if usage.exit_code != 0 or not raw_file.exists():
            log(f"profile of {tag} failed: {_tail(run_dir / 'stderr.txt')}")
            continue
        out[contender] = hot_spots(raw_file)
        log(f"  profiled {tag}: {raw_file}")
    return out
