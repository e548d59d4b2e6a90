"""Issue 11: bulkdrive never stores wrong bytes and exits 0.

One test per case of the issue, each against the emulator over loopback, each checking the
stored bytes and the emulator's upload log (the record of what the server applied):
1. a resume after an in-place edit that keeps size and mtime;
2. two writers on one file (a chunk refused as busy, an initiate meeting a session whose
   first chunk is still arriving);
3. a server that is gone for good (the run-level breaker);
4. token expiry under a bandwidth limit;
5. a lost final response followed by a lost re-initiate response; sessions left behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import sqlite3
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import anyio
import pytest
from test_cli_upload import cli_env, run_cli, upload_args
from test_cli_upload import stored as stored_cli

from bulkdrive import errors, protocol
from bulkdrive.client import EdgeDriveClient
from bulkdrive.config import Credentials, RetryPolicy, Secret, TransferConfig
from bulkdrive.emulator import Emulator, running_emulator
from bulkdrive.emulator.app import UploadRecord
from bulkdrive.emulator.faults import FaultInjector
from bulkdrive.upload import NullEvents, UploadResult, upload_file

import edge_raw as er
from conftest import PASSWORD, SHARE_ID, USER, EmulatorFactory, emulator_config

pytestmark = pytest.mark.anyio

MiB = 1024 * 1024
FAST_RETRY = RetryPolicy(attempts=12, initial_wait=0.002, max_wait=0.02)
GOOD = Credentials(USER, Secret(PASSWORD))


def make_file(folder: Path, name: str, size: int, seed: int = 0) -> tuple[Path, bytes]:
    data = random.Random(seed).randbytes(size)
    path = folder / name
    path.write_bytes(data)
    return path, data


def stored(emulator: Emulator, remote_path: str) -> Path:
    return emulator.root.joinpath(SHARE_ID, *protocol.split_remote_path(remote_path))


async def until(condition: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    """Poll `condition` on the loop (the emulator runs on it too), bounded."""
    with anyio.fail_after(timeout):
        while not condition():
            await anyio.sleep(0.005)


def log_of(emulator: Emulator, path: str) -> list[UploadRecord]:
    return [r for r in emulator.upload_log if r.path == path or (r.kind == "chunk" and not r.path)]


async def held_body(first: bytes, rest: bytes, release: anyio.Event) -> AsyncIterator[bytes]:
    """A request body that stops after `first` until `release`: the server is receiving it."""
    yield first
    await release.wait()
    yield rest


# --- 2. two writers on one file ------------------------------------------------------------------


async def test_an_initiate_meets_a_first_chunk_still_arriving_with_busy(
    make_emulator: EmulatorFactory, http: aiohttp.ClientSession
) -> None:
    """The emulator no longer answers 409 "offset 0" for a session whose own initiate body
    is still arriving: it answers 409 busy, without a session to resume."""
    emulator = await make_emulator(busy_wait_seconds=0.2)
    base = emulator.base_url
    token = await er.login(http, base)
    release = anyio.Event()
    first: dict[str, er.Reply] = {}

    async def writer_a() -> None:
        body = held_body(b"A" * 4, b"A" * 6, release)
        first["reply"] = await er.initiate(
            http,
            base,
            token,
            "race.bin",
            20,
            body,
            extra=[("Content-Length", "10")],  # type: ignore[arg-type]
        )

    async with anyio.create_task_group() as tg:
        tg.start_soon(writer_a)
        await until(lambda: emulator.statistics().receiving >= 1, "A's body is being received")
        second = await er.initiate(http, base, token, "race.bin", 20, b"B" * 10)
        release.set()
    assert second.status == 409, second.text
    assert not second.upload.request_id  # nothing offered to continue
    assert first["reply"].status == 200 and first["reply"].upload.chunk_offset == 10
    # Once A's body is stored, a re-initiate sees A's session at A's offset.
    third = await er.initiate(http, base, token, "race.bin", 20)
    assert (third.status, third.upload.request_id, third.upload.chunk_offset) == (
        409,
        first["reply"].upload.request_id,
        10,
    )


async def test_a_chunk_refused_as_busy_does_not_claim_the_other_writers_bytes(
    make_emulator: EmulatorFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """Issue 11 §2, without integrity checks: A's final chunk gets a definite 409 busy
    because writer B is sending into A's session; B's chunk then takes the session to
    exactly where A's refused chunk would have ended. Before, A took that offset as its own
    and completed the file with an empty final chunk, storing B's bytes. Now A starts over."""
    emulator = await make_emulator(busy_wait_seconds=10.0)
    path, data = make_file(tmp_path, "two.bin", 8 * MiB, seed=2)
    # 4 MiB/s: A's second chunk waits a second for bandwidth after its first, time enough
    # for B's request to be arriving when it goes out.
    config = TransferConfig(retry=FAST_RETRY, verify=False, bwlimit=4 * MiB)
    base = emulator.base_url
    token = await er.login(http, base)
    release = anyio.Event()
    other: dict[str, er.Reply] = {}
    results: list[UploadResult] = []

    async def writer_b(request_id: str) -> None:
        body = held_body(b"\0" * MiB, b"\0" * (3 * MiB), release)
        other["reply"] = await er.chunk(
            http, base, token, request_id, body, extra=[("Content-Length", str(4 * MiB))]
        )

    async def writer_a() -> None:
        async with EdgeDriveClient.connect(base, GOOD, share_id=SHARE_ID, config=config) as c:
            results.append(await upload_file(c, path, "\\"))

    def first_chunk() -> UploadRecord | None:
        return next((r for r in emulator.upload_log if r.kind == "initiate"), None)

    async with anyio.create_task_group() as tg:
        tg.start_soon(writer_a)
        await until(lambda: first_chunk() is not None, "A's first chunk is stored")
        record = first_chunk()
        assert record is not None and record.status == 200
        tg.start_soon(writer_b, record.request_id)
        session = await emulator.store.find(record.request_id)
        assert session is not None
        await until(lambda: session.busy, "B's chunk is arriving")
        # A's final chunk meets B's: refused as busy, definitely not applied.
        await until(
            lambda: any(r.kind == "chunk" and r.status == 409 for r in emulator.upload_log),
            "A's chunk is refused",
        )
        release.set()
    assert other["reply"].status == 200 and other["reply"].upload.chunk_offset == 8 * MiB
    assert stored(emulator, "\\two.bin").read_bytes() == data
    assert results[0].restarts == 1
    log = list(emulator.upload_log)
    # A started over with forceRestart rather than finishing on B's bytes.
    assert [(r.kind, r.status, r.body_bytes) for r in log if r.fault is None][-2:] == [
        ("initiate", 200, 4 * MiB),
        ("chunk", 200, 4 * MiB),
    ]
    assert not [r for r in log if r.status == 200 and r.eof and r.body_bytes == 0]


