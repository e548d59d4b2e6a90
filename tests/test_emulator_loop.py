"""`bulkdrive serve` runs on uvloop where it is installed (as the client does), asyncio's own
loop with BULKDRIVE_LOOP=asyncio; the emulator answers the same on either."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from bulkdrive.emulator import running_emulator
from bulkdrive.emulator.command import loop_factory

import edge_raw as er
from conftest import emulator_config

uvloop = pytest.importorskip("uvloop")  # a dependency off Windows


def test_serve_uses_uvloop_unless_told_not_to(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BULKDRIVE_LOOP", raising=False)
    assert loop_factory() is uvloop.new_event_loop
    monkeypatch.setenv("BULKDRIVE_LOOP", "asyncio")
    assert loop_factory() is None


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_emulator_stores_a_file_on_either_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, loop: str
) -> None:
    if loop == "asyncio":
        monkeypatch.setenv("BULKDRIVE_LOOP", "asyncio")
    else:
        monkeypatch.delenv("BULKDRIVE_LOOP", raising=False)

    async def upload() -> tuple[str, int]:
        async with (
            running_emulator(emulator_config(tmp_path / "server")) as emulator,
            aiohttp.ClientSession() as http,
        ):
            token = await er.login(http, emulator.base_url)
            reply = await er.upload_whole(http, emulator.base_url, token, "a.txt", b"hello")
            return type(asyncio.get_running_loop()).__module__, reply.status

    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        module, status = runner.run(upload())
    assert status == 200
    assert module.startswith("uvloop" if loop == "uvloop" else "asyncio")
    assert er.stored(tmp_path / "server", "\\a.txt").read_bytes() == b"hello"
