"""`--shard K/N`: a stable split of the tree by path, one journal per shard, `status --shards`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_cli_upload import cli_env, run_cli, stored, upload_args

from bulkdrive.errors import ConfigError
from bulkdrive.settings import load_settings
from bulkdrive.shard import Shard, parse_shard, shard_journal_path, shard_of

from conftest import EmulatorFactory
from trees import assert_stored, make_tree


def test_the_hash_is_pinned() -> None:
    # The documented hash: first 8 bytes of SHA-256 of the UTF-8 path, big-endian, modulo N.
    # These values must never change: shards of one job may run different versions.
    # sha256(b"a/b.txt") starts 5550000d3b1cf1ff.
    assert shard_of("a/b.txt", 1000) == 0x5550000D3B1CF1FF % 1000 == 591
    # A name that is not UTF-8 (byte 0xff, held as a lone surrogate) hashes its raw bytes.
    assert [shard_of(p, 7) for p in ("a", "a/b.txt", "ünï/名前", "x\udcff")] == [4, 0, 4, 5]


@given(st.text(min_size=1), st.integers(min_value=1, max_value=64))
def test_every_path_is_in_exactly_one_shard(path: str, count: int) -> None:
    owners = [k for k in range(count) if Shard(k, count).owns(path)]
    assert owners == [shard_of(path, count)]


@pytest.mark.parametrize("text", ["3/3", "1/0", "-1/2", "a/b", "1", "1/2/3", ""])
def test_a_bad_shard_is_one_line(text: str) -> None:
    with pytest.raises(ConfigError, match="--shard: "):
        load_settings({"shard": text}, environ={})


def test_shard_from_the_environment() -> None:
    settings = load_settings({}, environ={"BULKDRIVE_SHARD": " 2 / 5 "})
    assert parse_shard(settings.shard) == Shard(2, 5) == parse_shard("2/5")


def test_each_shard_has_its_own_journal() -> None:
    path = Path("/state/journals/host-1-src-0123456789abcdef.sqlite")
    names = {shard_journal_path(path, Shard(k, 3)).name for k in range(3)}
    assert names == {f"host-1-src-0123456789abcdef.shard-{k}-of-3.sqlite" for k in range(3)}


def initiates(log: Path) -> int:
    """Upload requests that start a session (no requestId): one per file uploaded."""
    count = 0
    for line in log.read_text().splitlines():
        entry = json.loads(line)
        if entry["path"].endswith("/action/upload") and "requestId" not in entry["query"]:
            count += 1
    return count


@pytest.mark.anyio
async def test_three_shards_at_once_cover_the_tree_exactly_once(
    make_emulator: EmulatorFactory, tmp_path: Path
) -> None:
    log = tmp_path / "requests.ndjson"
    emulator = await make_emulator(request_log=log)
    source = make_tree(tmp_path / "src", small_files=150)
    files = sum(len(names) for _, _, names in os.walk(source))
    codes: dict[int, int] = {}

    async def shard(k: int) -> None:
        args = upload_args(emulator, source, "--shard", f"{k}/3", "--report", f"r{k}.json")
        done = await run_cli(*args, cwd=tmp_path)
        assert b"Traceback" not in done.stderr, done.stderr.decode()
        codes[k] = done.returncode

    async with anyio.create_task_group() as tg:
        for k in range(3):
            tg.start_soon(shard, k)
    assert codes == {0: 0, 1: 0, 2: 0}
    assert assert_stored(source, stored(emulator)) == files
    uploaded = [json.loads((tmp_path / f"r{k}.json").read_text()) for k in range(3)]
    per_shard = [r["files"]["uploaded"] for r in uploaded]
    assert sum(per_shard) == files and all(n > 0 for n in per_shard), per_shard
    assert initiates(log) == files  # no file initiated by two shards
    # Each shard's journal holds its own files; status sums them.
    status = await run_cli(
        "status",
        str(source),
        "--url",
        emulator.base_url,
        "--share",
        "1",
        "--shards",
        "3",
        cwd=tmp_path,
        env=cli_env(home=tmp_path),
    )
    text = status.stdout.decode()
    assert status.returncode == 0, status.stderr.decode()
    assert text.count("journal: ") == 3 and "sum of 3 journals" in text
    total = next(line for line in text.splitlines() if line.split()[:1] == ["total"])
    assert total.split()[1] == str(files), text
    done = next(line for line in text.splitlines() if line.split()[:1] == ["done"])
    assert done.split()[1] == str(files), text
