"""The emulator's CPU per request: small files (an initiate with the whole body, as bulkdrive
and the raw sender send them) and folders (createfolder, strict parents, as the `tree` workload
makes them).

One `bulkdrive serve` process (its own loop: uvloop unless BULKDRIVE_LOOP=asyncio) is driven by
an aiohttp client in this process with 8 requests in flight; the figure is the server process's
user + system CPU seconds (from /proc) over the requests of one phase, divided by their number.
Each repetition writes into fresh folders; medians of the repetitions are printed.

    python benchmarks/emulator_cpu.py                  # 5 000 files, 3 000 folders, 3 repetitions
    python benchmarks/emulator_cpu.py --quick          # a smoke run
    python benchmarks/emulator_cpu.py --profile OUT    # the serve process under cProfile
    python benchmarks/emulator_cpu.py --compare DIR    # A/B against the checkout in DIR

`--compare DIR` runs a second `serve` from the bulkdrive package of another checkout (DIR on
PYTHONPATH, e.g. a `git worktree add --detach DIR COMMIT`) beside this one and alternates the
phases between the two servers (the order turned each repetition), so that a change in the
machine's load lands on both sides alike; it prints each side's medians and their ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import aiohttp

USER, PASSWORD, SHARE = "bench", "bench-pass", "1"

#: `bulkdrive ARGS` under cProfile counting the main thread's CPU time, not wall time: on a
#: busy machine wall time charges other processes' turns to whatever function was running.
PROFILED = """
import cProfile, sys, time
out, sys.argv = sys.argv[1], ["bulkdrive", *sys.argv[2:]]
from bulkdrive.cli import main
profiler = cProfile.Profile(time.thread_time)
try:
    profiler.runcall(main)
except SystemExit:
    pass
finally:
    profiler.dump_stats(out)
