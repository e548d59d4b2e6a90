"""The child processes of a benchmark: the emulator as its own program, and one contender run
measured by a tiny launcher (`os.wait4`: peak RSS, user + system CPU seconds are the child's
own), plus the byte-compile step that makes a run start as an installed package does."""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

BENCH_USER = "bench"


BENCH_SHARE = "1"


@dataclass(frozen=True)
class Server:
    """Where the uploads go. `storage` is the share's folder on disk (local emulator only)."""

    url: str
    user: str
    share: str
    password: str = field(repr=False)
    storage: Path | None = None
    pid: int | None = None  # the local emulator's process, for its CPU seconds


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
