"""The dispatcher's hand-out to the workers, driven directly (the skips and in-flight marks
are driven through whole runs in test_resume.py and test_scheduler.py)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, cast

import anyio
import anyio.lowlevel
import pytest

from bulkdrive.config import SMALL_FILE_READ_AHEAD
from bulkdrive.dispatch import Dispatcher, Handout, next_batch
from bulkdrive.inline_io import PAUSE_SECONDS, SLOW_IN_A_ROW, InlineIO
from bulkdrive.outcomes import RunOutcomes
from bulkdrive.progress import NullReporter
from bulkdrive.remote_folders import RemotePaths
from bulkdrive.resume import ReadyFile
from bulkdrive.source import INLINE_READ_SLOW_SECONDS, InlineReads
from bulkdrive.walk import FileEntry, FolderEntry, WalkItem

pytestmark = pytest.mark.anyio


async def test_handout_gives_each_file_once_and_holds_the_next_batch_back() -> None:
    """The workers' hand-out: every file to exactly one worker, in order; a second batch waits
    until the first is taken (at most two batches of read-ahead content in memory); closing
    ends the workers once what was handed out is taken."""
    handout = Handout()
    taken: list[tuple[int, object]] = []
    second_put_done = anyio.Event()

    def ready(n: int) -> Any:
        return (f"file{n}", False, None, b"")

    async def worker(number: int) -> None:
        while (item := await handout.get()) is not None:
            taken.append((number, item[0]))
            await anyio.lowlevel.checkpoint()

    async def dispatcher() -> None:
        await handout.put([ready(n) for n in range(10)])
        await handout.put([ready(n) for n in range(10, 20)])
        second_put_done.set()
        handout.close()

    async with anyio.create_task_group() as tg:
        tg.start_soon(dispatcher)
        await anyio.lowlevel.checkpoint()
        # Before any worker runs, the first batch is out and the second is held back.
        assert not second_put_done.is_set()
        for number in range(3):
            tg.start_soon(worker, number)
    names = [name for _, name in taken]
    assert names == [f"file{n}" for n in range(20)]
    assert handout.put_waits == 1  # the second batch waited for the first to be taken
    assert len({number for number, _ in taken}) == 3  # all workers took a share
    assert await handout.get() is None


async def test_a_worker_cancelled_while_it_waits_takes_no_wake_up_with_it() -> None:
    """A waiting worker cancelled (the run stopping around it) leaves no waiter behind that
    would swallow the next file's wake-up: the file goes to a worker still waiting."""
    handout = Handout()
    taken: list[str] = []
    scopes: list[anyio.CancelScope] = []

    async def worker(name: str) -> None:
        with anyio.CancelScope() as scope:
            scopes.append(scope)
            ready = await handout.get()
            assert ready is not None
            taken.append(f"{name}:{ready[0]}")

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker, "first")
            tg.start_soon(worker, "second")
            for _ in range(3):
                await anyio.lowlevel.checkpoint()
            assert handout.worker_waits == 2  # both wait, the first one first
            scopes[0].cancel()
            for _ in range(3):
                await anyio.lowlevel.checkpoint()
            await handout.put([cast(Any, ("file0", False, None, b""))])
            for _ in range(3):
                await anyio.lowlevel.checkpoint()
            assert taken == ["second:file0"]
            handout.close()


async def test_next_batch_takes_what_the_backlog_holds_up_to_the_most() -> None:
    send, receive = anyio.create_memory_object_stream[WalkItem](10)
    with send, receive:
        for n in range(7):
            send.send_nowait(n)  # type: ignore[arg-type]
        assert await next_batch(receive, 5) == [0, 1, 2, 3, 4]
        assert await next_batch(receive, 5) == [5, 6]
        send.close()
        assert await next_batch(receive, 5) == []


async def test_a_batch_counts_files_and_folders_come_along() -> None:
    """A batch costs its stages the same whatever it holds: the most is counted in files,
    and the folders (and skips) between them come along, up to as many again."""
    send, receive = anyio.create_memory_object_stream[WalkItem](100)

    def file(n: int) -> FileEntry:
        return FileEntry(f"/src/f{n}", f"f{n}", 1, 0)

    items: list[WalkItem] = [FolderEntry("a"), file(0), FolderEntry("a/b"), file(1), file(2)]
    items += [file(3), FolderEntry("c"), file(4)]
    items += [FolderEntry(f"d{n}") for n in range(7)]
    with send, receive:
        for item in items:
            send.send_nowait(item)
        assert await next_batch(receive, 3) == items[:5]
        # Two files, then the third non-file ends the batch: at most 3 of those too.
        assert await next_batch(receive, 3) == items[5:10]
        assert await next_batch(receive, 3) == items[10:13]
        assert await next_batch(receive, 3) == items[13:]


