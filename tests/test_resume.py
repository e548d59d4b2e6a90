"""Resume end to end: `bulkdrive upload` killed with SIGKILL and re-run, files changed between
runs, failed files retried, --check-remote, --dry-run and `bulkdrive status`.

Real subprocesses against the emulator running in this process over loopback; the emulator's
upload log is the record of what was sent. Journals live in tmp (BULKDRIVE_STATE_DIR).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import sys
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from test_cli_upload import cli_env, run_cli, stored, upload_args

from bulkdrive.emulator import Emulator, running_emulator
from bulkdrive.emulator.app import UploadRecord

from conftest import SHARE_ID, EmulatorFactory, emulator_config
from trees import assert_stored, make_tree

pytestmark = pytest.mark.anyio

MiB = 1024 * 1024
CHUNK = 4 * MiB
TRANSFERS = 8  # the default --transfers
STARTS = ("initiate", "fullFile")


# --- helpers ------------------------------------------------------------------------------------


def write_random(path: Path, size: int) -> None:
    """Random bytes, a MiB at a time: the big files never sit in memory whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as out:
        for _ in range(size // MiB):
            out.write(os.urandom(MiB))
        out.write(os.urandom(size % MiB))


def remote(relative: str) -> str:
    """The emulator's name of a file uploaded to the share root: `a/b.txt` → `\\a\\b.txt`."""
    return "\\" + relative.replace("/", "\\")


def tree_size(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def started(records: Iterable[UploadRecord]) -> set[str]:
    """Paths for which an upload session was asked for (initiate or full-file)."""
    return {r.path for r in records if r.kind in STARTS and r.path}


def completed(records: Iterable[UploadRecord]) -> set[str]:
    return {r.path for r in records if r.eof and r.status == 200 and r.path}


def applied(records: Iterable[UploadRecord]) -> dict[str, int]:
    """Bytes the server stored per path."""
    totals: dict[str, int] = {}
    for r in records:
        if r.status == 200 and r.body_bytes and r.path:
            totals[r.path] = totals.get(r.path, 0) + r.body_bytes
    return totals


def journals(home: Path) -> list[Path]:
    return sorted((home / "state" / "journals").glob("*.sqlite"))


def outcomes(report: Path) -> dict[str, dict[str, Any]]:
    lines = report.read_text(encoding="utf-8").splitlines()
    return {row["path"]: row for row in map(json.loads, lines)}


async def status(journal: Path, cwd: Path) -> tuple[int, str]:
    done = await run_cli("status", "--journal", str(journal), cwd=cwd, timeout=30)
    assert b"Traceback" not in done.stderr
    return done.returncode, done.stdout.decode() + done.stderr.decode()


async def wait_quiet(emulator: Emulator, *, settle: float = 0.5, limit: float = 10) -> None:
    """Until the upload log stops growing: requests of a killed client still being served
    (sleeping in a delay fault) must land before the re-run, or they race its own chunks."""
    with anyio.fail_after(limit):
        seen = -1
        while seen != len(emulator.upload_log):
            seen = len(emulator.upload_log)
            await anyio.sleep(settle)


@asynccontextmanager
async def serving(root: Path, **overrides: Any) -> AsyncIterator[Emulator]:
    """An emulator we stop ourselves, so that another can take its root and port after it."""
    async with running_emulator(emulator_config(root, **overrides)) as emulator:
        yield emulator


# --- SIGKILL mid-run, then the same command again -------------------------------------------


def partial_digests(home: Path) -> list[tuple[str, bytes]]:
    """Partial files with block digests in the job's journal, once it exists."""
    found = journals(home)
    if not found:
        return []
    with contextlib.closing(sqlite3.connect(found[0])) as db:
        try:
            return db.execute(
                "SELECT relative, digests FROM files"
                " WHERE state = 'partial' AND length(digests) > 0"
            ).fetchall()
        except sqlite3.Error:
            return []  # not created yet


async def test_sigkill_mid_run_then_rerun_resumes(
    make_emulator: EmulatorFactory, tmp_path: Path
) -> None:
    # Every upload request waits 50 ms: the run takes long enough for the kill to land mid-file.
    emulator = await make_emulator(fault_rate=1.0, faults=("delay",), fault_delay_seconds=0.05)
    source = make_tree(tmp_path / "src", small_files=200)
    big = [f"big-{i}.bin" for i in range(3)]
    for name in big:
        write_random(source / name, 50 * MiB + 12345)
    total = tree_size(source)
    args = [sys.executable, "-m", "bulkdrive", *upload_args(emulator, source)]
    env = cli_env(home=tmp_path)
    log_path = tmp_path / "run1.log"

    with log_path.open("wb") as run1_log, anyio.fail_after(90):
        process = await anyio.open_process(
            args, cwd=tmp_path, env=env, stdout=run1_log, stderr=run1_log
        )
        async with process:
            try:
                while True:
                    records = list(emulator.upload_log)
                    done = completed(records)
                    partial = [
                        remote(n)
                        for n in big
                        if applied(records).get(remote(n), 0) >= CHUNK and remote(n) not in done
                    ]
                    if partial and len(done) >= 20 and partial_digests(tmp_path):
                        break
                    if process.returncode is not None:
                        pytest.fail("the run ended before the kill: " + log_path.read_text())
                    await anyio.sleep(0.02)
            finally:
                process.kill()  # SIGKILL: no handler, no flush, no goodbye
            assert await process.wait() == -9
    await wait_quiet(emulator)

    first = list(emulator.upload_log)
    done_first = completed(first)
    stored_first = applied(first)
    partial_files = {p for p, n in stored_first.items() if p not in done_first and n > 0}
    assert partial_files & {remote(n) for n in big}, "the kill did not land mid-file"
    assert done_first, "nothing completed before the kill"
    (journal,) = journals(tmp_path)  # the default place, under BULKDRIVE_STATE_DIR
    code, text = await status(journal, tmp_path)
    assert code == 0, text  # a SIGKILLed journal opens cleanly
    assert "done" in text and "total" in text
    # The journal kept the block digests of what the server held: right ones, for the re-run.
    rows = partial_digests(tmp_path)
    assert rows, "no partial file's block digests were journaled"
    for relative, digests in rows:
        data = (source / relative).read_bytes()
        blocks = [data[i : i + CHUNK] for i in range(0, len(digests) // 32 * CHUNK, CHUNK)]
        assert digests == b"".join(hashlib.sha256(b).digest() for b in blocks), relative

    report = tmp_path / "run2.ndjson"
    again = await run_cli(*args[3:], "--report-files", str(report), cwd=tmp_path, env=env)
    assert again.returncode == 0, again.stderr.decode()
    assert_stored(source, stored(emulator))

    second = list(emulator.upload_log)[len(first) :]
    # No completed file was started again: the journal skipped it without a request.
    assert not started(second) & done_first
    # Partial files continued from the offset the server held, never from 0.
    for path in partial_files:
        mine = [r for r in second if r.path == path]
        assert mine, f"{path} was not resumed"
        sends = [r for r in mine if r.body_bytes > 0]
        assert sends and sends[0].offset_before == stored_first[path] > 0, (path, mine[:3])
        assert all(r.offset_before > 0 for r in sends), f"{path} started over"
    by_name = outcomes(report)
    for path in partial_files:
        assert by_name[path.lstrip("\\").replace("\\", "/")]["outcome"] == "resumed"
    skipped = [row for row in by_name.values() if row["outcome"] == "skipped"]
    assert len(skipped) >= len(done_first)

    # What was stored over both runs is the tree, plus at most the chunks in flight at the kill.
    stored_total = sum(r.body_bytes for r in emulator.upload_log if r.status == 200)
    assert total <= stored_total <= total + TRANSFERS * CHUNK
    assert stored_total == emulator.statistics().bytes_received
    # And the re-run sent only what the server did not hold yet, plus at most a chunk per
    # file in flight at the kill.
    sent_again = sum(row.get("bytes_sent", 0) for row in by_name.values())
    assert sent_again <= total - sum(stored_first.values()) + TRANSFERS * CHUNK

    code, text = await status(journal, tmp_path)
    assert code == 0, text
    assert "failed" in text


# --- files changed between runs ---------------------------------------------------------------


def bump_mtime(path: Path, seconds: int = 100) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + seconds * 1_000_000_000))


async def test_changed_files_are_uploaded_again_unchanged_are_not(
    emulator: Emulator, tmp_path: Path
) -> None:
    source = make_tree(tmp_path / "src", small_files=30)
    (source / "same.txt").write_bytes(b"s" * 1000)
    (source / "content.txt").write_bytes(b"c" * 1000)
    (source / "resized.txt").write_bytes(b"r" * 1000)
    write_random(source / "large.bin", 9 * MiB)  # chunked: three requests
    args = upload_args(emulator, source)
    first = await run_cli(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr.decode()
    mark = len(emulator.upload_log)

    (source / "content.txt").write_bytes(b"C" * 1000)  # same size, new bytes and mtime
    bump_mtime(source / "content.txt")
    (source / "resized.txt").write_bytes(b"R" * 1500)
    with (source / "large.bin").open("r+b") as f:  # a changed middle chunk
        f.seek(5 * MiB)
        f.write(os.urandom(MiB))
    bump_mtime(source / "large.bin")
    second = await run_cli(*args, cwd=tmp_path)
    assert second.returncode == 0, second.stderr.decode()

    assert_stored(source, stored(emulator))
    again = started(list(emulator.upload_log)[mark:])
    assert again == {remote("content.txt"), remote("resized.txt"), remote("large.bin")}
    assert stored(emulator, "content.txt").read_bytes() == b"C" * 1000


async def test_partial_upload_of_a_file_changed_since_is_not_mixed(
    make_emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """A session the server holds for the old bytes must not be continued with the new ones."""
    emulator = await make_emulator(fault_rate=1.0, faults=("delay",), fault_delay_seconds=0.2)
    source = tmp_path / "src"
    write_random(source / "big.bin", 30 * MiB)
    # Nothing checks integrity: only the client can keep the two versions apart.
    args = [sys.executable, "-m", "bulkdrive", *upload_args(emulator, source, "--no-verify")]
    env = cli_env(home=tmp_path)
    with anyio.fail_after(60):
        process = await anyio.open_process(args, cwd=tmp_path, env=env)
        async with process:
            try:
                while applied(emulator.upload_log).get(remote("big.bin"), 0) < 2 * CHUNK:
                    if process.returncode is not None:
                        pytest.fail("the run ended before the kill")
                    await anyio.sleep(0.02)
            finally:
                process.kill()
            await process.wait()
    await wait_quiet(emulator)
    assert remote("big.bin") not in completed(emulator.upload_log)

    with (source / "big.bin").open("r+b") as f:  # same size, new first bytes
        f.write(os.urandom(MiB))
    bump_mtime(source / "big.bin")
    mark = len(emulator.upload_log)
    again = await run_cli(*args[3:], cwd=tmp_path, env=env)
    assert again.returncode == 0, again.stderr.decode()
    assert stored(emulator, "big.bin").read_bytes() == (source / "big.bin").read_bytes()
    second = list(emulator.upload_log)[mark:]
    assert sum(r.body_bytes for r in second if r.status == 200) == 30 * MiB


# --- failed files are tried again -------------------------------------------------------------


async def test_failed_files_are_tried_again(tmp_path: Path) -> None:
    root = tmp_path / "server"
    source = tmp_path / "src"
    for i in range(10):
        (source / "small").mkdir(parents=True, exist_ok=True)
        (source / "small" / f"s{i}.txt").write_bytes(os.urandom(1000))
    write_random(source / "too-big.bin", 2 * MiB)
    journal = tmp_path / "job.sqlite"
    env = cli_env(home=tmp_path)

    async with serving(root, quota=256 * 1024) as first:
        port = first.port
        # One at a time, small files first is not guaranteed: the order is the walk's.
        args = upload_args(first, source, "--journal", str(journal), "--transfers", "1")
        stopped = await run_cli(*args, cwd=tmp_path, env=env)
        assert stopped.returncode == 4, stopped.stderr.decode()
        done_first = completed(first.upload_log)
    code, text = await status(journal, tmp_path)
    assert code == 0, text
    assert "too-big.bin" in text and "quota" in text.lower()

    # Same server (root, port: the journal belongs to that URL), quota lifted.
    async with serving(root, port=port) as second:
        rerun = await run_cli(*args, cwd=tmp_path, env=env)
        assert rerun.returncode == 0, rerun.stderr.decode()
        assert_stored(source, root / SHARE_ID)
        again = started(second.upload_log)
        assert remote("too-big.bin") in again
        assert not again & done_first
    code, text = await status(journal, tmp_path)
    assert code == 0 and "too-big.bin" not in text, text


# --- --check-remote without the journal -------------------------------------------------------


async def test_check_remote_with_a_fresh_journal_skips_what_the_server_has(
    emulator: Emulator, tmp_path: Path
) -> None:
    source = make_tree(tmp_path / "src", small_files=120)
    write_random(source / "large.bin", 5 * MiB)
    first = await run_cli(
        *upload_args(emulator, source, "--journal", str(tmp_path / "one.sqlite")), cwd=tmp_path
    )
    assert first.returncode == 0, first.stderr.decode()
    mark = len(emulator.upload_log)

    (source / "a" / "b" / "c" / "deep.txt").write_bytes(b"DEEP")
    bump_mtime(source / "a" / "b" / "c" / "deep.txt")
    (source / "new.txt").write_bytes(b"new")
    report = tmp_path / "report.ndjson"
    second = await run_cli(
        *upload_args(
            emulator,
            source,
            "--check-remote",
            "--journal",
            str(tmp_path / "two.sqlite"),
            "--report-files",
            str(report),
        ),
        cwd=tmp_path,
    )
    assert second.returncode == 0, second.stderr.decode()
    assert_stored(source, stored(emulator))
    assert started(list(emulator.upload_log)[mark:]) == {
        remote("a/b/c/deep.txt"),
        remote("new.txt"),
    }
    by_name = outcomes(report)
    assert by_name["large.bin"]["outcome"] == "skipped"
    assert by_name["many/d00/f0077.bin"]["outcome"] == "skipped"


# --- --dry-run ----------------------------------------------------------------------------


def dry_counts(output: str) -> str:
    (line,) = [ln for ln in output.splitlines() if ln.startswith("dry run:")]
    return line


async def test_dry_run_sends_nothing_and_counts(emulator: Emulator, tmp_path: Path) -> None:
    source = tmp_path / "src"
    for i in range(5):
        (source / "part1").mkdir(parents=True, exist_ok=True)
        (source / "part1" / f"{i}.txt").write_bytes(b"x" * (100 + i))
    (source / "part2").mkdir()
    (source / "part2" / "big.bin").write_bytes(b"y" * 5000)
    everything = 5 * 100 + 10 + 5000
    env = cli_env(home=tmp_path)

    dry = await run_cli(*upload_args(emulator, source, "--dry-run"), cwd=tmp_path, env=env)
    assert dry.returncode == 0, dry.stderr.decode()
    line = dry_counts(dry.stdout.decode())
    assert f"would upload 6 files ({everything} bytes), skip 0 files (0 bytes)" in line
    assert not emulator.upload_log
    assert not stored(emulator).exists() or not any(stored(emulator).iterdir())

    # Upload part1 only; the journal then knows those five.
    part1 = await run_cli(
        *upload_args(emulator, source, "--include", "part1/**"), cwd=tmp_path, env=env
    )
    assert part1.returncode == 0, part1.stderr.decode()
    mark = len(emulator.upload_log)
    dry = await run_cli(*upload_args(emulator, source, "--dry-run"), cwd=tmp_path, env=env)
    assert dry.returncode == 0, dry.stderr.decode()
    assert "would upload 1 files (5000 bytes), skip 5 files (510 bytes)" in dry_counts(
        dry.stdout.decode()
    )
    # With --check-remote and no journal, the listing says the same; still nothing sent.
    dry = await run_cli(
        *upload_args(
            emulator,
            source,
            "--dry-run",
            "--check-remote",
            "--journal",
            str(tmp_path / "fresh.sqlite"),
        ),
        cwd=tmp_path,
        env=env,
    )
    assert dry.returncode == 0, dry.stderr.decode()
    assert "would upload 1 files (5000 bytes), skip 5 files (510 bytes)" in dry_counts(
        dry.stdout.decode()
    )
    assert len(emulator.upload_log) == mark
    assert not stored(emulator, "part2").exists()


# --- bulkdrive status -------------------------------------------------------------------------


async def test_status_lists_counts_bytes_and_failures(emulator: Emulator, tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "ok.txt").write_bytes(b"o" * 321)
    # A backslash separates paths on Edge Drive: these names fail without a request.
    bad = [f"bad\\{i:02d}.txt" for i in range(25)]
    for name in bad:
        (source / name).write_bytes(b"b" * 7)
    journal = tmp_path / "job :smile:.sqlite"  # printed as it is, not as an emoji
    done = await run_cli(*upload_args(emulator, source, "--journal", str(journal)), cwd=tmp_path)
    assert done.returncode == 1, done.stderr.decode()

    code, text = await status(journal, tmp_path)
    assert code == 0, text
    assert f"journal: {journal}" in text
    lines = text.splitlines()
    assert any(ln.split()[:3] == ["done", "1", "files"] and "321" in ln for ln in lines), text
    assert any(ln.split()[:3] == ["failed", "25", "files"] and "175" in ln for ln in lines), text
    listed = [name for name in bad if name in text]
    assert len(listed) == 20, text  # bounded: the first 20, then how many more
    assert "5 more" in text
    assert "Edge Drive" in text  # the reason is shown with each failed file

    missing = await run_cli("status", "--journal", str(tmp_path / "nope.sqlite"), cwd=tmp_path)
    assert missing.returncode == 2
    assert missing.stderr.decode().count("\n") == 1 and b"Traceback" not in missing.stderr
    assert b"nope.sqlite" in missing.stderr


# --- the policy itself, without a server (bulkdrive/resume.py) ------------------------------

from bulkdrive.journal import FileRecord, FileState  # noqa: E402
from bulkdrive.resume import is_stale, ready_file, was_in_flight  # noqa: E402
from bulkdrive.upload import ResumePoint  # noqa: E402
from bulkdrive.walk import FileEntry  # noqa: E402

ENTRY = FileEntry(path="/src/a.bin", relative="a.bin", size=10 * 2**20, mtime_ns=7_000_000_000)
DIGEST = b"\x01" * 32


def kept(state: FileState, *, size: int = ENTRY.size, request_id: str | None = None) -> FileRecord:
    return FileRecord(
        relative="a.bin",
        size=size,
        mtime_ns=ENTRY.mtime_ns,
        state=state,
        request_id=request_id,
        offset=4 * 2**20 if size >= 4 * 2**20 else 0,
        digests=DIGEST if size >= 4 * 2**20 else b"",
    )


@pytest.mark.parametrize(
    ("record", "in_flight", "stale", "resume"),
    [
        (None, False, False, None),
        (kept(FileState.PENDING), True, False, ResumePoint("", 4 * 2**20)),
        (kept(FileState.PARTIAL, request_id="77"), True, False, ResumePoint("77", 4 * 2**20)),
        (kept(FileState.DONE, request_id="77"), False, False, ResumePoint("77", 4 * 2**20)),
        (kept(FileState.FAILED), False, False, None),
        (kept(FileState.PARTIAL, size=3, request_id="77"), False, True, None),  # another version
        (kept(FileState.FAILED, size=3), False, True, None),
        (kept(FileState.DONE, size=3), False, False, None),
    ],
)
def test_what_the_journal_kept_decides_the_resume(
    record: FileRecord | None, in_flight: bool, stale: bool, resume: ResumePoint | None
) -> None:
    assert was_in_flight(record, ENTRY) is in_flight
    assert is_stale(record, ENTRY) is stale
    ready = ready_file(ENTRY, stale, None, record)
    assert ready.resume == resume
    same_version = record is not None and record.size == ENTRY.size
    assert ready.digests == (record.digests if record is not None and same_version else b"")
