"""`--transfers auto` end to end: the tuner backs off a busy server (`serve --max-active`),
the limit and its reasons are reported, and every file arrives whole."""

from __future__ import annotations

import itertools
import json
import os
import re
from collections.abc import Iterable
from pathlib import Path

import anyio
import pytest
from test_cli_upload import run_cli, upload_args

from bulkdrive import errors
from bulkdrive.auto_transfers import loop_busy
from bulkdrive.client import EdgeDriveClient
from bulkdrive.config import LARGE_FILE, Credentials, RetryPolicy, Secret, TransferConfig
from bulkdrive.emulator.network import NetworkModel
from bulkdrive.remote_folders import folder_creations
from bulkdrive.report import RunSummary
from bulkdrive.scheduler import RunPlan, SchedulerStatistics, TreeUpload
from bulkdrive.settings import load_settings, transfer_config

from conftest import PASSWORD, SHARE_ID, USER, EmulatorFactory
from trees import assert_stored, make_tree

pytestmark = pytest.mark.anyio

CREDENTIALS = Credentials(user=USER, password=Secret(PASSWORD))


async def test_auto_backs_off_a_busy_server_and_every_file_arrives(
    make_emulator: EmulatorFactory, tmp_path: Path
) -> None:
    # 50 ms away, each transfer completes ~20 files/s: more in flight pays, and the 32 it
    # starts with are more than the server takes at once.
    emulator = await make_emulator(network=NetworkModel(latency=0.05, max_active=10))
    source = tmp_path / "src"
    source.mkdir()
    for i in range(700):
        (source / f"f{i:03d}.bin").write_bytes(os.urandom(64 + i))
    config = TransferConfig(
        transfers=64, auto_transfers=True, retry=RetryPolicy(attempts=20, max_wait=1.0)
    )
    plan = RunPlan(source=source, remote_folder="\\auto", config=config)
    async with EdgeDriveClient.connect(
        emulator.base_url, CREDENTIALS, share_id=SHARE_ID, config=config
    ) as client:
        run = TreeUpload(client, plan)
        summary = await run.run()
    stats = run.statistics()
    assert summary.files.failed == 0
    assert_stored(source, emulator.config.root / SHARE_ID / "auto")
    # Past what the server takes, it met the 503s and went down (at the first look, by the
    # refusals counted: at most by half at once).
    assert emulator.network.statistics().refused > 0 and stats.pushbacks > 0
    # Every refusal counts, whatever the request: the uploads', and the metadata looks that
    # follow a refused upload (an unknown outcome), which the client retries on its own.
    assert client.statistics().pushbacks == emulator.network.statistics().refused
    assert summary.transfers is not None and summary.transfers.peak == 32
    assert stats.transfers_limit <= 16
    assert stats.transfers_changes >= 1 and summary.transfers.changes == stats.transfers_changes
    assert 1 <= summary.transfers.mean <= summary.transfers.peak


