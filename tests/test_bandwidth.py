"""The run's bandwidth budget, on a fake clock: no wall-clock assertions."""

from __future__ import annotations

import pytest

from bulkdrive.bandwidth import BandwidthBudget

pytestmark = pytest.mark.anyio


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


async def test_mean_rate_is_held() -> None:
    clock = FakeClock()
    budget = BandwidthBudget(1000, clock=clock, sleep=clock.sleep)
    for _ in range(10):
        await budget.spend(500)
    # 5000 bytes at 1000 B/s: the 10th request may start after 4.5 s, not before.
    assert clock.now == pytest.approx(104.5)
    assert budget.statistics().bytes_granted == 5000
    assert budget.statistics().seconds_waited == pytest.approx(4.5)


async def test_idle_time_is_not_banked() -> None:
    clock = FakeClock()
    budget = BandwidthBudget(1000, clock=clock, sleep=clock.sleep)
    await budget.spend(1000)
    clock.now += 60  # a long pause must not allow a burst afterwards
    await budget.spend(1000)
    await budget.spend(1000)
    assert clock.sleeps == [pytest.approx(1.0)]


def test_rate_must_be_positive() -> None:
    with pytest.raises(ValueError):
        BandwidthBudget(0)
