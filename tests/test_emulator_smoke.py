"""Quick end-to-end checks of the emulator: login, a chunked upload, resume after restart,
integrity, and the lost-response fault seen by a raw client."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from bulkdrive import protocol
from bulkdrive.emulator import Emulator, running_emulator
from tests.conftest import PASSWORD, SHARE_ID, USER, EmulatorFactory, emulator_config

pytestmark = pytest.mark.anyio

JSON = {"Accept": "application/json"}


async def login(http: aiohttp.ClientSession, emulator: Emulator) -> str:
    body = {"username": USER, "password": base64.b64encode(PASSWORD.encode()).decode()}
    async with http.post(f"{emulator.base_url}/Login", json=body, headers=JSON) as resp:
        assert resp.status == 200
        token = (await resp.json())["token"]
    assert token.startswith("QSDK ")
    return str(token)


def file_headers(
    token: str, name: str, size: int, parent: str = "\\", **extra: str
) -> dict[str, str]:
    return {
        **JSON,
        "Authtoken": token,
        "FileName": protocol.encode_name(name),
        "FileSize": str(size),
        "ParentFolderPath": protocol.encode_name(parent),
        "FileModifiedtime": "1424813723",
        **extra,
    }


def upload_url(emulator: Emulator, query: str = "") -> str:
    base = f"{emulator.base_url}/drive/share/{SHARE_ID}/file/action/upload?uploadType=chunkedFile"
    return base + query


async def test_chunked_upload_stores_the_bytes(emulator: Emulator) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    async with aiohttp.ClientSession() as http:
        token = await login(http, emulator)
        headers = file_headers(token, "big.bin", len(data), "\\pictures\\2024")
        async with http.post(upload_url(emulator), headers=headers, data=data[:1_000_000]) as r:
            assert r.status == 200
            reply = await r.json()
        request_id = reply["requestId"]
        assert reply["chunkOffset"] == 1_000_000
        # The unfinished file is not visible in the share.
        assert not (emulator.root / SHARE_ID / "pictures" / "2024" / "big.bin").exists()
        chunk_headers = {**JSON, "Authtoken": token, "FileEOF": "0,1"}
        async with http.post(
            upload_url(emulator, f"&requestId={request_id}"),
            headers=chunk_headers,
            data=data[1_000_000:],
        ) as r:
            assert r.status == 200
            done = await r.json()
    assert done["chunkOffset"] == len(data)
    assert len(done["fileGUID"]) == 32
    stored = emulator.root / SHARE_ID / "pictures" / "2024" / "big.bin"
    assert stored.read_bytes() == data
    assert int(stored.stat().st_mtime) == 1424813723
    stats = emulator.statistics()
    assert stats.completed_files == 1
    assert stats.bytes_received == len(data)
    assert [r.offset_before for r in emulator.upload_log] == [0, 1_000_000]


async def test_unfinished_session_survives_restart(tmp_path: Path) -> None:
    root = tmp_path / "server"
    data = b"0123456789" * 1000
    async with running_emulator(emulator_config(root)) as first, aiohttp.ClientSession() as http:
        token = await login(http, first)
        headers = file_headers(token, "resume.txt", len(data))
        async with http.post(upload_url(first), headers=headers, data=data[:4000]) as r:
            request_id = (await r.json())["requestId"]
    # A partial file longer than the recorded offset (a crash mid-write) is cut back.
    partial = root / ".bulkdrive" / "partial" / request_id
    with partial.open("ab") as handle:
        handle.write(b"garbage")
    async with running_emulator(emulator_config(root)) as second, aiohttp.ClientSession() as http:
        token = await login(http, second)
        headers = file_headers(token, "resume.txt", len(data))
        async with http.post(upload_url(second), headers=headers, data=b"ignored") as r:
            assert r.status == 409
            conflict = await r.json()
        assert conflict["requestId"] == request_id
        assert conflict["chunkOffset"] == 4000
        async with http.post(
            upload_url(second, f"&requestId={request_id}"),
            headers={"Authtoken": token, "FileEOF": "1"},
            data=data[4000:],
        ) as r:
            assert r.status == 200
            text = await r.text()
        assert text.startswith("<DM2ContentIndexing_UploadFileResp")
    assert (root / SHARE_ID / "resume.txt").read_bytes() == data


@pytest.mark.parametrize(
    ("contents", "full", "block"),
    [
        (
            b"abc",
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
            "4f8b42c22dd3729b519ba6f68d2da7cc5b2d606d05daed5ad5128cc03e6c6358",
        ),
        (
            bytes(range(256)) * 16384 + b"xyz",
            "e683560c8ed136154c0af206b9c74af7d811054c8b4850e5fb9a7eb89fadd470",
            "3591d0ebb461ef47ef9180e10897963478114b9baf06b62fdf9dede6046634ea",
        ),
    ],
)
async def test_integrity_vectors(
    emulator: Emulator, contents: bytes, full: str, block: str
) -> None:
    block_size = protocol.BLOCK_SIZE
    async with aiohttp.ClientSession() as http:
        token = await login(http, emulator)
        headers = file_headers(token, "v.bin", len(contents))
        first = contents[:block_size]
        rest = contents[block_size:]
        if not rest:
            headers.update({"FileEOF": "1", "BlockLevelHash": block, "FullFileHash": full})
        async with http.post(
            upload_url(emulator, "&verifyBlockLevelFileIntegrity=true"), headers=headers, data=first
        ) as r:
            reply = await r.json()
            assert r.status == 200, reply
        if rest:
            last = {
                **JSON,
                "Authtoken": token,
                "FileEOF": "1",
                "BlockLevelFileHash": block.upper(),
                "FullFileHash": full,
            }
            async with http.post(
                upload_url(emulator, f"&requestId={reply['requestId']}"), headers=last, data=rest
            ) as r:
                reply = await r.json()
                assert r.status == 200, reply
    assert reply["fileIntegrityVerified"] == 1
    assert (emulator.root / SHARE_ID / "v.bin").read_bytes() == contents


async def test_integrity_mismatch_stores_nothing(emulator: Emulator) -> None:
    async with aiohttp.ClientSession() as http:
        token = await login(http, emulator)
        headers = file_headers(
            token, "bad.bin", 3, FileEOF="1", FullFileHash=hashlib.sha256(b"xyz").hexdigest()
        )
        async with http.post(upload_url(emulator), headers=headers, data=b"abc") as r:
            assert r.status == 400
            assert (await r.json())["errorString"].startswith("file integrity check failed")
    assert not (emulator.root / SHARE_ID / "bad.bin").exists()
    assert emulator.statistics().active_sessions == 0


async def test_lost_response_stores_then_disconnects(make_emulator: EmulatorFactory) -> None:
    emulator = await make_emulator(fault_rate=1.0, faults=("lost-response",))
    async with aiohttp.ClientSession() as http:
        token = await login(http, emulator)
        headers = file_headers(token, "lost.txt", 10)
        with pytest.raises(aiohttp.ServerDisconnectedError):
            async with http.post(upload_url(emulator), headers=headers, data=b"01234"):
                pass
    # Read raw bytes too: the socket must close without a single byte of response.
    reader, writer = await asyncio.open_connection("127.0.0.1", emulator.port)
    path = "/webconsole/api/drive/share/1/file/action/upload?uploadType=chunkedFile"
    writer.write(
        (
            f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthtoken: {token}\r\n"
            f"FileName: {protocol.encode_name('lost2.txt')}\r\nFileSize: 3\r\n"
            "ParentFolderPath: XA==\r\nFileEOF: 1\r\nContent-Length: 3\r\n\r\nabc"
        ).encode()
    )
    await writer.drain()
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
    assert (emulator.root / SHARE_ID / "lost2.txt").read_bytes() == b"abc"
    log = list(emulator.upload_log)
    assert log[0].body_bytes == 5 and log[0].fault == "lost-response"
    assert emulator.statistics().faults["lost-response"] == 2


def test_benchmark_quick_run() -> None:
    script = Path(__file__).parent.parent / "benchmarks" / "emulator_ingest.py"
    result = subprocess.run(
        [sys.executable, str(script), "--quick"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "ratio" in result.stdout
