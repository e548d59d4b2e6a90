"""The run through the library API: bounded concurrency, folders, failures, run-level stops."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sqlite3
from pathlib import Path

import pytest

from bulkdrive import errors
from bulkdrive.client import EdgeDriveClient
from bulkdrive.config import Credentials, Secret, TransferConfig
from bulkdrive.emulator import Emulator
from bulkdrive.journal import FileState, Journal
from bulkdrive.report import Outcome
from bulkdrive.scheduler import RunPlan, TreeUpload, upload_tree
from bulkdrive.walk import WalkFilters

from conftest import PASSWORD, SHARE_ID, USER, EmulatorFactory
from trees import assert_stored, make_tree

pytestmark = pytest.mark.anyio

CREDENTIALS = Credentials(user=USER, password=Secret(PASSWORD))
MiB = 1024 * 1024


async def test_library_uploads_a_tree(emulator: Emulator, tmp_path: Path) -> None:
    source = make_tree(tmp_path / "src", small_files=300, large=(4 * MiB + 1, 9 * MiB))
    config = TransferConfig(transfers=4)
    async with EdgeDriveClient.connect(
        emulator.base_url, CREDENTIALS, share_id=SHARE_ID, config=config
    ) as client:
        summary = await upload_tree(client, source, "\\lib", config=config)
    assert summary.files.failed == 0
    stored = assert_stored(source, emulator.config.root / SHARE_ID / "lib")
    assert summary.files.uploaded == stored
    assert summary.bytes.uploaded == sum(p.stat().st_size for p in source.rglob("*") if p.is_file())


async def test_concurrency_and_backlog_stay_bounded(
    make_emulator: EmulatorFactory, tmp_path: Path
) -> None:
    # A delay on every upload keeps the workers busy so that the walker runs ahead and fills
    # the backlog: both bounds are then reached, and must hold.
    emulator = await make_emulator(fault_rate=1.0, faults=("delay",), fault_delay_seconds=0.01)
    source = make_tree(tmp_path / "src", small_files=400)
    config = TransferConfig(transfers=3)
    plan = RunPlan(source=source, remote_folder="\\b", config=config, backlog=16)
    async with EdgeDriveClient.connect(
        emulator.base_url, CREDENTIALS, share_id=SHARE_ID, config=config
    ) as client:
        run = TreeUpload(client, plan)
        summary = await run.run()
    stats = run.statistics()
    assert summary.files.failed == 0
    assert stats.max_in_flight == 3
    assert stats.max_backlog_used <= 16
    assert stats.max_backlog_used >= 8  # the walker did run ahead of the uploads
    assert stats.in_flight == 0
    assert_stored(source, emulator.config.root / SHARE_ID / "b")


async def test_folders_are_created_before_their_files(
    make_emulator: EmulatorFactory, tmp_path: Path
) -> None:
    emulator = await make_emulator(strict_parents=True)  # 404 if a parent is missing
    source = make_tree(tmp_path / "src", small_files=150)
    async with EdgeDriveClient.connect(emulator.base_url, CREDENTIALS, share_id=SHARE_ID) as c:
        summary = await upload_tree(c, source, "\\x\\y")
    assert summary.files.failed == 0
    assert_stored(source, emulator.config.root / SHARE_ID / "x" / "y")


async def test_run_level_failure_stops_new_files(
    make_emulator: EmulatorFactory, tmp_path: Path
) -> None:
    emulator = await make_emulator(quota=300 * 1024)
    source = tmp_path / "src"
    source.mkdir()
    for i in range(60):
        (source / f"f{i:02d}.bin").write_bytes(os.urandom(20 * 1024))
    config = TransferConfig(transfers=2)
    plan = RunPlan(source=source, config=config)
    async with EdgeDriveClient.connect(
        emulator.base_url, CREDENTIALS, share_id=SHARE_ID, config=config
    ) as client:
        run = TreeUpload(client, plan)
        summary = await run.run()
    assert isinstance(run.run_error, errors.QuotaExceeded)
    assert run.statistics().files_started < 60
    stored = sorted((emulator.config.root / SHARE_ID).glob("*.bin"))
    assert 0 < len(stored) < 60
    for path in stored:  # what was stored is intact
        assert path.read_bytes() == (source / path.name).read_bytes()
    assert summary.files.uploaded == len(stored)


async def test_a_file_that_fails_is_reported_and_others_go_on(
    emulator: Emulator, tmp_path: Path
) -> None:
    source = make_tree(tmp_path / "src", small_files=30)
    (source / "bad\\name.txt").write_bytes(b"x")
    outcomes = []

    class Collect:
        def __getattr__(self, name: str) -> object:
            if name == "file_finished":
                return outcomes.append
            return lambda *args, **kwargs: None

    async with EdgeDriveClient.connect(emulator.base_url, CREDENTIALS, share_id=SHARE_ID) as c:
        summary = await upload_tree(c, source, reporter=Collect())  # type: ignore[arg-type]
    failed = [o for o in outcomes if o.outcome is Outcome.FAILED]
    assert [o.relative for o in failed] == ["bad\\name.txt"]
    assert failed[0].reason and failed[0].hint
    assert summary.files.failed == 1
    assert_stored(source, emulator.config.root / SHARE_ID, ignore={"bad\\name.txt"})


async def test_dry_run_sends_nothing(emulator: Emulator, tmp_path: Path) -> None:
    source = make_tree(tmp_path / "src", small_files=10)
    plan = RunPlan(source=source, dry_run=True, filters=WalkFilters(exclude=("many/**",)))
    run = TreeUpload(None, plan)
    summary = await run.run()
    stats = run.statistics()
    assert stats.would_upload_files == sum(
        1 for p in source.rglob("*") if p.is_file() and "many" not in p.parts
    )
    assert summary.files.uploaded == 0
    assert emulator.statistics().initiates == 0
    assert (
        not any((emulator.config.root / SHARE_ID).glob("*"))
        if (emulator.config.root / SHARE_ID).exists()
        else True
    )


def test_plan_is_a_frozen_value(tmp_path: Path) -> None:
    plan = RunPlan(source=tmp_path)
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.backlog = 3  # type: ignore[misc]


async def test_bandwidth_limit_paces_the_whole_run(emulator: Emulator, tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    for i in range(6):
        (source / f"f{i}.bin").write_bytes(os.urandom(300 * 1024))
    config = TransferConfig(transfers=3, bwlimit=4 * MiB)
    async with EdgeDriveClient.connect(
        emulator.base_url, CREDENTIALS, share_id=SHARE_ID, config=config
    ) as client:
        summary = await upload_tree(client, source, config=config)
        budget = client.bandwidth
    assert summary.files.uploaded == 6
    assert budget is not None
    stats = budget.statistics()
    # Every body went through the one budget of the run, and the budget made uploads wait.
    assert stats.bytes_granted == 6 * 300 * 1024
    assert stats.seconds_waited > 0
    assert_stored(source, emulator.config.root / SHARE_ID)


def test_no_transfers_is_refused_rather_than_waiting_for_ever() -> None:
    # No worker would ever take a file: the run would wait for ever.
    with pytest.raises(errors.ConfigError, match="transfers"):
        TransferConfig(transfers=0)


async def test_files_in_flight_are_marked_per_batch_and_each_file_writes_one_row(
    emulator: Emulator, tmp_path: Path
) -> None:
    """The journal learns that a batch's files are in flight from one mark for the batch
    (committed before their first request), not a PENDING row per file: a run of N small
    files writes N rows (their ends), and leaves no mark behind once every file ended."""
    source = make_tree(tmp_path / "src", small_files=150)
    files = sum(1 for p in source.rglob("*") if p.is_file())
    path = tmp_path / "journal.sqlite"
    async with (
        Journal.open(path, exclusive=True) as journal,
        EdgeDriveClient.connect(emulator.base_url, CREDENTIALS, share_id=SHARE_ID) as client,
    ):
        plan = RunPlan(source=source, remote_folder="\\marks", config=client.config)
        summary = await TreeUpload(client, plan, journal=journal).run()
        stats = journal.statistics()
        done = journal.summary().files[FileState.DONE]
    assert summary.files.uploaded == files
    assert done == files
    assert stats.rows_written == files  # one row per file: its end
    # Besides the files' ends, the journal queued a mark per batch and the mark's deletion.
    marks_and_deletions = stats.records_queued - files
    assert marks_and_deletions >= 2 and marks_and_deletions % 2 == 0, stats
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT count(*) FROM in_flight").fetchone() == (0,)
    assert_stored(source, emulator.config.root / SHARE_ID / "marks")
