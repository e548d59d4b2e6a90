"""The policy for small-file I/O on the event loop (`bulkdrive.inline_io`), which the
uploader's reads and the emulator's writes share, driven by a clock and a count of kernel
waits that the test moves by hand."""

from __future__ import annotations

from bulkdrive.inline_io import PAUSE_SECONDS, SLOW_IN_A_ROW, InlineIO

SLOW_SECONDS = 0.005


class _Ticks:
    def __init__(self) -> None:
        self.now = 100.0
        self.waits = 0

    def clock(self) -> float:
        return self.now

    def voluntary_waits(self) -> int:
        return self.waits


def _call(inline: InlineIO, ticks: _Ticks, seconds: float, *, waited: bool) -> None:
    begun = inline.begin()
    ticks.now += seconds
    ticks.waits += 1 if waited else 0
    # What `end` says of the next call is what `allowed` says then.
    assert inline.end(begun) == inline.allowed()


def test_io_pauses_only_after_slow_calls_in_a_row_that_waited() -> None:
    ticks = _Ticks()
    inline = InlineIO(SLOW_SECONDS, ticks.clock, ticks.voluntary_waits)
    slow = SLOW_SECONDS * 2
    # Slow while the CPU was elsewhere (no wait in the kernel): never a pause.
    for _ in range(SLOW_IN_A_ROW * 2):
        _call(inline, ticks, slow, waited=False)
    # Slow waits broken by a quick call (or a quick one that waited): no pause either.
    for quick_waited in (False, True):
        for _ in range(SLOW_IN_A_ROW - 1):
            _call(inline, ticks, slow, waited=True)
        _call(inline, ticks, SLOW_SECONDS / 2, waited=quick_waited)
    assert inline.allowed() and inline.pauses == 0
    # A stalling disk: slow calls that waited, in a row.
    for _ in range(SLOW_IN_A_ROW):
        assert inline.allowed()
        _call(inline, ticks, slow, waited=True)
    assert not inline.allowed() and inline.pauses == 1
    ticks.now += PAUSE_SECONDS - slow
    assert not inline.allowed()
    ticks.now += slow
    assert inline.allowed()
    # Still stalling after the pause: the next slow call pauses again at once.
    _call(inline, ticks, slow, waited=True)
    assert not inline.allowed() and inline.pauses == 2
    ticks.now += PAUSE_SECONDS
    # A quick call after the pause starts the count afresh.
    _call(inline, ticks, 0.0, waited=False)
    _call(inline, ticks, slow, waited=True)
    assert inline.allowed() and inline.pauses == 2


def test_io_without_a_count_of_waits_pauses_on_slowness_alone() -> None:
    ticks = _Ticks()
    inline = InlineIO(SLOW_SECONDS, ticks.clock, lambda: None)
    for _ in range(SLOW_IN_A_ROW):
        begun = inline.begin()
        ticks.now += SLOW_SECONDS * 2
        inline.end(begun)
    assert not inline.allowed() and inline.pauses == 1


def test_a_fresh_policy_allows_io_whatever_the_clock_says() -> None:
    """A monotonic clock may start anywhere, below zero too."""
    assert InlineIO(SLOW_SECONDS, lambda: -1e9).allowed()