async def test_cli_auto_logs_each_change_and_reports_peak_and_mean(
    make_emulator: EmulatorFactory, tmp_path: Path
) -> None:
    # 50 ms away: the 32 in flight it starts with take over a second for the 800 files, time
    # for a step up.
    emulator = await make_emulator(network=NetworkModel(latency=0.05))
    source = make_tree(tmp_path / "src", small_files=800)
    report = tmp_path / "report.json"
    done = await run_cli(
        *upload_args(emulator, source, "--transfers", "auto", "-v", "--report", str(report)),
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr.decode()
    output = done.stdout.decode() + done.stderr.decode()
    # 50 ms away the client mostly waits for the server: a jump, and why. Where the loop's
    # busy time is unknown, or the machine is so loaded that the loop mostly waited for a
    # core (which counts as busy), a doubling.
    first = re.search(r"transfers 32 → (\d+): starting to measure at 32(.*)", output)
    assert first is not None, output
    if first[1] == "128":
        assert loop_busy() is not None and first[2].startswith(" (the client waited")
    else:
        assert first[1] == "64" and first[2] == ""
    used = json.loads(report.read_text())["transfers_auto"]
    assert used["peak"] >= 8 and 1 <= used["mean"] <= used["peak"]
    # Each change, in order, as the log said it: what a run that missed did, afterwards.
    steps = used["steps"]
    assert len(steps) == used["changes"] >= 1
    assert steps[0]["old"] == 32 and steps[0]["new"] == int(first[1])
    assert steps[0]["why"].startswith("starting to measure at 32")
    assert all(a["new"] == b["old"] and a["at"] <= b["at"] for a, b in itertools.pairwise(steps))
    for step in steps:
        assert f"transfers {step['old']} → {step['new']}: {step['why']}" in output
    assert "transfers auto: peak" in output
    assert_stored(source, emulator.config.root / SHARE_ID)


async def test_cli_auto_starts_large_files_with_fewer_in_flight(
    make_emulator: EmulatorFactory, tmp_path: Path
) -> None:
    # The first files handed out, one per transfer, are over 1 MiB: the run goes down to 8
    # at the tuner's first look, before a file has finished, and says why.
    emulator = await make_emulator(network=NetworkModel(latency=0.1))
    source = tmp_path / "src"
    source.mkdir()
    for i in range(64):
        (source / f"f{i:02d}.bin").write_bytes(os.urandom(2**20 + i))
    done = await run_cli(*upload_args(emulator, source, "--transfers", "auto", "-v"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr.decode()
    output = done.stdout.decode() + done.stderr.decode()
    first = re.search(r"transfers 32 → (\d+): (.*)", output)
    assert first is not None, output
    assert first[1] == "8" and first[2].startswith("large files: starting with fewer")
    assert_stored(source, emulator.config.root / SHARE_ID)


def _files(folder: Path, sizes: Iterable[int]) -> Path:
    """`folder` with one file of random bytes per size."""
    folder.mkdir()
    for i, size in enumerate(sizes):
        (folder / f"f{i:03d}.bin").write_bytes(os.urandom(size))
    return folder


async def _auto_run(emulator_url: str, source: Path) -> tuple[RunSummary, SchedulerStatistics]:
    config = TransferConfig(transfers=64, auto_transfers=True)
    plan = RunPlan(source=source, remote_folder="\\auto", config=config)
    async with EdgeDriveClient.connect(
        emulator_url, CREDENTIALS, share_id=SHARE_ID, config=config
    ) as client:
        run = TreeUpload(client, plan)
        summary = await run.run()
    return summary, run.statistics()


@pytest.mark.parametrize(
    ("sizes", "large"),
    [([LARGE_FILE + i for i in range(40)], True), ([100 + i for i in range(300)], False)],
    ids=["large", "small"],
)
async def test_the_first_files_show_their_sizes_before_more_start(
    make_emulator: EmulatorFactory, tmp_path: Path, sizes: list[int], large: bool
) -> None:
    # 50 ms away every file stays in flight a while. Large files: only `large_start` (8)
    # are handed out until their sizes have been seen, and the run starts there (started at
    # 32, 32 large files held their chunk buffers at once before the tuner's first look).
    # Small files: the 8 let the run go on to 32 at once, and further as the tuner climbs.
    emulator = await make_emulator(network=NetworkModel(latency=0.05))
    source = _files(tmp_path / "src", sizes)
    summary, stats = await _auto_run(emulator.base_url, source)
    assert summary.files.failed == 0 and summary.files.uploaded == len(sizes)
    assert_stored(source, emulator.config.root / SHARE_ID / "auto")
    assert summary.transfers is not None
    if large:
        # 8 before the first look (32 at once before); the tuner may try 16 afterwards.
        assert stats.max_in_flight <= 16 and summary.transfers.peak <= 16
        assert summary.transfers.steps[0].reason.startswith("large files: starting with fewer")
    else:
        assert stats.max_in_flight >= 32 and summary.transfers.peak >= 32


async def test_the_first_sample_starts_with_the_first_files_done(
    make_emulator: EmulatorFactory, tmp_path: Path
) -> None:
    # 100 ms away, the 32 transfers' files come back in waves a round trip apart. The tuner's
    # first sample starts at the look that first sees files done: it comes with the first
    # wave, not at the next tick (a quarter second: after the second wave), so the start
    # limit is judged a round trip or two sooner.
    emulator = await make_emulator(network=NetworkModel(latency=0.1))
    source = _files(tmp_path / "src", range(100, 500))
    done = await run_cli(*upload_args(emulator, source, "--transfers", "auto", "-vv"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr.decode()
    output = done.stdout.decode() + done.stderr.decode()
    looks = [
        int(files) for files in re.findall(r"tuner: t=\S+ limit=\d+ bytes=\d+ files=(\d+)", output)
    ]
    assert looks[0] == 0, output  # the sizes of the first 8 handed out: nothing done yet
    first_done = next(files for files in looks if files)
    assert first_done <= 32, looks
    assert_stored(source, emulator.config.root / SHARE_ID)


async def test_a_run_of_fewer_files_than_the_first_look_needs_ends(
    make_emulator: EmulatorFactory, tmp_path: Path
) -> None:
    # 3 files: the first look never has its 8; the end releases it, and the report says the
    # run kept the limit it started with.
    emulator = await make_emulator(network=NetworkModel(latency=0.05))
    source = _files(tmp_path / "src", range(1000, 1003))
    with anyio.fail_after(30):
        summary, stats = await _auto_run(emulator.base_url, source)
    assert summary.files.uploaded == 3 and stats.max_in_flight == 3
    assert_stored(source, emulator.config.root / SHARE_ID / "auto")
    assert summary.transfers is not None and summary.transfers.peak in (8, 32)
    assert summary.transfers.changes == 0


async def test_folder_creations_follow_the_limit_as_at_a_fixed_setting(
    make_emulator: EmulatorFactory, tmp_path: Path
) -> None:
    # 50 ms away, 40 folders found long before their creations end, and 16 or more files in
    # flight: folder creations overlap as far as they are allowed to.
    emulator = await make_emulator(strict_parents=True, network=NetworkModel(latency=0.05))
    source = tmp_path / "src"
    for i in range(40):
        folder = source / f"d{i:02d}" / "inner"
        folder.mkdir(parents=True)
        (folder / "f.bin").write_bytes(os.urandom(100 + i))
    config = TransferConfig(transfers=32, auto_transfers=True)
    plan = RunPlan(source=source, remote_folder="\\", config=config)
    async with EdgeDriveClient.connect(
        emulator.base_url, CREDENTIALS, share_id=SHARE_ID, config=config
    ) as client:
        run = TreeUpload(client, plan)
        summary = await run.run()
    stats = run.statistics()
    assert summary.files.failed == 0 and stats.folders_created == 80
    assert_stored(source, emulator.config.root / SHARE_ID)
    # As many at once as a fixed --transfers at the limits it set allows: more than the 4 of a
    # few transfers, never the tuner's whole limit (the uploads keep their connections).
    assert summary.transfers is not None and summary.transfers.peak >= 16
    assert folder_creations(8) < stats.folders_at_once <= folder_creations(summary.transfers.peak)


def test_folder_creations_grow_with_the_transfers() -> None:
    # A few beside a few transfers (a quick request each on a fast link); far from the server
    # a tree's files wait for their folders unless about one is created per two transfers.
    assert [folder_creations(t) for t in (1, 2, 4, 8, 16, 32, 128)] == [1, 2, 4, 4, 8, 16, 64]


def test_auto_is_bounded_by_max_transfers_and_by_memory() -> None:
    def limit(**flags: str) -> TransferConfig:
        return transfer_config(load_settings(flags, environ={}))

    assert limit(transfers="auto") == TransferConfig(transfers=128, auto_transfers=True)
    assert limit(transfers="auto", max_transfers="16").transfers == 16
    # 64 MiB hold 8 transfers of two 4 MiB chunks.
    assert limit(transfers="auto", max_memory="64MiB").transfers == 8
    assert limit(transfers="AUTO", max_transfers="300", max_memory="4GiB").transfers == 300
    assert limit(transfers="12") == TransferConfig(transfers=12)
    with pytest.raises(errors.ConfigError, match="--max-memory"):
        limit(transfers="auto", max_memory="1MiB")
    with pytest.raises(errors.ConfigError, match="--transfers"):
        limit(transfers="fast")
