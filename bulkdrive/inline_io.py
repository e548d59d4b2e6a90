"""Small-file I/O on the event loop while it stays quick: the policy that the uploader's reads
of small files (`source.InlineReads`) and the emulator's writes of them (`emulator.store`)
share. A leaf: standard library only.

From the page cache a small file is read or written in ~15-40 µs on the event loop; through a
worker thread it costs several times that (the hop, the wake-ups, the interpreter lock handed
over at every system call), and a latency-bound run pays that per file on both sides. A disk
that stalls (cold, on the network, throttling dirty pages) stalls every call, though, and the
loop with it. So the I/O runs on the loop until SLOW_IN_A_ROW calls in a row were slow while
the thread waited in the kernel, and then in threads for PAUSE_SECONDS.

Slow alone proves nothing on a busy machine: a call preempted by another process (an
involuntary switch) is slow without any wait, and the threads would only add to that load.
One slow call that waited is not enough either: the interpreter lock, held by another thread
of the process while the CPU ran someone else, is also a wait in the kernel. Paused by one such
call, a `--cluster local:2` run against the delay-fault server on 2 cores sent ~35 % of each
worker's small files, and most of the emulator's, through threads (emulator: CPU 3.0 -> 5.1 s,
scheduler slices ~4 000 -> 45 000 for 10 000 files). A stalling disk stalls every call, so
a few in a row tell it apart.
"""

from __future__ import annotations

import time
from collections.abc import Callable

try:
    import resource

    _RUSAGE_THREAD: int | None = getattr(resource, "RUSAGE_THREAD", None)
except ImportError:  # not a Unix
    _RUSAGE_THREAD = None


#: Slow calls in a row (each waited in the kernel) that pause the I/O on the loop.
SLOW_IN_A_ROW = 3

#: How long the I/O goes to threads after a pause; then the loop tries again.
PAUSE_SECONDS = 5.0


def voluntary_waits() -> int | None:
    """How often this thread has waited in the kernel so far; None where unknown."""
    if _RUSAGE_THREAD is None:
        return None
    return resource.getrusage(_RUSAGE_THREAD).ru_nvcsw


class InlineIO:
    """Whether small-file I/O may run on the event loop now, learnt from how the last calls
    went: `begin` before each call on the loop, `end` after it (also after a failed one).

    `slow_seconds` is what counts as slow for the caller's calls; `clock` and `waits` are the
    time and the thread's count of waits in the kernel (tests hand in their own)."""

    def __init__(
        self,
        slow_seconds: float,
        clock: Callable[[], float] = time.monotonic,
        waits: Callable[[], int | None] = voluntary_waits,
    ) -> None:
        self._slow_seconds = slow_seconds
        self._clock = clock
        self._waits = waits
        self._paused_until = -float("inf")
        #: Slow calls since the last quick one. Not reset by a pause: after it, one more slow
        #: call is enough (the disk stalled a moment ago).
        self._slow_in_a_row = 0
        self.pauses = 0

    def allowed(self) -> bool:
        return self._clock() >= self._paused_until

    def begin(self) -> tuple[float, int | None]:
        """Before a call on the loop: what `end` compares with."""
        return self._clock(), self._waits()

    def end(self, begun: tuple[float, int | None]) -> bool:
        """After a call on the loop. It counts as slow when it took longer than `slow_seconds`
        and the thread waited in the kernel meanwhile (a voluntary context switch: the disk,
        or the interpreter lock); where waits are unknown, slow is enough.

        Returns whether the next call may run on the loop too (`allowed()`, known here without
        a clock read: False only when this call paused the I/O)."""
        started, waits = begun
        now = self._clock()
        if now - started <= self._slow_seconds or (waits is not None and self._waits() == waits):
            self._slow_in_a_row = 0
            return True
        self._slow_in_a_row += 1
        if self._slow_in_a_row >= SLOW_IN_A_ROW:
            self._paused_until = now + PAUSE_SECONDS
            self.pauses += 1
            return False
        return True
