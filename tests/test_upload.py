"""One file, one upload session, against the emulator over real sockets (issue 3).

Every test checks the stored bytes, not only the status: files land as plain files under
ROOT/<shareId>/<path>.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import os
import random
import time
import warnings
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import anyio
import pytest

from bulkdrive import errors, protocol
from bulkdrive.client import EdgeDriveClient
from bulkdrive.config import Credentials, RetryPolicy, Secret, Timeouts, TransferConfig
from bulkdrive.emulator import Emulator
from bulkdrive.emulator.faults import FaultInjector
from bulkdrive.integrity import BlockHasher
from bulkdrive.protocol import BLOCK_SIZE, Format
from bulkdrive.upload import NullEvents, ResumePoint, UploadResult, upload_file

from conftest import PASSWORD, SHARE_ID, USER, EmulatorFactory

MiB = 1024 * 1024
FAST_RETRY = RetryPolicy(attempts=12, initial_wait=0.002, max_wait=0.02)
FAST = TransferConfig(retry=FAST_RETRY)
GOOD = Credentials(USER, Secret(PASSWORD))
ALL_FAULTS = ("500", "503", "reset", "lost-response")


# --- helpers --------------------------------------------------------------------------------


def make_file(folder: Path, name: str, size: int, seed: int = 0) -> tuple[Path, bytes]:
    data = random.Random(seed).randbytes(size)
    path = folder / name
    path.write_bytes(data)
    return path, data


def stored(emulator: Emulator, remote_path: str, share: str = SHARE_ID) -> Path:
    return emulator.root.joinpath(share, *protocol.split_remote_path(remote_path))


@asynccontextmanager
async def connected(
    emulator: Emulator, *, share: str | None = SHARE_ID, config: TransferConfig = FAST
) -> AsyncIterator[EdgeDriveClient]:
    async with EdgeDriveClient.connect(
        emulator.base_url, GOOD, share_id=share, config=config
    ) as client:
        yield client


class Recorder(NullEvents):
    def __init__(self) -> None:
        self.confirmed = 0
        self.offsets: list[tuple[str, int]] = []
        self.retries: list[tuple[type[errors.BulkdriveError], int, float]] = []
        self.resumes: list[int] = []

    def confirmed_more(self, n: int) -> None:
        assert n > 0
        self.confirmed += n

    def offset_confirmed(self, request_id: str, offset: int) -> None:
        self.offsets.append((request_id, offset))

    def retrying(self, error: errors.BulkdriveError, attempt: int, wait: float) -> None:
        self.retries.append((type(error), attempt, wait))

    def resumed(self, offset: int) -> None:
        self.resumes.append(offset)


class RecordedSleep:
    """An injected sleep that only records what it was asked to wait."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        await anyio.lowlevel.checkpoint()


def seed_for(pattern: Sequence[str | None], kinds: tuple[str, ...], rate: float = 0.5) -> int:
    """A fault seed whose first draws are exactly `pattern` (one draw per upload request)."""
    for seed in range(100_000):
        injector = FaultInjector(rate, seed, kinds, 0.0)
        if [injector.draw() for _ in pattern] == list(pattern):
            return seed
    raise AssertionError(f"no seed gives {pattern}")


class RawSession:
    """Upload requests made by hand with aiohttp, to prepare the server's state."""

    def __init__(self, emulator: Emulator) -> None:
        self.base = emulator.base_url
        self.http = aiohttp.ClientSession()
        self.token = ""

    async def __aenter__(self) -> RawSession:
        password = base64.b64encode(PASSWORD.encode()).decode()
        async with self.http.post(
            f"{self.base}/Login",
            json={"username": USER, "password": password},
            headers={"Accept": "application/json"},
        ) as resp:
            token = protocol.LoginReply.from_node(protocol.parse_body(await resp.read())).token
        assert token is not None
        self.token = token
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.http.close()

    async def post(
        self, body: bytes, *, eof: bool, params: dict[str, str], headers: dict[str, str]
    ) -> tuple[int, protocol.UploadReply]:
        with warnings.catch_warnings():  # aiohttp warns about byte bodies over 1 MiB
            warnings.simplefilter("ignore", ResourceWarning)
            payload = aiohttp.BytesPayload(body)
        async with self.http.post(
            f"{self.base}/drive/share/{SHARE_ID}/file/action/upload",
            params={"uploadType": "chunkedFile", **params},
            headers={
                "Authtoken": self.token,
                "Accept": "application/json",
                "FileEOF": "1" if eof else "0",
                **headers,
            },
            data=payload,
        ) as resp:
            node = protocol.parse_body(await resp.read())
            return resp.status, protocol.UploadReply.from_node(node)

    async def unfinished(
        self, name: str, size: int, parts: Sequence[bytes], *, verify: bool = True
    ) -> str:
        """An unfinished session holding `parts`, one request each; returns its requestId."""
        headers = {
            "FileName": protocol.encode_name(name),
            "FileSize": str(size),
            "ParentFolderPath": protocol.encode_name("\\"),
            "FileModifiedtime": "1424813723",
        }
        params = {"verifyBlockLevelFileIntegrity": "true"} if verify else {}
        status, reply = await self.post(parts[0], eof=False, params=params, headers=headers)
        assert status == 200, reply
        for part in parts[1:]:
            status, reply = await self.post(
                part, eof=False, params={"requestId": reply.request_id}, headers={}
            )
            assert status == 200, reply
        assert reply.chunk_offset == sum(len(p) for p in parts)
        return reply.request_id


