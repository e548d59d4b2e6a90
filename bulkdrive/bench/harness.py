"""The measurement core of `bulkdrive bench` and `make bench`.

For each workload and repetition, every contender runs as its own child process against a fresh
emulator, itself a separate process, so that the child's resource usage (`os.wait4`: peak RSS,
user + system CPU seconds) is the contender's own and the server's work is not counted. The
wall time is the child's whole life: start-up, login and the upload, what a user waits for.

Rules learnt from measuring (design/performance-notes.md):
- every run writes into a fresh emulator root; big trees are never deleted between runs of
  many-file workloads (ext4 is slow to create files for ~30 s after a mass delete), only at the
  end; roots holding a few big files are removed right after their check;
- dirty pages of the previous run are flushed (`os.sync`) before each measured run, and the
  contenders' order rotates between repetitions, so no contender always runs after the same one;
- stored bytes are checked after every run: a fast wrong upload is not a measurement.

Nothing here imports bulkdrive's upload code: the contenders are commands, so the harness
measures exactly what a user runs.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import platform
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from bulkdrive.bench import baselines, workloads

MB = 1_000_000  # MB/s are decimal megabytes per second
MiB = 1024 * 1024
CHUNK_SIZE = 4 * MiB
BENCH_USER = "bench"
BENCH_SHARE = "1"
SWEEP = (1, 2, 4, 8, 16, 32)
#: Roots holding at most this many files are removed right after their check (cheap to
#: delete); bigger trees wait for the end of the whole run (the ext4 trap).
EAGER_DELETE_MAX_FILES = 100


@dataclass(frozen=True)
class ContenderInfo:
    name: str
    label: str
    remote_ok: bool  # can run against a real server (--url)
    concurrent: bool  # honours --transfers


CONTENDERS: dict[str, ContenderInfo] = {
    c.name: c
    for c in (
        ContenderInfo("bulkdrive", "bulkdrive (integrity on)", True, True),
        ContenderInfo("bulkdrive-noverify", "bulkdrive --no-verify", True, True),
        ContenderInfo("raw", "raw aiohttp sender", True, True),
        ContenderInfo("curl", "parallel curl (xargs -P)", False, True),
        ContenderInfo("sdk", "sequential SDK algorithm (2 MiB)", False, False),
    )
}
BULKDRIVE_CONTENDERS = ("bulkdrive", "bulkdrive-noverify")


@dataclass(frozen=True)
class Server:
    """Where the uploads go. `storage` is the share's folder on disk (local emulator only)."""

    url: str
    user: str
    share: str
    password: str = field(repr=False)
    storage: Path | None = None
    pid: int | None = None  # the local emulator's process, for its CPU seconds


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


@dataclass(frozen=True)
class Measurement:
    workload: str
    contender: str
    transfers: int
    repetition: int
    files: int
    bytes: int
    wall_seconds: float
    cpu_seconds: float
    user_seconds: float
    system_seconds: float
    peak_rss_bytes: int
    exit_code: int
    verified: bool
    inner_seconds: float | None = None  # what the contender itself reports, when it does
    #: bulkdrive only: seconds until its count-only pass made the total final (its report)
    total_known_seconds: float | None = None
    server_cpu_seconds: float | None = None  # the local emulator's CPU during the run
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and self.verified and not self.error

    @property
    def mb_per_s(self) -> float:
        return self.bytes / MB / self.wall_seconds if self.wall_seconds > 0 else 0.0

    @property
    def files_per_s(self) -> float:
        return self.files / self.wall_seconds if self.wall_seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(
            ok=self.ok,
            mb_per_s=round(self.mb_per_s, 3),
            files_per_s=round(self.files_per_s, 3),
            peak_rss_mib=round(self.peak_rss_bytes / MiB, 2),
        )
        return data


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
    if not root.with_name(name + ".complete").exists():
        log(f"building workload {name} in {root} (once; reused by later runs)")
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


# --- the emulator, as a separate process ----------------------------------------------------

_LISTENING = re.compile(r"listening on (\S+)")


