"""A busy server (`serve --max-active`) answers 503 with Retry-After: the client waits what
it asks, up to the retry policy's longest wait, and the file arrives whole."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import anyio
import pytest

from bulkdrive.client import EdgeDriveClient
from bulkdrive.config import Credentials, RetryPolicy, Secret, TransferConfig
from bulkdrive.emulator.network import NetworkModel
from bulkdrive.upload import upload_file

import edge_raw as er
from conftest import PASSWORD, SHARE_ID, USER, EmulatorFactory

pytestmark = pytest.mark.anyio


async def test_upload_waits_out_retry_after_bounded_by_the_policy(
    make_emulator: EmulatorFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    emulator = await make_emulator(network=NetworkModel(latency=0.8, max_active=1))
    token = await er.login(http, emulator.base_url)
    data = er.payload(10_000, seed=3)
    source = tmp_path / "busy.bin"
    source.write_bytes(data)
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        await anyio.sleep(seconds)

    # Retry-After: 1, and a policy that waits at most 0.5 s: the client waits 0.5 s.
    policy = RetryPolicy(attempts=10, initial_wait=0.001, max_wait=0.5)
    config = TransferConfig(retry=policy)
    async with (
        EdgeDriveClient.connect(
            emulator.base_url,
            Credentials(USER, Secret(PASSWORD)),
            share_id=SHARE_ID,
            config=config,
        ) as client,
        anyio.create_task_group() as tg,
    ):
        # Another client holds the server's only slot for its latency.
        tg.start_soon(er.upload_whole, http, emulator.base_url, token, "other.bin", b"x")
        with anyio.fail_after(10):  # until the server is busy with it
            while emulator.network.statistics().active == 0:
                await anyio.sleep(0.01)
        result = await upload_file(client, source, "\\", config=config, sleep=sleep)
    assert waits and waits[0] == 0.5
    assert emulator.network.statistics().refused >= 1
    assert er.stored(emulator.root, result.remote_path).read_bytes() == data
