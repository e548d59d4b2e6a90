"""Generated source trees for the demo, the tests and the benchmarks.

    python -m bulkdrive.bench.workloads sample DIR     # the `make demo` tree (a few MiB)
    python -m bulkdrive.bench.workloads small DIR      # 10 000 × 4 KiB
    python -m bulkdrive.bench.workloads large DIR      # 8 × 256 MiB
    python -m bulkdrive.bench.workloads mixed DIR      # a realistic spread of sizes
    python -m bulkdrive.bench.workloads quick DIR      # 4 × 8 MiB + 200 × 4 KiB, the smoke run
    python -m bulkdrive.bench.workloads tree DIR       # 50 000 files in ~9 000 folders
    python -m bulkdrive.bench.workloads tree-flat DIR  # the same files in one folder
    python -m bulkdrive.bench.workloads nettree DIR    # the tree's shape, 10 000 files
    python -m bulkdrive.bench.workloads netsmall DIR   # 20 000 × 4 KiB (network sweep)
    python -m bulkdrive.bench.workloads netlarge DIR   # 128 × 16 MiB (network sweep)
    python -m bulkdrive.bench.workloads netmidrun DIR  # 60 000 × 4 KiB (the mid-run change)

A tree that exists already is reused as long as it is still the workload's definition: its
marker holds a fingerprint of the definition (every path and size, and the seed), so a tree
built by an older definition (say 5 000 files where there are now 20 000) is built again instead
of being measured silently.
"""

from __future__ import annotations

import hashlib
import math
import os
import random
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

KiB = 1024
MiB = 1024 * KiB


def _write(path: Path, size: int, rng: random.Random) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    block = rng.randbytes(min(size, MiB)) if size else b""
    with path.open("wb") as fh:
        left = size
        while left > 0:
            piece = block[: min(left, len(block))]
            fh.write(piece)
            left -= len(piece)


def sample_files() -> Iterator[tuple[str, int]]:
    yield "README.txt", 600
    yield "empty.txt", 0
    yield ".hidden", 12
    yield "photos/2024/Tulip.jpg", 900 * KiB
    yield "photos/2024/sunset #1.png", 2 * MiB + 17
    yield "docs/été/rapport 100%.pdf", 5 * MiB + 3
    yield "docs/notes.md", 3 * KiB
    for i in range(40):
        yield f"logs/day-{i:02d}.log", 1 * KiB + i * 97


def small_files(count: int = 10_000, size: int = 4 * KiB) -> Iterator[tuple[str, int]]:
    for i in range(count):
        yield f"d{i // 500:03d}/f{i:05d}.bin", size


def large_files(count: int = 8, size: int = 256 * MiB) -> Iterator[tuple[str, int]]:
    for i in range(count):
        yield f"large-{i}.bin", size


def mixed_files(seed: int = 7) -> Iterator[tuple[str, int]]:
    """Many small files, some medium, a few large: roughly what a project folder holds."""
    rng = random.Random(seed)
    for i in range(2000):
        yield f"src/m{i // 200:02d}/s{i:04d}.txt", rng.randint(0, 64 * KiB)
    for i in range(60):
        yield f"assets/a{i:02d}.dat", rng.randint(256 * KiB, 8 * MiB)
    for i in range(4):
        yield f"media/v{i}.bin", rng.randint(48 * MiB, 96 * MiB)


def quick_files() -> Iterator[tuple[str, int]]:
    """A few seconds' worth of both shapes (multi-chunk and one-request files): the smoke run."""
    yield from large_files(count=4, size=8 * MiB)
    yield from small_files(count=200)


#: The shape of a real source tree (a copy of a Python installation's standard library holds
#: 50 724 files in 8 702 folders): file count, folder count, deepest level, median file size.
TREE_FILES = 50_000
TREE_FOLDERS = 9_000
TREE_DEPTH = 10
TREE_FANOUT_DECAY = 0.65  # a folder at depth d takes a new subfolder with odds 0.65**d
TREE_MEDIAN = 4 * KiB
TREE_SIGMA = 1.2  # log-normal spread: mean ~8 KiB, a few files of a few MiB
TREE_SMALL_MAX = 8 * MiB
TREE_LARGE = (16 * MiB, 24 * MiB, 40 * MiB)  # a few files of tens of MiB


