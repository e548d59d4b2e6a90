"""`bulkdrive journals`: the inventory of the state folder, and pruning that spares live runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_cli_upload import cli_env, run_cli, upload_args

from bulkdrive.emulator import Emulator
from bulkdrive.journal import FileRecord, FileState, JobKey, Journal, default_journal_path

pytestmark = pytest.mark.anyio


def journal_files(path: Path) -> list[Path]:
    return [p for p in path.parent.iterdir() if p.name.startswith(path.name)]


async def make_journal(state: Path, source: str, files: int) -> Path:
    key = JobKey("https://edge.example.com/webconsole/api", "7", "archive", source)
    path = default_journal_path(key, env={"BULKDRIVE_STATE_DIR": str(state)})
    async with Journal.open(path, key, exclusive=True) as journal:
        for n in range(files):
            await journal.record(FileRecord(f"f{n}", 10, 1, FileState.DONE))
        await journal.record(FileRecord("bad", 5, 1, FileState.FAILED, last_error="boom"))
    return path


async def test_journals_lists_each_job_with_counts_and_size(
    emulator: Emulator, tmp_path: Path
) -> None:
    source = tmp_path / "photos"
    (source / "d").mkdir(parents=True)
    for n in range(3):
        (source / "d" / f"{n}.jpg").write_bytes(b"x" * (n + 1))
    up = await run_cli(*upload_args(emulator, source, "--to", "\\pics"), cwd=tmp_path)
    assert up.returncode == 0, up.stderr.decode()
    await make_journal(tmp_path / "state", "/data/other", files=4)

    listed = await run_cli("journals", "--json", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr.decode()
    jobs = {j["source"]: j for j in json.loads(listed.stdout)}
    assert set(jobs) == {str(source), "/data/other"}
    ours = jobs[str(source)]
    assert ours["url"] == emulator.base_url
    assert ours["share"] == "1" and ours["remote_folder"] == "\\pics"
    assert ours["files"]["done"] == 3 and ours["total_files"] == 3 and ours["total_bytes"] == 6
    assert ours["size_on_disk"] > 0 and ours["running"] is False
    other = jobs["/data/other"]
    assert other["files"]["done"] == 4 and other["files"]["failed"] == 1
    assert other["share"] == "7" and other["remote_folder"] == "archive"

    table = await run_cli("journals", cwd=tmp_path)
    assert table.returncode == 0, table.stderr.decode()
    assert str(source) in table.stdout.decode() and "/data/other" in table.stdout.decode()


async def test_prune_deletes_old_journals_but_never_one_a_run_holds(tmp_path: Path) -> None:
    state = tmp_path / "state"
    idle = await make_journal(state, "/data/idle", files=2)
    live = await make_journal(state, "/data/live", files=2)
    assert journal_files(idle) and journal_files(live)
    env = cli_env(home=tmp_path)

    recent = await run_cli("journals", "--prune", "--older-than", "30d", cwd=tmp_path, env=env)
    assert recent.returncode == 0, recent.stderr.decode()
    assert idle.exists() and live.exists()  # both were written a moment ago

    # The live one is held as a running upload holds it: an exclusive lock on PATH.lock.
    async with Journal.open(live, exclusive=True):
        dry = await run_cli(
            "journals", "--prune", "--older-than", "0s", "--dry-run", cwd=tmp_path, env=env
        )
        assert dry.returncode == 0, dry.stderr.decode()
        assert f"would delete {idle.name}" in dry.stdout.decode()
        assert "an upload is using it" in dry.stdout.decode()
        assert idle.exists() and live.exists()

        pruned = await run_cli("journals", "--prune", "--older-than", "0s", cwd=tmp_path, env=env)
        assert pruned.returncode == 0, pruned.stderr.decode()
        assert f"deleted {idle.name}" in pruned.stdout.decode()
        assert journal_files(idle) == []  # the database, its WAL, shared memory and lock
        assert live.exists()
        running = await run_cli("journals", "--json", cwd=tmp_path, env=env)
        assert [j["running"] for j in json.loads(running.stdout)] == [True]

    async with Journal.open(live) as journal:  # untouched: every record is still there
        assert journal.summary().files[FileState.DONE] == 2


async def test_journals_refuses_a_bad_duration_in_one_line(tmp_path: Path) -> None:
    done = await run_cli("journals", "--prune", "--older-than", "soon", cwd=tmp_path)
    assert done.returncode == 2
    assert "30d" in done.stderr.decode() and done.stderr.decode().count("\n") == 1
    alone = await run_cli("journals", "--dry-run", cwd=tmp_path)
    assert alone.returncode == 2
