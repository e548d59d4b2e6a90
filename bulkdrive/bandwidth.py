"""`--bwlimit`: one bandwidth budget shared by every upload of a run."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio


@dataclass(frozen=True)
class BandwidthStatistics:
    rate: int
    bytes_granted: int
    seconds_waited: float


class BandwidthBudget:
    """Grants `rate` bytes per second over all callers, in the order they ask.

    Each request body is paid for before it is sent: the caller waits until the bytes granted
    before it have had their time, so the mean rate over any stretch of the run is at most
    `rate` plus one request.
    """

    def __init__(
        self,
        rate: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self._rate = rate
        self._clock = clock
        self._sleep = sleep
        self._free_at = clock()
        self._granted = 0
        self._waited = 0.0

    async def spend(self, nbytes: int) -> None:
        now = self._clock()
        start = max(self._free_at, now)
        self._free_at = start + nbytes / self._rate
        self._granted += nbytes
        if start > now:
            self._waited += start - now
            await self._sleep(start - now)

    def statistics(self) -> BandwidthStatistics:
        return BandwidthStatistics(self._rate, self._granted, self._waited)