@pytest.mark.parametrize("verify", [True, False], ids=["integrity", "no-verify"])
async def test_two_writers_on_one_file_converge_without_failures(
    emulator: Emulator, tmp_path: Path, verify: bool
) -> None:
    """Two uploads of the same file at once, each with its own client (two processes or
    hosts). Before, they broke each other's sessions (forceRestart, 404) and often both
    failed with SessionGone; with --no-verify one could store the other's bytes. Now the
    one that finds the other's session waits for it, sees the file complete, and is done."""
    path, data = make_file(tmp_path, "both.bin", 16 * MiB, seed=7)
    config = TransferConfig(retry=FAST_RETRY, verify=verify)
    results: list[UploadResult] = []

    async def writer() -> None:
        async with EdgeDriveClient.connect(
            emulator.base_url, GOOD, share_id=SHARE_ID, config=config
        ) as client:
            results.append(await upload_file(client, path, "\\"))

    async with anyio.create_task_group() as tg:
        tg.start_soon(writer)
        tg.start_soon(writer)
    assert stored(emulator, "\\both.bin").read_bytes() == data
    assert len(results) == 2  # neither failed
    assert emulator.statistics().integrity_failures == 0
    # No request of either went to a session the other had discarded.
    assert not [r for r in emulator.upload_log if r.status == 404]


# --- 1. resume after an in-place edit that keeps size and mtime ----------------------------------


def journaled_blocks(home: Path, relative: str) -> int:
    """Block digests the job's journal holds for a partial file (0 until it has some)."""
    found = sorted((home / "state" / "journals").glob("*.sqlite"))
    if not found:
        return 0
    with contextlib.closing(sqlite3.connect(found[0])) as db:
        try:
            row = db.execute(
                "SELECT length(digests) FROM files WHERE relative = ? AND state = 'partial'",
                (relative,),
            ).fetchone()
        except sqlite3.Error:
            return 0  # not created yet
    return int(row[0] or 0) // 32 if row else 0


