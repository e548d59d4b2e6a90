"""How fast does the emulator ingest chunks, next to a server that only writes bodies to disk?

One run measures, for 4 MiB chunks at 1, 4 and 16 concurrent upload sessions:
- the emulator (`bulkdrive serve`, in its own process): initiate, chunks, last chunk, rename;
- a minimal aiohttp server (also its own process) that appends each request body to a file.
The same aiohttp load generator drives both, with chunk bodies reused from memory. Every
repetition writes into a fresh folder (ext4 is slow to create files right after a mass delete).

    python benchmarks/emulator_ingest.py            # 256 MiB per level, 3 repetitions
    python benchmarks/emulator_ingest.py --quick    # a tiny smoke run (seconds)

Prints MB/s (10^6 bytes) for both servers and the ratio (the target is >= 0.8 at 16 sessions),
and each server process's CPU seconds per GB, which is steadier than MB/s on a busy machine.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
from aiohttp import web

MIB = 1024 * 1024
USER, PASSWORD, SHARE = "bench", "bench-pass", "1"

#: (http, base URL, folder number, file number, chunk body, chunks) -> None
FileUploader = Callable[[aiohttp.ClientSession, str, int, int, bytes, int], Awaitable[None]]


# --- the minimal server: write each request body to disk, nothing else -------------------


def serve_baseline(root: Path) -> None:
    async def ingest(request: web.Request) -> web.Response:
        path = root / request.match_info["folder"] / request.match_info["name"]
        with open(path, "ab") as handle:
            async for data in request.content.iter_any():
                handle.write(data)
        return web.Response(text="ok")

    async def make_folder(request: web.Request) -> web.Response:
        (root / request.match_info["folder"]).mkdir(parents=True, exist_ok=True)
        return web.Response(text="ok")

    async def main() -> None:
        app = web.Application()
        app.router.add_post("/ingest/{folder}/{name}", ingest)
        app.router.add_post("/folder/{folder}", make_folder)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        print(f"listening on http://127.0.0.1:{port}", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


# --- servers in child processes -----------------------------------------------------------


def start_server(command: list[str]) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if "listening on " in line:
            return proc, line.split("listening on ", 1)[1].split()[0]
    proc.kill()
    errors = proc.stderr.read() if proc.stderr else ""
    raise SystemExit(f"server did not start: {' '.join(command)}\n{errors}")


def stop_server(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# --- the load generator -------------------------------------------------------------------


async def emulator_login(http: aiohttp.ClientSession, base: str) -> str:
    body = {"username": USER, "password": base64.b64encode(PASSWORD.encode()).decode()}
    async with http.post(f"{base}/Login", json=body, headers={"Accept": "application/json"}) as r:
        r.raise_for_status()
        return str((await r.json())["token"])


def emulator_uploader(token: str) -> FileUploader:
    """Uploads one file as initiate (first chunk) + chunks, the last with FileEOF: 1."""

    async def upload_file(
        http: aiohttp.ClientSession,
        base: str,
        folder: int,
        index: int,
        body: bytes,
        chunks: int,
    ) -> None:
        url = f"{base}/drive/share/{SHARE}/file/action/upload?uploadType=chunkedFile"
        size = len(body) * chunks
        headers = {
            "Authtoken": token,
            "Accept": "application/json",
            "FileName": base64.b64encode(f"f{index}.bin".encode()).decode(),
            "FileSize": str(size),
            "ParentFolderPath": base64.b64encode(f"\\run{folder}".encode()).decode(),
            "FileModifiedtime": "1700000000",
            "FileEOF": "1" if chunks == 1 else "0",
        }
        async with http.post(url, headers=headers, data=body) as r:
            reply = await r.json()
            if r.status != 200:
                raise RuntimeError(f"initiate failed: {r.status} {reply}")
        request_id = reply["requestId"]
        for k in range(1, chunks):
            eof = "1" if k == chunks - 1 else "0"
            chunk_headers = {"Authtoken": token, "Accept": "application/json", "FileEOF": eof}
            async with http.post(
                f"{url}&requestId={request_id}", headers=chunk_headers, data=body
            ) as r:
                if r.status != 200:
                    raise RuntimeError(f"chunk failed: {r.status} {await r.text()}")
                await r.read()

    return upload_file


async def baseline_file(
    http: aiohttp.ClientSession, base: str, folder: int, index: int, body: bytes, chunks: int
) -> None:
    for _ in range(chunks):
        async with http.post(f"{base}/ingest/run{folder}/f{index}.bin", data=body) as r:
            if r.status != 200:
                raise RuntimeError(f"baseline failed: {r.status}")
            await r.read()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads); 0 where /proc is missing."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(
    upload_file: FileUploader,
    http: aiohttp.ClientSession,
    base: str,
    server_pid: int,
    folder: int,
    sessions: int,
    chunks_per_session: int,
    body: bytes,
) -> tuple[float, float]:
    """MB/s and server CPU seconds per GB, for `sessions` concurrent files."""
    cpu_before = cpu_seconds(server_pid)
    started = time.perf_counter()
    await asyncio.gather(
        *(upload_file(http, base, folder, i, body, chunks_per_session) for i in range(sessions))
    )
    elapsed = time.perf_counter() - started
    total = sessions * chunks_per_session * len(body)
    return total / elapsed / 1e6, (cpu_seconds(server_pid) - cpu_before) / (total / 1e9)


async def run(args: argparse.Namespace, workdir: Path) -> list[tuple[int, float, float]]:
    emu_root = workdir / "emulator"
    base_root = workdir / "baseline"
    base_root.mkdir()
    emulator, emu_url = start_server(
        [
            sys.executable,
            "-m",
            "bulkdrive",
            "serve",
            "--port",
            "0",
            "--root",
            str(emu_root),
            "--user",
            f"{USER}:{PASSWORD}",
            "--share",
            f"{SHARE}:bench",
            "--max-chunk-bytes",
            str(max(args.chunk, 32 * MIB)),
        ]
    )
    baseline, base_url = start_server(
        [sys.executable, __file__, "--serve-baseline", str(base_root)]
    )
    body = os.urandom(args.chunk)
    results: list[tuple[int, float, float]] = []
    folder = 0
    try:
        connector = aiohttp.TCPConnector(limit=0)
        timeout = aiohttp.ClientTimeout(total=None, sock_read=120)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
            token = await emulator_login(http, emu_url)
            emu_upload = emulator_uploader(token)
            for sessions in args.levels:
                chunks = max(1, args.level_bytes // (args.chunk * sessions))
                emu_runs: list[tuple[float, float]] = []
                base_runs: list[tuple[float, float]] = []
                for _ in range(args.repeat):
                    # Fresh folders on every repetition, for both servers.
                    folder += 1
                    emu_runs.append(
                        await measure(
                            emu_upload,
                            http,
                            emu_url,
                            emulator.pid,
                            folder,
                            sessions,
                            chunks,
                            body,
                        )
                    )
                    async with http.post(f"{base_url}/folder/run{folder}") as r:
                        await r.read()
                    base_runs.append(
                        await measure(
                            baseline_file,
                            http,
                            base_url,
                            baseline.pid,
                            folder,
                            sessions,
                            chunks,
                            body,
                        )
                    )
                emu = statistics.median(rate for rate, _ in emu_runs)
                base = statistics.median(rate for rate, _ in base_runs)
                emu_cpu = statistics.median(cpu for _, cpu in emu_runs)
                base_cpu = statistics.median(cpu for _, cpu in base_runs)
                results.append((sessions, emu, base))
                print(
                    f"{sessions:>8}  {emu:>13.0f}  {base:>13.0f}  {emu / base:>6.2f}"
                    f"  {emu_cpu:>12.2f}  {base_cpu:>12.2f}",
                    flush=True,
                )
    finally:
        stop_server(emulator)
        stop_server(baseline)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny smoke run")
    parser.add_argument("--chunk", type=int, default=4 * MIB, help="chunk size in bytes")
    parser.add_argument(
        "--level-bytes",
        type=int,
        default=256 * MIB,
        help="bytes uploaded per concurrency level and repetition",
    )
    parser.add_argument("--repeat", type=int, default=3, help="repetitions (median is shown)")
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="where both servers write (default: a fresh temporary folder)",
    )
    parser.add_argument("--serve-baseline", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_baseline is not None:
        serve_baseline(args.serve_baseline)
        return 0
    if args.quick:
        args.chunk, args.level_bytes, args.repeat = 256 * 1024, 4 * MIB, 1
    print(
        f"chunk {args.chunk} bytes, {args.level_bytes / MIB:.0f} MiB per level, "
        f"median of {args.repeat}",
        flush=True,
    )
    print(
        f"{'sessions':>8}  {'emulator MB/s':>13}  {'baseline MB/s':>13}  {'ratio':>6}"
        f"  {'emu CPU s/GB':>12}  {'base CPU s/GB':>12}"
    )
    with tempfile.TemporaryDirectory(prefix="bulkdrive-bench-", dir=args.workdir) as tmp:
        results = asyncio.run(run(args, Path(tmp)))
    sessions, emu, base = results[-1]
    print(f"ratio at {sessions} sessions: {emu / base:.2f} (target >= 0.80)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
