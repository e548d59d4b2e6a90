"""The API client against the emulator over real sockets: login, tokens, calls, errors."""

from __future__ import annotations

import base64
import socket
from pathlib import Path

import aiohttp
import anyio
import pytest
from tenacity import RetryError

from bulkdrive import errors
from bulkdrive.client import EdgeDriveClient
from bulkdrive.config import Credentials, RetryPolicy, Secret, TransferConfig
from bulkdrive.emulator import Emulator
from bulkdrive.protocol import Format
from bulkdrive.retry import retrying

from conftest import PASSWORD, SHARE_ID, USER, EmulatorFactory

FAST = TransferConfig(retry=RetryPolicy(attempts=3, initial_wait=0.01, max_wait=0.05))
GOOD = Credentials(USER, Secret(PASSWORD))


async def raw_login(emulator: Emulator, device_id: str = "elsewhere") -> str:
    """A token obtained outside the client, as a user would paste it."""
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{emulator.base_url}/Login",
            json={
                "username": USER,
                "password": base64.b64encode(PASSWORD.encode()).decode(),
                "deviceId": device_id,
            },
            headers={"Accept": "application/json"},
        ) as resp,
    ):
        token = (await resp.json())["token"]
    assert isinstance(token, str)
    return token


@pytest.mark.anyio
async def test_login_calls_and_logout(emulator: Emulator) -> None:
    async with EdgeDriveClient.connect(
        emulator.base_url, GOOD, share_id=SHARE_ID, config=FAST
    ) as client:
        assert emulator.statistics().active_tokens == 1
        shares = await client.shares()
        assert {(s.share_id, s.permission) for s in shares} == {
            ("1", "edit"),
            ("2", "view"),
            ("3", "edit"),
        }
        assert await client.metadata("\\nothing\\here") is None
        assert await client.create_folder("\\", "photos") is True
        assert await client.create_folder("\\", "photos") is False
        folder = await client.metadata("\\photos")
        assert folder is not None and folder.is_directory and folder.name == "photos"
        stats = client.statistics()
        assert stats.logins == 1 and stats.renewals == 0
    # Logged out at the end: the server holds no token any more.
    assert emulator.statistics().active_tokens == 0


@pytest.mark.anyio
async def test_list_folder_pages_through_every_child(emulator: Emulator) -> None:
    async with EdgeDriveClient.connect(
        emulator.base_url, GOOD, share_id=SHARE_ID, config=FAST
    ) as client:
        await client.create_folder("\\", "many")
        names = [f"d{i:02d} #% ü" for i in range(7)]
        for name in names:
            assert await client.create_folder("\\many", name)
        before = client.statistics().requests
        listed = [item async for item in client.list_folder("\\many", page_size=3)]
        assert sorted(item.name for item in listed) == sorted(names)
        assert all(item.is_directory for item in listed)
        assert client.statistics().requests - before == 3  # pages of 3, 3 and 1


@pytest.mark.anyio
async def test_wrong_password_is_login_failed_without_retries(emulator: Emulator) -> None:
    bad = Credentials(USER, Secret("not-the-password"))
    with pytest.raises(errors.LoginFailed) as caught:
        async with EdgeDriveClient.connect(emulator.base_url, bad, share_id=SHARE_ID, config=FAST):
            pytest.fail("connected with a wrong password")
    assert "Invalid Username or Password" in str(caught.value)
    assert "not-the-password" not in str(caught.value)
    assert emulator.statistics().failed_logins == 1
    assert emulator.statistics().requests == 1


@pytest.mark.anyio
async def test_wrapped_json_dialect_is_read(make_emulator: EmulatorFactory, tmp_path: Path) -> None:
    emulator = await make_emulator(json_dialect=Format.WRAPPED)
    async with EdgeDriveClient.connect(
        emulator.base_url, GOOD, share_id=SHARE_ID, config=FAST
    ) as client:
        assert await client.create_folder("\\", "w") is True
        resource = await client.metadata("\\w")
        assert resource is not None and resource.is_directory
        assert {s.share_id for s in await client.shares()} == {"1", "2", "3"}