# --- sizes ----------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("size", "requests"), [(0, 1), (1, 1), (4 * MiB, 1), (4 * MiB + 1, 2), (9 * MiB + 7, 3)]
)
async def test_sizes_are_stored_byte_identical(
    emulator: Emulator, tmp_path: Path, size: int, requests: int
) -> None:
    path, data = make_file(tmp_path, "f.bin", size, seed=size)
    os.utime(path, ns=(1_424_813_723_999_999_999, 1_424_813_723_999_999_999))
    events = Recorder()
    async with connected(emulator) as client:
        result = await upload_file(client, path, "\\sizes", events=events)
    target = stored(emulator, result.remote_path)
    assert target.read_bytes() == data
    assert int(target.stat().st_mtime) == 1_424_813_723  # whole seconds, not milliseconds
    assert result.remote_path == "\\sizes\\f.bin"
    assert (result.size, result.bytes_sent, result.attempts) == (size, size, 1)
    assert result.integrity_verified
    assert len(result.file_guid) == 32
    assert events.confirmed == size
    log = list(emulator.upload_log)
    assert len(log) == requests
    assert log[0].kind == "initiate" and all(r.kind == "chunk" for r in log[1:])
    assert [r.eof for r in log] == [False] * (requests - 1) + [True]
    # Integrity on: every chunk but the last is exactly 4 MiB.
    assert all(r.body_bytes == BLOCK_SIZE for r in log[:-1])


@pytest.mark.anyio
async def test_fifty_mebibytes(emulator: Emulator, tmp_path: Path) -> None:
    path, data = make_file(tmp_path, "big.bin", 50 * MiB, seed=50)
    async with connected(emulator) as client:
        result = await upload_file(client, path, "\\")
    assert stored(emulator, result.remote_path).read_bytes() == data
    assert result.bytes_sent == 50 * MiB and result.integrity_verified
    assert len(emulator.upload_log) == 13  # twelve 4 MiB chunks and 2 MiB