def _dispatcher(handed: list[list[ReadyFile]], reads: InlineReads) -> Dispatcher:
    async def handout(files: list[ReadyFile]) -> None:
        handed.append(files)

    # hand_out reads and hands out; the outcomes (skips, failures) belong to `choose`.
    return Dispatcher(
        client=None,
        journal=None,
        paths=RemotePaths("\\"),
        outcomes=cast(RunOutcomes, None),
        reporter=NullReporter(),
        handout=handout,
        dry_run=False,
        check_remote=False,
        read_ahead=True,
        reads=reads,
    )


def _files(tmp_path: Path, count: int, prefix: str) -> list[FileEntry]:
    entries = []
    for i in range(count):
        path = tmp_path / f"{prefix}{i}"
        path.write_bytes(f"{prefix} {i} ".encode() * (i + 1))
        st = path.stat()
        entries.append(FileEntry(str(path), path.name, st.st_size, st.st_mtime_ns))
    return entries


async def test_small_files_are_read_on_the_loop_while_reads_are_quick(tmp_path: Path) -> None:
    """From the page cache every small file of a batch is read on the event loop (no thread
    hop); each worker gets its own file's bytes; a file above the read-ahead size is not read."""
    # Quick by definition: a loaded machine can make a page-cache read outlast the real
    # limit, which sent a file to the thread and failed this test once in `make test`.
    reads = InlineReads(SMALL_FILE_READ_AHEAD, InlineIO(math.inf))
    handed: list[list[ReadyFile]] = []
    dispatcher = _dispatcher(handed, reads)
    entries = _files(tmp_path, 20, "f")
    big = tmp_path / "big"
    big.write_bytes(b"x" * (SMALL_FILE_READ_AHEAD + 1))
    st = big.stat()
    entries.append(FileEntry(str(big), "big", st.st_size, st.st_mtime_ns))
    await dispatcher.hand_out([(e, False, None) for e in entries])
    (files,) = handed
    assert [f.entry for f in files] == entries
    for f in files[:-1]:
        assert f.content is not None
        assert f.content.data == Path(f.entry.path).read_bytes()
    assert files[-1].content is None
    assert (dispatcher.files_read_inline, dispatcher.files_read_in_thread) == (20, 0)


class _Disk:
    """The clock and the count of kernel waits that the reads' policy sees: every look at the
    clock finds it 10 ms on (each read is slow), and each read waits in the kernel while the
    disk is `stalling` (else it was only preempted)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.waits = 0
        self.stalling = True

    def clock(self) -> float:
        self.now += 0.01
        return self.now

    def voluntary_waits(self) -> int:
        self.waits += self.stalling
        return self.waits


async def test_reads_that_stall_in_a_row_send_small_files_to_a_thread_for_a_while(
    tmp_path: Path,
) -> None:
    """SLOW_IN_A_ROW stalled reads on the loop send the rest of their batch, and every batch of
    the next PAUSE_SECONDS, to a worker thread; reads that were only slow (preempted, no wait
    in the kernel) keep the loop. Bytes and order are the same either way."""
    disk = _Disk()
    policy = InlineIO(INLINE_READ_SLOW_SECONDS, disk.clock, disk.voluntary_waits)
    handed: list[list[ReadyFile]] = []
    dispatcher = _dispatcher(handed, InlineReads(SMALL_FILE_READ_AHEAD, policy))
    batches = [_files(tmp_path, 5, f"b{n}-") for n in range(3)]

    def counts() -> tuple[int, int]:
        return dispatcher.files_read_inline, dispatcher.files_read_in_thread

    await dispatcher.hand_out([(e, False, None) for e in batches[0]])
    assert counts() == (SLOW_IN_A_ROW, 5 - SLOW_IN_A_ROW)
    await dispatcher.hand_out([(e, False, None) for e in batches[1]])
    assert counts() == (SLOW_IN_A_ROW, 10 - SLOW_IN_A_ROW)
    disk.now += PAUSE_SECONDS
    disk.stalling = False
    await dispatcher.hand_out([(e, False, None) for e in batches[2]])
    assert counts() == (SLOW_IN_A_ROW + 5, 10 - SLOW_IN_A_ROW)
    for batch, files in zip(batches, handed, strict=True):
        assert [f.entry for f in files] == batch
        assert all(
            f.content is not None and f.content.data == Path(f.entry.path).read_bytes()
            for f in files
        )
