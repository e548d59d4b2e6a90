"""Work for a few long-lived tasks: a deque, and an event for each task that found it empty.

The folder creators (`remote_folders`) and a `--cluster` worker's uploads (`cluster_worker`)
take their items here. A memory stream and a limiter round per item cost a few passes through
the event loop each (~30 µs of CPU per file on a worker), a deque and an event only for a task
that has to wait ~2."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Generic, TypeVar

import anyio

T = TypeVar("T")


class WorkQueue(Generic[T]):
    """Items taken in order by the tasks that `get` them; `close` ends those tasks once the
    queue is empty."""

    def __init__(self) -> None:
        self._items: deque[T] = deque()
        self._idle: deque[anyio.Event] = deque()  # one per task waiting for an item
        self._closed = False

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: T) -> bool:
        """Queue `item`; whether a waiting task was woken for it."""
        self._items.append(item)
        if self._idle:
            self._idle.popleft().set()
            return True
        return False

    def put_many(self, items: Iterable[T]) -> None:
        """Queue `items`, waking a waiting task for each."""
        before = len(self._items)
        self._items.extend(items)
        idle = self._idle
        for _ in range(min(len(self._items) - before, len(idle))):
            idle.popleft().set()

    async def get(self) -> T | None:
        """The next item, once there is one; None once the queue is closed and empty."""
        items = self._items
        while not items:
            if self._closed:
                return None
            idle = anyio.Event()
            self._idle.append(idle)
            await idle.wait()
        return items.popleft()

    def close(self) -> None:
        """No more items: the tasks end once the queue is empty."""
        self._closed = True
        while self._idle:
            self._idle.popleft().set()
