"""The streaming tree walk, on real temporary trees."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import tracemalloc
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import anyio
import anyio.lowlevel
import pytest

from bulkdrive import walk as walk_module
from bulkdrive.errors import ConfigError
from bulkdrive.globs import read_exclude_from
from bulkdrive.scan import BATCH_SIZE, SYMLINK_NOT_FOLLOWED, VANISHED
from bulkdrive.walk import (
    SYMLINK_LOOP,
    FileEntry,
    FolderEntry,
    SkippedEntry,
    WalkFailure,
    WalkFilters,
    WalkItem,
    WalkStatistics,
    count_files,
    walk,
)

from trees import without_read_override

pytestmark = pytest.mark.anyio


def write(path: Path, data: bytes = b"") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


async def collect(
    root: Path, filters: WalkFilters | None = None, buffer: int = 16
) -> tuple[list[WalkItem], WalkStatistics]:
    send, receive = anyio.create_memory_object_stream[WalkItem](buffer)
    items: list[WalkItem] = []

    async def consume() -> None:
        async with receive:
            async for item in receive:
                items.append(item)

    async with anyio.create_task_group() as tg:
        tg.start_soon(consume)
        stats = await walk(root, filters or WalkFilters(), send)
    return items, stats


def files_of(items: list[WalkItem]) -> dict[str, FileEntry]:
    return {str(i.relative): i for i in items if isinstance(i, FileEntry)}


def folders_of(items: list[WalkItem]) -> list[str]:
    return [str(i.relative) for i in items if isinstance(i, FolderEntry)]


def skipped_of(items: list[WalkItem]) -> dict[str, str]:
    return {str(i.relative): i.reason for i in items if isinstance(i, SkippedEntry)}


def failed_of(items: list[WalkItem]) -> dict[str, str]:
    return {str(i.relative): i.reason for i in items if isinstance(i, WalkFailure)}


def check_folder_order(items: list[WalkItem]) -> None:
    """Every file's folders were sent before it, top first, each exactly once."""
    sent: set[PurePosixPath] = set()
    for item in items:
        if isinstance(item, FolderEntry):
            relative = PurePosixPath(item.relative)
            assert relative not in sent, f"{relative} sent twice"
            assert relative.parent == PurePosixPath(".") or relative.parent in sent
            sent.add(relative)
        elif isinstance(item, FileEntry):
            for parent in PurePosixPath(item.relative).parents:
                assert parent == PurePosixPath(".") or parent in sent, f"{parent} not yet sent"


ODD_NAMES = [
    "with space.txt",
    "ünïcødé-文件.txt",
    "hash#tag.txt",
    "100%.txt",
    "..leading-dots",
    ".hidden",
    "x" * 255,
]


async def test_nested_tree_hidden_empty_and_odd_names(tmp_path: Path) -> None:
    src = tmp_path / "src"
    expected: dict[str, bytes] = {
        "top.bin": os.urandom(1000),
        "a/empty": b"",
        "a/b/c/deep.txt": b"deep",
        ".hidden-dir/inside": b"secret-ish",
        "odd dir #1/ü %/file": b"odd",
    }
    expected.update({f"names/{n}": n.encode()[:7] for n in ODD_NAMES})
    for rel, data in expected.items():
        write(src / rel, data)
    (src / "empty-folder" / "empty-too").mkdir(parents=True)

    items, stats = await collect(src)

    files = files_of(items)
    assert set(files) == set(expected)
    for rel, entry in files.items():
        assert entry.path == str(src / rel)
        assert Path(entry.path).read_bytes() == expected[rel]
        assert entry.size == len(expected[rel])
        assert entry.mtime_ns == os.stat(entry.path).st_mtime_ns
    assert set(folders_of(items)) == {
        "a",
        "a/b",
        "a/b/c",
        ".hidden-dir",
        "odd dir #1",
        "odd dir #1/ü %",
        "names",
    }
    assert not skipped_of(items)
    check_folder_order(items)
    assert stats == WalkStatistics(
        folders=7, files=len(expected), bytes=sum(map(len, expected.values())), skipped=0
    )


