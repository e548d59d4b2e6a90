"""The dispatcher's hand-out to the workers, driven directly (the skips and in-flight marks
are driven through whole runs in test_resume.py and test_scheduler.py)."""

from __future__ import annotations

from typing import Any

import anyio
import anyio.lowlevel
import pytest

from bulkdrive.dispatch import Handout, next_batch
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
