"""A server with distance and limits: `serve --latency`, `--max-active` and `--bandwidth`.

Loopback answers in microseconds and never refuses work; a real server is tens of
milliseconds away and answers 503 when it is busy. This middleware puts that in front of every
request of the emulator, without touching what the handlers do:

- latency: each request is answered no sooner than `latency` after it arrived (a timer, so a
  waiting request costs no CPU);
- max-active: a request arriving while `max_active` others are being processed (including
  their latency) gets 503 with `Retry-After`, as an overloaded web server does;
- bandwidth: request bodies share one link of `bandwidth` bytes per second. A body of known
  length waits until the link has carried it before the handler reads it (the bytes wait in
  the socket meanwhile, so the client's send slows down too); a chunked body is charged after
  it was read, before the answer.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

#: What an overloaded server asks for: seconds before trying again (HTTP allows whole seconds).
RETRY_AFTER_SECONDS = 1

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(us|µs|ms|s|m)?\s*$")
_DURATION_UNITS = {"us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, None: 1.0}


def parse_duration(text: str) -> float:
    """`20ms`, `1.5s`, `0` → seconds; ValueError with an example otherwise."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"not a duration: {text!r} (examples: 0, 2ms, 20ms, 1.5s)")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2)]


_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?)b?\s*(?:/s)?\s*$", re.IGNORECASE)


def parse_rate(text: str) -> int:
    """`100MB/s`, `10M`, `1.5GiB/s`, `65536` → bytes per second (K/M/G are 1000-based,
    Ki/Mi/Gi 1024); ValueError with an example otherwise. The emulator's own reader: it shares
    nothing with the uploader but the wire contract."""
    match = _RATE.match(text)
    if not match:
        raise ValueError(f"not a rate: {text!r} (examples: 100MB/s, 10MiB/s, 65536)")
    base = 1024 if match.group(3) else 1000
    power = " kmgt".index(match.group(2).lower() or " ")
    rate = int(float(match.group(1)) * base**power)
    if rate < 1:
        raise ValueError("a rate must be at least 1 byte per second")
    return rate


@dataclass(frozen=True)
class NetworkModel:
    """How far away and how busy the emulated server is. Zero/None means no limit."""

    latency: float = 0.0
    max_active: int | None = None
    bandwidth: int | None = None
    retry_after: int = RETRY_AFTER_SECONDS

    def __post_init__(self) -> None:
        if self.latency < 0:
            raise ValueError("latency must not be negative")
        if self.max_active is not None and self.max_active < 1:
            raise ValueError("max active must be at least 1")
        if self.bandwidth is not None and self.bandwidth < 1:
            raise ValueError("bandwidth must be at least 1 byte per second")
        if self.retry_after < 0:
            raise ValueError("Retry-After must not be negative")

    @property
    def is_direct(self) -> bool:
        """Nothing to model: the middleware is left out, so loopback speed is untouched."""
        return self.latency == 0 and self.max_active is None and self.bandwidth is None


@dataclass(frozen=True)
class NetworkStatistics:
    active: int
    max_active_seen: int
    #: Requests answered 503 because `max_active` others were being processed.
    refused: int
    #: Request body bytes that went through the link.
    bytes_carried: int
    #: Total seconds request bodies waited for the link.
    link_wait_seconds: float


Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


class Network:
    """The middleware and its counters; `busy` builds the 503 in the request's format."""

    def __init__(
        self, model: NetworkModel, busy: Callable[[web.BaseRequest], web.Response]
    ) -> None:
        self.model = model
        self._busy = busy
        self._active = 0
        self._max_active_seen = 0
        self._refused = 0
        self._bytes_carried = 0
        self._link_wait = 0.0
        self._link_free_at = 0.0

    def statistics(self) -> NetworkStatistics:
        return NetworkStatistics(
            active=self._active,
            max_active_seen=self._max_active_seen,
            refused=self._refused,
            bytes_carried=self._bytes_carried,
            link_wait_seconds=self._link_wait,
        )

    @web.middleware
    async def middleware(self, request: web.BaseRequest, handler: Handler) -> web.StreamResponse:
        loop = asyncio.get_running_loop()
        model = self.model
        answer_at = loop.time() + model.latency
        if model.max_active is not None and self._active >= model.max_active:
            self._refused += 1
            refusal = self._busy(request)
            refusal.headers["Retry-After"] = str(model.retry_after)
            await _until(loop, answer_at)
            return refusal
        self._active += 1
        if self._active > self._max_active_seen:
            self._max_active_seen = self._active
        try:
            if model.bandwidth is None:
                response = await handler(request)
            else:
                length = request.content_length
                if length:
                    await self._carry(loop, length)
                response = await handler(request)
                if length is None and request.body_exists:
                    await self._carry(loop, request.content.total_bytes)
            await _until(loop, answer_at)
            return response
        finally:
            self._active -= 1

    async def _carry(self, loop: asyncio.AbstractEventLoop, nbytes: int) -> None:
        """Wait until one shared link of `bandwidth` bytes/s has carried `nbytes` more, after
        the bytes it already carries for others."""
        assert self.model.bandwidth is not None
        now = loop.time()
        self._link_free_at = max(self._link_free_at, now) + nbytes / self.model.bandwidth
        self._bytes_carried += nbytes
        self._link_wait += self._link_free_at - now
        await _until(loop, self._link_free_at)


async def _until(loop: asyncio.AbstractEventLoop, deadline: float) -> None:
    """Wait on a timer until `deadline` of the loop's clock: asyncio.sleep's timer and
    future, without its coroutine and its conversion to a delay (one wait per request)."""
    if deadline <= loop.time():
        return
    woken: asyncio.Future[None] = loop.create_future()
    timer = loop.call_at(deadline, _wake, woken)
    try:
        await woken
    finally:
        timer.cancel()


def _wake(woken: asyncio.Future[None]) -> None:
    if not woken.done():  # it may have been cancelled meanwhile
        woken.set_result(None)
