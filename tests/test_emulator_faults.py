"""Spec §8–§9: seeded fault injection on upload calls — 500, 503, reset, lost-response, delay.

Faults hit every upload call, so the tests that need to see what a fault left behind run the
emulator in phases on one root: a clean emulator opens the session, a faulty one receives the
chunk, and a clean one again tells the authoritative offset (a 409 on initiate, spec §8).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bulkdrive.emulator import Emulator, running_emulator

import edge_raw as er
from conftest import EmulatorFactory, emulator_config

pytestmark = pytest.mark.anyio

DISCONNECTED = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError)


@asynccontextmanager
async def phase(root: Path, **overrides: Any) -> AsyncIterator[tuple[Emulator, str]]:
    """One emulator on `root`, stopped at the end of the block, and a fresh token for it."""
    async with running_emulator(emulator_config(root, **overrides)) as emulator:
        async with er.client() as http:
            token = await er.login(http, emulator.base_url)
        yield emulator, token


def always(kind: str, **extra: Any) -> dict[str, Any]:
    return {"fault_rate": 1.0, "fault_seed": 7, "faults": (kind,), **extra}


@pytest.mark.parametrize("kind", ["500", "503"])
async def test_server_error_faults(
    make_emulator: EmulatorFactory, http: aiohttp.ClientSession, kind: str
) -> None:
    emulator = await make_emulator(**always(kind))
    base = emulator.base_url
    token = await er.login(http, base)
    reply = await er.upload_whole(http, base, token, "f.txt", b"fault")
    assert reply.status == int(kind)
    reply = await er.initiate(http, base, token, "g.txt", 10, b"abc")
    assert reply.status == int(kind)


async def test_faults_hit_upload_calls_only(
    make_emulator: EmulatorFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    emulator = await make_emulator(**always("reset"))
    base = emulator.base_url
    token = await er.login(http, base)
    assert (await er.list_shares(http, base, token)).status == 200
    assert (await er.create_folder(http, base, token, "ok")).status == 201
    assert (await er.metadata(http, base, token, "\\ok")).status == 200
    assert (await er.list_folder(http, base, token, "\\")).status == 200
    assert (await er.renew(http, base, token, "")).status in (200, 401)
    assert (await er.logout(http, base, token)).status == 200
    token = await er.login(http, base)
    with pytest.raises(DISCONNECTED):
        await er.upload_whole(http, base, token, "r.txt", b"reset")
    assert not er.stored(tmp_path / "server", "\\r.txt").exists()


async def test_reset_stores_nothing(tmp_path: Path) -> None:
    root = tmp_path / "server"
    data = er.payload(3000, seed=1)
    async with phase(root) as (emu, token), er.client() as http:
        first = await er.initiate(http, emu.base_url, token, "reset.bin", 3000, data[:1000])
        assert first.status == 200
        rid = first.upload.request_id
    async with phase(root, **always("reset")) as (emu, token), er.client() as http:
        with pytest.raises(DISCONNECTED):
            await er.chunk(http, emu.base_url, token, rid, data[1000:2000])
        with pytest.raises(DISCONNECTED):
            await er.upload_whole(http, emu.base_url, token, "whole.bin", b"never")
    assert not er.stored(root, "\\whole.bin").exists()
    async with phase(root) as (emu, token), er.client() as http:
        base = emu.base_url
        again = await er.initiate(http, base, token, "reset.bin", 3000)
        assert again.status == 409
        assert again.upload.request_id == rid
        assert again.upload.chunk_offset == 1000
        done = await er.chunk(http, base, token, rid, data[1000:], eof=True)
        assert done.status == 200, done.text
        assert (await er.metadata(http, base, token, "\\whole.bin")).status == 404
    assert er.stored(root, "\\reset.bin").read_bytes() == data


async def test_lost_response_stores_the_chunk(tmp_path: Path) -> None:
    root = tmp_path / "server"
    data = er.payload(3000, seed=2)
    async with phase(root) as (emu, token), er.client() as http:
        first = await er.initiate(http, emu.base_url, token, "lost.bin", 3000, data[:1000])
        assert first.status == 200
        rid = first.upload.request_id
    async with phase(root, **always("lost-response")) as (emu, token), er.client() as http:
        with pytest.raises(DISCONNECTED):
            await er.chunk(http, emu.base_url, token, rid, data[1000:2000])
        # A whole file whose response is lost is nevertheless complete.
        with pytest.raises(DISCONNECTED):
            await er.upload_whole(http, emu.base_url, token, "whole.bin", b"kept anyway")
        meta = await er.metadata(http, emu.base_url, token, "\\whole.bin")
        assert meta.status == 200
    assert er.stored(root, "\\whole.bin").read_bytes() == b"kept anyway"
    async with phase(root) as (emu, token), er.client() as http:
        base = emu.base_url
        again = await er.initiate(http, base, token, "lost.bin", 3000)
        assert again.status == 409
        assert again.upload.request_id == rid
        # The chunk WAS stored: a blind re-send would now duplicate it.
        assert again.upload.chunk_offset == 2000
        done = await er.chunk(http, base, token, rid, data[2000:], eof=True)
        assert done.status == 200, done.text
    assert er.stored(root, "\\lost.bin").read_bytes() == data


async def test_lost_response_then_blind_resend_stores_twice(tmp_path: Path) -> None:
    """Why §8 exists: re-sending the lost chunk appends it a second time."""
    root = tmp_path / "server"
    async with phase(root) as (emu, token), er.client() as http:
        rid = (await er.initiate(http, emu.base_url, token, "blind.bin", 9)).upload.request_id
    async with phase(root, **always("lost-response")) as (emu, token), er.client() as http:
        with pytest.raises(DISCONNECTED):
            await er.chunk(http, emu.base_url, token, rid, b"abc")
    async with phase(root) as (emu, token), er.client() as http:
        resent = await er.chunk(http, emu.base_url, token, rid, b"abc")
        assert resent.status == 200
        assert resent.upload.chunk_offset == 6


async def test_delay_fault_answers_normally(
    make_emulator: EmulatorFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    emulator = await make_emulator(**always("delay", fault_delay_seconds=0.05))
    base = emulator.base_url
    token = await er.login(http, base)
    data = er.payload(5000, seed=3)
    began = time.monotonic()
    reply = await er.upload_chunked(http, base, token, "slow.bin", data, 1000)
    elapsed = time.monotonic() - began
    assert reply.status == 200, reply.text
    assert reply.upload.chunk_offset == len(data)
    assert er.stored(tmp_path / "server", "\\slow.bin").read_bytes() == data
    # One request after the other, each delayed: not answered sooner than all their delays.
    delayed = emulator.statistics().faults["delay"]
    assert delayed >= 5 and elapsed >= delayed * 0.05


async def fault_pattern(root: Path, seed: int) -> list[int]:
    """Statuses of 16 whole-file uploads against a fresh emulator with 500/503 faults."""
    statuses = []
    config = {"fault_rate": 0.5, "fault_seed": seed, "faults": ("500", "503")}
    async with phase(root, **config) as (emu, token), er.client() as http:
        for i in range(16):
            reply = await er.upload_whole(http, emu.base_url, token, f"s{i}.txt", b"s")
            statuses.append(reply.status)
    return statuses


async def test_faults_are_seeded_and_reproducible(tmp_path: Path) -> None:
    first = await fault_pattern(tmp_path / "a", seed=1234)
    second = await fault_pattern(tmp_path / "b", seed=1234)
    assert first == second
    assert set(first) == {200, 500, 503}, first
    stored = {p.name for p in (tmp_path / "a" / "1").iterdir() if p.is_file()}
    assert stored == {f"s{i}.txt" for i, s in enumerate(first) if s == 200}


async def test_no_faults_at_rate_zero(
    make_emulator: EmulatorFactory, http: aiohttp.ClientSession
) -> None:
    emulator = await make_emulator(fault_rate=0.0, faults=("500",))
    token = await er.login(http, emulator.base_url)
    for i in range(10):
        reply = await er.upload_whole(http, emulator.base_url, token, f"z{i}.txt", b"z")
        assert reply.status == 200


async def test_section_8_recovery_survives_every_fault_kind(
    make_emulator: EmulatorFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """A client that recovers as §8 says ends with exactly the source bytes, whatever failed."""
    emulator = await make_emulator(
        fault_rate=0.35,
        fault_seed=99,
        fault_delay_seconds=0.01,
        faults=("500", "503", "reset", "lost-response", "delay"),
    )
    base = emulator.base_url
    token = await er.login(http, base)
    data = er.payload(10 * 512, seed=4)
    size = len(data)
    rid: str | None = None
    offset = 0
    lost_last = False
    done = False
    failures = 0
    for _ in range(300):
        if rid is None:
            try:
                reply = await er.initiate(http, base, token, "hard.bin", size)
            except DISCONNECTED:
                failures += 1
                continue
            if reply.status == 200 and lost_last:
                meta = await er.metadata(http, base, token, "\\hard.bin")
                if meta.status == 200 and er.file_resources(meta.node)[0].size == size:
                    done = True
                    break
            if reply.status not in (200, 409):
                failures += 1
                continue
            rid, offset = reply.upload.request_id, reply.upload.chunk_offset
            assert offset <= size
            lost_last = False
            continue
        part = data[offset : offset + 512]
        last = offset + len(part) == size
        try:
            reply = await er.chunk(http, base, token, rid, part, eof=last)
        except DISCONNECTED:
            failures += 1
            rid, lost_last = None, last
            continue
        if reply.status != 200:
            failures += 1
            rid, lost_last = None, last
            continue
        offset = reply.upload.chunk_offset
        if last:
            done = True
            break
    assert done
    assert failures > 0
    assert er.stored(tmp_path / "server", "\\hard.bin").read_bytes() == data
