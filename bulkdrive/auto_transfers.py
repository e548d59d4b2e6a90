"""`--transfers auto` in the run: the tuner (pure: measurements in, the next limit out) fed
the run's counters, the client's count of push-back and the event loop's busy time every
`TUNE_TICK`, its limit applied to the workers (the first `limit` of them work, the others
wait), and the limits it chose summed up for the report.

The run starts with only `TunerSettings.large_start` workers until as many files have been
handed out: their sizes tell the tuner whether it starts there (large files) or at
`AUTO_START`, before more files start. Each large file holds its chunk buffers until it ends:
started at 32, netlarge's first 32 files (512 MiB) were all in flight before the first look
lowered the limit to 8."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

import anyio

from bulkdrive.config import TransferConfig
from bulkdrive.file_events import RunCounters
from bulkdrive.progress import Reporter
from bulkdrive.report import LimitChange, TransfersUsed

if TYPE_CHECKING:
    # Imported where a run is tuned (`start`, `tune`): a fixed --transfers needs no tuner,
    # and importing it cost every upload's start ~8 ms.
    from bulkdrive import tuner

#: Seconds between two looks of `--transfers auto` at the run's counters.
TUNE_TICK = 0.25
#: Until the first file (or chunk) is done, at most a tick: how often the run looks for it.
FIRST_DONE_POLL = 0.01
#: Under `--transfers auto`, the limit the run starts with: on this 2-core machine on the
#: plateau of the best fixed settings from loopback to 2 ms away, where a run of a few seconds
#: cannot afford a long climb (2 ms away 16 did clearly worse: the tree at 1 230 files/s
#: against 1 985 at 32, medians of 3; on loopback 8 to 128 were alike). Large files then try
#: `TunerSettings.large_start` first.
AUTO_START = 32
#: The changes of the limit kept for the report (the first ones: how the run settled; a run
#: changes a few times a second at most, so memory stays bounded).
STEPS_KEPT = 100

T = TypeVar("T")

#: The calling thread's time on a core and waiting in the run queue, in nanoseconds.
_SCHEDSTAT = "/proc/thread-self/schedstat"


def loop_busy() -> float | None:
    """Seconds the calling thread (the event loop's) ran or waited for a core so far; None
    where the system does not tell (only Linux does). Waiting for a core counts as busy: on a
    loaded machine a starved client is not one that waits for the server."""
    try:
        with open(_SCHEDSTAT, "rb") as stat:
            running, waiting = stat.read().split()[:2]
        return (int(running) + int(waiting)) / 1e9
    except (OSError, ValueError):
        return None


class AutoTransfers:
    """The limit of files in flight and how it moved; `tune` runs the tuner until the last
    of `workers` workers has ended."""

    def __init__(
        self,
        limit: int,
        *,
        reporter: Reporter,
        counters: RunCounters,
        pushbacks: Callable[[], int],
        clock: Callable[[], float],
        follow: Callable[[int], None] | None = None,
        chunk_size: int = TransferConfig.chunk_size,
    ) -> None:
        self.limit = limit
        self._reporter = reporter
        self._counters = counters
        #: The client's count of the server's push-back, every request's (not only the
        #: uploads' retries: the metadata look after a refused upload is refused too).
        self._pushbacks = pushbacks
        self._clock = clock
        #: Told each new limit: the folder creations follow it (they meet the same server).
        self._follow = follow
        self._peak = 0
        self._area = 0.0
        self._since = 0.0
        self.changes = 0
        self._chunk_size = chunk_size
        # Worker i works while i < limit; the others wait for the limit to rise (a look at
        # an int per file: a limiter's token per file cost a task switch or two each).
        self._raised = anyio.Event()
        # Until the first files handed out have shown their sizes (`_sizing` more to go).
        self._sizing = 0
        self._sized = anyio.Event()
        self._workers = 0
        self._ending = False
        self._scope = anyio.CancelScope()
        self._workers_left = 0
        self._steps: list[tuple[float, tuner.Change]] = []

    def start(self, workers: int, now: float) -> tuner.TunerSettings:
        """Under `--transfers auto`: `workers` is the most the tuner may allow."""
        from bulkdrive import tuner

        settings = tuner.TunerSettings(
            start=min(AUTO_START, workers), maximum=workers, unit_bytes=self._chunk_size
        )
        self._workers_left = workers
        # Not a limit the tuner chose: no change, no peak (the tuner's first look sets both).
        self.limit = self._sizing = min(settings.large_start, settings.start)
        self._since = now
        if self._follow is not None:
            self._follow(settings.start)  # folders hold no file data: at once as at the start
        return settings

    async def worker(
        self,
        take: Callable[[], Awaitable[T | None]],
        upload: Callable[[T], Awaitable[None]],
    ) -> None:
        """One of the workers under --transfers auto, working while fewer than the limit were
        started before it: `take` the next file (None: the end), `upload` it."""
        index = self._workers
        self._workers += 1
        try:
            while True:
                while index >= self.limit and not self._ending:
                    await self._raised.wait()
                ready = await take()
                if ready is None:
                    # The end: the waiting workers go and find it too.
                    self._ending = True
                    self._raised.set()
                    self._sized.set()
                    return
                if self._sizing:
                    self._sizing -= 1
                    if not self._sizing:
                        # The file counters count it as `upload` starts, before it waits.
                        self._sized.set()
                await upload(ready)
        finally:
            self._workers_left -= 1
            if self._workers_left == 0:
                self._scope.cancel()  # nothing left to tune

    async def tune(self, settings: tuner.TunerSettings) -> None:
        """Feed the tuner the run's counters; apply and explain each change of the limit."""
        from bulkdrive import tuner

        state = tuner.start(settings)
        with self._scope:
            await self._sized.wait()
            # The first look: the sizes of the first files handed out, and the first sample
            # starts now. Its limit is the run's first, unless the look changes it.
            state = self._look(settings, state)
            if not self._peak:
                self.set_limit(state.limit, self._clock())  # the start: not a change
            # The tuner's first sample starts at the first look after something is done
            # (before, the run was logging in and filling its transfers), and it judges the
            # start a tick after that: that look comes as soon as the first file is done, not
            # up to a tick later (20 ms away, 32 in flight do a third of what 128 do, and a
            # tree of 10 000 files takes 4 s).
            if not self._anything_done():
                for _ in range(round(TUNE_TICK / FIRST_DONE_POLL)):
                    await anyio.sleep(FIRST_DONE_POLL)
                    if self._anything_done():
                        break
                state = self._look(settings, state)
            while True:
                await anyio.sleep(TUNE_TICK)
                state = self._look(settings, state)

    def _anything_done(self) -> bool:
        return bool(self._counters.files_done or self._counters.bytes_confirmed)

    def _look(self, settings: tuner.TunerSettings, state: tuner.TunerState) -> tuner.TunerState:
        """One look at the run's counters; apply and explain the change it calls for."""
        from bulkdrive import tuner

        counters = self._counters
        now = self._clock()
        measurement = tuner.Reading(
            now,
            counters.bytes_confirmed,
            counters.files_done,
            self._pushbacks(),
            loop_busy(),
            counters.files_started,
            counters.large_started,
        )
        state, change = tuner.observe(settings, state, measurement)
        self._trace(measurement, state.limit)  # logged too: a recorded run then replays exactly
        if change is not None:
            self.changes += 1
            if len(self._steps) < STEPS_KEPT:
                self._steps.append((now, change))
            self.set_limit(change.new, now)
            self._reporter.message(f"transfers {change.old} → {change.new}: {change.reason}")
        return state

    def _trace(self, reading: tuner.Reading, limit: int) -> None:
        """What the tuner was given and the limit it then had (-vv): a trace tests replay."""
        self._reporter.message(
            f"tuner: t={reading.at:.3f} limit={limit} bytes={reading.bytes_done} "
            f"files={reading.files_done} pushbacks={reading.pushbacks} busy={reading.busy} "
            f"started={reading.files_started} large={reading.large_started}",
            level=logging.DEBUG,
        )

    def set_limit(self, limit: int, now: float) -> None:
        self._area += self.limit * (now - self._since)
        raised = limit > self.limit
        self.limit, self._since = limit, now
        self._peak = max(self._peak, limit)
        if self._workers_left:  # the run is tuned (not a fixed limit)
            if raised:
                self._raised.set()
                self._raised = anyio.Event()
            if self._follow is not None:
                self._follow(limit)
        self._reporter.transfers_changed(limit)

    def used(self, started: float, ended: float) -> TransfersUsed:
        area = self._area + self.limit * (ended - self._since)
        seconds = ended - started
        mean = area / seconds if seconds > 0 else float(self.limit)
        steps = tuple(
            LimitChange(at - started, change.old, change.new, change.reason)
            for at, change in self._steps
        )
        # A run that ended before its first look kept the limit it started with.
        peak = self._peak or self.limit
        return TransfersUsed(peak=peak, mean=mean, changes=self.changes, steps=steps)
