"""`bulkdrive check` through the CLI against the emulator: what matches, what differs, the
upload's filters on both sides, and empty folders created and checked."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from test_cli_upload import run_cli, stored, upload_args

from bulkdrive.emulator import Emulator

from conftest import SHARE_ID, USER

pytestmark = pytest.mark.anyio


def connection(emulator: Emulator) -> list[str]:
    return ["--url", emulator.base_url, "--user", USER]


# --- check --------------------------------------------------------------------------------


def check_args(emulator: Emulator, source: Path, folder: str, *extra: str) -> list[str]:
    return [
        "check",
        str(source),
        *connection(emulator),
        "--share",
        SHARE_ID,
        "--to",
        folder,
        *extra,
    ]


def small_tree(root: Path) -> Path:
    (root / "docs" / "deep").mkdir(parents=True)
    (root / "docs" / "a.txt").write_bytes(b"alpha")
    (root / "docs" / "b.txt").write_bytes(b"bravo")
    (root / "docs" / "deep" / "c.bin").write_bytes(os.urandom(3000))
    (root / "top.txt").write_bytes(b"top")
    (root / "notes.log").write_bytes(b"log")
    return root


async def test_check_of_an_identical_tree_exits_0_and_counts_verified_files(
    emulator: Emulator, tmp_path: Path
) -> None:
    source = small_tree(tmp_path / "src")
    up = await run_cli(*upload_args(emulator, source, "--to", "\\mig"), cwd=tmp_path)
    assert up.returncode == 0, up.stderr.decode()
    report = tmp_path / "check.json"
    done = await run_cli(
        *check_args(emulator, source, "\\mig", "--report", str(report)), cwd=tmp_path
    )
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()
    assert "the remote matches" in done.stdout.decode()
    document = json.loads(report.read_text())
    assert document["match"] is True and document["differences"] == []
    # Uploaded with the integrity check, recorded in the journal, the same GUID on the share.
    assert document["counts"]["verified"] == 5 and document["counts"]["same"] == 0

    unverified = tmp_path / "src2"
    small_tree(unverified)
    up = await run_cli(
        *upload_args(emulator, unverified, "--to", "\\plain", "--no-verify"), cwd=tmp_path
    )
    assert up.returncode == 0, up.stderr.decode()
    plain = await run_cli(
        *check_args(emulator, unverified, "\\plain", "--report", str(report)), cwd=tmp_path
    )
    assert plain.returncode == 0, plain.stdout.decode()
    counts = json.loads(report.read_text())["counts"]
    assert counts["same"] == 5 and counts["verified"] == 0


async def test_check_lists_a_missing_a_changed_and_an_extra_file(
    emulator: Emulator, tmp_path: Path
) -> None:
    source = small_tree(tmp_path / "src")
    up = await run_cli(*upload_args(emulator, source, "--to", "\\mig"), cwd=tmp_path)
    assert up.returncode == 0, up.stderr.decode()
    (source / "docs" / "a.txt").write_bytes(b"alpha, longer now")  # changed: size
    b = source / "docs" / "b.txt"
    os.utime(b, (b.stat().st_atime, b.stat().st_mtime + 7))  # changed: time only
    (source / "top.txt").unlink()  # only on the remote now
    (source / "docs" / "deep" / "new.txt").write_bytes(b"new")  # not on the remote
    report, lines = tmp_path / "check.json", tmp_path / "check.ndjson"
    done = await run_cli(
        *check_args(
            emulator, source, "\\mig", "--report", str(report), "--report-files", str(lines)
        ),
        cwd=tmp_path,
    )
    assert done.returncode == 1, done.stderr.decode()
    out = done.stdout.decode()
    for expected in (
        "missing     docs/deep/new.txt",
        "differs     docs/a.txt",
        "remote-only top.txt",
    ):
        assert expected in out
    document = json.loads(report.read_text())
    assert document["match"] is False and document["differences_total"] == 4
    found = {d["path"]: d for d in document["differences"]}
    assert found["docs/a.txt"]["status"] == "differs"
    assert found["docs/a.txt"]["local"]["size"] == 17 and found["docs/a.txt"]["remote"]["size"] == 5
    assert (
        found["docs/b.txt"]["status"] == "differs" and "modified" in found["docs/b.txt"]["reason"]
    )
    assert found["docs/b.txt"]["local"]["size"] == found["docs/b.txt"]["remote"]["size"]
    assert found["top.txt"]["status"] == "remote-only"
    assert found["docs/deep/new.txt"]["status"] == "missing"
    every = [json.loads(line) for line in lines.read_text().splitlines()]
    statuses = {e["path"]: e["status"] for e in every}
    assert statuses == {
        "docs/a.txt": "differs",
        "docs/b.txt": "differs",
        "docs/deep/c.bin": "verified",
        "docs/deep/new.txt": "missing",
        "notes.log": "verified",
        "top.txt": "remote-only",
    }


async def test_check_applies_the_upload_filters_to_both_sides(
    emulator: Emulator, tmp_path: Path
) -> None:
    source = small_tree(tmp_path / "src")
    (source / "link.txt").symlink_to(source / "top.txt")
    up = await run_cli(
        *upload_args(emulator, source, "--to", "\\f", "--exclude", "*.log"), cwd=tmp_path
    )
    assert up.returncode == 0, up.stderr.decode()
    stored(emulator, "f", "docs", "scratch.tmp").write_bytes(b"server-side temp")
    filtered = ("--exclude", "*.log", "--exclude", "*.tmp")
    same = await run_cli(*check_args(emulator, source, "\\f", *filtered), cwd=tmp_path)
    assert same.returncode == 0, same.stdout.decode() + same.stderr.decode()
    assert "skipped      1" in same.stdout.decode()  # the symbolic link, as upload skips it

    lines = tmp_path / "all.ndjson"
    unfiltered = await run_cli(
        *check_args(emulator, source, "\\f", "--report-files", str(lines)), cwd=tmp_path
    )
    assert unfiltered.returncode == 1
    statuses = {e["path"]: e["status"] for e in map(json.loads, lines.read_text().splitlines())}
    assert statuses["notes.log"] == "missing"
    assert statuses["docs/scratch.tmp"] == "remote-only"
    assert statuses["link.txt"] == "skipped"

    sized = await run_cli(
        *check_args(emulator, source, "\\f", *filtered, "--max-size", "100"), cwd=tmp_path
    )
    assert sized.returncode == 0, sized.stdout.decode()  # c.bin (3000 bytes) left out on both sides

    nowhere = await run_cli(*check_args(emulator, source, "\\not-there"), cwd=tmp_path)
    assert nowhere.returncode == 1
    assert "does not exist" in nowhere.stdout.decode()


# --- empty folders ------------------------------------------------------------------------


async def test_empty_folders_are_created_and_checked(emulator: Emulator, tmp_path: Path) -> None:
    source = tmp_path / "src"
    (source / "empty" / "nested-empty").mkdir(parents=True)
    (source / "full").mkdir()
    (source / "full" / "f.txt").write_bytes(b"f")
    (source / "only-logs").mkdir()
    (source / "only-logs" / "x.log").write_bytes(b"x")

    plain = await run_cli(*upload_args(emulator, source, "--to", "\\plain"), cwd=tmp_path)
    assert plain.returncode == 0, plain.stderr.decode()
    assert not stored(emulator, "plain", "empty").exists()

    flags = ("--create-empty-folders", "--exclude", "*.log")
    up = await run_cli(*upload_args(emulator, source, "--to", "\\mig", *flags), cwd=tmp_path)
    assert up.returncode == 0, up.stderr.decode()
    assert stored(emulator, "mig", "empty", "nested-empty").is_dir()
    assert stored(emulator, "mig", "only-logs").is_dir()  # empty once its files are filtered out
    assert stored(emulator, "mig", "full", "f.txt").read_bytes() == b"f"

    same = await run_cli(*check_args(emulator, source, "\\mig", *flags), cwd=tmp_path)
    assert same.returncode == 0, same.stdout.decode() + same.stderr.decode()

    stored(emulator, "mig", "empty", "nested-empty").rmdir()
    stored(emulator, "mig", "stray").mkdir()
    report = tmp_path / "r.json"
    missing = await run_cli(
        *check_args(emulator, source, "\\mig", *flags, "--report", str(report)), cwd=tmp_path
    )
    assert missing.returncode == 1
    document = json.loads(report.read_text())
    assert document["counts"]["missing-folders"] == 1
    assert document["counts"]["remote-only-folders"] == 1
    found = {(d["path"], d["status"], d["type"]) for d in document["differences"]}
    assert found == {
        ("empty/nested-empty", "missing", "folder"),
        ("stray", "remote-only", "folder"),
    }
    # Without the flag folders are not compared: the files alone match.
    files_only = await run_cli(
        *check_args(emulator, source, "\\mig", "--exclude", "*.log"), cwd=tmp_path
    )
    assert files_only.returncode == 0, files_only.stdout.decode()
