"""The migration commands through the CLI against the emulator: shares, ls, check, journals."""

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


async def test_shares_lists_permission_owner_and_public(emulator: Emulator, tmp_path: Path) -> None:
    table = await run_cli("shares", *connection(emulator), cwd=tmp_path)
    assert table.returncode == 0, table.stderr.decode()
    rows = {line.split()[0]: line.split() for line in table.stdout.decode().splitlines()[1:]}
    assert rows["1"] == ["1", "projects", "writable", USER, "no"]
    assert rows["2"] == ["2", "readonly", "read-only", USER, "no"]
    assert rows["3"] == ["3", "public", "writable", USER, "yes"]

    as_json = await run_cli("shares", *connection(emulator), "--json", cwd=tmp_path)
    assert as_json.returncode == 0, as_json.stderr.decode()
    shares = {s["id"]: s for s in json.loads(as_json.stdout)}
    assert shares["2"] == {
        "id": "2",
        "name": "readonly",
        "permission": "read-only",
        "owner": USER,
        "public": False,
    }
    assert shares["3"]["public"] is True and shares["3"]["permission"] == "writable"
    assert shares["1"]["permission"] == "writable"


async def test_shares_with_a_wrong_password_is_one_line(emulator: Emulator, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BULKDRIVE_")}
    env.update(BULKDRIVE_PASSWORD="wrong", BULKDRIVE_STATE_DIR=str(tmp_path / "state"))
    done = await run_cli("shares", *connection(emulator), cwd=tmp_path, env=env)
    assert done.returncode == 3
    assert done.stderr.decode().count("\n") == 1 and b"Traceback" not in done.stderr


async def test_ls_pages_through_a_folder_larger_than_a_page(
    emulator: Emulator, tmp_path: Path
) -> None:
    big = stored(emulator, "big")
    big.mkdir(parents=True)
    count = 1234  # more than one page of the client (1000) and many of the server's default (50)
    for i in range(count):
        (big / f"f{i:05d}.txt").write_bytes(b"x" * (i % 7))
    (big / "sub").mkdir()
    (big / "sub" / "inner.bin").write_bytes(b"12345")
    before = emulator.statistics().listings

    done = await run_cli("ls", "\\big", *connection(emulator), "--share", SHARE_ID, cwd=tmp_path)
    assert done.returncode == 0, done.stderr.decode()
    lines = done.stdout.decode().splitlines()
    assert len(lines) == count + 1
    names = {line.split()[-1]: line.split()[-2] for line in lines}
    assert names["f00008.txt"] == "1" and names["f01233.txt"] == str(1233 % 7)
    assert names["sub/"] == "-"
    assert emulator.statistics().listings - before == 2  # two pages, one request each

    recursive = await run_cli(
        "ls", "big", "-R", "--json", *connection(emulator), "--share", SHARE_ID, cwd=tmp_path
    )
    assert recursive.returncode == 0, recursive.stderr.decode()
    entries = {e["path"]: e for e in json.loads(recursive.stdout)}
    assert len(entries) == count + 2
    assert entries["sub/inner.bin"]["size"] == 5 and entries["sub/inner.bin"]["type"] == "file"
    assert entries["sub"]["type"] == "folder"
    mtime = int((big / "sub" / "inner.bin").stat().st_mtime)
    assert entries["sub/inner.bin"]["mtime"] == mtime


async def test_ls_of_a_missing_folder_fails_in_one_line(emulator: Emulator, tmp_path: Path) -> None:
    done = await run_cli("ls", "\\nope", *connection(emulator), "--share", SHARE_ID, cwd=tmp_path)
    assert done.returncode == 1
    assert "no folder \\nope" in done.stderr.decode()
    assert b"Traceback" not in done.stderr
    unknown = await run_cli("ls", *connection(emulator), "--share", "99", cwd=tmp_path)
    assert unknown.returncode == 3, unknown.stderr.decode()


async def test_ls_shows_what_an_upload_stored(emulator: Emulator, tmp_path: Path) -> None:
    source = tmp_path / "src"
    (source / "d").mkdir(parents=True)
    (source / "d" / "a.txt").write_bytes(b"abc")
    done = await run_cli(*upload_args(emulator, source, "--to", "\\up"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr.decode()
    listed = await run_cli(
        "ls", "\\up", "-R", *connection(emulator), "--share", SHARE_ID, cwd=tmp_path
    )
    assert listed.returncode == 0, listed.stderr.decode()
    lines = sorted(line.split(maxsplit=3)[2:] for line in listed.stdout.decode().splitlines())
    assert lines == [["-", "d/"], ["3", "d/a.txt"]]


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