async def test_folders_sent_lazily_once_and_never_empty(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write(src / "a/b/only-filtered.log")
    write(src / "a/b/c/kept.txt", b"k")
    write(src / "a/second.txt")
    write(src / "d/e/f/g/kept.txt")
    (src / "empty/nested/deeper").mkdir(parents=True)
    write(src / "logs/x.log")

    items, stats = await collect(src, WalkFilters(exclude=("*.log",)))

    check_folder_order(items)
    assert sorted(folders_of(items)) == ["a", "a/b", "a/b/c", "d", "d/e", "d/e/f", "d/e/f/g"]
    assert set(files_of(items)) == {"a/b/c/kept.txt", "a/second.txt", "d/e/f/g/kept.txt"}
    assert stats.folders == 7
    assert stats.filtered == 2


async def test_root_is_a_file(tmp_path: Path) -> None:
    one = write(tmp_path / "report 2024.pdf", b"%PDF-")
    items, stats = await collect(one)
    assert items == [FileEntry(str(one), "report 2024.pdf", 5, os.stat(one).st_mtime_ns)]
    assert stats == WalkStatistics(folders=0, files=1, bytes=5, skipped=0)


async def test_missing_root_is_a_config_error_and_closes_the_stream(tmp_path: Path) -> None:
    send, receive = anyio.create_memory_object_stream[WalkItem](4)
    with pytest.raises(ConfigError, match="source not found") as err:
        await walk(tmp_path / "nope", WalkFilters(), send)
    assert "\n" not in str(err.value)
    with pytest.raises(anyio.EndOfStream):
        receive.receive_nowait()
    receive.close()


TREE = (
    "a.txt",
    "a.md",
    "docs/b.txt",
    "docs/deep/er/c.txt",
    "docs/deep/er/d.md",
    "build/out.txt",
    "img/p1.jpg",
    "img/p2.jpg",
    "img/pX.jpg",
)


@pytest.mark.parametrize(
    ("include", "exclude", "expected"),
    [
        # A pattern without "/" matches the base name at any depth.
        (("*.txt",), (), {"a.txt", "docs/b.txt", "docs/deep/er/c.txt", "build/out.txt"}),
        # `**/` spans zero or more folders.
        (("docs/**/*.txt",), (), {"docs/b.txt", "docs/deep/er/c.txt"}),
        (("**/er/*",), (), {"docs/deep/er/c.txt", "docs/deep/er/d.md"}),
        # A pattern matching a folder applies to everything under it.
        (("docs",), (), {"docs/b.txt", "docs/deep/er/c.txt", "docs/deep/er/d.md"}),
        ((), ("build",), set(TREE) - {"build/out.txt"}),
        ((), ("docs/deep/",), set(TREE) - {"docs/deep/er/c.txt", "docs/deep/er/d.md"}),
        # `*` does not cross "/", `?` is one character, `[...]` a class; exclude wins.
        (("*/*.txt",), (), {"docs/b.txt", "build/out.txt"}),
        (("img/p?.jpg",), ("img/p[!0-9].jpg",), {"img/p1.jpg", "img/p2.jpg"}),
        (("*.txt", "*.md"), ("docs/**",), {"a.txt", "a.md", "build/out.txt"}),
        (("/a.*",), (), {"a.txt", "a.md"}),
    ],
)
async def test_include_exclude_globs(
    tmp_path: Path, include: tuple[str, ...], exclude: tuple[str, ...], expected: set[str]
) -> None:
    src = tmp_path / "src"
    for rel in TREE:
        write(src / rel, b"x")
    items, _ = await collect(src, WalkFilters(include=include, exclude=exclude))
    assert set(files_of(items)) == expected
    check_folder_order(items)


async def test_exclude_prunes_a_folder_without_reading_it(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write(src / "keep.txt")
    write(src / "node_modules/pkg/index.js")
    os.symlink("..", src / "node_modules" / "loop")  # would be reported if the folder were read
    items, stats = await collect(src, WalkFilters(exclude=("node_modules/",)))
    assert [str(i.relative) for i in items] == ["keep.txt"]
    assert stats.filtered == 1


async def test_exclude_from_file_in_a_walk(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for rel in ("main.c", "main.o", "lib/util.o", "cache/blob", "#notes#"):
        write(src / rel)
    listing = write(tmp_path / "ex", b"*.o\n# comment\ncache/\n\\#notes#\n")
    items, _ = await collect(src, WalkFilters(exclude=read_exclude_from(listing)))
    assert set(files_of(items)) == {"main.c"}


def test_bad_filter_values_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="min-size"):
        WalkFilters(min_size=10, max_size=5)
    with pytest.raises(ConfigError, match="max-size must not be negative"):
        WalkFilters(max_size=-1)
    with pytest.raises(ConfigError, match="bad glob pattern"):
        WalkFilters(include=("[z-a]",))


async def test_min_and_max_size(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for size in (0, 1, 99, 100, 101, 5000):
        write(src / f"s{size}", b"x" * size)
    items, stats = await collect(src, WalkFilters(min_size=1, max_size=100))
    assert set(files_of(items)) == {"s1", "s99", "s100"}
    assert stats.bytes == 200
    assert stats.filtered == 3
    items, _ = await collect(src, WalkFilters(min_size=101))
    assert set(files_of(items)) == {"s101", "s5000"}


def symlink_tree(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    outside = tmp_path / "outside"
    write(outside / "o.txt", b"outside!")
    write(src / "real/r.txt", b"real")
    os.symlink(outside, src / "to-outside")
    os.symlink("real/r.txt", src / "link.txt")
    os.symlink("missing", src / "broken")
    os.symlink("..", src / "real" / "up")  # a loop: real/up/real/up/...
    os.symlink(".", src / "self")
    return src


async def test_symlinks_skipped_and_reported_by_default(tmp_path: Path) -> None:
    src = symlink_tree(tmp_path)
    items, stats = await collect(src)
    assert set(files_of(items)) == {"real/r.txt"}
    assert skipped_of(items) == {
        name: SYMLINK_NOT_FOLLOWED
        for name in ("to-outside", "link.txt", "broken", "real/up", "self")
    }
    assert stats.skipped == 5


async def test_follow_symlinks_without_looping(tmp_path: Path) -> None:
    src = symlink_tree(tmp_path)
    with anyio.fail_after(30):  # a loop must end the test, not hang it
        items, stats = await collect(src, WalkFilters(follow_symlinks=True))
    files = files_of(items)
    assert set(files) == {"real/r.txt", "to-outside/o.txt", "link.txt"}
    assert Path(files["to-outside/o.txt"].path).read_bytes() == b"outside!"
    assert files["link.txt"].size == 4
    skipped = skipped_of(items)
    assert skipped["real/up"] == SYMLINK_LOOP
    assert skipped["self"] == SYMLINK_LOOP
    assert set(skipped) == {"real/up", "self"}
    # Asked to follow it, and it leads nowhere: a failure, not a skip.
    assert failed_of(items)["broken"].startswith("broken symbolic link")
    assert "to-outside" in folders_of(items)
    check_folder_order(items)
    assert stats.files == 3


async def test_symlink_loop_through_two_folders(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write(src / "a/fa")
    write(src / "b/fb")
    os.symlink("../b", src / "a" / "to-b")
    os.symlink("../a", src / "b" / "to-a")
    with anyio.fail_after(30):
        items, _ = await collect(src, WalkFilters(follow_symlinks=True))
    # Through a link a folder may appear once more under another name, never in a cycle.
    assert set(files_of(items)) == {"a/fa", "a/to-b/fb", "b/fb", "b/to-a/fa"}
    assert skipped_of(items) == {"a/to-b/to-a": SYMLINK_LOOP, "b/to-a/to-b": SYMLINK_LOOP}


async def test_fifo_socket_and_device_skipped(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write(src / "plain", b"p")
    os.mkfifo(src / "pipe")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(os.fspath(src / "sock"))
        os.symlink("/dev/null", src / "null")
        items, stats = await collect(src, WalkFilters(follow_symlinks=True))
    assert set(files_of(items)) == {"plain"}
    assert skipped_of(items) == {
        "pipe": "FIFO (named pipe)",
        "sock": "socket",
        "null": "character device",
    }
    assert stats.skipped == 3


async def test_filtered_special_files_are_not_reported(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    os.mkfifo(src / "pipe")
    os.symlink("pipe", src / "link")
    items, stats = await collect(src, WalkFilters(exclude=("pipe", "link")))
    assert items == []
    assert stats.filtered == 2


_WALK_SCRIPT = """
import json, sys, anyio
from pathlib import Path
from bulkdrive.walk import FileEntry, WalkFailure, WalkFilters, walk

async def main():
    send, receive = anyio.create_memory_object_stream(16)
    items = []
    async def consume():
        async with receive:
            async for item in receive:
                items.append(item)
    async with anyio.create_task_group() as tg:
        tg.start_soon(consume)
        stats = await walk(Path(sys.argv[1]), WalkFilters(), send)
    print(json.dumps({
        "files": sorted(i.relative for i in items if isinstance(i, FileEntry)),
        "failed": {i.relative: [i.reason, i.error.__name__] for i in items
                   if isinstance(i, WalkFailure)},
        "skipped": stats.skipped,
        "failed_count": stats.failed,
    }))

anyio.run(main)
"""


def test_unreadable_folder_is_a_failure(tmp_path: Path) -> None:
    # Run without the capabilities that let root read any folder: CI runs as root.
    src = tmp_path / "src"
    write(src / "locked/secret")
    write(src / "open/fine")
    (src / "locked").chmod(0)
    try:
        argv = without_read_override([sys.executable, "-c", _WALK_SCRIPT, str(src)])
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True)
    finally:
        (src / "locked").chmod(0o755)
    seen = json.loads(done.stdout)
    assert seen["files"] == ["open/fine"]
    reason, error = seen["failed"]["locked"]
    assert reason.startswith("unreadable folder: Permission denied")
    assert error == "UnreadableFolder"
    assert (seen["skipped"], seen["failed_count"]) == (0, 1)


async def test_folder_that_is_not_a_folder_any_more_is_a_failure(tmp_path: Path) -> None:
    # Stands in for an unreadable folder when the tests run as root: the folder is listed,
    # then replaced before the walk opens it, deterministically (see vanished test below).
    src = tmp_path / "src"
    write(src / "a.txt")
    write(src / "b/inside")
    write(src / "c/after")
    items = await _replace_folder_while_walking(src, src / "b", becomes_file=True)
    assert failed_of(items) == {"b": "unreadable folder: Not a directory"}
    assert not skipped_of(items)
    assert set(files_of(items)) == {"a.txt", "c/after"}


@pytest.mark.parametrize("limit", [0.0, 3600.0])
async def test_folders_opened_on_the_loop_or_in_a_thread_give_the_same_walk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, limit: float
) -> None:
    # Folders open on the event loop while that is quick, in a worker thread once it is not
    # (limit 0: every open is "slow", so after the first all go to the thread and stay there).
    src = tmp_path / "src"
    for d in range(6):
        for sub in range(3):
            write(src / f"d{d}" / f"s{sub}" / "f.txt", b"x" * (d + sub))
        write(src / f"d{d}" / "top.txt")
    (src / "empty" / "inner").mkdir(parents=True)
    os.symlink(src / "d0", src / "link")
    folders = 1 + 6 * 4 + 2  # empty and empty/inner are opened too
    baseline, _ = await collect(src)

    monkeypatch.setattr(walk_module, "INLINE_OPEN_LIMIT", limit)
    items, stats = await collect(src)

    assert items == baseline
    assert len(files_of(items)) == 6 * 4 and skipped_of(items) == {"link": SYMLINK_NOT_FOLLOWED}
    check_folder_order(items)
    opened = (stats.opened_inline, stats.opened_in_thread)
    assert opened == ((1, folders - 2) if limit == 0 else (folders - 1, 0))  # SRC: a thread


@pytest.mark.parametrize("limit", [0.0, 3600.0])
async def test_a_folder_larger_than_a_batch_reads_the_same_on_the_loop_or_in_a_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, limit: float
) -> None:
    # Its later batches follow its first: on the loop while reads are quick (judged per
    # entry, so a full batch is not "slow" for its size), else in a worker thread.
    src = tmp_path / "src"
    for i in range(BATCH_SIZE + 20):
        write(src / "big" / f"f{i:04}", b"x" * (i % 7))
    write(src / "big" / "sub" / "inner.txt")
    write(src / "after" / "last.txt")
    baseline, _ = await collect(src)
    monkeypatch.setattr(walk_module, "INLINE_OPEN_LIMIT", limit)
    items, stats = await collect(src)
    assert items == baseline
    assert len(files_of(items)) == BATCH_SIZE + 22
    check_folder_order(items)
    opened = (stats.opened_inline, stats.opened_in_thread)
    assert opened == ((1, 2) if limit == 0 else (3, 0))  # big, big/sub, after (SRC: a thread)


async def test_folder_that_vanishes_is_a_failure_and_the_walk_goes_on(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write(src / "a.txt")
    write(src / "b/inside")
    write(src / "c/after")
    items = await _replace_folder_while_walking(src, src / "b", becomes_file=False)
    assert failed_of(items) == {"b": f"folder {VANISHED}"}
    assert not skipped_of(items)
    assert set(files_of(items)) == {"a.txt", "c/after"}
    assert folders_of(items) == ["c"]


async def _replace_folder_while_walking(
    src: Path, folder: Path, becomes_file: bool
) -> list[WalkItem]:
    """Walk with no buffer; once the walker is blocked sending the first item (the folder is
    listed but not yet opened: files of a batch come before its folders), replace it."""
    send, receive = anyio.create_memory_object_stream[WalkItem](0)
    items: list[WalkItem] = []

    async def consume() -> None:
        async with receive:
            for _ in range(10_000):
                if send.statistics().tasks_waiting_send:
                    break
                await anyio.sleep(0.001)
            shutil.rmtree(folder)
            if becomes_file:
                folder.write_bytes(b"now a file")
            async for item in receive:
                items.append(item)

    async with anyio.create_task_group() as tg:
        tg.start_soon(consume)
        await walk(src, WalkFilters(), send)
    return items


async def test_files_that_vanish_after_listing(tmp_path: Path) -> None:
    """Files deleted while a big folder is read: each is reported vanished or not seen."""
    src = tmp_path / "src"
    names = {f"f{i:04}" for i in range(BATCH_SIZE + 100)}
    for name in names:
        write(src / name)
    send, receive = anyio.create_memory_object_stream[WalkItem](0)
    items: list[WalkItem] = []

    async def consume() -> None:
        async with receive:
            first = await receive.receive()
            items.append(first)
            for name in names - {str(first.relative)}:
                os.unlink(src / name)
            async for item in receive:
                items.append(item)

    async with anyio.create_task_group() as tg:
        tg.start_soon(consume)
        stats = await walk(src, WalkFilters(), send)
    seen = files_of(items)
    failed = failed_of(items)
    # The first batch was stat'ed before the deletion; later ones find the names gone.
    assert len(seen) == BATCH_SIZE
    assert not skipped_of(items)
    assert set(failed.values()) <= {VANISHED}
    assert set(seen) | set(failed) <= names
    assert stats.failed == len(failed)
    assert stats.files == BATCH_SIZE


async def test_stops_quietly_when_the_receiver_closes(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for d in range(2):
        for f in range(BATCH_SIZE + 10):  # listings left open part-way
            write(src / f"d{d}" / f"f{f}")
    fds_before = len(os.listdir("/proc/self/fd"))
    send, receive = anyio.create_memory_object_stream[WalkItem](4)

    async def consume() -> None:
        async with receive:
            for _ in range(700):
                await receive.receive()

    async with anyio.create_task_group() as tg:
        tg.start_soon(consume)
        stats = await walk(src, WalkFilters(), send)
    assert stats.stopped
    assert 600 < stats.files < 2 * (BATCH_SIZE + 10)
    assert len(os.listdir("/proc/self/fd")) == fds_before  # every listing closed


async def test_big_directory_read_in_batches_in_order(tmp_path: Path) -> None:
    src = tmp_path / "src"
    total = 2 * BATCH_SIZE + 7
    for i in range(total):
        write(src / f"f{i:05}")
    items, stats = await collect(src, buffer=0)
    assert stats.files == total
    assert len({str(i.relative) for i in items}) == total
    again, _ = await collect(src, buffer=0)
    assert again == items  # deterministic order


# --- memory -------------------------------------------------------------------------------


def _proc_status(key: str) -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        found = re.search(rf"^{key}:\s+(\d+) kB", f.read(), re.MULTILINE)
    assert found is not None
    return int(found.group(1)) * 1024


class PeakMemory:
    """Peak memory growth over a stretch of code: the peak RSS (VmHWM, reset through
    /proc/self/clear_refs) where Linux allows it, else Python's traced peak (tracemalloc
    slows a 100 000-file walk about fourfold, so it is only the fallback)."""

    def __init__(self) -> None:
        try:
            with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
                f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
            self.by_rss = True
        except OSError:
            self.by_rss = False
        self.start = 0

    def __enter__(self) -> PeakMemory:
        if self.by_rss:
            self.start = _proc_status("VmRSS")
        else:
            tracemalloc.start()
            tracemalloc.reset_peak()
            self.start = tracemalloc.get_traced_memory()[0]
        return self

    def __exit__(self, *exc: object) -> None:
        if self.by_rss:
            self.growth = _proc_status("VmHWM") - self.start
        else:
            self.growth = tracemalloc.get_traced_memory()[1] - self.start
            tracemalloc.stop()


def _current_memory(by_rss: bool) -> int:
    return _proc_status("VmRSS") if by_rss else tracemalloc.get_traced_memory()[0]


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[Path]:
    """A folder for a tree of 100 000 files: on tmpfs when there is one, because ext4 makes
    file creation ~25x slower for a while after a mass delete (performance-notes.md), which
    every earlier run's clean-up of tmp_path causes."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK) and os.statvfs(shm).f_favail > 200_000:
        folder = Path(tempfile.mkdtemp(prefix="bulkdrive-walk-", dir=shm))
        try:
            yield folder
        finally:
            shutil.rmtree(folder)
    else:
        yield tmp_path


@pytest.mark.slow
async def test_memory_stays_flat_for_100_000_files(scratch: Path) -> None:
    """100 000 empty files through a 64-item backlog to a slow consumer: the backlog never
    exceeds its bound, the walker is held back by it, and the walk's peak memory growth is a
    small fraction of what listing the tree would cost (measured here, not guessed)."""
    folders, per_folder, bound = 100, 1000, 64
    src = scratch / "src"
    src.mkdir()
    for d in range(folders):
        folder = f"{src}/d{d:03}"
        os.mkdir(folder)
        for f in range(per_folder):
            os.close(os.open(f"{folder}/f{f:04}", os.O_CREAT | os.O_WRONLY, 0o644))

    send, receive = anyio.create_memory_object_stream[WalkItem](bound)
    received = 0
    most_buffered = 0
    walk_done = False
    first_item_while_walking = False

    async def slow_consumer() -> None:
        nonlocal received, most_buffered, first_item_while_walking
        async with receive:
            async for _item in receive:
                if received == 0:
                    first_item_while_walking = not walk_done
                received += 1
                most_buffered = max(most_buffered, send.statistics().current_buffer_used)
                if received % 16 == 0:
                    await anyio.lowlevel.checkpoint()
                if received % 1000 == 0:
                    await anyio.sleep(0.001)

    with PeakMemory() as walk_memory:
        async with anyio.create_task_group() as tg:
            tg.start_soon(slow_consumer)
            stats = await walk(src, WalkFilters(), send)
            walk_done = True

    # What the tree costs as a list in memory, the thing the walk must not do: its objects'
    # sizes (an RSS reading would miss what the heap already had free from earlier tests).
    listed = [
        FileEntry(str(src / f"d{d:03}" / f"f{f:04}"), f"d{d:03}/f{f:04}", 0, 0)
        for d in range(folders)
        for f in range(per_folder)
    ]
    list_bytes = sys.getsizeof(listed) + sum(
        sys.getsizeof(e) + sys.getsizeof(e.path) + sys.getsizeof(e.relative) for e in listed
    )
    del listed

    assert stats == WalkStatistics(folders=folders, files=folders * per_folder, bytes=0, skipped=0)
    assert received == folders + folders * per_folder
    assert first_item_while_walking  # the consumer drains while the walk goes on
    assert most_buffered == bound  # the walker filled the backlog and was held back by it
    assert list_bytes > 20_000_000
    assert walk_memory.growth < list_bytes / 5, (walk_memory.growth, list_bytes)


@pytest.mark.parametrize(
    "filters",
    [
        WalkFilters(),
        WalkFilters(exclude=("*.log", "skip/")),
        WalkFilters(include=("keep/**", "*.txt"), min_size=2),
        WalkFilters(max_size=3, exclude=("deep/a",)),
        WalkFilters(min_size=3),  # a size bound alone: the count's plain path checks sizes too
    ],
)
async def test_count_files_counts_what_the_walk_sends(tmp_path: Path, filters: WalkFilters) -> None:
    src = tmp_path / "src"
    for relative, data in {
        "a.txt": b"1",
        "b.log": b"22",
        "keep/x.bin": b"333",
        "keep/y.log": b"4444",
        "skip/z.txt": b"55555",
        "deep/a/b/c.txt": b"666666",
        "deep/d.txt": b"77",
    }.items():
        write(src / relative, data)
    os.symlink("a.txt", src / "link")  # not followed: neither sent nor counted
    os.mkfifo(src / "pipe")
    items, stats = await collect(src, filters)
    assert count_files(src, filters) == (stats.files, stats.bytes)
    assert stats.files == len(files_of(items))
    stop = threading.Event()
    stop.set()
    assert count_files(src, filters, stop) is None  # a stopped count claims nothing