@contextlib.contextmanager
def local_emulator(
    root: Path,
    python: str,
    log_path: Path,
    *,
    strict_parents: bool = False,
    extra_args: Sequence[str] = (),
) -> Iterator[Server]:
    """`bulkdrive serve` on 127.0.0.1 with an ephemeral port and a fresh ROOT; stopped after.
    With `strict_parents` it refuses uploads into folders that were not created; `extra_args`
    are more `serve` options (the network sweep's --latency, --max-active)."""
    password = secrets.token_urlsafe(12)
    root.mkdir(parents=True, exist_ok=True)
    argv = [
        python,
        "-m",
        "bulkdrive",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--root",
        str(root),
        "--user",
        f"{BENCH_USER}:{password}",
        "--share",
        f"{BENCH_SHARE}:bench",
        *(["--strict-parents"] if strict_parents else []),
        *extra_args,
    ]
    with log_path.open("wb") as errors:
        proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=errors,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        url = _wait_for_url(proc, timeout=60.0)
        yield Server(url, BENCH_USER, BENCH_SHARE, password, root / BENCH_SHARE, proc.pid)
    finally:
        _stop(proc)


def _wait_for_url(proc: subprocess.Popen[bytes], timeout: float) -> str:
    assert proc.stdout is not None
    found: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            match = _LISTENING.search(raw.decode("utf-8", "replace"))
            if match:
                found.append(match.group(1))
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout)
    if not found:
        _stop(proc)
        raise RuntimeError("the emulator did not start (no 'listening on' line); see its log")
    return found[0].rstrip("/")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


# --- one contender run, measured -------------------------------------------------------------


@dataclass(frozen=True)
class ChildUsage:
    exit_code: int
    wall_seconds: float
    user_seconds: float
    system_seconds: float
    peak_rss_bytes: int
    timed_out: bool


#: The child that starts each contender and reports its usage. Linux counts the parent's
#: memory at fork time in the child's ru_maxrss (the forked address space is the parent's
#: until exec), so a contender forked straight from this harness would inherit the
#: harness's RSS as a floor. This small launcher (a few MiB) forks it instead; it waits with
#: wait4 and writes wall time and rusage to the file named first.
LAUNCHER = """
import json, os, sys, time
out, argv = sys.argv[1], sys.argv[2:]
started = time.perf_counter()
pid = os.posix_spawnp(argv[0], argv, os.environ)
_, status, ru = os.wait4(pid, 0)
wall = time.perf_counter() - started
with open(out, "w") as fh:
    json.dump({"status": os.waitstatus_to_exitcode(status), "wall": wall, "user": ru.ru_utime,
               "system": ru.ru_stime, "maxrss": ru.ru_maxrss}, fh)
sys.exit(0)
"""


