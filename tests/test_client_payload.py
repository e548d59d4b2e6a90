"""`transport._ChunkPayload` writes chunks from a memoryview through aiohttp's BytesPayload
internals (`_value`, `write_with_length`), measured on the aiohttp range pyproject.toml pins.
These tests fail loudly when an aiohttp release moves what it relies on."""

from __future__ import annotations

import contextlib
import re
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from bulkdrive import transport

pytestmark = pytest.mark.anyio

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def test_the_installed_aiohttp_is_in_the_pinned_range() -> None:
    dependencies = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]["dependencies"]
    (spec,) = [d for d in dependencies if d.startswith("aiohttp")]
    lower = re.search(r">=\s*([\d.]+)", spec)
    upper = re.search(r"<\s*([\d.]+)", spec)
    assert lower and upper, f"aiohttp must be pinned to a range in pyproject.toml: {spec}"
    installed = _version(aiohttp.__version__)
    assert _version(lower.group(1)) <= installed < _version(upper.group(1))


def test_the_payload_keeps_the_chunk_it_was_given_without_a_copy() -> None:
    chunk = bytes(range(256)) * 8192  # 2 MiB: more than one slice
    payload = transport._payload(chunk)
    assert isinstance(payload, transport._ChunkPayload)
    assert payload._value is chunk  # aiohttp's private attribute, read by write_with_length
    assert payload.size == len(chunk)


@contextlib.asynccontextmanager
async def _receiver() -> AsyncIterator[tuple[str, list[bytes]]]:
    """A plain aiohttp server on loopback: its URL, and the bodies it received."""
    received: list[bytes] = []

    async def store(request: web.Request) -> web.Response:
        received.append(await request.read())
        return web.Response(text="ok")

    app = web.Application(client_max_size=8 * 1024 * 1024)
    app.router.add_post("/", store)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/", received
    finally:
        await runner.cleanup()


async def test_aiohttp_sends_the_chunk_through_our_slices() -> None:
    slices: list[int] = []

    class Counted(transport._ChunkPayload):
        async def write_with_length(self, writer, content_length):  # type: ignore[no-untyped-def]
            slices.append(len(self._value))
            await super().write_with_length(writer, content_length)

    chunk = bytes(range(256)) * 12_288  # 3 MiB
    async with (
        _receiver() as (url, received),
        aiohttp.ClientSession() as session,
        session.post(url, data=Counted(chunk)) as response,
    ):
        assert response.status == 200
    assert slices == [len(chunk)], "aiohttp no longer writes the body through write_with_length"
    assert received == [chunk]


async def test_the_headers_go_with_a_small_first_piece_then_slices() -> None:
    """aiohttp joins the headers with the body's first piece into a new bytes: that piece is
    `_FIRST` bytes, not a slice (a 1 MiB copy per chunk), and the rest goes in slices."""
    pieces: list[int] = []

    class Recorded:
        """aiohttp's own writer, each piece it is given noted."""

        def __init__(self, writer: object) -> None:
            self._writer = writer

        async def write(self, chunk: memoryview) -> None:
            pieces.append(len(chunk))
            await self._writer.write(chunk)  # type: ignore[attr-defined]

    class Noted(transport._ChunkPayload):
        async def write_with_length(self, writer, content_length):  # type: ignore[no-untyped-def]
            await super().write_with_length(Recorded(writer), content_length)

    chunk = bytearray(range(256)) * 10_000  # 2.44 MiB
    async with (
        _receiver() as (url, received),
        aiohttp.ClientSession() as session,
        session.post(url, data=Noted(memoryview(chunk))) as response,
    ):
        assert response.status == 200
    assert received == [bytes(chunk)]
    rest = len(chunk) - transport._FIRST
    assert pieces == [
        transport._FIRST,
        transport._SLICE,
        transport._SLICE,
        rest - 2 * transport._SLICE,
    ]
