"""`serve --latency`, `--max-active`, `--bandwidth`: a server with distance and limits.

Raw requests only; the assertions are lower bounds the model guarantees (an answer never comes
before its latency, a body never before the link carried it), counts and stored bytes.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import anyio
import anyio.lowlevel
import pytest
from click.testing import CliRunner

from bulkdrive import protocol
from bulkdrive.emulator.command import serve
from bulkdrive.emulator.network import Deadlines, NetworkModel, parse_duration, parse_rate

import edge_raw as er
from conftest import EmulatorFactory

pytestmark = pytest.mark.anyio


async def test_every_answer_waits_for_the_latency_on_a_timer(
    make_emulator: EmulatorFactory, http: aiohttp.ClientSession
) -> None:
    emulator = await make_emulator(network=NetworkModel(latency=0.15))
    token = await er.login(http, emulator.base_url)
    data = er.payload(5000, seed=1)
    elapsed: list[float] = []
    cpu_before = time.process_time()
    wall_before = time.monotonic()

    async def one(i: int) -> None:
        began = time.monotonic()
        reply = await er.upload_whole(http, emulator.base_url, token, f"f{i}.bin", data)
        elapsed.append(time.monotonic() - began)
        assert reply.status == 200, reply.text

    async with anyio.create_task_group() as tg:
        for i in range(20):
            tg.start_soon(one, i)
    wall = time.monotonic() - wall_before
    cpu = time.process_time() - cpu_before
    assert len(elapsed) == 20 and min(elapsed) >= 0.15
    # Twenty requests waited together, on timers: the process spent far less CPU than the
    # time they waited (a busy wait would burn at least the whole wall time).
    assert cpu < 0.5 * wall
    for i in range(20):
        assert er.stored(emulator.root, f"\\f{i}.bin").read_bytes() == data


async def test_waits_on_one_timer_each_end_no_sooner_than_their_deadline() -> None:
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(0.03)
    deadlines.start(loop)
    woken: list[tuple[int, float, float]] = []  # (wait, its deadline, the clock when woken)

    async def one(i: int) -> None:
        deadline = deadlines.deadline()
        waiting = deadlines.until(deadline)
        assert waiting is not None
        await waiting
        woken.append((i, deadline, loop.time()))

    with anyio.fail_after(5):  # a timer not armed again would leave the waits hanging
        async with anyio.create_task_group() as tg:
            for i in range(12):
                tg.start_soon(one, i)
                if i % 3 == 2:
                    await anyio.sleep(0.005)  # a few taken in each turn of the loop
            # A wait whose request went away (cancelled) holds up none behind it.
            with anyio.move_on_after(0.01):
                await deadlines.wait()
            await anyio.lowlevel.checkpoint()
            tg.start_soon(one, 12)
    # A deadline that has passed needs no wait at all.
    assert deadlines.until(loop.time()) is None
    # With the queue empty the timer is armed again; a wait behind the head gets it once the
    # head's has fired, though no wait comes after it.
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(one, 13)
            await anyio.sleep(0.005)
            tg.start_soon(one, 14)
    assert [i for i, _, _ in woken] == list(range(15))  # in the order they were taken
    assert all(now >= deadline for _, deadline, now in woken)


async def test_a_request_that_goes_away_during_its_latency_holds_up_no_other(
    make_emulator: EmulatorFactory, http: aiohttp.ClientSession
) -> None:
    emulator = await make_emulator(network=NetworkModel(latency=0.1))
    token = await er.login(http, emulator.base_url)
    path = f"/webconsole/api/{er.upload_path()}?uploadType=fullFile"
    headers = er.file_headers("gone.bin", 3, token=token, eof=True)
    # Sent, then the connection closed while the answer waits for its latency.
    head = er.raw_head(path, headers, 3, port=emulator.port)
    await er.send_truncated(emulator.port, head, b"abc")
    began = time.monotonic()
    replies = []

    async def one(i: int) -> None:
        reply = await er.upload_whole(http, emulator.base_url, token, f"after{i}.bin", b"xy")
        replies.append((reply.status, time.monotonic() - began))

    async with anyio.create_task_group() as tg:
        for i in range(3):
            tg.start_soon(one, i)
    assert [status for status, _ in replies] == [200, 200, 200]
    assert min(elapsed for _, elapsed in replies) >= 0.1
    for i in range(3):
        assert er.stored(emulator.root, f"\\after{i}.bin").read_bytes() == b"xy"
    assert emulator.network.statistics().active == 0


async def test_beyond_max_active_requests_get_503_with_retry_after(
    make_emulator: EmulatorFactory, http: aiohttp.ClientSession
) -> None:
    emulator = await make_emulator(network=NetworkModel(latency=0.4, max_active=2))
    token = await er.login(http, emulator.base_url)
    replies: dict[int, er.Reply] = {}

    async def one(i: int, delay: float) -> None:
        await anyio.sleep(delay)
        replies[i] = await er.upload_whole(
            http, emulator.base_url, token, f"f{i}.bin", er.payload(100, seed=i)
        )

    async with anyio.create_task_group() as tg:
        for i in range(5):
            tg.start_soon(one, i, 0.02 * i)  # the first two arrive first
    assert [replies[i].status for i in range(5)] == [200, 200, 503, 503, 503]
    assert replies[3].node.int("errorCode") == 503
    for i in range(5):
        path = er.stored(emulator.root, f"\\f{i}.bin")
        assert (path.read_bytes() == er.payload(100, seed=i)) if i < 2 else not path.exists()
    stats = emulator.network.statistics()
    assert (stats.refused, stats.max_active_seen, stats.active) == (3, 2, 0)

    # Two busy requests again, seen raw: the refusal carries Retry-After in whole seconds.
    async with anyio.create_task_group() as tg:
        for i in (10, 11):
            tg.start_soon(one, i, 0.0)
        await anyio.sleep(0.1)
        path = f"/webconsole/api/{er.upload_path()}?uploadType=fullFile"
        headers = er.file_headers("late.bin", 3, token=token, eof=True)
        raw = await er.raw_exchange(
            emulator.port, er.raw_head(path, headers, 3, port=emulator.port), b"abc"
        )
    assert er.status_of(raw) == 503
    assert b"\r\nRetry-After: 1\r\n" in raw
    assert not er.stored(emulator.root, "\\late.bin").exists()
    # Once the others are answered, the server takes work again.
    again = await er.upload_whole(http, emulator.base_url, token, "late.bin", b"abc")
    assert again.status == 200 and er.stored(emulator.root, "\\late.bin").read_bytes() == b"abc"


async def test_request_bodies_share_one_link_of_the_given_bandwidth(
    make_emulator: EmulatorFactory, http: aiohttp.ClientSession
) -> None:
    rate = 2_000_000
    emulator = await make_emulator(network=NetworkModel(bandwidth=rate))
    token = await er.login(http, emulator.base_url)
    bodies = [er.payload(200_000, seed=i) for i in range(3)]
    began = time.monotonic()

    async def one(i: int) -> None:
        reply = await er.upload_whole(http, emulator.base_url, token, f"f{i}.bin", bodies[i])
        assert reply.status == 200, reply.text

    async def chunked() -> None:
        async def pieces():  # type: ignore[no-untyped-def]
            for i in range(4):
                yield er.payload(50_000, seed=10 + i)

        headers = er.file_headers("c.bin", 200_000, token=token)
        reply = await er.post_upload(http, emulator.base_url, headers, pieces())
        assert reply.status == 200, reply.text
        finished = er.chunk(http, emulator.base_url, token, reply.upload.request_id, b"", eof=True)
        assert (await finished).status == 200

    async with anyio.create_task_group() as tg:
        for i in range(3):
            tg.start_soon(one, i)
        tg.start_soon(chunked)
    # 800 000 body bytes (and the login's) over a 2 MB/s link: not before 0.4 s.
    assert time.monotonic() - began >= 0.4 - 0.01
    stats = emulator.network.statistics()
    assert stats.bytes_carried >= 800_000 and stats.link_wait_seconds > 0
    for i in range(3):
        assert er.stored(emulator.root, f"\\f{i}.bin").read_bytes() == bodies[i]
    whole = b"".join(er.payload(50_000, seed=10 + i) for i in range(4))
    assert er.stored(emulator.root, "\\c.bin").read_bytes() == whole


def test_durations_and_serve_options_are_checked(tmp_path: Path) -> None:
    assert parse_duration("20ms") == pytest.approx(0.02)
    assert parse_duration("0") == 0.0
    assert parse_duration("1.5s") == 1.5
    assert parse_rate("100MB/s") == 100_000_000
    assert parse_rate("10MiB/s") == 10 * 1024 * 1024
    assert parse_rate("65536") == 65536
    with pytest.raises(ValueError, match="examples"):
        parse_rate("fast")
    with pytest.raises(ValueError, match="examples"):
        parse_duration("fast")
    runner = CliRunner()
    for args, hint in (
        (["--latency", "soon"], "--latency"),
        (["--bandwidth", "lots"], "--bandwidth"),
        (["--max-active", "0"], "--max-active"),
    ):
        result = runner.invoke(serve, ["--root", str(tmp_path), *args])
        assert result.exit_code == 2 and hint in result.output, result.output
    assert protocol.retry_after_seconds("1") == 1.0