def run_measured(
    argv: Sequence[str],
    env: dict[str, str],
    cwd: Path,
    stdout: Path,
    stderr: Path,
    timeout: float,
    python: str = sys.executable,
) -> ChildUsage:
    """Run one child to completion; its own wall time, CPU seconds and peak RSS.

    `wait4` reports the child plus the descendants it waited for (the curl script's curls):
    CPU is their sum, peak RSS the largest single process among them (not their sum).
    """
    usage_file = stdout.with_name(stdout.stem + ".usage.json")
    launcher = [python, "-I", "-S", "-c", LAUNCHER, str(usage_file), *argv]
    with stdout.open("wb") as out, stderr.open("wb") as err:
        proc = subprocess.Popen(
            launcher,
            env=env,
            cwd=cwd,
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            proc.wait(timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
            # The launcher and the contender share one process group: end both.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    try:
        usage = json.loads(usage_file.read_text())
    except (OSError, ValueError):
        return ChildUsage(
            proc.returncode or -1, timeout if timed_out else 0.0, 0.0, 0.0, 0, timed_out
        )
    # ru_maxrss is KiB on Linux, bytes on macOS.
    rss = usage["maxrss"] if sys.platform == "darwin" else usage["maxrss"] * 1024
    return ChildUsage(
        int(usage["status"]),
        float(usage["wall"]),
        float(usage["user"]),
        float(usage["system"]),
        int(rss),
        timed_out,
    )


def process_cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds of a running process (Linux /proc), None elsewhere."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _base_env() -> dict[str, str]:
    # A user's own BULKDRIVE_* settings must not change what is measured.
    return {k: v for k, v in os.environ.items() if not k.startswith("BULKDRIVE_")}


def contender_command(
    contender: str,
    source: Path,
    server: Server,
    folder: str,
    transfers: int,
    chunk_size: int,
    run_dir: Path,
    python: str,
) -> tuple[list[str], dict[str, str]]:
    """argv and environment that upload `source` into `folder` as `contender` does."""
    env = _base_env()
    env["BULKDRIVE_PASSWORD"] = server.password
    job = baselines.Job(
        source,
        server.url,
        server.user,
        server.password,
        server.share,
        folder,
        transfers,
        chunk_size,
    )
    if contender in BULKDRIVE_CONTENDERS:
        env["BULKDRIVE_STATE_DIR"] = str(run_dir / "state")
        argv = [
            python,
            "-m",
            "bulkdrive",
            "upload",
            str(source),
            "--url",
            server.url,
            "--user",
            server.user,
            "--share",
            server.share,
            "--to",
            folder,
            "--no-progress",
            "--transfers",
            str(transfers) if transfers else "auto",  # 0: --transfers auto (network sweep)
            "--chunk-size",
            str(chunk_size),
            "--journal",
            str(run_dir / "journal.sqlite"),
            "--report",
            str(run_dir / "report.json"),
        ]
        if contender == "bulkdrive-noverify":
            argv.append("--no-verify")
        return argv, env
    if contender == "raw":
        return baselines.baseline_command("raw", job, python), env
    if contender == "sdk":
        return baselines.baseline_command("sdk", job, python), env
    if contender == "curl":
        argv, extra = baselines.curl_command(job)
        env.update(extra)
        return argv, env
    raise ValueError(f"unknown contender {contender!r}")


def _inner_seconds(contender: str, run_dir: Path, stdout: Path) -> float | None:
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError, IndexError):
        if contender in BULKDRIVE_CONTENDERS:
            report = json.loads((run_dir / "report.json").read_text())
            return float(report["elapsed_seconds"])
        if contender in ("raw", "sdk"):
            line = stdout.read_text().strip().splitlines()[-1]
            return float(json.loads(line)["seconds"])
    return None


def _total_known_seconds(contender: str, run_dir: Path) -> float | None:
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        if contender in BULKDRIVE_CONTENDERS:
            report = json.loads((run_dir / "report.json").read_text())
            value = report["total_known_seconds"]
            return None if value is None else float(value)
    return None


def _tail(path: Path, limit: int = 300) -> str:
    with contextlib.suppress(OSError):
        text = path.read_text(errors="replace").strip()
        return " | ".join(text.splitlines()[-3:])[-limit:]
    return ""


# --- checking what was stored ----------------------------------------------------------------

_COMPARE_BLOCK = 8 * MiB


def verify_local(source: Path, stored: Path) -> str:
    """'' when `stored` holds exactly `source`'s files with the same bytes, else the reason.

    Every byte is compared (both sides are in the page cache: about a second per 2 GiB).
    """
    expected = 0
    for dirpath, _, filenames in os.walk(source):
        rel_dir = os.path.relpath(dirpath, source)
        for name in filenames:
            expected += 1
            problem = _compare(os.path.join(dirpath, name), os.path.join(stored, rel_dir, name))
            if problem:
                return f"{os.path.normpath(os.path.join(rel_dir, name))}: {problem}"
    found = sum(len(names) for _, _, names in os.walk(stored))
    if found != expected:
        return f"stored {found} files, expected {expected}"
    return ""


def _compare(src: str, dst: str) -> str:
    try:
        size = os.stat(src).st_size
        stored_size = os.stat(dst).st_size
    except FileNotFoundError:
        return "not stored"
    if stored_size != size:
        return f"stored {stored_size} bytes, expected {size}"
    with open(src, "rb", buffering=0) as a, open(dst, "rb", buffering=0) as b:
        offset = 0
        while True:
            block = a.read(_COMPARE_BLOCK)
            if block != b.read(_COMPARE_BLOCK):
                return f"bytes differ in the block at offset {offset}"
            if not block:
                return ""
            offset += len(block)


def verify_remote(server: Server, folder: str, source: Path, sample: int = 50) -> str:
    """Against a real server: the sizes of up to `sample` files, read back by the metadata call."""
    from bulkdrive import protocol

    job = baselines.Job(
        source, server.url, server.user, server.password, server.share, folder, 1, CHUNK_SIZE
    )
    found = list(baselines.walk(job))
    step = max(1, len(found) // sample)
    conn = baselines.SyncConnection(server.url)
    try:
        token = baselines.sync_login(conn, server.user, server.password)
        for f in found[::step]:
            remote = f"{f.parent.rstrip(chr(92))}\\{f.name}"
            query = f"/drive/share/{server.share}/action/metadata?path=" + urllib.parse.quote(
                remote
            )
            status, body = conn.get(query, {"Authtoken": token, "Accept": "application/xml"})
            if status != 200:
                return f"{remote}: metadata HTTP {status}"
            node = protocol.parse_body(body).first("fileResource")
            size = node.int("sizeinBytes", -1) if node else -1
            if size != f.size:
                return f"{remote}: server holds {size} bytes, expected {f.size}"
    finally:
        conn.close()
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


def _order(contenders: Sequence[str], repetition: int) -> list[str]:
    k = repetition % len(contenders)
    return list(contenders[k:]) + list(contenders[:k])


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
        if config.remote is not None:
            server = config.remote
        else:
            server = stack.enter_context(
                local_emulator(
                    server_root,
                    config.python,
                    run_dir / "emulator.log",
                    strict_parents=workload.name in workloads.STRICT_PARENTS,
                    extra_args=config.emulator_args,
                )
            )
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
        inner_seconds=_inner_seconds(contender, run_dir, stdout),
        total_known_seconds=_total_known_seconds(contender, run_dir),
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
        for workload in prepared:
            name = workload.name
            log(
                f"workload {name}: {workload.files} files, {workload.bytes / MB:.1f} MB; "
                f"{config.repeat} repetition(s), transfers {transfer_values}"
            )
            storage = _server_root(config, run_root, "x").parent
            if config.remote is None and _in_ram(storage):
                prefault_storage(storage, workload.bytes)  # before the warm-up: it uses RAM too
            warm_page_cache(workload.source)
            for repetition in range(config.repeat):
                for transfers in transfer_values:
                    for contender in _order(contenders, repetition):
                        if not CONTENDERS[contender].concurrent and transfers != config.transfers:
                            continue  # sequential: one measurement per repetition is enough
                        measurements.append(
                            measure_one(
                                config,
                                workload,
                                contender,
                                transfers if CONTENDERS[contender].concurrent else 1,
                                repetition,
                                run_root,
                                log,
                            )
                        )
            if config.profile_dir is not None:
                profiles[name] = profile_bulkdrive(config, workload, run_root, log)
    finally:
        if not config.keep:
            shutil.rmtree(run_root, ignore_errors=True)
            if config.server_dir is not None:
                shutil.rmtree(_server_root(config, run_root, "x").parent, ignore_errors=True)
    return results_document(config, contenders, measurements, profiles, time.time() - started)


def precompile(python: str) -> None:
    """Byte-compile the bulkdrive package the contenders run, as pip does when it installs.

    An editable install (or PYTHONDONTWRITEBYTECODE) would otherwise compile every module
    from source at each start, and charge bulkdrive and the baselines for it. Best effort: a
    package that cannot be written to is measured as it is.
    """
    code = (
        "import compileall, os, bulkdrive; "
        "compileall.compile_dir(os.path.dirname(bulkdrive.__file__), quiet=2)"
    )
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        # -P: the package the contenders import, not a `bulkdrive` folder in the current one.
        subprocess.run([python, "-P", "-c", code], capture_output=True, timeout=120, check=False)


def _unique(path: Path) -> Path:
    candidate, n = path, 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}-{n}")
    return candidate


# --- summaries, ratios, targets --------------------------------------------------------------


def summarize(measurements: Sequence[Measurement]) -> list[dict[str, Any]]:
    """Medians over the repetitions of each (workload, contender, transfers)."""
    groups: dict[tuple[str, str, int], list[Measurement]] = {}
    for m in measurements:
        groups.setdefault((m.workload, m.contender, m.transfers), []).append(m)
    rows = []
    for (workload, contender, transfers), ms in groups.items():
        good = [m for m in ms if m.ok]
        row: dict[str, Any] = {
            "workload": workload,
            "contender": contender,
            "transfers": transfers,
            "runs": len(ms),
            "failed": len(ms) - len(good),
        }
        if good:
            row.update(
                wall_seconds=statistics.median(m.wall_seconds for m in good),
                mb_per_s=statistics.median(m.mb_per_s for m in good),
                files_per_s=statistics.median(m.files_per_s for m in good),
                peak_rss_mib=statistics.median(m.peak_rss_bytes for m in good) / MiB,
                max_rss_mib=max(m.peak_rss_bytes for m in good) / MiB,
                cpu_seconds=statistics.median(m.cpu_seconds for m in good),
                server_cpu_seconds=statistics.median(m.server_cpu_seconds or 0.0 for m in good),
            )
            known = [
                m.total_known_seconds / m.inner_seconds
                for m in good
                if m.total_known_seconds is not None and m.inner_seconds
            ]
            if known:  # when bulkdrive's total was final, as a fraction of its run
                row["total_known_fraction"] = statistics.median(known)
        rows.append(row)
    return rows


def _row(
    summary: Sequence[dict[str, Any]], workload: str, contender: str, transfers: int
) -> dict[str, Any] | None:
    want = transfers if CONTENDERS[contender].concurrent else 1
    for row in summary:
        if (row["workload"], row["contender"], row["transfers"]) == (workload, contender, want):
            return row if "mb_per_s" in row else None
    return None


def ratios(
    summary: Sequence[dict[str, Any]], workloads_: Sequence[str], transfers: int
) -> list[dict[str, Any]]:
    """bulkdrive / baseline throughput, per workload (same bytes and files: one ratio each)."""
    out = []
    for workload in workloads_:
        for ours in BULKDRIVE_CONTENDERS:
            mine = _row(summary, workload, ours, transfers)
            for base in ("raw", "curl", "sdk"):
                theirs = _row(summary, workload, base, transfers)
                if mine and theirs and theirs["mb_per_s"] > 0:
                    out.append(
                        {
                            "workload": workload,
                            "bulkdrive": ours,
                            "baseline": base,
                            "ratio": mine["mb_per_s"] / theirs["mb_per_s"],
                        }
                    )
    return out


def _ratio(rs: Sequence[dict[str, Any]], workload: str, ours: str, base: str) -> float | None:
    for r in rs:
        if (r["workload"], r["bulkdrive"], r["baseline"]) == (workload, ours, base):
            return float(r["ratio"])
    return None


def targets(
    summary: Sequence[dict[str, Any]],
    rs: Sequence[dict[str, Any]],
    workloads_: Sequence[str],
    transfers: int,
    chunk_size: int,
) -> list[dict[str, Any]]:
    """The issue's targets, checked on this run's medians (only those it measured)."""
    checks: list[dict[str, Any]] = []

    def add(
        what: str, value: float | None, goal: float, unit: str = "×", at_most: bool = False
    ) -> None:
        if value is None:
            return
        passed = value <= goal if at_most else value >= goal
        checks.append(
            {"target": what, "value": round(value, 3), "goal": goal, "unit": unit, "pass": passed}
        )

    nv = "bulkdrive-noverify"
    for w in workloads_:
        if w == "large":
            add("large: --no-verify / raw", _ratio(rs, w, nv, "raw"), 0.85)
        if w == "small":
            add("small: --no-verify / raw (files/s)", _ratio(rs, w, nv, "raw"), 0.8)
        if w == "tree":
            add("tree: --no-verify / raw (files/s)", _ratio(rs, w, nv, "raw"), 0.8)
            mine, flat = _row(summary, w, nv, transfers), _row(summary, "tree-flat", nv, transfers)
            if mine and flat and flat["files_per_s"] > 0:
                add(
                    "tree: --no-verify / its tree-flat (files/s)",
                    mine["files_per_s"] / flat["files_per_s"],
                    0.8,
                )
            for ours in BULKDRIVE_CONTENDERS:
                row = _row(summary, w, ours, transfers)
                if row and "total_known_fraction" in row:
                    add(
                        f"tree: {ours} total final at (share of run)",
                        row["total_known_fraction"],
                        0.25,
                        unit="",
                        at_most=True,
                    )
        add(f"{w}: integrity on / raw", _ratio(rs, w, "bulkdrive", "raw"), 0.7)
        if w in ("small", "mixed"):
            add(f"{w}: --no-verify / curl", _ratio(rs, w, nv, "curl"), 3.0)
            add(f"{w}: --no-verify / sdk", _ratio(rs, w, nv, "sdk"), 10.0)
        limit = (transfers * 2 * chunk_size + 80 * MB) / MiB
        for ours in BULKDRIVE_CONTENDERS:
            row = _row(summary, w, ours, transfers)
            if row:
                add(
                    f"{w}: {ours} peak RSS (MiB) ≤ {limit:.0f}",
                    row["max_rss_mib"],
                    limit,
                    unit="MiB",
                    at_most=True,
                )
    return checks


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


# --- output ----------------------------------------------------------------------------------


def format_table(doc: dict[str, Any]) -> str:
    """The printed result: medians per workload and contender, ratios, targets."""
    transfers = doc["config"]["transfers"]
    lines = [
        f"bulkdrive benchmark · {doc['machine']['cpus']} CPUs · Python "
        f"{doc['machine']['python']} · transfers {transfers} · chunk "
        f"{doc['config']['chunk_size'] // MiB} MiB · median of {doc['config']['repeat']} "
        f"· server: {doc['config']['server']}",
        "",
    ]
    header = (
        f"{'workload':<8} {'contender':<34} {'MB/s':>9} {'files/s':>9} {'RSS MiB':>8} "
        f"{'CPU s':>7} {'srv CPU':>7} {'wall s':>8}  {'×raw':>6} {'×curl':>6} {'×sdk':>6}"
    )
    lines += [header, "-" * len(header)]
    rs = doc["ratios"]
    for workload in doc["config"]["workloads"]:
        for contender in doc["config"]["contenders"]:
            row = _row(doc["summary"], workload, contender, transfers)
            label = CONTENDERS[contender].label
            if row is None:
                lines.append(f"{workload:<8} {label:<34} {'failed':>9}")
                continue
            ratio_cells = ""
            if contender in BULKDRIVE_CONTENDERS:
                for base in ("raw", "curl", "sdk"):
                    r = _ratio(rs, workload, contender, base)
                    ratio_cells += f" {r:6.2f}" if r is not None else f" {'-':>6}"
            lines.append(
                f"{workload:<8} {label:<34} {row['mb_per_s']:9.1f} {row['files_per_s']:9.1f} "
                f"{row['peak_rss_mib']:8.1f} {row['cpu_seconds']:7.2f} "
                f"{row['server_cpu_seconds']:7.2f} {row['wall_seconds']:8.2f} {ratio_cells}"
            )
        lines.append("")
    if doc["targets"]:
        lines.append("targets (issue 7):")
        for t in doc["targets"]:
            mark = "PASS" if t["pass"] else "MISS"
            rel = "≥" if t["unit"] == "×" else "≤"
            lines.append(f"  {mark}  {t['target']:<48} {t['value']:>9} (goal {rel} {t['goal']:g})")
    failed = [r for r in doc["runs"] if not r["ok"]]
    for r in failed:
        lines.append(
            f"FAILED {r['workload']} {r['contender']} t{r['transfers']} "
            f"r{r['repetition']}: {r['error']}"
        )
    for workload, profile in doc.get("profiles", {}).items():
        for contender, p in profile.items():
            lines.append("")
            lines.append(
                f"profile {workload} {contender} ({p['samples']} samples holding the "
                f"GIL, py-spy --gil; collapsed stacks in {p['file']}):"
            )
            lines.append("  self%  incl%  function")
            for hot in p["hot"]:
                lines.append(f"  {hot['self_pct']:5.1f}  {hot['incl_pct']:5.1f}  {hot['frame']}")
    return "\n".join(lines)


def plot(doc: dict[str, Any], path: Path) -> None:
    """Throughput against --transfers, one panel per workload. Needs matplotlib."""
    try:  # an optional extra: imported by name so type checkers need no stubs for it
        matplotlib: Any = importlib.import_module("matplotlib")
    except ImportError:
        raise SystemExit("--plot needs matplotlib: pip install '.[plot]'") from None
    matplotlib.use("Agg")
    plt: Any = importlib.import_module("matplotlib.pyplot")

    names = doc["config"]["workloads"]
    fig, axes = plt.subplots(1, len(names), figsize=(5.5 * len(names), 4.2), squeeze=False)
    for ax, workload in zip(axes[0], names, strict=True):
        for contender in doc["config"]["contenders"]:
            rows = sorted(
                (
                    r
                    for r in doc["summary"]
                    if r["workload"] == workload and r["contender"] == contender and "mb_per_s" in r
                ),
                key=lambda r: r["transfers"],
            )
            if not rows:
                continue
            label = CONTENDERS[contender].label
            if not CONTENDERS[contender].concurrent:
                ax.axhline(rows[0]["mb_per_s"], linestyle="--", color="grey", label=label)
                continue
            ax.plot(
                [r["transfers"] for r in rows],
                [r["mb_per_s"] for r in rows],
                marker="o",
                label=label,
            )
        ax.set_xscale("log", base=2)
        ax.set_xticks(doc["config"]["sweep"], [str(t) for t in doc["config"]["sweep"]])
        ax.set_title(workload)
        ax.set_xlabel("--transfers")
        ax.set_ylabel("MB/s (median)")
        ax.grid(True, alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


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
            server = config.remote or stack.enter_context(
                local_emulator(
                    _server_root(config, run_root, tag), config.python, run_dir / "emulator.log"
                )
            )
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


def hot_spots(raw_file: Path, top: int = 15) -> dict[str, Any]:
    """Self and inclusive sample shares per function from py-spy's collapsed stacks."""
    self_counts: dict[str, int] = {}
    incl_counts: dict[str, int] = {}
    total = 0
    for line in raw_file.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [_short(f) for f in stack.split(";")]
        self_counts[frames[-1]] = self_counts.get(frames[-1], 0) + count
        for frame in set(frames):
            incl_counts[frame] = incl_counts.get(frame, 0) + count
    ranked = sorted(self_counts.items(), key=lambda kv: kv[1], reverse=True)[:top]
    hot = [
        {
            "frame": frame,
            "self_pct": round(100 * n / total, 1),
            "incl_pct": round(100 * incl_counts[frame] / total, 1),
        }
        for frame, n in ranked
    ]
    return {"file": str(raw_file), "samples": total, "hot": hot}


_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>.*?)(?::(?P<line>\d+))?\)$")


def _short(frame: str) -> str:
    """`send (/x/site-packages/aiohttp/client.py:123)` → `send (aiohttp/client.py)`."""
    match = _FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    path = match.group("file")
    for marker in ("site-packages/", "lib/python3", "/work/main/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            if marker == "lib/python3":
                path = "stdlib:" + path.split("/", 1)[-1]
            break
    return f"{match.group('func')} ({path})"