@pytest.mark.parametrize("verify", [True, False], ids=["integrity", "no-verify"])
async def test_resume_after_an_edit_in_place_that_keeps_size_and_mtime(
    emulator: Emulator, tmp_path: Path, verify: bool
) -> None:
    """Issue 11 §1: interrupted mid-file, the first MiB rewritten in place with size and
    mtime kept (as `cp -p`, `rsync -t` or an editor's save in place leave them), re-run.
    Before, the re-run continued the session and the stored file kept the old first MiB
    (exit 0). Now the prefix the session holds is read back from the local file, its
    digests differ from the journal's, and the file starts over."""
    source = tmp_path / "src"
    source.mkdir()
    big = source / "big.bin"
    big.write_bytes(random.Random(1).randbytes(40 * MiB))
    extra = [] if verify else ["--no-verify"]
    args = [sys.executable, "-m", "bulkdrive", *upload_args(emulator, source, *extra)]
    env = cli_env(home=tmp_path)
    with (tmp_path / "run1.log").open("wb") as out, anyio.fail_after(60):
        process = await anyio.open_process(
            [*args, "--bwlimit", "8MiB"], cwd=tmp_path, env=env, stdout=out, stderr=out
        )
        async with process:
            try:
                # Past the first chunk: the resume then continues from an offset that the
                # re-run's own first chunk does not reach.
                await until(
                    lambda: (
                        journaled_blocks(tmp_path, "big.bin") >= 2 or process.returncode is not None
                    ),
                    "the journal holds two block digests of big.bin",
                    timeout=50,
                )
            finally:
                process.kill()
            await process.wait()
    # A chunk the killed client had sent may still be landing: wait until the log is quiet.
    with anyio.fail_after(10):
        seen = -1
        while seen != len(emulator.upload_log):
            seen = len(emulator.upload_log)
            await anyio.sleep(0.3)
    first = len(emulator.upload_log)
    held = sum(r.body_bytes for r in emulator.upload_log if r.status == 200)
    assert 0 < held < big.stat().st_size, "the kill did not land mid-file"

    st = big.stat()
    with big.open("r+b") as f:
        f.write(random.Random(2).randbytes(MiB))
    os.utime(big, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (big.stat().st_size, big.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)

    again = await run_cli(*args[3:], cwd=tmp_path, env=env)
    assert again.returncode == 0, again.stderr.decode()
    assert stored_cli(emulator, "big.bin").read_bytes() == big.read_bytes()
    # The re-run asked for the session with an empty initiate, then started over with
    # forceRestart (a 200 for an initiate carrying the first chunk) and sent the whole file.
    rerun = [r for r in list(emulator.upload_log)[first:] if r.path in ("\\big.bin", "")]
    assert (rerun[0].kind, rerun[0].status, rerun[0].body_bytes) == ("initiate", 409, 0)
    assert (rerun[1].kind, rerun[1].status, rerun[1].body_bytes) == ("initiate", 200, 4 * MiB)
    assert sum(r.body_bytes for r in rerun if r.status == 200) == big.stat().st_size


# --- 3. a server that is gone for good ------------------------------------------------------------


async def test_a_server_gone_for_good_stops_the_run_then_the_rerun_resumes(
    tmp_path: Path,
) -> None:
    """Issue 11 §3: the server is stopped mid-run and not restarted. The run stops once every
    request has failed for the (short) --give-up-after window, with one line and the exit
    code of connection failures, instead of failing the files one at a time over half an
    hour; files in flight keep their server-side sessions, and the re-run resumes them."""
    root = tmp_path / "server"
    source = tmp_path / "src"
    source.mkdir()
    sizes = {f"big-{i}.bin": 12 * MiB for i in range(3)}
    for i, (name, size) in enumerate(sizes.items()):
        (source / name).write_bytes(random.Random(10 + i).randbytes(size))
    env = cli_env(home=tmp_path)
    async with running_emulator(emulator_config(root)) as emulator:
        port = emulator.port
        base = [*upload_args(emulator, source, "--give-up-after", "1", "--transfers", "3")]
        args = [sys.executable, "-m", "bulkdrive", *base, "--bwlimit", "6MiB"]
        log_path, err_path = tmp_path / "run1.log", tmp_path / "run1.err"
        with log_path.open("wb") as out, err_path.open("wb") as err:
            process = await anyio.open_process(args, cwd=tmp_path, env=env, stdout=out, stderr=err)
            await until(
                lambda: (
                    sum(r.body_bytes for r in emulator.upload_log if r.status == 200) >= 6 * 4 * MiB
                ),
                "some chunks of each file are stored",
            )
    # The server is gone (its port refuses connections) and stays gone.
    async with process:
        with anyio.fail_after(60):
            code = await process.wait()
    output, stderr = log_path.read_text(), err_path.read_text()
    assert code == errors.ServerUnreachable.exit_code, output + stderr
    assert "Traceback" not in output + stderr
    # One line on stderr: what happened, the last error, how to resume.
    (stop,) = stderr.splitlines()
    assert "failed every request" in stop and "cannot connect" in stop, stderr
    assert "re-run the same command" in stop, stderr

    async with running_emulator(emulator_config(root, port=port)) as emulator:
        again = await run_cli(*base, cwd=tmp_path, env=env)
        assert again.returncode == 0, again.stderr.decode()
        for name in sizes:
            assert stored_cli(emulator, name).read_bytes() == (source / name).read_bytes()
        # Every file left unfinished continued its session (one completed before the stop is
        # skipped): the re-run's first request for it was the empty initiate that found it,
        # and nothing was sent again from offset 0.
        resumed = 0
        for name in sizes:
            mine = [r for r in emulator.upload_log if r.path == f"\\{name}"]
            if mine:
                assert (mine[0].kind, mine[0].status, mine[0].body_bytes) == ("initiate", 409, 0)
                assert all(r.offset_before > 0 for r in mine if r.body_bytes)
                resumed += 1
        assert resumed >= 1


async def test_a_server_answering_500_to_every_write_stops_the_run(
    make_emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """A full disk behind a proxy: every upload request gets a 500. One line, and the exit
    code of connection failures."""
    emulator = await make_emulator(fault_rate=1.0, faults=("500",))
    source = tmp_path / "src"
    source.mkdir()
    for i in range(20):
        (source / f"f{i}.txt").write_bytes(b"x" * (1000 + i))
    done = await run_cli(
        *upload_args(emulator, source, "--give-up-after", "1"), cwd=tmp_path, timeout=60
    )
    output = done.stdout.decode() + done.stderr.decode()
    assert done.returncode == errors.ServerUnreachable.exit_code, output
    assert "Traceback" not in output
    (stop,) = done.stderr.decode().splitlines()
    assert "failed every request" in stop and "HTTP 500" in stop, output
    assert not list(emulator.root.joinpath(SHARE_ID).rglob("f*.txt"))


# --- 4. token expiry under a bandwidth limit ------------------------------------------------


@pytest.mark.parametrize("transfers", [1, 4])
async def test_tokens_idle_out_under_a_bandwidth_limit(
    make_emulator: EmulatorFactory, tmp_path: Path, transfers: int
) -> None:
    """Issue 11 §4: tokens idle out after 1 s; each chunk waits longer than that for its
    share of the bandwidth. Before, the token was put into the headers before the wait and
    every chunk was refused (401) until the retries ran out. Now the token is taken after
    the wait, renewed first once the server's idle limit is known, and a 401 for a token
    another request already replaced is sent again without counting an attempt."""
    emulator = await make_emulator(token_idle_seconds=1.0)
    source = tmp_path / "src"
    source.mkdir()
    for i in range(transfers):
        (source / f"t{i}.bin").write_bytes(random.Random(40 + i).randbytes(10 * MiB))
    rate = f"{2 * transfers}MiB"  # about 2 s of waiting per 4 MiB chunk and transfer
    done = await run_cli(
        *upload_args(
            emulator, source, "--transfers", str(transfers), "--bwlimit", rate, "--retries", "4"
        ),
        cwd=tmp_path,
        timeout=90,
    )
    assert done.returncode == 0, done.stderr.decode()
    for i in range(transfers):
        name = f"t{i}.bin"
        assert stored_cli(emulator, name).read_bytes() == (source / name).read_bytes()
    # At most one idle refusal teaches the client the limit; renewals do the rest.
    assert emulator.statistics().unauthorized <= transfers


# --- 5. smaller: lost final + lost re-initiate; sessions left behind ----------------------------


def _seed_for(pattern: list[bool], rate: float, kind: str) -> int:
    """A fault seed whose first draws (True: a fault) follow `pattern`: the emulator draws
    once per upload request, in arrival order, from its seeded injector."""
    for seed in range(100_000):
        injector = FaultInjector(rate, seed, (kind,), 0.0)
        if all((injector.draw() is not None) == fault for fault in pattern):
            return seed
    raise AssertionError("no seed found")


async def test_a_lost_final_response_then_a_lost_recover_response_commit_once(
    make_emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """Issue 11 §5: the final chunk is stored but its response lost; the RECOVER initiate
    opens a new session but its response is lost too. Before, the next RECOVER found that
    new session at 0 and the whole file was sent and committed again (two fileGUIDs). Now
    the file's properties are checked first: it is complete, nothing is sent again."""
    # Requests: initiate (ok), final chunk (lost response), RECOVER (lost), RECOVER (ok).
    seed = _seed_for([False, True, True, False], 0.5, "lost-response")
    emulator = await make_emulator(fault_rate=0.5, faults=("lost-response",), fault_seed=seed)
    path, data = make_file(tmp_path, "twice.bin", 6 * MiB, seed=5)
    config = TransferConfig(retry=FAST_RETRY)
    async with EdgeDriveClient.connect(
        emulator.base_url, GOOD, share_id=SHARE_ID, config=config
    ) as client:
        result = await upload_file(client, path, "\\")
    assert stored(emulator, "\\twice.bin").read_bytes() == data
    log = list(emulator.upload_log)
    assert [(r.kind, r.body_bytes, r.fault) for r in log] == [
        ("initiate", 4 * MiB, None),
        ("chunk", 2 * MiB, "lost-response"),
        ("initiate", 0, "lost-response"),  # opened a new, empty session
        ("initiate", 0, None),  # 409: that session, at 0
    ]
    assert emulator.statistics().completed_files == 1  # committed once
    assert len(result.file_guid) == 32  # the stored file's, from its metadata


async def test_a_file_that_changes_during_upload_leaves_no_session_behind(
    make_emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """Issue 11 §5: the session of a file that failed for good (here SourceChanged) would
    reserve the file's size of the quota for a day. It is discarded, and the report says so:
    a second file that needs that quota is stored."""
    emulator = await make_emulator(quota=30 * MiB)
    path, _ = make_file(tmp_path, "growing.bin", 20 * MiB, seed=14)
    other, other_data = make_file(tmp_path, "next.bin", 20 * MiB, seed=15)
    config = TransferConfig(retry=FAST_RETRY)

    class Writer(NullEvents):
        def offset_confirmed(self, request_id: str, offset: int) -> None:
            if offset == 4 * MiB:
                with path.open("r+b") as f:  # rewritten in place, same size
                    f.write(b"changed")

    async with EdgeDriveClient.connect(
        emulator.base_url, GOOD, share_id=SHARE_ID, config=config
    ) as client:
        with pytest.raises(errors.SourceChanged) as caught:
            await upload_file(client, path, "\\", events=Writer())
        assert "session on the server was discarded" in str(caught.value)
        await upload_file(client, other, "\\")
    assert stored(emulator, "\\next.bin").read_bytes() == other_data
    assert not stored(emulator, "\\growing.bin").exists()


async def test_retries_exhausted_discards_the_session(
    make_emulator: EmulatorFactory, tmp_path: Path
) -> None:
    # Requests: initiate (ok), chunk, RECOVER, RECOVER (500 each), the discard (ok).
    seed = _seed_for([False, True, True, True, False], 0.5, "500")
    emulator = await make_emulator(fault_rate=0.5, faults=("500",), fault_seed=seed, quota=15 * MiB)
    path, _ = make_file(tmp_path, "flaky.bin", 10 * MiB, seed=16)
    config = TransferConfig(retry=dataclasses.replace(FAST_RETRY, attempts=3))
    async with EdgeDriveClient.connect(
        emulator.base_url, GOOD, share_id=SHARE_ID, config=config
    ) as client:
        with pytest.raises(errors.RetriesExhausted) as caught:
            await upload_file(client, path, "\\")
    assert "session on the server was discarded" in str(caught.value)
    discard = list(emulator.upload_log)[-1]
    assert (discard.kind, discard.status, discard.body_bytes) == ("initiate", 200, 0)
    assert emulator.statistics().active_sessions == 1  # the empty one of size 0
    # Its 10 MiB reservation is gone: another 10 MiB fits in the 15 MiB quota.
    emulator.faults.rate = 0.0
    again, again_data = make_file(tmp_path, "fits.bin", 10 * MiB, seed=17)
    async with EdgeDriveClient.connect(
        emulator.base_url, GOOD, share_id=SHARE_ID, config=config
    ) as client:
        await upload_file(client, again, "\\")
    assert stored(emulator, "\\fits.bin").read_bytes() == again_data
