"""`--transfers auto` in the run: the tuner (pure: measurements in, the next limit out) fed
the run's counters every `TUNE_TICK`, its limit applied to a limiter every file upload holds
a token of, and the limits it chose summed up for the report."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio

from bulkdrive import tuner
from bulkdrive.file_events import RunCounters
from bulkdrive.progress import Reporter
from bulkdrive.report import TransfersUsed

#: Seconds between two looks of `--transfers auto` at the run's counters.
TUNE_TICK = 0.25
#: Under `--transfers auto`, the limit the run starts with.
AUTO_START = 4

T = TypeVar("T")


class AutoTransfers:
    """The limit of files in flight and how it moved; `tune` runs the tuner until the last
    of `workers` workers has ended."""

    def __init__(
        self,
        limit: int,
        *,
        reporter: Reporter,
        counters: RunCounters,
        clock: Callable[[], float],
        follow: anyio.CapacityLimiter | None = None,
    ) -> None:
        self.limit = limit
        self._reporter = reporter
        self._counters = counters
        self._clock = clock
        #: A second limiter that follows the limit (the folder creations meet the same server).
        self._follow = follow
        self._peak = 0
        self._area = 0.0
        self._since = 0.0
        self.changes = 0
        self._limiter: anyio.CapacityLimiter | None = None
        self._scope = anyio.CancelScope()
        self._workers_left = 0

    def start(self, workers: int, now: float) -> tuner.TunerSettings:
        """Under `--transfers auto`: `workers` is the most the tuner may allow."""
        settings = tuner.TunerSettings(start=min(AUTO_START, workers), maximum=workers)
        self._limiter = anyio.CapacityLimiter(settings.start)
        self._workers_left = workers
        self.set_limit(settings.start, now)
        return settings

    async def worker(
        self,
        take: Callable[[], Awaitable[T | None]],
        upload: Callable[[T], Awaitable[None]],
    ) -> None:
        """One of the workers under --transfers auto, each file upload holding one of the
        limiter's tokens: `take` the next file (None: the end), `upload` it."""
        limiter = self._limiter
        assert limiter is not None
        try:
            while True:
                async with limiter:
                    ready = await take()
                    if ready is None:
                        return
                    await upload(ready)
        finally:
            self._workers_left -= 1
            if self._workers_left == 0:
                self._scope.cancel()  # nothing left to tune

    async def tune(self, settings: tuner.TunerSettings) -> None:
        """Feed the tuner the run's counters; apply and explain each change of the limit."""
        state = tuner.start(settings)
        counters = self._counters
        with self._scope:
            while True:
                await anyio.sleep(TUNE_TICK)
                now = self._clock()
                measurement = tuner.Measurement(
                    now, counters.bytes_confirmed, counters.files_done, counters.pushbacks
                )
                state, change = tuner.observe(settings, state, measurement)
                self._reporter.message(
                    f"tuner: t={now:.3f} limit={state.limit} bytes={measurement.bytes_done} "
                    f"files={measurement.files_done} pushbacks={measurement.pushbacks}",
                    level=logging.DEBUG,
                )
                if change is not None:
                    self.set_limit(change.new, now)
                    self._reporter.message(
                        f"transfers {change.old} → {change.new}: {change.reason}"
                    )

    def set_limit(self, limit: int, now: float) -> None:
        if self._peak:  # not the first: account the time at the old limit
            self._area += self.limit * (now - self._since)
            self.changes += 1
        self.limit, self._since = limit, now
        self._peak = max(self._peak, limit)
        if self._limiter is not None:
            self._limiter.total_tokens = limit
            if self._follow is not None:
                self._follow.total_tokens = limit
        self._reporter.transfers_changed(limit)

    def used(self, started: float, ended: float) -> TransfersUsed:
        area = self._area + self.limit * (ended - self._since)
        seconds = ended - started
        mean = area / seconds if seconds > 0 else float(self.limit)
        return TransfersUsed(peak=self._peak, mean=mean, changes=self.changes)
