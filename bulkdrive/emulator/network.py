"""A server with distance and limits: `serve --latency`, `--max-active` and `--bandwidth`.

Loopback answers in microseconds and never refuses work; a real server is tens of
milliseconds away and answers 503 when it is busy. This middleware puts that in front of every
request of the emulator, without touching what the handlers do:

- latency: each request is answered no sooner than `latency` after it arrived (on a timer, so
  a waiting request costs no CPU: one timer for all, see `Deadlines`);
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
from collections import deque
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
        self._loop: asyncio.AbstractEventLoop  # set by start()
        self._answers = Deadlines(model.latency)

    def statistics(self) -> NetworkStatistics:
        return NetworkStatistics(
            active=self._active,
            max_active_seen=self._max_active_seen,
            refused=self._refused,
            bytes_carried=self._bytes_carried,
            link_wait_seconds=self._link_wait,
        )

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Bind to the loop the server runs on (asyncio.get_running_loop() per request costs
        a getpid system call on Python 3.11)."""
        self._loop = loop
        self._answers.start(loop)

    @web.middleware
    async def middleware(self, request: web.BaseRequest, handler: Handler) -> web.StreamResponse:
        model = self.model
        answers = self._answers
        answer_at = answers.deadline()
        if model.max_active is not None and self._active >= model.max_active:
            self._refused += 1
            refusal = self._busy(request)
            refusal.headers["Retry-After"] = str(model.retry_after)
            waiting = answers.until(answer_at)
            if waiting is not None:
                await waiting
            return refusal
        self._active += 1
        if self._active > self._max_active_seen:
            self._max_active_seen = self._active
        try:
            if model.bandwidth is None:
                response = await handler(request)
            else:
                loop = self._loop
                length = request.content_length
                if length:
                    await self._carry(loop, length)
                response = await handler(request)
                if length is None and request.body_exists:
                    await self._carry(loop, request.content.total_bytes)
            waiting = answers.until(answer_at)
            if waiting is not None:
                await waiting
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


class Deadlines:
    """Waits of one fixed `delay` from their start (a request's answer `latency` after it
    arrived, an injected delay), all on one timer: their deadlines come in the order they
    were taken, so a queue in that order and a timer for its head replace a timer (and, for
    the delay fault, an asyncio.sleep) per wait. Waits that fall due together (under uvloop,
    whose clock moves in whole milliseconds, all those taken in one turn of the loop) are
    woken in one go. What `--latency` costs the emulator per request is mostly not this but
    the wake-ups it brings (benchmarks/README.md)."""

    def __init__(self, delay: float) -> None:
        self._delay = delay
        self._loop: asyncio.AbstractEventLoop  # set by start()
        self._queue: deque[tuple[float, asyncio.Future[None]]] = deque()
        self._timer: asyncio.TimerHandle | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Bind to the loop that runs the waits (a new loop starts with none waiting)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._queue.clear()
        self._loop = loop

    def deadline(self) -> float:
        """`delay` from now on the loop's clock."""
        return self._loop.time() + self._delay

    def until(self, deadline: float) -> asyncio.Future[None] | None:
        """What to await until `deadline` (one that `deadline()` gave: none earlier than the
        last); None when it has passed (no future, no coroutine)."""
        loop = self._loop
        if deadline <= loop.time():
            return None
        woken: asyncio.Future[None] = loop.create_future()
        self._queue.append((deadline, woken))
        if self._timer is None:
            self._timer = loop.call_at(deadline, self._fire)
        return woken

    async def wait(self) -> None:
        """`delay` from now."""
        waiting = self.until(self.deadline())
        if waiting is not None:
            await waiting

    def _fire(self) -> None:
        """The head's timer: the head is due (the loop said so, as for a timer of its own),
        and so is every wait behind it whose deadline is not later than the head's or has
        passed; then the timer for the next."""
        queue = self._queue
        if not queue:
            self._timer = None
            return
        due = max(queue[0][0], self._loop.time())
        while queue and queue[0][0] <= due:
            woken = queue.popleft()[1]
            if not woken.done():  # cancelled meanwhile: its request went away
                woken.set_result(None)
        self._timer = self._loop.call_at(queue[0][0], self._fire) if queue else None
