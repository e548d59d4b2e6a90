"""How long does `bulkdrive check` take next to `bulkdrive upload --check-remote` on one tree?

Both must read every remote folder of the tree: `check` lists them concurrently (--checkers),
the upload's --check-remote lists each folder as its files come up, one at a time. One run:
1. builds (or reuses) a tree of FILES small files spread over FOLDERS folders;
2. starts `bulkdrive serve` in its own process and uploads the tree once;
3. alternates, REPEAT times: `check` (exit 0 expected) and `upload --check-remote` with a fresh
   journal (so that every file is decided by the remote listing, none by the journal).

    python benchmarks/check_speed.py               # 50 000 files in 9 000 folders, 3 repetitions
    python benchmarks/check_speed.py --quick       # 2 000 files in 300 folders (seconds)

Prints the median seconds of each and their ratio. The machine may be shared: compare the ratio,
which is measured within one run, not the seconds across runs.
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

USER, PASSWORD, SHARE = "bench", "bench-pass", "1"


def build_tree(root: Path, files: int, folders: int) -> None:
    marker = root / f".complete-{files}-{folders}"
    if marker.exists():
        return
    rng = random.Random(16)
    # Folders two levels deep (about sqrt(folders) per level), files spread over all of them.
    width = max(1, int(folders**0.5))
    paths = [root / f"d{i // width:03d}" / f"e{i % width:03d}" for i in range(folders)]
    for path in paths:
        path.mkdir(parents=True, exist_ok=True)
    for n in range(files):
        (paths[n % folders] / f"f{n:06d}.dat").write_bytes(rng.randbytes(rng.randrange(0, 2048)))
    marker.write_text("")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def timed(args: list[str], env: dict[str, str], expect: int) -> float:
    began = time.perf_counter()
    done = subprocess.run(args, env=env, capture_output=True, check=False)
    seconds = time.perf_counter() - began
    if done.returncode != expect:
        sys.exit(f"{args[1]} exited {done.returncode}: {done.stderr.decode()[-2000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=50_000)
    parser.add_argument("--folders", type=int, default=9_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--tree", type=Path, help="where to build the tree (reused)")
    parser.add_argument("--quick", action="store_true")
    options = parser.parse_args()
    if options.quick:
        options.files, options.folders, options.repeat = 2_000, 300, 1
    bulkdrive = [sys.executable, "-m", "bulkdrive"]
    with tempfile.TemporaryDirectory(prefix="check-speed-") as scratch:
        work = Path(scratch)
        tree = options.tree or work / "tree"
        build_tree(tree, options.files, options.folders)
        port = free_port()
        server = subprocess.Popen(
            [
                *bulkdrive,
                "serve",
                "--root",
                str(work / "server"),
                "--port",
                str(port),
                "--user",
                f"{USER}:{PASSWORD}",
                "--share",
                f"{SHARE}:bench",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            env = {**os.environ, "BULKDRIVE_PASSWORD": PASSWORD}
            env["BULKDRIVE_STATE_DIR"] = str(work / "state")
            url = f"http://127.0.0.1:{port}/webconsole/api"
            common = ["--url", url, "--user", USER, "--share", SHARE, "--to", "\\tree"]
            for _ in range(100):  # the server is up when a login works
                probe = subprocess.run(
                    [*bulkdrive, "shares", "--url", url, "--user", USER],
                    env=env,
                    capture_output=True,
                    check=False,
                )
                if probe.returncode == 0:
                    break
                time.sleep(0.1)
            upload = [*bulkdrive, "upload", str(tree), *common, "--no-progress", "-q"]
            first = timed(upload, env, 0)
            print(f"tree: {options.files} files in {options.folders} folders; upload {first:.1f}s")
            checks, remotes = [], []
            for n in range(options.repeat):
                check = [*bulkdrive, "check", str(tree), *common, "--no-progress", "-q"]
                checks.append(timed(check, env, 0))
                journal = ["--journal", str(work / f"fresh-{n}.sqlite"), "--check-remote"]
                remotes.append(timed([*upload, *journal], env, 0))
            check_s, remote_s = statistics.median(checks), statistics.median(remotes)
            print(f"check:                 median {check_s:.2f}s of {checks}")
            print(f"upload --check-remote: median {remote_s:.2f}s of {remotes}")
            print(f"ratio check / upload --check-remote: {check_s / remote_s:.2f}")
        finally:
            server.terminate()
            server.wait(timeout=30)


if __name__ == "__main__":
    main()
