"""The comparison of one file, and what the journal keeps for it ("verified")."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bulkdrive import journal as journal_module
from bulkdrive.check import Version, difference, verified
from bulkdrive.journal import FileRecord, FileState, Journal

pytestmark = pytest.mark.anyio

NS = 1_000_000_000
sizes = st.integers(min_value=0, max_value=2**45)
seconds = st.integers(min_value=0, max_value=2**33)


@given(sizes, seconds, st.integers(min_value=0, max_value=NS - 1))
def test_a_file_is_the_same_at_whole_seconds(size: int, second: int, fraction: int) -> None:
    # The server keeps whole seconds: a local mtime's fraction never makes a difference.
    assert difference(Version.local(size, second * NS + fraction), Version(size, second)) is None


@given(sizes, sizes, seconds, seconds)
def test_any_other_size_or_second_differs_and_says_which(
    size: int, other_size: int, second: int, other_second: int
) -> None:
    why = difference(Version(size, second), Version(other_size, other_second))
    assert (why is None) == (size == other_size and second == other_second)
    if why is not None:
        assert ("size" in why) == (size != other_size)
        assert ("modified" in why) == (second != other_second)
    assert difference(Version(size, second), None) == "not on the remote"


def test_verified_needs_a_verified_done_record_of_this_very_version() -> None:
    done = FileRecord("a", 10, 5 * NS + 1, FileState.DONE, file_guid="g1", verified=True)
    assert verified(done, 10, 5 * NS + 1, "g1")
    assert verified(done, 10, 5 * NS + 1, "")  # a server that names no GUID
    assert not verified(done, 10, 5 * NS + 2, "g1")  # another local version, same second
    assert not verified(done, 11, 5 * NS + 1, "g1")
    assert not verified(done, 10, 5 * NS + 1, "g2")  # the share holds another upload
    unverified = FileRecord("a", 10, 5 * NS + 1, FileState.DONE, file_guid="g1")
    assert not verified(unverified, 10, 5 * NS + 1, "g1")
    partial = FileRecord("a", 10, 5 * NS + 1, FileState.PARTIAL, verified=True)
    assert not verified(partial, 10, 5 * NS + 1, "g1")
    assert not verified(None, 10, 5 * NS + 1, "g1")


async def test_a_version_1_journal_gains_the_verified_flag(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as conn:
        conn.executescript(journal_module._MIGRATIONS[0])
        conn.execute(
            "INSERT INTO files (relative, size, mtime_ns, state, created_at, updated_at)"
            " VALUES ('old.txt', 3, 7, 'done', 1.0, 1.0)"
        )
        conn.execute("PRAGMA user_version = 1")
    async with Journal.open(path) as journal:
        old = journal.lookup("old.txt")
        assert old is not None and old.state is FileState.DONE and not old.verified
        await journal.record(FileRecord("new.txt", 4, 8, FileState.DONE, verified=True))
    async with Journal.open(path) as journal:
        new = journal.lookup("new.txt")
        assert new is not None and new.verified
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == journal_module.SCHEMA_VERSION
