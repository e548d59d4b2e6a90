"""`bulkdrive serve --log-requests FILE`: one JSON line per request the emulator answered (or
dropped), so that tests and people can see what a client really sent."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import anyio
import pytest

from bulkdrive.emulator import running_emulator
from bulkdrive.emulator.network import NetworkModel

import edge_raw as er
from conftest import emulator_config

FIELDS = {"time", "method", "path", "query", "status", "bytes", "duration"}


def read_log(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.mark.anyio
async def test_each_request_is_one_json_line(tmp_path: Path) -> None:
    log = tmp_path / "requests.ndjson"
    data = er.payload(3000, seed=4)
    config = emulator_config(tmp_path / "server", request_log=log)
    async with running_emulator(config) as emu, er.client() as http:
        base = emu.base_url
        token = await er.login(http, base)
        first = await er.initiate(http, base, token, "a.bin", len(data), data[:1000])
        rid = first.upload.request_id
        assert (await er.chunk(http, base, token, rid, data[1000:], eof=True)).status == 200
        missing = await er.request(http, "GET", f"{base}/no/such/endpoint")
        assert missing.status == 404
    assert er.stored(tmp_path / "server", "\\a.bin").read_bytes() == data
    lines = read_log(log)
    assert [(e["method"], e["status"]) for e in lines] == [
        ("POST", 200),  # login
        ("POST", 200),  # initiate with the first 1000 bytes
        ("POST", 200),  # the last chunk
        ("GET", 404),
    ]
    assert all(set(e) >= FIELDS for e in lines)
    login, initiate, last, unknown = lines
    assert login["path"] == "/webconsole/api/Login"
    assert initiate["path"] == "/webconsole/api/drive/share/1/file/action/upload"
    assert "uploadType=chunkedFile" in initiate["query"]
    assert initiate["bytes"] == 1000
    assert last["bytes"] == 2000
    assert f"requestId={rid}" in last["query"]
    assert unknown["path"] == "/webconsole/api/no/such/endpoint"
    for entry in lines:
        assert entry["duration"] >= 0
        stamp = datetime.datetime.fromisoformat(entry["time"])
        assert stamp.utcoffset() == datetime.timedelta(0)


@pytest.mark.anyio
async def test_a_dropped_connection_is_logged_without_a_status(tmp_path: Path) -> None:
    log = tmp_path / "requests.ndjson"
    config = emulator_config(
        tmp_path / "server", request_log=log, fault_rate=1.0, faults=("reset",)
    )
    async with running_emulator(config) as emu, er.client() as http:
        token = await er.login(http, emu.base_url)
        with pytest.raises(Exception):  # noqa: B017 - the connection is reset: any client error
            await er.initiate(http, emu.base_url, token, "r.bin", 3, b"abc", eof=True)
    upload = [e for e in read_log(log) if e["path"].endswith("/upload")]
    assert len(upload) == 1
    assert upload[0]["status"] == 0
    assert upload[0]["dropped"] == "reset"


@pytest.mark.anyio
async def test_a_refusal_beyond_max_active_is_logged_as_503(tmp_path: Path) -> None:
    # The network sweep counts a busy server's 503s from this log: a refusal answered before
    # any dispatch must be in it too (it was not, and the sweep read 0 % busy answers).
    log = tmp_path / "requests.ndjson"
    config = emulator_config(
        tmp_path / "server", request_log=log, network=NetworkModel(latency=0.3, max_active=1)
    )
    statuses: dict[int, int] = {}
    async with running_emulator(config) as emu, er.client() as http:
        token = await er.login(http, emu.base_url)

        async def one(i: int) -> None:
            await anyio.sleep(0.1 * i)  # the first arrives first and holds the one place
            reply = await er.upload_whole(http, emu.base_url, token, f"b{i}.bin", b"xyz")
            statuses[i] = reply.status

        async with anyio.create_task_group() as tg:
            for i in range(2):
                tg.start_soon(one, i)
    assert statuses == {0: 200, 1: 503}
    uploads = [e for e in read_log(log) if e["path"].endswith("/upload")]
    assert sorted(e["status"] for e in uploads) == [200, 503]
    assert all(set(e) >= FIELDS for e in uploads)
    assert er.stored(tmp_path / "server", "\\b0.bin").read_bytes() == b"xyz"
    assert not er.stored(tmp_path / "server", "\\b1.bin").exists()


def test_serve_log_requests_flag(tmp_path: Path) -> None:
    """Through a real `bulkdrive serve` process: the flag reaches the emulator."""
    log = tmp_path / "requests.ndjson"
    argv = [sys.executable, "-m", "bulkdrive", "serve", "--port", "0"]
    argv += ["--root", str(tmp_path / "server"), "--log-requests", str(log)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env) as proc:
        try:
            assert proc.stdout is not None
            base = ""
            for _ in range(10):  # a few announcement lines, then the URL
                line = proc.stdout.readline().decode()
                if "listening on " in line:
                    base = line.split("listening on ")[1].split()[0]
                    break
            assert base, "serve did not announce its URL"
            body = json.dumps({"username": "demo", "password": er.b64("demo")}).encode()
            request = urllib.request.Request(
                f"{base}/Login", data=body, headers={"Content-Type": "application/json"}
            )
            with urllib.request.urlopen(request, timeout=10) as reply:
                assert reply.status == 200
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    (entry,) = read_log(log)
    assert entry["method"] == "POST"
    assert entry["path"] == "/webconsole/api/Login"
    assert entry["status"] == 200
    assert entry["bytes"] == len(body)
