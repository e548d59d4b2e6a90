"""The migration commands through the CLI against the emulator: shares and ls."""

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