@pytest.mark.anyio
async def test_unreachable_server(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # Nothing listens on `port` now.
    with pytest.raises(errors.ServerUnreachable):
        async with EdgeDriveClient.connect(
            f"http://127.0.0.1:{port}/webconsole/api", GOOD, share_id=SHARE_ID, config=FAST
        ):
            pytest.fail("connected to nothing")


@pytest.mark.anyio
async def test_bad_settings_are_config_errors(emulator: Emulator) -> None:
    with pytest.raises(errors.ConfigError):
        async with EdgeDriveClient.connect("ftp://x", GOOD, share_id=SHARE_ID):
            pass
    with pytest.raises(errors.ConfigError):
        async with EdgeDriveClient.connect(emulator.base_url, Credentials(USER), share_id="1"):
            pass


@pytest.mark.anyio
async def test_expired_token_is_renewed_once_for_all_concurrent_calls(
    make_emulator: EmulatorFactory,
) -> None:
    emulator = await make_emulator(token_idle_seconds=0.5)
    async with EdgeDriveClient.connect(
        emulator.base_url, GOOD, share_id=SHARE_ID, config=FAST
    ) as client:
        await client.create_folder("\\", "t")
        await anyio.sleep(0.8)  # the token is idle for longer than it lives
        found: list[bool] = []

        async def look() -> None:
            found.append(await client.metadata("\\t") is not None)

        async with anyio.create_task_group() as tg:
            for _ in range(6):
                tg.start_soon(look)
        assert found == [True] * 6
        assert client.statistics().renewals == 1
        assert client.statistics().logins == 1
    assert emulator.statistics().renewals == 1


@pytest.mark.anyio
async def test_a_refused_token_counts_one_failed_request(make_emulator: EmulatorFactory) -> None:
    emulator = await make_emulator(token_idle_seconds=0.3)
    async with EdgeDriveClient.connect(
        emulator.base_url, GOOD, share_id=SHARE_ID, config=FAST
    ) as client:
        await client.create_folder("\\", "once")
        assert client.statistics().failed_requests == 0
        await anyio.sleep(0.5)  # the token is idle for longer than it lives
        assert await client.metadata("\\once") is not None  # a 401, renewed, sent again
        assert emulator.statistics().unauthorized == 1
        assert client.statistics().failed_requests == 1


@pytest.mark.anyio
async def test_ready_token_refused_falls_back_to_password_login(
    make_emulator: EmulatorFactory,
) -> None:
    emulator = await make_emulator(token_idle_seconds=0.5)
    token = await raw_login(emulator)  # another deviceId: this client cannot renew it
    creds = Credentials(USER, Secret(PASSWORD), token=Secret(token))
    async with EdgeDriveClient.connect(
        emulator.base_url, creds, share_id=SHARE_ID, config=FAST
    ) as client:
        assert await client.create_folder("\\", "a") is True
        assert client.statistics().logins == 0  # the ready token was used as it was
        await anyio.sleep(0.8)
        assert await client.create_folder("\\", "b") is True
        assert client.statistics().logins == 1
        assert client.statistics().renewals == 0


@pytest.mark.anyio
async def test_ready_token_alone_refused_is_login_failed(make_emulator: EmulatorFactory) -> None:
    emulator = await make_emulator()
    creds = Credentials(token=Secret("QSDK " + "ab" * 40))
    async with EdgeDriveClient.connect(
        emulator.base_url, creds, share_id=SHARE_ID, config=FAST
    ) as client:
        with pytest.raises(errors.LoginFailed):
            await client.metadata("\\")


@pytest.mark.anyio
async def test_ready_token_is_not_logged_out(emulator: Emulator) -> None:
    token = await raw_login(emulator)
    async with EdgeDriveClient.connect(
        emulator.base_url, Credentials(token=Secret(token)), share_id=SHARE_ID, config=FAST
    ) as client:
        assert await client.create_folder("\\", "mine")
    # The user's token still works after the run.
    async with EdgeDriveClient.connect(
        emulator.base_url, Credentials(token=Secret(token)), share_id=SHARE_ID, config=FAST
    ) as client:
        assert await client.metadata("\\mine") is not None


@pytest.mark.anyio
async def test_view_only_and_unknown_shares(emulator: Emulator) -> None:
    async with EdgeDriveClient.connect(
        emulator.base_url, GOOD, share_id="2", config=FAST
    ) as client:
        with pytest.raises(errors.PermissionDenied):
            await client.create_folder("\\", "nope")
        with pytest.raises(errors.PermissionDenied):
            await client.initiate(
                name="a", folder="\\", size=1, mtime=0, body=b"a", eof=True, verify=False
            )
    async with EdgeDriveClient.connect(
        emulator.base_url, GOOD, share_id="404", config=FAST
    ) as client:
        with pytest.raises(errors.ShareNotFound):
            await client.initiate(
                name="a", folder="\\", size=1, mtime=0, body=b"a", eof=True, verify=False
            )
        assert client.statistics().requests == 2  # login + one refused initiate, no retry


@pytest.mark.anyio
async def test_initiate_conflict_is_a_reply_and_chunks_append(emulator: Emulator) -> None:
    async with EdgeDriveClient.connect(
        emulator.base_url, GOOD, share_id=SHARE_ID, config=FAST
    ) as client:
        common = {"name": "c.bin", "folder": "/deep//f/", "size": 6, "mtime": 1_424_813_723}
        first = await client.initiate(**common, body=b"ab", eof=False, verify=False)
        assert first.error_code == 0 and first.chunk_offset == 2
        again = await client.initiate(**common, body=b"zz", eof=False, verify=False)
        assert again.error_code == 409
        assert (again.request_id, again.chunk_offset) == (first.request_id, 2)
        middle = await client.send_chunk(first.request_id, b"cd", eof=False)
        assert middle.chunk_offset == 4
        last = await client.send_chunk(first.request_id, memoryview(b"ef"), eof=True)
        assert last.chunk_offset == 6 and last.file_guid
        with pytest.raises(errors.SessionGone):
            await client.send_chunk(first.request_id, b"x", eof=True)
        with pytest.raises(errors.Rejected):
            await client.initiate(**{**common, "size": 1}, body=b"ab", eof=True, verify=False)
    stored = emulator.root / SHARE_ID / "deep" / "f" / "c.bin"
    assert stored.read_bytes() == b"abcdef"
    assert int(stored.stat().st_mtime) == 1_424_813_723


@pytest.mark.anyio
async def test_retry_after_is_honoured_and_backoff_is_capped() -> None:
    waits: list[float] = []

    async def record(seconds: float) -> None:
        waits.append(seconds)

    policy = RetryPolicy(attempts=4, initial_wait=0.1, max_wait=0.4)
    failures = [
        errors.ServerBusy("busy", status=503, retry_after=7.0),
        errors.NetworkError("reset"),
        errors.NetworkError("reset"),
        errors.NetworkError("reset"),
    ]
    with pytest.raises(RetryError):
        async for attempt in retrying(policy, sleep=record):
            with attempt:
                raise failures[attempt.retry_state.attempt_number - 1]
    assert len(waits) == 3
    # The server asked for 7 s: honoured up to the policy's longest wait, never beyond.
    assert waits[0] == 0.4
    assert all(0 <= w <= 0.4 for w in waits[1:])


@pytest.mark.anyio
@pytest.mark.parametrize("status", [503, 429])
async def test_a_short_retry_after_is_waited_in_full(status: int) -> None:
    waits: list[float] = []

    async def record(seconds: float) -> None:
        waits.append(seconds)

    policy = RetryPolicy(attempts=2, initial_wait=0.001, max_wait=30.0)
    with pytest.raises(RetryError):
        async for attempt in retrying(policy, sleep=record):
            with attempt:
                raise errors.ServerBusy("busy", status=status, retry_after=2.0)
    assert waits == [2.0]  # longer than the backoff's millisecond: the server's word wins


async def no_sleep(seconds: float) -> None:
    await anyio.lowlevel.checkpoint()


@pytest.mark.anyio
async def test_only_unknown_outcomes_are_retried() -> None:
    calls = 0
    with pytest.raises(errors.PermissionDenied):
        async for attempt in retrying(RetryPolicy(attempts=5), sleep=no_sleep):
            with attempt:
                calls += 1
                raise errors.PermissionDenied("403")
    assert calls == 1
