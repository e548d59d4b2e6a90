"""The run-level breaker: a server that has failed every request for a while is gone.

Single-file retries ride out a flaky server or a short outage. But a server that is down for
good (or answers 500 to every write, a full disk behind a proxy) would make every file use up
its own retries, one after another: half an hour to give up on a few hundred files. The
client reports every request's outcome here; when no request of the whole run has succeeded
for `window` seconds (each failing to connect, timing out or answered 5xx), the breaker trips
and every request after it raises `ServerFailing`, which stops the run with one line.
Files in flight keep their server-side progress; the journal resumes them on the next run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from bulkdrive import errors

__all__ = ["Breaker", "BreakerStatistics", "counts_against_the_server"]


@dataclass(frozen=True)
class BreakerStatistics:
    window: float
    failures_in_a_row: int
    failing_for: float  # seconds since the first failure of the current run of failures
    tripped: bool


def counts_against_the_server(error: errors.BulkdriveError) -> bool:
    """A failure that says the server is not there or not working: no connection, no answer
    in time, or a 5xx. Refusals (4xx) are answers: the server works."""
    if isinstance(error, errors.NetworkError | errors.RequestTimeout):
        return True
    return isinstance(error, errors.ServerBusy) and (error.status or 0) >= 500


class Breaker:
    """Trips when every request for `window` seconds has failed against the server."""

    def __init__(self, window: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        if window <= 0:
            raise ValueError("the breaker's window must be positive")
        self.window = window
        self._clock = clock
        self._since: float | None = None
        self._failures = 0
        self._tripped: errors.ServerFailing | None = None

    def succeeded(self) -> None:
        self._since = None
        self._failures = 0

    def failed(self, error: errors.BulkdriveError) -> errors.ServerFailing | None:
        """Record a failed request; the error that stops the run once the window is full."""
        if self._tripped is not None:
            return self._tripped
        if not counts_against_the_server(error):
            return None
        now = self._clock()
        if self._since is None:
            self._since = now
        self._failures += 1
        if now - self._since >= self.window:
            self._tripped = errors.ServerFailing(
                f"the server failed every request for {now - self._since:.0f} s "
                f"({self._failures} in a row); last error: {error}"
            )
        return self._tripped

    def check(self) -> None:
        """Raise ServerFailing once tripped: no request goes out after that."""
        if self._tripped is not None:
            raise self._tripped

    def statistics(self) -> BreakerStatistics:
        since = self._since
        return BreakerStatistics(
            window=self.window,
            failures_in_a_row=self._failures,
            failing_for=0.0 if since is None else self._clock() - since,
            tripped=self._tripped is not None,
        )