"""
CONCURRENCY = 8


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def serving(
    root: Path, profile: Path | None, extra: list[str], checkout: Path | None = None
) -> Iterator[tuple[str, int]]:
    env = dict(os.environ)
    # `python -m` puts the working folder first on sys.path: the other checkout's own.
    cwd = None if checkout is None else str(checkout)
    if checkout is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(checkout), env.get("PYTHONPATH", "")]).rstrip(
            os.pathsep
        )
    argv = [sys.executable]
    if profile is not None:
        argv += ["-c", PROFILED, str(profile), "serve"]
    else:
        argv += ["-m", "bulkdrive", "serve"]
    argv += ["--port", "0", "--root", str(root)]
    argv += ["--user", f"{USER}:{PASSWORD}", "--share", f"{SHARE}:bench", *extra]
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env, cwd=cwd
    )
    assert proc.stdout is not None
    try:
        for raw in proc.stdout:
            found = re.search(r"listening on (\S+)", raw.decode())
            if found:
                yield found.group(1).rstrip("/"), proc.pid
                break
        else:
            raise RuntimeError("the emulator did not start")
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)


async def _login(http: aiohttp.ClientSession, url: str) -> str:
    body = json.dumps({"username": USER, "password": _b64(PASSWORD)})
    async with http.post(f"{url}/Login", data=body, headers={"Accept": "application/json"}) as resp:
        return str((await resp.json())["token"])


async def _in_parallel(calls: list[Callable[[], Awaitable[None]]]) -> None:
    queue = iter(calls)

    async def worker() -> None:
        for call in queue:
            await call()

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))


async def small_files(http: aiohttp.ClientSession, url: str, token: str, rep: int, n: int) -> None:
    upload = f"{url}/drive/share/{SHARE}/file/action/upload?uploadType=chunkedFile"
    body = os.urandom(4096)
    parent = _b64(f"\\small{rep}")
    await _folder(http, url, token, "\\", f"small{rep}")

    def one(i: int) -> Callable[[], Awaitable[None]]:
        async def call() -> None:
            headers = {
                "Authtoken": token,
                "Accept": "application/json",
                "FileName": _b64(f"f{i:06d}.bin"),
                "FileSize": str(len(body)),
                "FileModifiedtime": "1700000000",
                "ParentFolderPath": parent,
                "FileEOF": "1",
            }
            async with http.post(upload, data=body, headers=headers) as resp:
                await resp.read()
                assert resp.status == 200, resp.status

        return call

    await _in_parallel([one(i) for i in range(n)])


async def _folder(
    http: aiohttp.ClientSession, url: str, token: str, parent: str, name: str
) -> None:
    async with http.post(
        f"{url}/drive/share/{SHARE}/action/createfolder",
        data=json.dumps({"name": name, "parentPath": parent}),
        headers={"Authtoken": token, "Accept": "application/json"},
    ) as resp:
        await resp.read()
        assert resp.status == 201, resp.status


async def folders(http: aiohttp.ClientSession, url: str, token: str, rep: int, n: int) -> None:
    top = f"folders{rep}"
    await _folder(http, url, token, "\\", top)
    # 3 levels: top\aNN\bNN... as a tree's folders are, each after its parent
    width = max(1, int(n**0.5))
    firsts = [f"a{i:03d}" for i in range(width)]
    await _in_parallel(
        [lambda a=a: _folder(http, url, token, f"\\{top}", a) for a in firsts]  # type: ignore[misc]
    )
    rest = n - width
    await _in_parallel(
        [
            lambda i=i: _folder(  # type: ignore[misc]
                http, url, token, f"\\{top}\\{firsts[i % width]}", f"b{i:06d}"
            )
            for i in range(rest)
        ]
    )


async def measure(url: str, pid: int, files: int, dirs: int, reps: int) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {"file": [], "folder": []}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CONCURRENCY)) as http:
        token = await _login(http, url)
        await small_files(http, url, token, 99, 200)  # warm up
        for rep in range(reps):
            before = _cpu_seconds(pid)
            await small_files(http, url, token, rep, files)
            results["file"].append((_cpu_seconds(pid) - before) / files)
            before = _cpu_seconds(pid)
            await folders(http, url, token, rep, dirs)
            results["folder"].append((_cpu_seconds(pid) - before) / (dirs + 1))
    return results


async def compare(
    servers: list[tuple[str, int]], files: int, dirs: int, reps: int
) -> list[dict[str, list[float]]]:
    """measure() for several servers at once, each phase alternating between them."""
    results: list[dict[str, list[float]]] = [{"file": [], "folder": []} for _ in servers]
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=CONCURRENCY * len(servers))
    ) as http:
        tokens = [await _login(http, url) for url, _ in servers]
        for (url, _), token in zip(servers, tokens, strict=True):
            await small_files(http, url, token, 99, 200)  # warm up
        for rep in range(reps):
            order = list(range(len(servers)))
            if rep % 2:
                order.reverse()
            for i in order:
                url, pid = servers[i]
                before = _cpu_seconds(pid)
                await small_files(http, url, tokens[i], rep, files)
                results[i]["file"].append((_cpu_seconds(pid) - before) / files)
            for i in order:
                url, pid = servers[i]
                before = _cpu_seconds(pid)
                await folders(http, url, tokens[i], rep, dirs)
                results[i]["folder"].append((_cpu_seconds(pid) - before) / (dirs + 1))
    return results


def _print(kind: str, values: list[float]) -> None:
    shown = ", ".join(f"{v * 1e6:.0f}" for v in values)
    print(f"  CPU per {kind:6s}: median {statistics.median(values) * 1e6:4.0f} µs  ({shown})")


def main() -> None:
    global CONCURRENCY  # the one setting of this script's helpers
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=5000)
    parser.add_argument("--folders", type=int, default=3000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--profile", type=Path, default=None)
    parser.add_argument("--log-requests", action="store_true", help="serve --log-requests too")
    parser.add_argument(
        "--latency", default=None, metavar="DURATION", help="serve --latency too (e.g. 2ms)"
    )
    parser.add_argument(
        "--fault-delay",
        default=None,
        metavar="SECONDS",
        help="serve --faults delay --fault-rate 1 --fault-delay-seconds SECONDS too (how "
        "benchmarks/cluster.py latency makes a latency-bound server)",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=8,
        help="requests in flight (default 8; the network sweep's settings are 64-128)",
    )
    parser.add_argument(
        "--compare",
        type=Path,
        default=None,
        metavar="DIR",
        help="also run the serve of the checkout in DIR, alternating with this one",
    )
    args = parser.parse_args()
    CONCURRENCY = args.concurrency
    if args.quick:
        args.files, args.folders, args.repeat = 300, 200, 1
    base = Path("/dev/shm") if Path("/dev/shm").is_dir() else None
    with tempfile.TemporaryDirectory(dir=base, prefix="emulator-cpu-") as scratch:
        root = Path(scratch) / "root"
        extra = ["--strict-parents"]
        if args.log_requests:
            extra += ["--log-requests", str(Path(scratch) / "requests.jsonl")]
        if args.latency is not None:
            extra += ["--latency", args.latency]
        if args.fault_delay is not None:
            extra += ["--faults", "delay", "--fault-rate", "1"]
            extra += ["--fault-delay-seconds", args.fault_delay]
        if args.compare is not None:
            other = Path(scratch) / "other"
            with (
                serving(root, None, extra) as this_server,
                serving(other, None, extra, args.compare) as other_server,
            ):
                started = time.perf_counter()
                both = asyncio.run(
                    compare([this_server, other_server], args.files, args.folders, args.repeat)
                )
                wall = time.perf_counter() - started
            loop = os.environ.get("BULKDRIVE_LOOP") or "uvloop (default)"
            print(f"emulator loop: {loop}; {args.repeat} repetition(s), alternating; {wall:.1f} s")
            for label, results in (("this checkout", both[0]), (str(args.compare), both[1])):
                print(label)
                for kind, values in results.items():
                    _print(kind, values)
            for kind in ("file", "folder"):
                ratio = statistics.median(both[0][kind]) / statistics.median(both[1][kind])
                print(f"  {kind}: this / {args.compare} = {ratio:.2f}")
            return
        with serving(root, args.profile, extra) as (url, pid):
            started = time.perf_counter()
            results = asyncio.run(measure(url, pid, args.files, args.folders, args.repeat))
            wall = time.perf_counter() - started
    loop = os.environ.get("BULKDRIVE_LOOP") or "uvloop (default)"
    print(f"emulator loop: {loop}; {args.repeat} repetition(s); {wall:.1f} s")
    for kind, values in results.items():
        _print(kind, values)


if __name__ == "__main__":
    main()
