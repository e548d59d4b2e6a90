"""The emulator's HTTP handling below the routes, spoken over a raw socket: `Expect:
100-continue` (curl sends it before a large body) and pipelined requests on one connection."""

from __future__ import annotations

import asyncio
import base64
import json
import os
from pathlib import Path

import aiohttp
import pytest

from bulkdrive import protocol
from bulkdrive.emulator import Emulator
from tests.conftest import PASSWORD, SHARE_ID, USER

pytestmark = pytest.mark.anyio

TIMEOUT = 5.0


async def _token(emulator: Emulator) -> str:
    body = {"username": USER, "password": base64.b64encode(PASSWORD.encode()).decode()}
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{emulator.base_url}/Login", json=body, headers={"Accept": "json"}) as resp,
    ):
        return str((await resp.json())["token"])


def _upload_head(token: str, name: str, size: int, *extra: str) -> bytes:
    lines = [
        f"POST /webconsole/api/drive/share/{SHARE_ID}/file/action/upload?uploadType=chunkedFile "
        "HTTP/1.1",
        "Host: 127.0.0.1",
        f"Authtoken: {token}",
        "Accept: application/json",
        f"FileName: {protocol.encode_name(name)}",
        f"FileSize: {size}",
        f"ParentFolderPath: {protocol.encode_name(chr(92) + 'wire')}",
        "FileModifiedtime: 1424813723",
        "FileEOF: 1",
        f"Content-Length: {size}",
        *extra,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def _read_reply(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    body = await asyncio.wait_for(reader.readexactly(length), TIMEOUT)
    return status, body


async def test_expect_100_continue_is_answered_before_the_body(
    emulator: Emulator, root: Path
) -> None:
    token = await _token(emulator)
    data = os.urandom(200_000)
    reader, writer = await asyncio.open_connection("127.0.0.1", emulator.port)
    try:
        writer.write(_upload_head(token, "expect.bin", len(data), "Expect: 100-continue"))
        await writer.drain()
        # The interim answer comes while the body has not been sent at all.
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(data)
        await writer.drain()
        status, body = await _read_reply(reader)
    finally:
        writer.close()
    assert status == 200, body
    assert json.loads(body)["chunkOffset"] == len(data)
    assert (root / SHARE_ID / "wire" / "expect.bin").read_bytes() == data


async def test_an_unknown_expectation_is_417_and_stores_nothing(
    emulator: Emulator, root: Path
) -> None:
    token = await _token(emulator)
    reader, writer = await asyncio.open_connection("127.0.0.1", emulator.port)
    try:
        writer.write(_upload_head(token, "odd.bin", 3, "Expect: something-else") + b"abc")
        await writer.drain()
        status, _ = await _read_reply(reader)
    finally:
        writer.close()
    assert status == 417
    assert not (root / SHARE_ID / "wire" / "odd.bin").exists()
    assert emulator.statistics().completed_files == 0


async def test_pipelined_small_files_on_one_connection(emulator: Emulator, root: Path) -> None:
    """Several whole small files sent back to back before any answer: each is answered, in
    order, and each stored file holds its own bytes."""
    token = await _token(emulator)
    files = {f"p{i}.bin": os.urandom(1000 + i) for i in range(5)}
    reader, writer = await asyncio.open_connection("127.0.0.1", emulator.port)
    try:
        writer.write(
            b"".join(_upload_head(token, name, len(data)) + data for name, data in files.items())
        )
        await writer.drain()
        replies = [await _read_reply(reader) for _ in files]
    finally:
        writer.close()
    assert [status for status, _ in replies] == [200] * len(files)
    for (name, data), (_, body) in zip(files.items(), replies, strict=True):
        assert json.loads(body)["chunkOffset"] == len(data)
        assert (root / SHARE_ID / "wire" / name).read_bytes() == data
