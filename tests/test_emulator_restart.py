"""Sessions survive a restart of the emulator on the same root (issue 2, spec §4 409 rule).

In-process stop/start, and once through a real `bulkdrive serve` process started with
`--port 0` and terminated while a session is unfinished.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest

from bulkdrive.emulator import Emulator, running_emulator

import edge_raw as er
from conftest import emulator_config

pytestmark = pytest.mark.anyio

LISTENING = re.compile(r"listening on (http://127\.0\.0\.1:(\d+)/webconsole/api)")


@asynccontextmanager
async def in_process(root: Path, **overrides: Any) -> AsyncIterator[Emulator]:
    async with running_emulator(emulator_config(root, **overrides)) as emulator:
        yield emulator


async def test_unfinished_sessions_survive_restart(tmp_path: Path) -> None:
    root = tmp_path / "server"
    files = {f"r{i}.bin": er.payload(4000, seed=i) for i in range(5)}
    rids: dict[str, str] = {}
    async with in_process(root) as emu, er.client() as http:
        base = emu.base_url
        token = await er.login(http, base)
        for i, (name, data) in enumerate(files.items()):
            reply = await er.initiate(http, base, token, name, len(data), parent="\\keep")
            rids[name] = reply.upload.request_id
            for k in range(i):
                part = data[k * 500 : (k + 1) * 500]
                assert (await er.chunk(http, base, token, rids[name], part)).status == 200
        done = await er.upload_whole(http, base, token, "done.txt", b"complete")
        assert done.status == 200
        old_rid = (await er.initiate(http, base, token, "fr.bin", 10, b"old")).upload.request_id
        restarted = await er.initiate(http, base, token, "fr.bin", 10, b"new", force_restart="1")
        assert restarted.status == 200
    assert not (root / "1" / "keep").exists() or not any((root / "1" / "keep").iterdir())
    async with in_process(root) as emu, er.client() as http:
        base = emu.base_url
        token = await er.login(http, base)
        for i, (name, data) in enumerate(files.items()):
            again = await er.initiate(http, base, token, name, len(data), parent="\\keep")
            assert again.status == 409, (name, again.text)
            assert again.upload.request_id == rids[name]
            assert again.upload.chunk_offset == i * 500
            last = await er.chunk(http, base, token, rids[name], data[i * 500 :], eof=True)
            assert last.status == 200, last.text
        assert (await er.chunk(http, base, token, done.upload.request_id, b"x")).status == 404
        assert (await er.chunk(http, base, token, old_rid, b"x")).status == 404
        fr = await er.initiate(http, base, token, "fr.bin", 10)
        assert fr.status == 409
        assert fr.upload.request_id == restarted.upload.request_id
        assert fr.upload.chunk_offset == 3
        meta = await er.metadata(http, base, token, "\\done.txt")
        assert meta.status == 200
    for name, data in files.items():
        assert er.stored(root, f"\\keep\\{name}").read_bytes() == data
    assert er.stored(root, "\\done.txt").read_bytes() == b"complete"


async def test_session_state_lives_under_dot_bulkdrive(tmp_path: Path) -> None:
    root = tmp_path / "server"
    async with in_process(root) as emu, er.client() as http:
        token = await er.login(http, emu.base_url)
        await er.initiate(http, emu.base_url, token, "s.bin", 10, b"12345")
    state = root / ".bulkdrive"
    assert state.is_dir()
    assert any(p.is_file() for p in state.rglob("*"))
    # Only the state directory exists besides share folders: the partial file is not visible.
    assert not er.stored(root, "\\s.bin").exists()


# --- a real `bulkdrive serve` process -----------------------------------------------------------


@asynccontextmanager
async def serve_process(root: Path, log: Path) -> AsyncIterator[str]:
    """Start `python -m bulkdrive serve --port 0`; yield its base URL; terminate it."""
    argv = [
        sys.executable,
        "-m",
        "bulkdrive",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--root",
        str(root),
        "--user",
        f"{er.USER}:{er.PASSWORD}",
        "--share",
        "1:projects",
        "--share",
        "2:readonly:readonly",
        "--share",
        "3:public:public",
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log.open("wb") as stderr:
        process = await anyio.open_process(
            argv, stdout=subprocess.PIPE, stderr=stderr, env=env, cwd=Path(__file__).parent.parent
        )
        try:
            async with anyio.create_task_group() as tg:
                url = await _wait_listening(process, log)
                # Keep draining stdout so a chatty server never blocks on a full pipe.
                tg.start_soon(_drain, process, log)
                try:
                    yield url
                finally:
                    process.terminate()
                    with anyio.move_on_after(10):
                        await process.wait()
                    tg.cancel_scope.cancel()
        finally:
            if process.returncode is None:
                process.kill()
                with anyio.move_on_after(5):
                    await process.wait()
            await process.aclose()


async def _wait_listening(process: anyio.abc.Process, log: Path) -> str:
    assert process.stdout is not None
    seen = b""
    with anyio.fail_after(30):
        while True:
            try:
                seen += await process.stdout.receive()
            except anyio.EndOfStream:
                pytest.fail(f"bulkdrive serve exited: {seen!r} {log.read_bytes()[-2000:]!r}")
            *lines, _partial = seen.decode("utf-8", "replace").split("\n")
            match = next((m for m in map(LISTENING.search, lines) if m), None)
            if match:
                assert int(match.group(2)) != 0
                with log.open("ab") as out:
                    out.write(seen)
                return match.group(1)


async def _drain(process: anyio.abc.Process, log: Path) -> None:
    assert process.stdout is not None
    with log.open("ab") as out:
        async for data in process.stdout:
            out.write(data)


async def test_sessions_survive_a_real_serve_process(tmp_path: Path) -> None:
    root = tmp_path / "server"
    log = tmp_path / "serve.log"
    data = er.payload(6000, seed=9)
    async with in_process(root) as emu, er.client() as http:
        token = await er.login(http, emu.base_url)
        first = await er.initiate(
            http, emu.base_url, token, "Tulip.jpg", len(data), data[:2000], parent="\\pictures"
        )
        rid = first.upload.request_id
    tokens = []
    async with serve_process(root, log) as base, er.client() as http:
        token = await er.login(http, base)
        tokens.append(token)
        again = await er.initiate(http, base, token, "Tulip.jpg", len(data), parent="\\pictures")
        assert again.status == 409, again.text
        assert again.upload.request_id == rid
        assert again.upload.chunk_offset == 2000
        more = await er.chunk(http, base, token, rid, data[2000:4000])
        assert more.status == 200
        assert more.upload.chunk_offset == 4000
    # The process is gone (terminated while the session was unfinished): resume in-process.
    async with in_process(root) as emu, er.client() as http:
        token = await er.login(http, emu.base_url)
        again = await er.initiate(
            http, emu.base_url, token, "Tulip.jpg", len(data), parent="\\pictures"
        )
        assert again.status == 409
        assert again.upload.request_id == rid
        assert again.upload.chunk_offset == 4000
        done = await er.chunk(http, emu.base_url, token, rid, data[4000:], eof=True)
        assert done.status == 200, done.text
    assert (root / "1" / "pictures" / "Tulip.jpg").read_bytes() == data
    output = log.read_text("utf-8", "replace")
    assert er.PASSWORD not in output
    assert all(t.removeprefix("QSDK ") not in output for t in tokens)
