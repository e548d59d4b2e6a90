"""The run-level breaker (bulkdrive.breaker) with a clock the test moves."""

from __future__ import annotations

import pytest

from bulkdrive import errors
from bulkdrive.breaker import Breaker, counts_against_the_server


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


REFUSED = errors.NetworkError("cannot connect")


def test_trips_only_after_a_whole_window_of_failures() -> None:
    clock = Clock()
    breaker = Breaker(60.0, clock=clock)
    assert breaker.failed(REFUSED) is None
    clock.now += 59.9
    assert breaker.failed(errors.ServerBusy("HTTP 500", status=500)) is None
    breaker.check()  # not tripped: requests still go out
    clock.now += 0.1
    stop = breaker.failed(REFUSED)
    assert isinstance(stop, errors.ServerFailing)
    assert stop.exit_code == errors.ServerUnreachable.exit_code
    assert "60 s" in str(stop) and "3 in a row" in str(stop) and "cannot connect" in str(stop)
    with pytest.raises(errors.ServerFailing):
        breaker.check()
    assert breaker.statistics().tripped


def test_one_answer_resets_the_window() -> None:
    clock = Clock()
    breaker = Breaker(10.0, clock=clock)
    breaker.failed(REFUSED)
    clock.now += 9
    breaker.succeeded()
    clock.now += 9
    assert breaker.failed(REFUSED) is None
    assert breaker.statistics().failures_in_a_row == 1
    clock.now += 10
    assert breaker.failed(REFUSED) is not None


@pytest.mark.parametrize(
    ("error", "counts"),
    [
        (errors.NetworkError("reset"), True),
        (errors.RequestTimeout("no answer"), True),
        (errors.ServerBusy("HTTP 500", status=500), True),
        (errors.ServerBusy("HTTP 503", status=503), True),
        (errors.ServerBusy("HTTP 429", status=429), False),  # busy, but answering
        (errors.SessionBusy("HTTP 409"), False),
        (errors.TokenExpired("HTTP 401"), False),
        (errors.Rejected("HTTP 400"), False),
    ],
)
def test_what_counts_against_the_server(error: errors.BulkdriveError, counts: bool) -> None:
    assert counts_against_the_server(error) is counts
    breaker = Breaker(1.0, clock=Clock())
    assert breaker.failed(error) is None
    assert breaker.statistics().failures_in_a_row == (1 if counts else 0)