@pytest.mark.anyio
async def test_no_verify_allows_other_chunk_sizes(emulator: Emulator, tmp_path: Path) -> None:
    path, data = make_file(tmp_path, "nv.bin", 3 * MiB + MiB // 2, seed=3)
    config = TransferConfig(chunk_size=MiB, verify=False, retry=FAST_RETRY)
    async with connected(emulator, config=config) as client:
        result = await upload_file(client, path, "\\")
        with pytest.raises(errors.ConfigError):
            await upload_file(client, path, "\\", config=TransferConfig(chunk_size=MiB))
    assert stored(emulator, result.remote_path).read_bytes() == data
    assert not result.integrity_verified
    assert [r.body_bytes for r in emulator.upload_log] == [MiB, MiB, MiB, MiB // 2]


TRICKY_NAMES = [
    "with space.txt",
    " leading space",
    "Ünïcødé 文件 🎉.dat",
    "#hash#.bin",
    "100% sure %41.txt",
    ".hidden",
    "..two-dots",
    "a+b=c&d?e.txt",
    "x" * 255,
    "é" * 127,  # 254 bytes of UTF-8
]


@pytest.mark.anyio
async def test_every_file_system_name_round_trips(emulator: Emulator, tmp_path: Path) -> None:
    folder = "\\Fötö #1\\100 %\\.dot"
    expected = {}
    async with connected(emulator) as client:
        for i, name in enumerate(TRICKY_NAMES):
            path, data = make_file(tmp_path, name, 100 + i, seed=i)
            result = await upload_file(client, path, folder)
            assert result.remote_path == protocol.remote_child(folder, name)
            expected[name] = data
            listed = await client.metadata(result.remote_path)
            assert listed is not None and listed.name == name and listed.size == len(data)
    share_dir = emulator.root / SHARE_ID / "Fötö #1" / "100 %" / ".dot"
    assert {p.name: p.read_bytes() for p in share_dir.iterdir()} == expected


@pytest.mark.anyio
async def test_names_edge_drive_cannot_hold_are_rejected_without_requests(
    emulator: Emulator, tmp_path: Path
) -> None:
    path, _ = make_file(tmp_path, "back\\slash", 3)
    async with connected(emulator) as client:
        with pytest.raises(errors.Rejected):
            await upload_file(client, path, "\\")
        with pytest.raises(errors.Rejected):
            await upload_file(client, path, "\\ok", remote_name="..")
        with pytest.raises(errors.Rejected):
            await upload_file(client, tmp_path / "back\\slash", "\\a\\..\\b", remote_name="x")
    assert len(emulator.upload_log) == 0


# --- faults: §8 recovery, never a blind re-send --------------------------------------------


@pytest.mark.anyio
async def test_every_fault_kind_at_15_percent_40_files(
    make_emulator: EmulatorFactory, tmp_path: Path
) -> None:
    # Draws happen in arrival order, so which request gets a fault varies with scheduling,
    # but the sequence of kinds is the seed's: its first 60 draws hold every kind.
    injector = FaultInjector(0.15, 7, ALL_FAULTS, 0.0)
    assert {injector.draw() for _ in range(60)} >= set(ALL_FAULTS)
    emulator = await make_emulator(fault_rate=0.15, fault_seed=7, faults=ALL_FAULTS)
    rng = random.Random(40)
    sizes = [0, 1, 4 * MiB, 4 * MiB + 1, 12 * MiB + 3]
    sizes += [rng.choice([rng.randrange(64 * 1024), rng.randrange(12 * MiB)]) for _ in range(5)]
    sizes += [rng.randrange(4 * MiB, 12 * MiB) for _ in range(30)]
    files = {}
    for i, size in enumerate(sizes):
        path, data = make_file(tmp_path, f"f{i:02d}.bin", size, seed=1000 + i)
        files[path] = data
    results: list[UploadResult] = []
    limiter = anyio.CapacityLimiter(4)

    async def one(client: EdgeDriveClient, path: Path) -> None:
        async with limiter:
            results.append(await upload_file(client, path, "\\faults"))

    async with connected(emulator) as client, anyio.create_task_group() as tg:
        for path in files:
            tg.start_soon(one, client, path)

    assert len(results) == 40
    for result in results:
        assert stored(emulator, result.remote_path).read_bytes() == files[result.local_path]
    faults = emulator.statistics().faults
    assert all(faults.get(kind, 0) > 0 for kind in ALL_FAULTS), faults
    assert sum(r.attempts - 1 for r in results) >= sum(faults.values()) // 2
    # Lost responses were recovered by asking the server, so some files needed no re-sent
    # bytes although a request of theirs failed: bytes sent ≥ size, and resumes happened.
    assert sum(r.resumes for r in results) > 0
    assert all(r.bytes_sent >= r.size for r in results)


async def blind_resend_upload(
    http: aiohttp.ClientSession, base: str, token: str, path: Path, chunk: int
) -> bool:
    """What §8 forbids: a failed request is sent again as it was. True when it 'succeeded'."""
    data = path.read_bytes()
    headers = {
        "Authtoken": token,
        "Accept": "application/json",
        "FileName": protocol.encode_name(path.name),
        "FileSize": str(len(data)),
        "ParentFolderPath": protocol.encode_name("\\naive"),
    }
    request_id = ""
    offset = 0
    while True:
        body = data[offset : offset + chunk]
        eof = offset + len(body) == len(data)
        params = {"uploadType": "chunkedFile"}
        if request_id:
            params["requestId"] = request_id
        for _ in range(12):
            try:
                async with http.post(
                    f"{base}/drive/share/{SHARE_ID}/file/action/upload",
                    params=params,
                    headers={**headers, "FileEOF": "1" if eof else "0"},
                    data=body,
                ) as resp:
                    if resp.status >= 500:
                        continue
                    if resp.status != 200:
                        return False
                    reply = protocol.UploadReply.from_node(protocol.parse_body(await resp.read()))
                    break
            except aiohttp.ClientError:
                continue
        else:
            return False
        request_id = reply.request_id
        offset += len(body)
        if eof:
            return True


@pytest.mark.anyio
async def test_blind_resend_fails_where_recovery_succeeds(
    make_emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """The same seeded faults, the same files, requests in the same order: a client that
    re-sends a failed chunk corrupts or loses files; the §8 recovery stores them all."""
    fault_settings = {"fault_rate": 0.15, "fault_seed": 7, "faults": ALL_FAULTS}
    files = {}
    for i in range(40):
        path, data = make_file(tmp_path, f"n{i:02d}.bin", 600 * 1024 + i * 997, seed=i)
        files[path] = data
    chunk = 256 * 1024

    naive = await make_emulator(root=tmp_path / "naive-server", **fault_settings)
    bad = 0
    async with RawSession(naive) as raw:
        for path, data in files.items():
            ok = await blind_resend_upload(raw.http, naive.base_url, raw.token, path, chunk)
            target = stored(naive, f"\\naive\\{path.name}")
            if not ok or not target.exists() or target.read_bytes() != data:
                bad += 1
    assert bad > 0

    careful = await make_emulator(root=tmp_path / "careful-server", **fault_settings)
    config = TransferConfig(chunk_size=chunk, verify=False, retry=FAST_RETRY)
    async with connected(careful, config=config) as client:
        for path, data in files.items():
            result = await upload_file(client, path, "\\naive")
            assert stored(careful, result.remote_path).read_bytes() == data
    assert careful.statistics().faults.get("lost-response", 0) > 0


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("fault", "resent"),
    [("lost-response", 0), ("reset", 4 * MiB), ("500", 4 * MiB)],
)
async def test_unknown_outcome_of_a_middle_chunk_asks_the_server(
    make_emulator: EmulatorFactory, tmp_path: Path, fault: str, resent: int
) -> None:
    # initiate ok, chunk 2 faulted, re-initiate ok (409 with the offset), chunk 3 ok.
    seed = seed_for([None, fault, None, None], (fault,))
    emulator = await make_emulator(fault_rate=0.5, fault_seed=seed, faults=(fault,))
    path, data = make_file(tmp_path, "mid.bin", 8 * MiB + 10, seed=8)
    sleep = RecordedSleep()
    async with connected(emulator) as client:
        result = await upload_file(client, path, "\\", sleep=sleep)
    assert stored(emulator, result.remote_path).read_bytes() == data
    assert result.attempts == 2 and len(sleep.waits) == 1
    assert result.bytes_sent == len(data) + resent
    initiates = [r for r in emulator.upload_log if r.kind == "initiate"]
    assert initiates[1].body_bytes == 0  # the re-initiate carries no bytes
    stored_bytes = sum(r.body_bytes for r in emulator.upload_log if r.status == 200)
    assert stored_bytes == len(data)  # nothing stored twice


@pytest.mark.anyio
async def test_lost_response_to_the_final_chunk_checks_the_file(
    make_emulator: EmulatorFactory, tmp_path: Path
) -> None:
    # initiate ok, last chunk stored but its answer lost, re-initiate → 200 (no session).
    seed = seed_for([None, "lost-response", None], ("lost-response",))
    emulator = await make_emulator(fault_rate=0.5, fault_seed=seed, faults=("lost-response",))
    path, data = make_file(tmp_path, "last.bin", 4 * MiB + 10, seed=9)
    async with connected(emulator) as client:
        result = await upload_file(client, path, "\\", sleep=RecordedSleep())
    assert stored(emulator, result.remote_path).read_bytes() == data
    assert result.bytes_sent == len(data)  # the final chunk was not sent again
    assert result.file_guid and result.attempts == 2
    assert [r.kind for r in emulator.upload_log] == ["initiate", "chunk", "initiate"]
    assert emulator.statistics().completed_files == 1


@pytest.mark.anyio
@pytest.mark.parametrize(("fault", "requests"), [("lost-response", 1), ("reset", 2)])
async def test_unknown_outcome_of_a_one_request_file(
    make_emulator: EmulatorFactory, tmp_path: Path, fault: str, requests: int
) -> None:
    seed = seed_for([fault, None], (fault,))
    emulator = await make_emulator(fault_rate=0.5, fault_seed=seed, faults=(fault,))
    path, data = make_file(tmp_path, "one.bin", 1000, seed=1)
    async with connected(emulator) as client:
        result = await upload_file(client, path, "\\", sleep=RecordedSleep())
    assert stored(emulator, result.remote_path).read_bytes() == data
    assert result.bytes_sent == 1000 * requests
    assert len(emulator.upload_log) == requests
    assert emulator.statistics().completed_files == 1


@pytest.mark.anyio
async def test_retries_are_bounded_and_waits_follow_the_policy(
    make_emulator: EmulatorFactory, tmp_path: Path
) -> None:
    emulator = await make_emulator(fault_rate=1.0, faults=("500",))
    path, _ = make_file(tmp_path, "never.bin", 5 * MiB)
    policy = RetryPolicy(attempts=4, initial_wait=0.5, max_wait=2.0)
    sleep = RecordedSleep()
    events = Recorder()
    async with connected(emulator) as client:
        with pytest.raises(errors.RetriesExhausted) as caught:
            await upload_file(
                client, path, "\\", config=TransferConfig(retry=policy), sleep=sleep, events=events
            )
    assert "4 attempts" in str(caught.value)
    assert len(emulator.upload_log) == 4
    assert len(sleep.waits) == 3 and all(0 <= w <= 2.0 for w in sleep.waits)
    assert [(kind, attempt) for kind, attempt, _ in events.retries] == [
        (errors.ServerBusy, 1),
        (errors.ServerBusy, 2),
        (errors.ServerBusy, 3),
    ]
    assert not stored(emulator, "\\never.bin").exists()


@pytest.mark.anyio
async def test_the_attempt_budget_counts_from_the_last_progress(
    make_emulator: EmulatorFactory, tmp_path: Path
) -> None:
    # Four requests' worth of file; every chunk after the first fails once, and each
    # recovery moves forward. Two attempts in a row without progress would fail the file.
    ok, fail = None, "500"
    pattern = [ok, fail, ok, ok, fail, ok, ok, fail, ok, ok]
    seed = seed_for(pattern, ("500",))
    emulator = await make_emulator(fault_rate=0.5, fault_seed=seed, faults=("500",))
    path, data = make_file(tmp_path, "budget.bin", 12 * MiB + 1, seed=17)
    tight = TransferConfig(retry=RetryPolicy(attempts=2, initial_wait=0.001, max_wait=0.01))
    async with connected(emulator) as client:
        result = await upload_file(client, path, "\\", config=tight, sleep=RecordedSleep())
    assert stored(emulator, result.remote_path).read_bytes() == data
    assert result.attempts == 4
    assert len(emulator.upload_log) == len(pattern)


@pytest.mark.anyio
async def test_a_wait_between_attempts_can_be_cancelled(
    make_emulator: EmulatorFactory, tmp_path: Path
) -> None:
    emulator = await make_emulator(fault_rate=1.0, faults=("500",))
    path, _ = make_file(tmp_path, "slow.bin", 10)
    long_waits = TransferConfig(retry=RetryPolicy(attempts=5, initial_wait=60, max_wait=60))
    async with connected(emulator) as client:
        with anyio.move_on_after(0.5) as scope:
            await upload_file(client, path, "\\", config=long_waits)
    assert scope.cancelled_caught
    # The first wait is drawn from [0, 60) s (full jitter): about one run in a hundred it is
    # shorter than the 0.5 s window and a second attempt goes out. A wait that could not be
    # cancelled would let all five attempts through.
    assert len(emulator.upload_log) in (1, 2)


# --- resume and restart ---------------------------------------------------------------------


@pytest.mark.anyio
async def test_an_unfinished_session_is_resumed_from_its_offset(
    emulator: Emulator, tmp_path: Path
) -> None:
    path, data = make_file(tmp_path, "resume.bin", 10 * MiB + 5, seed=10)
    async with RawSession(emulator) as raw:
        request_id = await raw.unfinished(
            "resume.bin", len(data), [data[: 4 * MiB], data[4 * MiB : 8 * MiB]]
        )
    before = len(emulator.upload_log)
    events = Recorder()
    # The journal saw 4 MiB confirmed; the server holds 8 (the last request before a kill).
    resume = ResumePoint(request_id, 4 * MiB)
    async with connected(emulator) as client:
        result = await upload_file(client, path, "\\", events=events, resume=resume)
    assert stored(emulator, result.remote_path).read_bytes() == data
    assert result.resumes == 1 and result.restarts == 0 and events.resumes == [8 * MiB]
    # The resume asks with an empty initiate; after it, only the missing bytes.
    assert result.bytes_sent == len(data) - 8 * MiB
    mine = list(emulator.upload_log)[before:]
    assert [(r.kind, r.status, r.request_id) for r in mine[:1]] == [("initiate", 409, request_id)]
    assert [r.offset_before for r in mine[1:]] == [8 * MiB]
    assert events.confirmed == len(data)
    assert (request_id, 8 * MiB) in events.offsets


@pytest.mark.anyio
async def test_a_session_this_upload_never_saw_is_not_continued(
    emulator: Emulator, tmp_path: Path
) -> None:
    """Bytes in a session this upload did not send may be another writer's: start over."""
    path, data = make_file(tmp_path, "foreign.bin", 10 * MiB + 5, seed=10)
    async with RawSession(emulator) as raw:
        await raw.unfinished("foreign.bin", len(data), [data[: 4 * MiB]])
    config = dataclasses.replace(FAST, verify=False)
    async with connected(emulator, config=config) as client:
        result = await upload_file(client, path, "\\")
    assert stored(emulator, result.remote_path).read_bytes() == data
    assert (result.resumes, result.restarts) == (0, 1)


@pytest.mark.anyio
async def test_a_session_holding_other_bytes_is_restarted(
    emulator: Emulator, tmp_path: Path
) -> None:
    path, data = make_file(tmp_path, "other.bin", 6 * MiB, seed=11)
    async with RawSession(emulator) as raw:
        await raw.unfinished("other.bin", len(data), [b"\x00" * (4 * MiB)])
    async with connected(emulator) as client:
        result = await upload_file(client, path, "\\")
    assert stored(emulator, result.remote_path).read_bytes() == data
    # Bytes this upload never sent are not continued: a fresh start before anything is added.
    assert (result.resumes, result.restarts) == (0, 1) and result.integrity_verified
    assert emulator.statistics().integrity_failures == 0


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("declared", "held"),
    [
        (12 * MiB, [b"a" * (4 * MiB), b"b" * (4 * MiB)]),  # offset past the end of our file
        (10 * MiB, [b"c" * (4 * MiB)]),  # another size: the final chunk is refused
    ],
)
async def test_a_session_of_another_file_size_is_restarted(
    emulator: Emulator, tmp_path: Path, declared: int, held: list[bytes]
) -> None:
    path, data = make_file(tmp_path, "sized.bin", 6 * MiB, seed=12)
    async with RawSession(emulator) as raw:
        await raw.unfinished("sized.bin", declared, held)
    async with connected(emulator) as client:
        result = await upload_file(client, path, "\\")
    assert stored(emulator, result.remote_path).read_bytes() == data
    assert result.restarts == 1


@pytest.mark.anyio
async def test_token_expiry_in_the_middle_of_an_upload(
    make_emulator: EmulatorFactory, tmp_path: Path
) -> None:
    emulator = await make_emulator(token_idle_seconds=1.0)
    path, data = make_file(tmp_path, "idle.bin", 12 * MiB + 1, seed=13)

    class Stall(Recorder):
        def offset_confirmed(self, request_id: str, offset: int) -> None:
            super().offset_confirmed(request_id, offset)
            if len(self.offsets) == 1:
                time.sleep(1.3)  # the whole loop stalls: the token outlives its idle time

    async with connected(emulator) as client:
        result = await upload_file(client, path, "\\", events=Stall(), sleep=RecordedSleep())
        assert client.statistics().renewals == 1
    assert stored(emulator, result.remote_path).read_bytes() == data
    assert emulator.statistics().unauthorized >= 1
    # The refused chunk was not stored: the re-initiate's 409 said so, and it went again.
    assert result.attempts == 2 and result.resumes == 1
    assert result.bytes_sent == len(data) + 4 * MiB


# --- refusals that stop the run, or fail the file -------------------------------------------


@pytest.mark.anyio
async def test_refusals_raise_the_right_class_without_retries(
    make_emulator: EmulatorFactory, tmp_path: Path
) -> None:
    emulator = await make_emulator(quota=2 * MiB)
    path, _ = make_file(tmp_path, "q.bin", 3 * MiB)
    sleep = RecordedSleep()
    cases: list[tuple[str, type[errors.BulkdriveError]]] = [
        ("2", errors.PermissionDenied),
        ("999", errors.ShareNotFound),
        (SHARE_ID, errors.QuotaExceeded),
    ]
    for share, expected in cases:
        before = len(emulator.upload_log)
        async with connected(emulator, share=share) as client:
            with pytest.raises(expected) as caught:
                await upload_file(client, path, "\\", sleep=sleep)
            assert isinstance(caught.value, errors.RunFailed)
            assert client.statistics().requests == 2  # login and the one refused request
        assert len(emulator.upload_log) - before == 1
    assert sleep.waits == []
    assert not stored(emulator, "\\q.bin").exists()

    with pytest.raises(errors.LoginFailed):
        async with EdgeDriveClient.connect(
            emulator.base_url, Credentials(USER, Secret("wrong")), share_id=SHARE_ID, config=FAST
        ):
            pass
    assert emulator.statistics().failed_logins == 1


@pytest.mark.anyio
async def test_missing_folder_on_a_strict_server_fails_the_file(
    make_emulator: EmulatorFactory, tmp_path: Path
) -> None:
    emulator = await make_emulator(strict_parents=True)
    path, data = make_file(tmp_path, "p.bin", 10)
    async with connected(emulator) as client:
        with pytest.raises(errors.FolderNotFound):
            await upload_file(client, path, "\\absent")
        await client.create_folder("\\", "absent")
        result = await upload_file(client, path, "\\absent")
    assert stored(emulator, result.remote_path).read_bytes() == data


@pytest.mark.anyio
async def test_a_file_that_changes_during_upload_is_not_stored(
    emulator: Emulator, tmp_path: Path
) -> None:
    path, _ = make_file(tmp_path, "growing.log", 9 * MiB, seed=14)

    class Writer(Recorder):
        def offset_confirmed(self, request_id: str, offset: int) -> None:
            if offset == 4 * MiB:
                with path.open("r+b") as f:  # rewritten in place, same size
                    f.write(b"changed")

    async with connected(emulator) as client:
        with pytest.raises(errors.SourceChanged) as caught:
            await upload_file(client, path, "\\", events=Writer())
    assert "growing.log" in str(caught.value)
    assert not any(r.eof for r in emulator.upload_log)  # the last chunk was never sent
    assert not stored(emulator, "\\growing.log").exists()


@pytest.mark.anyio
async def test_a_file_that_shrinks_during_upload_is_not_stored(
    emulator: Emulator, tmp_path: Path
) -> None:
    path, _ = make_file(tmp_path, "shrinks.bin", 13 * MiB, seed=15)

    class Truncator(Recorder):
        def offset_confirmed(self, request_id: str, offset: int) -> None:
            if offset == 4 * MiB:
                os.truncate(path, 5 * MiB)

    async with connected(emulator) as client:
        with pytest.raises(errors.SourceChanged):
            await upload_file(client, path, "\\", events=Truncator())
    assert not stored(emulator, "\\shrinks.bin").exists()


@pytest.mark.anyio
async def test_unreadable_sources_fail_without_requests(emulator: Emulator, tmp_path: Path) -> None:
    (tmp_path / "a-dir").mkdir()
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    async with connected(emulator) as client:
        for bad in (tmp_path / "missing", tmp_path / "a-dir", fifo):
            with pytest.raises(errors.SourceUnreadable):
                await upload_file(client, bad, "\\")
    assert len(emulator.upload_log) == 0


@pytest.mark.anyio
async def test_block_hash_sent_matches_the_file(emulator: Emulator, tmp_path: Path) -> None:
    # The emulator checks it; this pins the header against an independent computation.
    _, data = make_file(tmp_path, "h.bin", 4 * MiB + 3, seed=16)
    async with connected(emulator) as client:
        reply = await client.initiate(
            name="h.bin",
            folder="\\",
            size=len(data),
            mtime=0,
            body=data[: 4 * MiB],
            eof=False,
            verify=True,
        )
        done = await client.send_chunk(
            reply.request_id, data[4 * MiB :], eof=True, block_hash=whole_file_block_hash(data)
        )
    assert done.integrity_verified
    assert stored(emulator, "\\h.bin").read_bytes() == data


@pytest.mark.anyio
async def test_the_final_request_gets_the_long_read_timeout(
    make_emulator: EmulatorFactory, tmp_path: Path
) -> None:
    # Every upload request is answered late; only the final one may wait that long.
    emulator = await make_emulator(fault_rate=1.0, faults=("delay",), fault_delay_seconds=0.3)
    config = TransferConfig(
        timeouts=Timeouts(connect=5.0, read=0.05, final_read=10.0),
        retry=RetryPolicy(attempts=2, initial_wait=0.001, max_wait=0.01),
    )
    small, small_data = make_file(tmp_path, "small.bin", 1000)
    large, _ = make_file(tmp_path, "large.bin", 4 * MiB + 1)
    async with connected(emulator, config=config) as client:
        result = await upload_file(client, small, "\\", sleep=RecordedSleep())
        assert stored(emulator, result.remote_path).read_bytes() == small_data
        with pytest.raises(errors.RetriesExhausted) as caught:
            await upload_file(client, large, "\\", sleep=RecordedSleep())
    assert "no answer in time" in str(caught.value)


@pytest.mark.anyio
async def test_wrapped_json_server_resume(make_emulator: EmulatorFactory, tmp_path: Path) -> None:
    emulator = await make_emulator(json_dialect=Format.WRAPPED)
    path, data = make_file(tmp_path, "w.bin", 6 * MiB, seed=18)
    async with RawSession(emulator) as raw:
        request_id = await raw.unfinished("w.bin", len(data), [data[: 4 * MiB]])
    async with connected(emulator) as client:
        result = await upload_file(client, path, "\\", resume=ResumePoint(request_id, 4 * MiB))
    assert stored(emulator, result.remote_path).read_bytes() == data
    assert result.resumes == 1 and result.integrity_verified and len(result.file_guid) == 32


@pytest.mark.anyio
async def test_the_users_own_drive(emulator: Emulator, tmp_path: Path) -> None:
    path, data = make_file(tmp_path, "mine.bin", 5 * MiB, seed=19)
    async with connected(emulator, share=None) as client:
        result = await upload_file(client, path, "\\docs")
        assert await client.metadata(result.remote_path) is not None
    assert emulator.root.joinpath("drive", USER, "docs", "mine.bin").read_bytes() == data


class Digests(Recorder):
    def __init__(self) -> None:
        super().__init__()
        self.blocks: dict[int, bytes] = {}

    def block_confirmed(self, index: int, digest: bytes) -> None:
        self.blocks[index] = digest


def block_digests(data: bytes, blocks: int) -> bytes:
    return b"".join(
        hashlib.sha256(data[i * 4 * MiB : (i + 1) * 4 * MiB]).digest() for i in range(blocks)
    )


@pytest.mark.anyio
async def test_block_digests_are_reported_for_the_journal(
    emulator: Emulator, tmp_path: Path
) -> None:
    path, data = make_file(tmp_path, "digests.bin", 12 * MiB + 3, seed=21)
    events = Digests()
    async with connected(emulator) as client:
        await upload_file(client, path, "\\", events=events)
    # One digest per whole 4 MiB block the server holds, in order: what a journal keeps.
    assert b"".join(events.blocks[i] for i in sorted(events.blocks)) == block_digests(data, 3)


@pytest.mark.anyio
@pytest.mark.parametrize("right", [True, False])
async def test_journal_digests_are_checked_against_the_local_file(
    emulator: Emulator, tmp_path: Path, right: bool
) -> None:
    path, data = make_file(tmp_path, f"known-{right}.bin", 10 * MiB + 5, seed=22)
    async with RawSession(emulator) as raw:
        request_id = await raw.unfinished(
            path.name, len(data), [data[: 4 * MiB], data[4 * MiB : 8 * MiB]]
        )
    known = block_digests(data, 2) if right else b"\x01" * 64
    events = Digests()
    resume = ResumePoint(request_id, 8 * MiB)
    async with connected(emulator) as client:
        result = await upload_file(
            client, path, "\\", events=events, resume=resume, known_digests=known
        )
    assert stored(emulator, result.remote_path).read_bytes() == data
    assert result.integrity_verified
    # The prefix the session holds is hashed from the local file and compared with the
    # journal's digests: equal ones let the session go on; a difference (the file was edited
    # in place since) starts the file over before anything is added to the old bytes.
    assert (result.resumes, result.restarts) == ((1, 0) if right else (1, 1))
    assert emulator.statistics().integrity_failures == 0
    assert b"".join(events.blocks[i] for i in sorted(events.blocks)) == block_digests(data, 2)


def whole_file_block_hash(data: bytes) -> str:
    hasher = BlockHasher()
    hasher.update(data)
    return hasher.hexdigest()
