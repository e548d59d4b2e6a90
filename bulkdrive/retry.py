"""The retry policy for transient failures, as tenacity objects: what is retried, how often,
and how long to wait between tries. Shared by the client's idempotent calls and the upload.

Only `OutcomeUnknown` is retried. The attempts are counted from the work's last progress
(see `_AttemptsWithoutProgress`), the wait is full-jitter exponential backoff or the server's
Retry-After when that is longer, and an attempt that failed only because another request had
replaced the token is free and followed at once.
"""

from __future__ import annotations

import copy
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    RetryError,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from bulkdrive import errors
from bulkdrive.config import RetryPolicy

__all__ = ["exhausted", "repeat", "retrying"]

T = TypeVar("T")


class _AttemptsWithoutProgress:
    """Counts the attempts since the work last moved forward, as tenacity's attempt number.

    A large file on a flaky link may meet many faults and still progress after each; the
    policy's `attempts` then bounds the attempts in a row that got nowhere, so the total per
    file stays finite (at most `attempts` per chunk) without failing files for being large.

    Tenacity has no stop or wait that counts from progress; its `stop_after_attempt` and
    `wait_random_exponential` read `attempt_number`. They are handed a copy of the call state
    with the number counted here (tenacity's own state is never changed), so that the policy
    stays tenacity's own objects rather than a second backoff written by hand.
    """

    def __init__(self, progress: Callable[[], int] | None) -> None:
        self._progress = progress
        self._mark = progress() if progress is not None else 0
        self._base = 0
        # Attempts that failed only because another request had replaced the token: free.
        self._free: set[int] = set()

    def __call__(self, retry_state: RetryCallState) -> RetryCallState:
        number = retry_state.attempt_number
        if self._progress is not None:
            now = self._progress()
            if now > self._mark:
                self._mark = now
                self._base = number - 1
                self._free.clear()
        if _replaced_token(retry_state):
            self._free.add(number)
        counted = copy.copy(retry_state)
        counted.attempt_number = max(1, number - self._base - len(self._free))
        return counted


def _replaced_token(retry_state: RetryCallState) -> bool:
    outcome = retry_state.outcome
    error = outcome.exception() if outcome is not None else None
    return isinstance(error, errors.TokenExpired) and error.replaced


class _Stop:
    def __init__(self, policy: RetryPolicy, counted: _AttemptsWithoutProgress) -> None:
        self._stop = stop_after_attempt(max(1, policy.attempts))
        self._counted = counted

    def __call__(self, retry_state: RetryCallState) -> bool:
        return self._stop(self._counted(retry_state))


class _Wait:
    """Full-jitter exponential backoff, or the server's Retry-After when that is longer."""

    def __init__(self, policy: RetryPolicy, counted: _AttemptsWithoutProgress) -> None:
        self._jitter = wait_random_exponential(multiplier=policy.initial_wait, max=policy.max_wait)
        self._max_wait = policy.max_wait
        self._counted = counted

    def __call__(self, retry_state: RetryCallState) -> float:
        if _replaced_token(retry_state):
            return 0.0  # the new token is there already
        wait = float(self._jitter(self._counted(retry_state)))
        outcome = retry_state.outcome
        error = outcome.exception() if outcome is not None else None
        if isinstance(error, errors.OutcomeUnknown) and error.retry_after is not None:
            # A busy server (503, 429) says when to come back; the policy's cap still holds,
            # so that a server asking for hours cannot stall the run.
            wait = max(wait, min(error.retry_after, self._max_wait))
        return wait


def retrying(
    policy: RetryPolicy,
    *,
    sleep: Callable[[float], Awaitable[None]] | None = None,
    before_sleep: Callable[[RetryCallState], Awaitable[None] | None] | None = None,
    progress: Callable[[], int] | None = None,
) -> AsyncRetrying:
    """The tenacity policy for transient failures: only `OutcomeUnknown` is retried.

    `progress`, when given, reports how far the work got (for an upload: the bytes the
    server confirmed); attempts and backoff then count from the last progress.
    When the attempts run out, tenacity raises `RetryError`; callers turn it into
    `RetriesExhausted` with the last error's message (see `exhausted`).
    """
    counted = _AttemptsWithoutProgress(progress)
    return AsyncRetrying(
        retry=retry_if_exception_type(errors.OutcomeUnknown),
        stop=_Stop(policy, counted),
        wait=_Wait(policy, counted),
        sleep=sleep or anyio.sleep,
        before_sleep=before_sleep,
        reraise=False,
    )


async def repeat(
    call: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    *,
    first: errors.OutcomeUnknown | None = None,
    sleep: Callable[[float], Awaitable[None]] | None = None,
    before_sleep: Callable[[RetryCallState], Awaitable[None] | None] | None = None,
    progress: Callable[[], int] | None = None,
) -> T:
    """`call()`, and again under `retrying(policy, ...)` while it fails transiently; RetryError
    when the attempts run out. `first`: the failure of a first try the caller made itself (a
    small file's upload, where even this coroutine is a visible share of its CPU).

    The first try is made before any tenacity object exists, and its failure is handed to
    tenacity as its first attempt (the same waits, counts and `before_sleep` as if tenacity
    had made it): almost every call succeeds at once, and setting the policy up for each of
    them is a measurable share of a small file's CPU (benchmarks/README.md, "The retry policy
    per request").
    """
    if first is None:
        try:
            return await call()
        except errors.OutcomeUnknown as exc:
            first = exc
    failed: list[errors.OutcomeUnknown] = [first]
    async for attempt in retrying(
        policy, sleep=sleep, before_sleep=before_sleep, progress=progress
    ):
        with attempt:
            if failed:
                raise failed.pop()
            return await call()
    raise AssertionError("unreachable: tenacity either returns or raises")


def exhausted(failure: RetryError, what: str) -> errors.RetriesExhausted:
    """The error for attempts that ran out: the last one's message, and how many there were."""
    last = failure.last_attempt.exception()
    attempts = failure.last_attempt.attempt_number
    return errors.RetriesExhausted(f"{what}: gave up after {attempts} attempts: {last}")
