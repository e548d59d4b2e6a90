"""Accounting that tells the truth: `bytes.sent` is every byte the server accepted in this run,
checked against the emulator's own request log; progress never reads 100 % for bytes that were
not stored; the count-only pass fixes the totals early."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import anyio
import pytest
from test_cli_upload import cli_env, upload_args

from bulkdrive.client import EdgeDriveClient
from bulkdrive.config import Credentials, Secret, TransferConfig
from bulkdrive.progress import Figures, NullReporter, stat_line
from bulkdrive.scheduler import RunPlan, TreeUpload
from bulkdrive.walk import WalkFilters

from conftest import PASSWORD, SHARE_ID, USER, EmulatorFactory

pytestmark = pytest.mark.anyio

MiB = 1024 * 1024
CHUNK = 4 * MiB


def accepted_upload_bytes(log: Path) -> int:
    """What the server accepted, from its request log: bodies of the successful uploads."""
    total = 0
    for line in log.read_text().splitlines():
        entry = json.loads(line)
        if entry["path"].endswith("/action/upload") and 200 <= entry["status"] < 300:
            total += entry["bytes"]
    return total


async def wait_for_accepted(log: Path, at_least: int) -> None:
    while not log.exists() or accepted_upload_bytes(log) < at_least:
        await anyio.sleep(0.02)


async def test_interrupted_run_counts_what_the_server_accepted(
    make_emulator: EmulatorFactory, tmp_path: Path
) -> None:
    log = tmp_path / "requests.ndjson"
    emulator = await make_emulator(request_log=log)
    source = tmp_path / "src"
    source.mkdir()
    for i in range(3):
        (source / f"big{i}.bin").write_bytes(bytes([i]) * (5 * CHUNK))
    report = tmp_path / "report.json"
    args = upload_args(emulator, source, "--transfers", "2", "--bwlimit", "16MiB")
    with anyio.fail_after(60):
        process = await anyio.open_process(
            [sys.executable, "-m", "bulkdrive", *args, "--report", str(report)],
            cwd=tmp_path,
            env=cli_env(home=tmp_path),
        )
        async with process:
            await wait_for_accepted(log, 3 * CHUNK)
            process.send_signal(signal.SIGINT)
            assert await process.wait() == 130
    data = json.loads(report.read_text())
    assert data["interrupted"] is True
    accepted = accepted_upload_bytes(log)
    assert accepted < 15 * CHUNK  # interrupted indeed
    sent = data["bytes"]["sent"]
    # Every accepted body whose reply reached bulkdrive is counted; only a chunk whose reply
    # the interruption cut off (at most one per transfer) can be missing.
    assert accepted - 2 * CHUNK <= sent <= accepted
    assert sent >= 3 * CHUNK  # far more than the finished files' bytes (none finished)


async def test_a_file_changed_mid_upload_counts_its_accepted_bytes(
    make_emulator: EmulatorFactory, tmp_path: Path
) -> None:
    log = tmp_path / "requests.ndjson"
    emulator = await make_emulator(request_log=log)
    source = tmp_path / "src"
    source.mkdir()
    hot = source / "hot.log"
    hot.write_bytes(b"a" * (6 * CHUNK))
    (source / "calm.txt").write_bytes(b"calm")
    report = tmp_path / "report.json"
    args = upload_args(emulator, source, "--transfers", "2", "--bwlimit", "16MiB")
    with anyio.fail_after(60):
        process = await anyio.open_process(
            [sys.executable, "-m", "bulkdrive", *args, "--report", str(report)],
            cwd=tmp_path,
            env=cli_env(home=tmp_path),
        )
        async with process:
            await wait_for_accepted(log, 2 * CHUNK)
            with hot.open("ab") as f:  # the file grows while it is uploaded
                f.write(b"more")
            assert await process.wait() == 1
    data = json.loads(report.read_text())
    assert [f["exit_class"] for f in data["failures"]] == ["SourceChanged"]
    assert data["failures"][0]["hint"]
    assert data["bytes"]["sent"] == accepted_upload_bytes(log)
    assert data["bytes"]["sent"] >= 2 * CHUNK + 4


def figures(**overrides: object) -> Figures:
    base: dict[str, object] = dict(
        elapsed=5.0,
        bytes_processed=0,
        bytes_total=256 * MiB,
        bytes_sent=0,
        rate=None,
        walk_complete=True,
        files_total=1,
        uploaded=0,
        resumed=0,
        skipped=0,
        failed=1,
        in_flight=0,
        retries=0,
        resumes=0,
        bytes_failed=256 * MiB,
    )
    base.update(overrides)
    return Figures(**base)  # type: ignore[arg-type]


def test_failed_bytes_never_read_as_done() -> None:
    line = stat_line(figures())
    assert line.startswith("0 B of 256.0 MiB (0%)")
    assert "ETA 0.0s" in line  # nothing left to wait for, and nothing claimed stored
    almost = stat_line(figures(bytes_processed=256 * MiB - 1, failed=0, bytes_failed=0))
    assert "(99%)" in almost  # never rounded up to 100 %


class CountSeen(NullReporter):
    def __init__(self) -> None:
        self.counted: list[tuple[int, int]] = []
        self.found_before_count = -1
        self.found = 0

    def file_found(self, size: int) -> None:
        self.found += 1

    def totals_counted(self, files: int, size: int) -> None:
        self.counted.append((files, size))
        self.found_before_count = self.found


async def test_the_count_only_pass_fixes_the_totals_early(
    make_emulator: EmulatorFactory, tmp_path: Path
) -> None:
    emulator = await make_emulator()
    source = tmp_path / "src"
    for i in range(300):
        folder = source / f"d{i % 7}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"f{i}.txt").write_bytes(b"x" * i)
        (folder / f"f{i}.skip").write_bytes(b"left out by the filter")
    reporter = CountSeen()
    config = TransferConfig(transfers=2)
    plan = RunPlan(source, filters=WalkFilters(exclude=("*.skip",)), config=config, backlog=8)
    credentials = Credentials(user=USER, password=Secret(PASSWORD))
    async with EdgeDriveClient.connect(
        emulator.base_url, credentials, share_id=SHARE_ID, config=config
    ) as client:
        run = TreeUpload(client, plan, reporter=reporter)
        summary = await run.run()
    assert reporter.counted == [(300, sum(range(300)))]  # filters apply to the count
    assert (summary.files.total, summary.bytes.total) == reporter.counted[0]
    # known while the upload's own walk, held back by the uploads, had seen a fraction
    assert 0 <= reporter.found_before_count < 300
    known = run.statistics().total_known_after
    assert known is not None and summary.total_known_seconds == known
