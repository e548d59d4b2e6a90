"""`bulkdrive upload` end to end: a real subprocess against the emulator over loopback."""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import anyio
import pytest

from bulkdrive.collector import YOUNG_THRESHOLD, fewer_collections
from bulkdrive.emulator import Emulator
from bulkdrive.journal import Journal

from conftest import PASSWORD, SHARE_ID, USER, EmulatorFactory
from trees import assert_stored, make_tree

pytestmark = pytest.mark.anyio


def cli_env(extra: Mapping[str, str] | None = None, *, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BULKDRIVE_")}
    env.update(
        BULKDRIVE_PASSWORD=PASSWORD,
        BULKDRIVE_STATE_DIR=str(home / "state"),
        XDG_CONFIG_HOME=str(home / "config"),
        PYTHONUNBUFFERED="1",
    )
    env.update(extra or {})
    return env


async def run_cli(
    *args: str, cwd: Path, env: Mapping[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[bytes]:
    with anyio.fail_after(timeout):
        return await anyio.run_process(
            [sys.executable, "-m", "bulkdrive", *args],
            cwd=cwd,
            env=dict(env or cli_env(home=cwd)),
            check=False,
        )


def upload_args(emulator: Emulator, source: Path, *extra: str, share: str = SHARE_ID) -> list[str]:
    return [
        "upload",
        str(source),
        "--url",
        emulator.base_url,
        "--user",
        USER,
        "--share",
        share,
        "--no-progress",
        *extra,
    ]


def stored(emulator: Emulator, *parts: str, share: str = SHARE_ID) -> Path:
    return emulator.config.root.joinpath(share, *parts)


async def test_tree_is_stored_byte_identical(emulator: Emulator, tmp_path: Path) -> None:
    source = make_tree(tmp_path / "src", small_files=1000)
    done = await run_cli(*upload_args(emulator, source, "--to", "\\backup\\2024"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr.decode()
    count = assert_stored(source, stored(emulator, "backup", "2024"))
    assert count >= 1000 + 10
    assert b"Traceback" not in done.stderr


async def test_filters_and_symlink_policy(emulator: Emulator, tmp_path: Path) -> None:
    source = tmp_path / "src"
    (source / "keep" / "deep").mkdir(parents=True)
    (source / "build").mkdir()
    (source / "keep" / "a.txt").write_bytes(b"a" * 10)
    (source / "keep" / "deep" / "b.txt").write_bytes(b"b" * 2000)
    (source / "keep" / "c.log").write_bytes(b"c")
    (source / "build" / "out.txt").write_bytes(b"o")
    (source / "loop").symlink_to(source, target_is_directory=True)
    (source / "link.txt").symlink_to(source / "keep" / "a.txt")
    excludes = tmp_path / "excludes"
    excludes.write_text("# comment\nbuild/**\n", encoding="utf-8")
    done = await run_cli(
        *upload_args(
            emulator,
            source,
            "--exclude",
            "*.log",
            "--exclude-from",
            str(excludes),
            "--max-size",
            "1000",
            "-v",
        ),
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr.decode()
    share = stored(emulator)
    assert (share / "keep" / "a.txt").read_bytes() == b"a" * 10
    assert not (share / "keep" / "deep" / "b.txt").exists()  # --max-size
    assert not (share / "keep" / "c.log").exists()  # --exclude
    assert not (share / "build").exists()  # --exclude-from
    assert not (share / "loop").exists() and not (share / "link.txt").exists()
    output = done.stdout.decode() + done.stderr.decode()
    assert "link.txt" in output  # skipped symlinks are reported

    followed = await run_cli(
        *upload_args(emulator, source, "--follow-symlinks", "--to", "\\followed"), cwd=tmp_path
    )
    assert followed.returncode == 0, followed.stderr.decode()
    assert (share / "followed" / "link.txt").read_bytes() == b"a" * 10
    assert (share / "followed" / "keep" / "deep" / "b.txt").read_bytes() == b"b" * 2000


async def test_one_failing_file_does_not_stop_the_others(
    emulator: Emulator, tmp_path: Path
) -> None:
    source = make_tree(tmp_path / "src", small_files=50)
    # A backslash is a path separator for Edge Drive: no server can store this name as given.
    (source / "bad\\name.txt").write_bytes(b"x")
    done = await run_cli(*upload_args(emulator, source), cwd=tmp_path)
    assert done.returncode == 1, done.stderr.decode()
    assert_stored(source, stored(emulator), ignore={"bad\\name.txt"})
    assert "bad\\name.txt" in done.stdout.decode() + done.stderr.decode()


async def test_exit_codes(make_emulator: EmulatorFactory, tmp_path: Path) -> None:
    emulator = await make_emulator(quota=64 * 1024)
    source = tmp_path / "src"
    source.mkdir()
    (source / "f.txt").write_bytes(b"hello")
    env = cli_env(home=tmp_path)

    bad_flag = await run_cli("upload", str(source), "--transfers", "zero", cwd=tmp_path, env=env)
    assert bad_flag.returncode == 2
    assert b"--transfers" in bad_flag.stderr and b"Traceback" not in bad_flag.stderr

    missing = await run_cli(*upload_args(emulator, tmp_path / "nope"), cwd=tmp_path, env=env)
    assert missing.returncode == 2 and b"not found" in missing.stderr

    wrong = await run_cli(
        *upload_args(emulator, source),
        cwd=tmp_path,
        env=cli_env({"BULKDRIVE_PASSWORD": "wrong"}, home=tmp_path),
    )
    assert wrong.returncode == 3, wrong.stderr.decode()
    assert b"Traceback" not in wrong.stderr and wrong.stderr.strip().count(b"\n") == 0

    readonly = await run_cli(*upload_args(emulator, source, share="2"), cwd=tmp_path, env=env)
    assert readonly.returncode == 3, readonly.stderr.decode()

    unknown = await run_cli(*upload_args(emulator, source, share="99"), cwd=tmp_path, env=env)
    assert unknown.returncode == 3, unknown.stderr.decode()

    (source / "big.bin").write_bytes(os.urandom(200 * 1024))
    quota = await run_cli(*upload_args(emulator, source), cwd=tmp_path, env=env)
    assert quota.returncode == 4, quota.stderr.decode()
    assert b"quota" in quota.stderr.lower() or b"413" in quota.stderr

    (source / "big.bin").unlink()
    ok = await run_cli(*upload_args(emulator, source), cwd=tmp_path, env=env)
    assert ok.returncode == 0, ok.stderr.decode()
    assert stored(emulator, "f.txt").read_bytes() == b"hello"


async def test_config_file_and_environment(emulator: Emulator, tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "a.txt").write_bytes(b"A")
    config = tmp_path / "bulkdrive.toml"
    config.write_text(
        f'url = "{emulator.base_url}"\nuser = "{USER}"\nshare = "{SHARE_ID}"\n'
        'to = "\\\\from-file"\n',
        encoding="utf-8",
    )
    env = cli_env({"BULKDRIVE_TO": "\\from-env"}, home=tmp_path)
    done = await run_cli("upload", str(source), "--no-progress", cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr.decode()
    assert stored(emulator, "from-env", "a.txt").read_bytes() == b"A"

    flagged = await run_cli(
        "upload", str(source), "--no-progress", "--to", "\\from-flag", cwd=tmp_path, env=env
    )
    assert flagged.returncode == 0, flagged.stderr.decode()
    assert stored(emulator, "from-flag", "a.txt").read_bytes() == b"A"

    config.write_text('transfers = "lots"\n', encoding="utf-8")
    bad = await run_cli("upload", str(source), cwd=tmp_path, env=env)
    assert bad.returncode == 2 and b"transfers" in bad.stderr


async def test_embedded_emulator_is_the_default_target(tmp_path: Path) -> None:
    source = make_tree(tmp_path / "src", small_files=20)
    env = cli_env(home=tmp_path)
    del env["BULKDRIVE_PASSWORD"]
    done = await run_cli("upload", str(source), "--no-progress", cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr.decode()
    # the notice goes to stderr: stdout is the run's own output
    assert "local emulator" in done.stderr.decode()
    assert "local emulator" not in done.stdout.decode()
    assert_stored(source, tmp_path / "bulkdrive-data" / "1")


async def test_sigint_stops_cleanly_with_130(
    make_emulator: EmulatorFactory, tmp_path: Path
) -> None:
    emulator = await make_emulator(fault_rate=1.0, faults=("delay",), fault_delay_seconds=0.2)
    source = make_tree(tmp_path / "src", small_files=200)
    with anyio.fail_after(60):
        process = await anyio.open_process(
            [sys.executable, "-m", "bulkdrive", *upload_args(emulator, source, "--transfers", "2")],
            cwd=tmp_path,
            env=cli_env(home=tmp_path),
        )
        async with process:
            # Signal only once the run is under way (login, share check, then uploads): a
            # fixed sleep raced the interpreter's start-up on a busy machine.
            while emulator.statistics().requests < 3 and process.returncode is None:
                await anyio.sleep(0.05)
            process.send_signal(signal.SIGINT)
            code = await process.wait()
            assert process.stderr is not None
            err = (await process.stderr.receive()).decode()
    assert code == 130, err
    assert "resume" in err
    assert "Traceback" not in err


async def test_a_journal_that_cannot_be_written_stops_the_run_in_one_line(
    emulator: Emulator, tmp_path: Path
) -> None:
    source = make_tree(tmp_path / "src", small_files=10)
    journal = tmp_path / "job.sqlite"
    dry = await run_cli(
        *upload_args(emulator, source, "--journal", str(journal), "--dry-run"), cwd=tmp_path
    )
    assert dry.returncode == 0, dry.stderr.decode()
    with contextlib.closing(sqlite3.connect(journal)) as db:  # every write now fails
        for table in ("files", "in_flight"):  # a file's end, a batch's in-flight mark
            db.execute(
                f"CREATE TRIGGER full_{table} BEFORE INSERT ON {table} "
                "BEGIN SELECT RAISE(ABORT, 'simulated disk full'); END"
            )
        db.commit()
    done = await run_cli(*upload_args(emulator, source, "--journal", str(journal)), cwd=tmp_path)
    assert done.returncode == 1, done.stderr.decode()
    assert b"Traceback" not in done.stderr
    assert b"simulated disk full" in done.stderr and b"--journal" in done.stderr
    assert emulator.statistics().initiates == 0  # nothing was sent without its in-flight mark


async def test_a_second_run_on_the_same_journal_is_refused_in_one_line(
    emulator: Emulator, tmp_path: Path
) -> None:
    source = make_tree(tmp_path / "src", small_files=5)
    journal = tmp_path / "job.sqlite"
    async with Journal.open(journal, exclusive=True):  # a run of this job, still going
        busy = await run_cli(
            *upload_args(emulator, source, "--journal", str(journal)), cwd=tmp_path
        )
        look = await run_cli(
            *upload_args(emulator, source, "--journal", str(journal), "--dry-run"), cwd=tmp_path
        )
    assert look.returncode == 0, look.stderr.decode()  # a dry run only reads beside a run
    assert b"dry run: would upload" in look.stdout
    assert busy.returncode == 2, busy.stderr.decode()
    assert b"Traceback" not in busy.stderr
    assert b"in use by another bulkdrive upload" in busy.stderr
    assert emulator.statistics().initiates == 0
    done = await run_cli(*upload_args(emulator, source, "--journal", str(journal)), cwd=tmp_path)
    assert done.returncode == 0, done.stderr.decode()
    assert_stored(source, stored(emulator))


async def test_check_remote_survives_a_folder_it_cannot_list(
    emulator: Emulator, tmp_path: Path
) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "a.txt").write_bytes(b"a")
    (source / "b.txt").write_bytes(b"b")
    blocker = tmp_path / "x"
    blocker.write_bytes(b"a file where the run wants a folder")
    first = await run_cli(*upload_args(emulator, blocker), cwd=tmp_path)
    assert first.returncode == 0, first.stderr.decode()
    done = await run_cli(
        *upload_args(emulator, source, "--to", "\\x", "--check-remote"), cwd=tmp_path
    )
    # Listing \x fails (it is a file); the files are tried and fail one by one, no traceback.
    assert done.returncode == 1, done.stderr.decode()
    assert b"Traceback" not in done.stdout + done.stderr
    output = (done.stdout + done.stderr).decode()
    assert "a.txt" in output and "b.txt" in output
    assert stored(emulator, "x").read_bytes() == b"a file where the run wants a folder"


def test_the_run_collects_garbage_rarely_and_then_as_before() -> None:
    """The upload's collector: what exists at the start frozen out of the collections, young
    collections every YOUNG_THRESHOLD allocations; both undone when the run ends."""
    before = gc.get_threshold()
    with fewer_collections():
        assert gc.get_threshold()[0] == YOUNG_THRESHOLD
        assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0
