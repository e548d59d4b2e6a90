"""The request boundary (`bulkdrive.transport`) over real sockets: what every request carries,
and a small request's read timeout: a RequestTimeout that leaves the task usable, never a
caller's own cancellation turned into one."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
from aiohttp import web
from multidict import CIMultiDictProxy

from bulkdrive import errors, protocol
from bulkdrive.client import EdgeDriveClient
from bulkdrive.config import Credentials, RetryPolicy, Secret, Timeouts, TransferConfig
from bulkdrive.emulator import Emulator

from conftest import PASSWORD, SHARE_ID, USER, EmulatorFactory

pytestmark = pytest.mark.anyio

GOOD = Credentials(USER, Secret(PASSWORD))
#: Upload requests wait for their answer far longer than `read`, far less than `final_read`.
LATE = 0.4
TIMEOUTS = Timeouts(connect=5.0, read=0.05, final_read=10.0)
CONFIG = TransferConfig(
    timeouts=TIMEOUTS, retry=RetryPolicy(attempts=2, initial_wait=0.001, max_wait=0.01)
)


def stored(emulator: Emulator, name: str) -> Path:
    return emulator.root.joinpath(SHARE_ID, name)


@contextlib.asynccontextmanager
async def late_client(
    make_emulator: EmulatorFactory,
) -> AsyncIterator[tuple[Emulator, EdgeDriveClient]]:
    """An emulator that answers every upload LATE seconds late, and a client of it (CONFIG)."""
    emulator = await make_emulator(fault_rate=1.0, faults=("delay",), fault_delay_seconds=LATE)
    async with EdgeDriveClient.connect(
        emulator.base_url, GOOD, share_id=SHARE_ID, config=CONFIG
    ) as client:
        yield emulator, client


async def initiate(client: EdgeDriveClient, name: str, data: bytes, *, eof: bool) -> None:
    await client.initiate(
        name=name, folder="\\", size=2 * len(data), mtime=0, body=data, eof=eof, verify=False
    )


async def test_a_small_request_unanswered_within_the_read_timeout_times_out(
    make_emulator: EmulatorFactory,
) -> None:
    data = random.Random(1).randbytes(1000)
    async with late_client(make_emulator) as (emulator, client):
        with pytest.raises(errors.RequestTimeout, match="no answer in time"):
            await initiate(client, "a.bin", data, eof=False)
        stats = client.statistics()
        assert (stats.failed_requests, stats.pushbacks) == (1, 1)
        # The timeout left the task as it was: nothing cancels it any more...
        task = asyncio.current_task()
        assert task is not None and task.cancelling() == 0
        await anyio.sleep(0.1)
        # ...and its next request, the last of a file, may wait the longer final read.
        await client.initiate(
            name="b.bin", folder="\\", size=len(data), mtime=0, body=data, eof=True, verify=False
        )
    assert stored(emulator, "b.bin").read_bytes() == data


async def test_a_caller_cancelling_a_small_request_is_not_a_timeout(
    make_emulator: EmulatorFactory,
) -> None:
    data = random.Random(2).randbytes(1000)
    async with late_client(make_emulator) as (_, client):
        # Cancelled by its caller before the (long) final read timeout: no RequestTimeout,
        # the cancel scope catches its own cancellation.
        with anyio.move_on_after(0.1) as scope:
            await initiate(client, "c.bin", data, eof=True)
        assert scope.cancelled_caught
        assert client.statistics().pushbacks == 0
        # The same task's next request is timed as usual.
        with pytest.raises(errors.RequestTimeout):
            await initiate(client, "d.bin", data, eof=False)
        assert client.statistics().pushbacks == 1


async def test_a_timeout_and_the_callers_cancellation_together_stay_a_cancellation(
    make_emulator: EmulatorFactory,
) -> None:
    data = random.Random(3).randbytes(1000)
    async with late_client(make_emulator) as (_, client):
        # The caller's deadline and the request's fall due together (a few timer ticks of
        # each other at most): whichever comes first, the caller's scope must end the wait.
        with anyio.move_on_after(TIMEOUTS.read) as scope:
            with contextlib.suppress(errors.RequestTimeout):
                await initiate(client, "e.bin", data, eof=False)
            await anyio.sleep(LATE)  # cancelled here if not in the request
        assert scope.cancelled_caught
        task = asyncio.current_task()
        assert task is not None and task.cancelling() == 0


@contextlib.asynccontextmanager
async def recording_server() -> AsyncIterator[tuple[str, list[CIMultiDictProxy[str]]]]:
    """A plain aiohttp server on loopback answering Login and an initiate as Edge Drive does
    (flat JSON when asked for JSON, XML otherwise): its URL, and each request's headers."""
    seen: list[CIMultiDictProxy[str]] = []

    async def answer(request: web.Request) -> web.Response:
        seen.append(request.headers)
        await request.read()
        wants_json = "json" in request.headers.get("Accept", "")
        if request.path.endswith("/Login"):
            fields = {"token": "QSDK 0123", "userName": USER}
        elif request.path.endswith("/Logout"):
            return web.Response(text="User logged out")
        else:
            fields = {"requestId": "7", "chunkOffset": 1000, "errorCode": 0}
        if wants_json:
            return web.json_response(fields)
        return web.Response(
            body=protocol.render(protocol.Format.XML, protocol.UPLOAD_RESP, fields),
            content_type="application/xml",
        )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        yield f"http://127.0.0.1:{port}/webconsole/api", seen
    finally:
        await runner.cleanup()


async def test_every_request_asks_for_json_once_and_only_the_calls_carry_the_token() -> None:
    async with (
        recording_server() as (url, seen),
        EdgeDriveClient.connect(url, GOOD, share_id=SHARE_ID) as client,
    ):
        reply = await client.initiate(
            name="f.bin",
            folder="\\",
            size=2000,
            mtime=0,
            body=b"x" * 1000,
            eof=False,
            verify=False,
        )
        assert (reply.request_id, reply.chunk_offset) == ("7", 1000)
    login, upload, logout = seen
    for headers in seen:
        assert headers.getall("Accept") == ["application/json"]
        assert "Cookie" not in headers
    assert protocol.AUTHTOKEN not in login
    assert upload.getall(protocol.AUTHTOKEN) == ["QSDK 0123"]
    assert logout.getall(protocol.AUTHTOKEN) == ["QSDK 0123"]
    assert upload[protocol.FILE_EOF] == "0"
    assert upload["Content-Length"] == "1000"
