"""WorkQueue: items in order to the tasks that wait for them, and an end once closed."""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest

from bulkdrive.work_queue import WorkQueue

pytestmark = pytest.mark.anyio


async def test_tasks_take_every_item_once_in_order_and_end_when_closed() -> None:
    queue: WorkQueue[int] = WorkQueue()
    taken: list[tuple[str, int]] = []

    async def task(name: str) -> None:
        while (item := await queue.get()) is not None:
            taken.append((name, item))
            await anyio.lowlevel.checkpoint()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            assert queue.put(0) is False  # nobody waits yet
            for name in "abc":
                tg.start_soon(task, name)
            await anyio.sleep(0.01)  # all three took what there was, and wait
            assert queue.put(1) is True  # one of them is woken for it
            queue.put_many(range(2, 20))
            await anyio.sleep(0.01)
            assert len(queue) == 0
            queue.put_many(range(20, 23))
            queue.close()  # the tasks end once the queue is empty
    assert [item for _, item in taken] == list(range(23))
    assert {name for name, _ in taken} == {"a", "b", "c"}


async def test_a_closed_empty_queue_ends_a_task_at_once() -> None:
    queue: WorkQueue[str] = WorkQueue()
    queue.close()
    with anyio.fail_after(1):
        assert await queue.get() is None