def _tree_sizes(rng: random.Random, count: int) -> list[int]:
    mu = math.log(TREE_MEDIAN)
    sizes = [min(int(rng.lognormvariate(mu, TREE_SIGMA)), TREE_SMALL_MAX) for _ in range(count)]
    for i, size in enumerate(TREE_LARGE):  # spread over the run, not all at its end
        sizes[(i + 1) * count // (len(TREE_LARGE) + 1)] = size
    return sizes


def tree_files(
    seed: int = 12, files: int = TREE_FILES, folders: int = TREE_FOLDERS
) -> Iterator[tuple[str, int]]:
    """A tree shaped like a real one, deterministic from `seed`: each folder hangs off a
    random earlier folder, shallow ones more likely (most folders 3 to 6 levels down, none
    deeper than TREE_DEPTH), each file lands in a random folder, sizes are log-normal around a
    4 KiB median, plus a few files of tens of MiB."""
    rng = random.Random(seed)
    paths = [""]
    depths = [0]
    for i in range(folders):
        parent = rng.randrange(len(paths))
        # Deeper folders take fewer subfolders: most of a real tree sits 3 to 6 levels down.
        while depths[parent] >= TREE_DEPTH or rng.random() >= TREE_FANOUT_DECAY ** depths[parent]:
            parent = rng.randrange(len(paths))
        paths.append(f"{paths[parent]}d{i:04d}/")
        depths.append(depths[parent] + 1)
    homes = [rng.randrange(len(paths)) for _ in range(files)]
    for i, size in enumerate(_tree_sizes(rng, files)):
        yield f"{paths[homes[i]]}f{i:05d}.dat", size


def tree_flat_files(seed: int = 12) -> Iterator[tuple[str, int]]:
    """`tree`'s files, same count and sizes in the same order, all in one folder."""
    for i, (_, size) in enumerate(tree_files(seed)):
        yield f"flat/f{i:05d}.dat", size


def net_small_files() -> Iterator[tuple[str, int]]:
    """The network sweep's small files: 20 000, so that a run lasts ~10 s even on loopback.
    With 5 000 a quiet machine finished in 2-4 s, where Python's start-up and the first
    second decided 10-30 % of the figure: too short to tell 0.9x the best setting from 1.0x,
    and too short for the mid-run change (`--midrun`) to be watched for 10 s after it."""
    yield from small_files(count=20_000)


def net_tree_files() -> Iterator[tuple[str, int]]:
    """The network sweep's tree: `tree`'s shape at a fifth of its size (10 000 files in
    ~1 800 folders), so that the sequential SDK algorithm 20 ms away takes minutes, not an
    hour, while a run on loopback still lasts several seconds (at a tenth it lasted ~5 s,
    where start-up decided too much of the figure)."""
    yield from tree_files(files=TREE_FILES // 5, folders=TREE_FOLDERS // 5)


def net_midrun_files() -> Iterator[tuple[str, int]]:
    """The mid-run change's small files (`bench --midrun`): 60 000, so that after 5 s at the
    first latency ~15 s are left at the second, at the ~3 000 files/s one client reaches here.
    With netsmall's 20 000 the run ended 3 s after the restart: too soon to tell whether it
    recovered within 10 s."""
    yield from small_files(count=60_000)


def net_large_files() -> Iterator[tuple[str, int]]:
    """The network sweep's large files: 128 of 16 MiB (four chunks each), as many as the
    largest fixed setting sends at once; 2.1 GB, ~7 s on loopback (48 files lasted 2-3 s on a
    quiet machine: start-up decided the figure)."""
    yield from large_files(count=128, size=16 * MiB)


WORKLOADS = {
    "sample": sample_files,
    "small": small_files,
    "large": large_files,
    "mixed": mixed_files,
    "quick": quick_files,
    "tree": tree_files,
    "tree-flat": tree_flat_files,
    "netsmall": net_small_files,
    "netlarge": net_large_files,
    "nettree": net_tree_files,
    "netmidrun": net_midrun_files,
}
#: Workloads measured on an emulator that refuses uploads into missing folders
#: (`serve --strict-parents`): every folder must be created by the contender.
STRICT_PARENTS = frozenset({"tree", "tree-flat", "nettree"})


def fingerprint(name: str, seed: int = 1) -> str:
    """What a built tree must match: the definition's file count, bytes, seed and a digest
    of every path and size."""
    digest = hashlib.sha256()
    files = total = 0
    for relative, size in WORKLOADS[name]():
        digest.update(f"{relative}\0{size}\n".encode())
        files += 1
        total += size
    return f"files={files} bytes={total} seed={seed} sha256={digest.hexdigest()}\n"


def _matches_on_disk(name: str, root: Path) -> bool:
    """True when `root` holds exactly the definition's paths at the definition's sizes (a tree
    whose marker predates fingerprints is checked once this way instead of being rebuilt)."""
    expected = dict(WORKLOADS[name]())
    found = 0
    for dirpath, _, filenames in os.walk(root):
        for filename in filenames:
            path = os.path.join(dirpath, filename)
            relative = os.path.relpath(path, root).replace(os.sep, "/")
            if expected.get(relative) != os.stat(path).st_size:
                return False
            found += 1
    return found == len(expected)


def build(name: str, root: Path, seed: int = 1) -> Path:
    """Create workload `name` under `root` unless the same definition is there already;
    returns `root`."""
    marker = root.with_name(root.name + ".complete")  # beside the tree, not uploaded with it
    wanted = fingerprint(name, seed)
    if marker.exists():
        held = marker.read_text()
        if held == wanted:
            return root
        if not held and _matches_on_disk(name, root):  # an older, unfingerprinted marker
            marker.write_text(wanted)
            return root
        marker.unlink()
        shutil.rmtree(root, ignore_errors=True)  # stale: another definition built it
    rng = random.Random(seed)
    for relative, size in WORKLOADS[name]():
        _write(root / relative, size, rng)
    marker.write_text(wanted)
    return root


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in WORKLOADS:
        sys.exit(f"usage: {sys.argv[0]} {{{','.join(WORKLOADS)}}} DIR")
    print(build(sys.argv[1], Path(sys.argv[2])))
