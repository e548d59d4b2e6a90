"""The resume journal: real SQLite files in tmp_path, real worker threads, a real SIGKILL."""

from __future__ import annotations

import gc
import hashlib
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bulkdrive.errors import ConfigError, JournalInUse, RunFailed
from bulkdrive.journal import (
    SCHEMA_VERSION,
    FileRecord,
    FileState,
    JobKey,
    Journal,
    default_journal_path,
    read_summary,
)

pytestmark = pytest.mark.anyio

REPO = Path(__file__).resolve().parents[1]
KEY = JobKey.of("https://edge.example.com/webconsole/api/", "1", "Backups/2024", "/data/photos")


def rec(relative: str, **fields: Any) -> FileRecord:
    base: dict[str, Any] = {"size": 100, "mtime_ns": 1_700_000_000_000_000_000}
    base.update(fields)
    base.setdefault("state", FileState.PENDING)
    return FileRecord(relative, **base)


def digests(name: str, count: int) -> bytes:
    return b"".join(hashlib.sha256(f"{name}/{k}".encode()).digest() for k in range(count))


def marks_on_disk(path: Path) -> int:
    """Batch marks committed to the journal file (what a killed run leaves)."""
    with sqlite3.connect(path) as conn:
        count: int = conn.execute("SELECT count(*) FROM in_flight").fetchone()[0]
        return count


def rows_on_disk(path: Path) -> dict[str, tuple[Any, ...]]:
    """What another process would read: committed rows only."""
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT relative, state, confirmed_offset, digests FROM files")
        return {row[0]: row[1:] for row in rows}


# --- records, lookups, commits -----------------------------------------------------------------


async def test_lookup_sees_queued_records_then_a_reopen_sees_them_committed(
    tmp_path: Path,
) -> None:
    path = tmp_path / "deep" / "folder" / "job.sqlite"
    partial = rec(
        "a/b.bin",
        size=10 << 20,
        state=FileState.PARTIAL,
        request_id="req-1",
        offset=4 << 20,
        digests=digests("b", 1),
        file_guid=None,
        attempts=2,
        last_error="timeout",
    )
    async with Journal.open(path, KEY, batch_size=100, flush_interval=3600) as journal:
        assert journal.lookup("a/b.bin") is None
        await journal.record(partial)
        queued = journal.lookup("a/b.bin")
        assert queued is not None and queued.offset == 4 << 20
        assert queued.digests == digests("b", 1)
        assert queued.created_at > 0 and queued.updated_at >= queued.created_at
        assert journal.statistics().rows_written == 0
        assert rows_on_disk(path) == {}  # still only in memory
    assert (tmp_path / "deep" / "folder").is_dir()
    assert rows_on_disk(path) == {"a/b.bin": ("partial", 4 << 20, digests("b", 1))}

    async with Journal.open(path, KEY) as journal:
        again = journal.lookup("a/b.bin")
        assert again == queued  # every field, digests as a BLOB, timestamps
        done = FileRecord(
            "a/b.bin",
            size=10 << 20,
            mtime_ns=partial.mtime_ns,
            state=FileState.DONE,
            offset=10 << 20,
            file_guid="guid-9",
            attempts=3,
        )
        await journal.record(done)
        await journal.flush()
        updated = journal.lookup("a/b.bin")
    assert updated is not None and again is not None
    assert updated.state is FileState.DONE and updated.file_guid == "guid-9"
    assert updated.created_at == again.created_at  # the first record's time is kept
    assert updated.updated_at >= again.updated_at
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("SELECT typeof(digests) FROM files").fetchone()[0] == "blob"


def test_done_for_needs_done_and_the_same_size_and_mtime() -> None:
    done = rec("x", size=5, mtime_ns=7, state=FileState.DONE)
    assert done.is_done_for(5, 7)
    assert not done.is_done_for(6, 7)
    assert not done.is_done_for(5, 8)
    for state in (FileState.PARTIAL, FileState.FAILED, FileState.PENDING, FileState.SKIPPED):
        assert not rec("x", size=5, mtime_ns=7, state=state).is_done_for(5, 7)


async def test_a_record_that_cannot_be_stored_is_refused_when_queued(tmp_path: Path) -> None:
    async with Journal.open(tmp_path / "j.sqlite") as journal:
        with pytest.raises(ValueError):
            await journal.record(rec("x", digests=b"\0" * 31))
        with pytest.raises(ValueError):
            await journal.record_many([rec("y"), rec("x", size=5, offset=6)])
        with pytest.raises(ValueError):
            journal.note(rec("x", size=5, offset=-1))
        assert journal.lookup("x") is None
        assert journal.lookup("y") is not None  # queued before the bad one, as record() would


async def test_record_many_queues_each_record_as_record_does(tmp_path: Path) -> None:
    """A batch's records in one call: every field kept, the journal's times stamped, the
    first record's creation time kept; a batch larger than the queue waits for commits."""
    path = tmp_path / "j.sqlite"
    async with Journal.open(path, batch_size=4, flush_interval=3600, max_pending=4) as journal:
        first = rec("f0", state=FileState.PARTIAL, request_id="r", offset=64, digests=b"d" * 64)
        await journal.record(first)
        before = journal.lookup("f0")
        assert before is not None
        done = rec(
            "f0",
            state=FileState.FAILED,
            request_id="r2",
            offset=96,
            digests=b"e" * 96,
            file_guid="g",
            attempts=3,
            last_error="boom",
            verified=True,
        )
        await journal.record_many([done] + [rec(f"f{i}", size=i) for i in range(1, 10)])
        stats = journal.statistics()
        assert stats.records_queued == 11 and stats.records_pending <= 4
        assert stats.backpressure_waits >= 2
        after = journal.lookup("f0")
        assert after is not None
        assert after._replace(created_at=0.0, updated_at=0.0) == done
        assert after.created_at == before.created_at and after.updated_at >= before.updated_at
        await journal.flush()
        found = await journal.lookup_many(f"f{i}" for i in range(10))
    assert [found[f"f{i}"].size for i in range(1, 10)] == list(range(1, 10))
    assert rows_on_disk(path)["f0"] == ("failed", 96, b"e" * 96)


async def test_updates_of_one_file_coalesce_into_one_row_write(tmp_path: Path) -> None:
    async with Journal.open(tmp_path / "j.sqlite", batch_size=4096) as journal:
        for k in range(1, 1001):
            await journal.record(
                rec(
                    "big",
                    size=1000 << 20,
                    state=FileState.PARTIAL,
                    offset=k << 20,
                    digests=digests("big", k % 8),
                )
            )
        await journal.flush()
        stats = journal.statistics()
        assert (stats.records_queued, stats.rows_written, stats.batches_committed) == (1000, 1, 1)
        last = journal.lookup("big")
    assert last is not None and last.offset == 1000 << 20
    assert rows_on_disk(tmp_path / "j.sqlite")["big"] == ("partial", 1000 << 20, digests("big", 0))


async def test_records_being_committed_stay_visible(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    async with Journal.open(path, batch_size=1000, flush_interval=3600) as journal:
        await journal.record(rec("old", state=FileState.DONE))
        await journal.flush()
        await journal.record(rec("x", state=FileState.PARTIAL, offset=1))
        await journal.record(rec("old", state=FileState.FAILED))
        # Another connection holds the write lock: the commit waits in its thread (busy
        # timeout) with the batch in flight until the lock is released.
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(journal.flush)
                for _ in range(500):
                    if journal.statistics().records_committing:
                        break
                    await anyio.sleep(0.001)
                assert journal.statistics().records_committing == 2
                x = journal.lookup("x")
                assert x is not None and x.offset == 1
                summary = journal.summary()
                assert summary.files[FileState.FAILED] == 1 and summary.total_files == 2
                await journal.record(rec("x", state=FileState.PARTIAL, offset=2))
                x = journal.lookup("x")
                assert x is not None and x.offset == 2  # the newer, queued record wins
                other.execute("COMMIT")
        finally:
            other.close()
        assert rows_on_disk(path)["x"][1] == 1
        found = await journal.lookup_many(["x", "old"])
        assert found["x"].offset == 2 and found["old"].state is FileState.FAILED
    assert rows_on_disk(path)["x"][1] == 2


async def test_lookup_many_does_not_wait_for_a_commit_and_sees_what_it_holds(
    tmp_path: Path,
) -> None:
    """A run's dispatcher looks up each batch while commits go on: the lookup must neither
    wait for a commit in progress nor miss the records that commit is writing."""
    async with Journal.open(tmp_path / "j.sqlite", batch_size=4096) as journal:
        await journal.record(rec("old", state=FileState.DONE))
        await journal.flush()
        await journal.record(rec("being-committed", state=FileState.PENDING))
        write_started, release = threading.Event(), threading.Event()
        write = journal._write_batch

        def slow_write(batch: list[FileRecord], *marks: Any) -> None:
            write_started.set()
            release.wait(10)
            write(batch, *marks)

        journal._write_batch = slow_write  # type: ignore[method-assign]
        async with anyio.create_task_group() as tg:
            tg.start_soon(journal.flush)
            await anyio.to_thread.run_sync(write_started.wait, 10)
            await journal.record(rec("queued-meanwhile", state=FileState.PARTIAL, offset=5))
            with anyio.fail_after(5):  # the commit is held: the old lookup waited for it
                found = await journal.lookup_many(["old", "being-committed", "queued-meanwhile"])
            release.set()
        assert found["old"].state is FileState.DONE
        assert found["being-committed"].state is FileState.PENDING
        assert found["queued-meanwhile"].offset == 5


async def test_a_first_look_in_a_run_that_opened_an_empty_journal_reads_nothing(
    tmp_path: Path,
) -> None:
    """A first migration: nothing on disk can be the walked files', so the dispatcher's
    first look at them needs no worker-thread read; what this run queued is still seen."""
    path = tmp_path / "j.sqlite"
    async with Journal.open(path, exclusive=True) as journal:
        await journal.record(rec("queued", state=FileState.PENDING))
        found = await journal.lookup_many(["queued", "new"], first_look=True)
        assert set(found) == {"queued"}
        assert journal.statistics().batch_reads == 0
        await journal.record(rec("done", state=FileState.DONE))
        await journal.flush()
        # not a first look: the committed row is read
        assert (await journal.lookup_many(["done"]))["done"].state is FileState.DONE
        assert journal.statistics().batch_reads == 1
    # The next run's journal holds files: its first looks read them (resume, skips).
    async with Journal.open(path, exclusive=True) as journal:
        found = await journal.lookup_many(["done", "queued", "new"], first_look=True)
        assert found["done"].state is FileState.DONE
        assert found["queued"].state is FileState.PENDING
        assert journal.statistics().batch_reads == 1
    # A reader beside a run (not exclusive) always reads, even a journal empty when opened.
    empty = tmp_path / "empty.sqlite"
    async with Journal.open(empty) as reader:
        assert await reader.lookup_many(["x"], first_look=True) == {}
        assert reader.statistics().batch_reads == 1


async def test_lookup_many_reads_a_batch_in_one_hop_queued_records_winning(
    tmp_path: Path,
) -> None:
    async with Journal.open(tmp_path / "j.sqlite", batch_size=4096) as journal:
        for i in range(1200):  # more names than one IN (...) query takes
            await journal.record(rec(f"f{i:04d}", state=FileState.DONE, size=i))
        await journal.flush()
        await journal.record(rec("f0007", state=FileState.PARTIAL, size=7, offset=3))
        await journal.record(rec("only-queued"))
        wanted = [f"f{i:04d}" for i in range(0, 1200, 1)] + ["only-queued", "never"]
        found = await journal.lookup_many(wanted)
        assert set(found) == set(wanted) - {"never"}
        assert found["f0007"].state is FileState.PARTIAL and found["f0007"].offset == 3
        assert found["f1199"].size == 1199 and found["f1199"].state is FileState.DONE
        assert all(found[name] == journal.lookup(name) for name in wanted[:-1])


async def test_the_queue_is_bounded_record_waits_for_a_commit(tmp_path: Path) -> None:
    async with Journal.open(
        tmp_path / "j.sqlite", batch_size=8, flush_interval=3600, max_pending=8
    ) as journal:
        for i in range(100):
            await journal.record(rec(f"f{i}"))
            assert journal.statistics().records_pending <= 8
        stats = journal.statistics()
        assert stats.backpressure_waits >= 1
        assert stats.rows_written >= 88
        for i in range(100):  # queued or committed, every record is visible
            assert journal.lookup(f"f{i}") is not None
    assert len(rows_on_disk(tmp_path / "j.sqlite")) == 100


async def test_the_background_task_commits_by_count_and_by_time(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    async with Journal.open(path, batch_size=10, flush_interval=3600) as journal:
        for i in range(10):
            await journal.record(rec(f"n{i}"))
        for _ in range(500):  # bounded wait for the writer thread
            if journal.statistics().batches_committed:
                break
            await anyio.sleep(0.01)
        assert journal.statistics().rows_written == 10
        assert len(rows_on_disk(path)) == 10
    async with Journal.open(path, batch_size=1000, flush_interval=0.05) as journal:
        await journal.record(rec("late"))
        for _ in range(500):
            if journal.statistics().batches_committed:
                break
            await anyio.sleep(0.01)
        assert journal.statistics().rows_written == 1
        assert "late" in rows_on_disk(path)


async def test_exit_by_cancellation_commits_what_is_queued(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    with anyio.CancelScope() as scope:
        async with Journal.open(path, batch_size=1000, flush_interval=3600) as journal:
            for i in range(50):
                await journal.record(rec(f"c{i}", state=FileState.DONE))
            scope.cancel()
            await anyio.sleep(3600)
    assert scope.cancelled_caught
    assert len(rows_on_disk(path)) == 50


async def test_an_error_in_the_body_comes_out_as_itself_after_a_commit(tmp_path: Path) -> None:
    class Boom(Exception):
        pass

    path = tmp_path / "j.sqlite"
    with pytest.raises(Boom):  # not wrapped in an ExceptionGroup
        async with Journal.open(path, batch_size=1000, flush_interval=3600) as journal:
            await journal.record(rec("kept"))
            raise Boom
    assert "kept" in rows_on_disk(path)


async def test_a_journal_that_cannot_be_written_stops_the_run_and_loses_nothing(
    tmp_path: Path,
) -> None:
    path = tmp_path / "j.sqlite"
    async with Journal.open(path, batch_size=1000, flush_interval=3600) as journal:
        # A real SQLite error on the real write path: another connection adds a trigger.
        with sqlite3.connect(path) as other:
            other.execute(
                "CREATE TRIGGER boom BEFORE INSERT ON files WHEN NEW.relative = 'boom'"
                " BEGIN SELECT RAISE(ABORT, 'simulated disk full'); END"
            )
        await journal.record(rec("a"))
        await journal.record(rec("boom"))
        with pytest.raises(RunFailed, match="simulated disk full") as caught:
            await journal.flush()
        assert "\n" not in str(caught.value) and str(path) in str(caught.value)
        assert rows_on_disk(path) == {}  # the batch rolled back whole
        assert journal.lookup("a") is not None  # and is still queued
        with pytest.raises(RunFailed):
            await journal.record(rec("b"))
        with sqlite3.connect(path) as other:
            other.execute("DROP TRIGGER boom")
    assert set(rows_on_disk(path)) == {"a", "boom"}  # the exit's last try committed them

    with pytest.raises(RunFailed, match="simulated disk full"):
        async with Journal.open(path) as journal:
            with sqlite3.connect(path) as other:
                other.execute(
                    "CREATE TRIGGER boom BEFORE UPDATE ON files"
                    " BEGIN SELECT RAISE(ABORT, 'simulated disk full'); END"
                )
            await journal.record(rec("a", state=FileState.DONE))


# --- summary and failures ----------------------------------------------------------------------

operations = st.lists(
    st.tuples(
        st.integers(0, 12),
        st.sampled_from(FileState),
        st.integers(0, 10**12),
        st.booleans(),
    ),
    max_size=40,
)


@given(operations)
@settings(max_examples=30, deadline=None)
def test_summary_counts_queued_and_committed_records_once(
    ops: list[tuple[int, FileState, int, bool]],
) -> None:
    model: dict[str, tuple[FileState, int]] = {}

    def check(summary: Any) -> None:
        for state in FileState:
            assert summary.files[state] == sum(1 for s, _ in model.values() if s is state)
            assert summary.bytes[state] == sum(n for s, n in model.values() if s is state)
        assert summary.total_files == len(model)
        assert summary.total_bytes == sum(n for _, n in model.values())

    async def run(path: Path) -> None:
        async with Journal.open(path, KEY, batch_size=4, flush_interval=3600) as journal:
            for index, state, size, flush in ops:
                await journal.record(rec(f"f{index}", size=size, state=state))
                model[f"f{index}"] = (state, size)
                if flush:
                    await journal.flush()
                check(journal.summary())

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "j.sqlite"
        anyio.run(run, path)
        on_disk = read_summary(path)
        check(on_disk)
        assert on_disk.key == KEY
        assert (on_disk.updated_at > 0) == bool(ops)


async def test_failures_stream_queued_and_committed_rows_up_to_a_limit(tmp_path: Path) -> None:
    async with Journal.open(tmp_path / "j.sqlite", batch_size=1000) as journal:
        for i in range(20):
            state = FileState.FAILED if i % 2 else FileState.DONE
            await journal.record(rec(f"f{i:02d}", state=state, last_error=f"error {i}"))
        await journal.flush()
        await journal.record(rec("f01", state=FileState.DONE))  # retried and done now
        await journal.record(rec("f02", state=FileState.FAILED, last_error="late"))
        failed = {r.relative: r.last_error for r in journal.failures()}
        assert failed == {f"f{i:02d}": f"error {i}" for i in range(3, 20, 2)} | {"f02": "late"}
        assert len(list(journal.failures(limit=3))) == 3
        # A half-read stream does not get in the way of other reads and writes.
        stream = journal.failures()
        seen = [next(stream).relative, next(stream).relative]  # the queue's, then the disk's
        assert journal.summary().files[FileState.FAILED] == 10
        await journal.record(rec("f05", state=FileState.DONE))
        await journal.flush()
        assert journal.lookup("f05") is not None
        seen += [r.relative for r in stream]
        assert len(seen) == len(set(seen))
        assert set(seen) in (set(failed), set(failed) - {"f05"})
        summary = journal.summary()
        assert summary.files[FileState.FAILED] == 9 and summary.files[FileState.DONE] == 11


# --- a batch's files in flight, in one mark ----------------------------------------------------

MTIME = 1_700_000_000_000_000_000


async def test_a_batch_mark_left_by_a_killed_run_reads_and_resumes_as_a_mark_per_file(
    tmp_path: Path,
) -> None:
    """A batch's files marked in one row, as a coordinator killed before their ends leaves
    it: readers see each file in flight, and the next run's open makes the PENDING rows
    each file's own mark would have left; rows newer than the mark, or holding this very
    version in flight already, keep what they say."""
    path = tmp_path / "j.sqlite"
    async with Journal.open(path, exclusive=True) as journal:
        await journal.record_many(
            [
                rec("changed", state=FileState.DONE, size=5, mtime_ns=1, file_guid="g-old"),
                rec("failed", state=FileState.FAILED, last_error="boom", attempts=3),
                rec("partial", state=FileState.PARTIAL, request_id="req-7", offset=40),
            ]
        )
        await journal.flush()
        await anyio.sleep(0.01)  # the mark is younger than these rows
        mark = await journal.mark_in_flight(
            [(name, 100, MTIME) for name in ("new", "changed", "failed", "partial", "ended")]
        )
        await journal.flush(through=journal.sequence)
        assert rows_on_disk(path)["changed"][0] == "done"  # one row for the batch, no more
        await journal.record(rec("ended", state=FileState.DONE, offset=100, file_guid="g"))
        # killed here: the mark is never deleted
    assert mark > 0

    summary = read_summary(path)
    assert summary.files[FileState.PENDING] == 3  # new, changed, failed
    assert summary.files[FileState.PARTIAL] == 1 and summary.files[FileState.DONE] == 1
    assert summary.files[FileState.FAILED] == 0 and summary.total_files == 5

    async with Journal.open(path) as reader:  # beside a run: reads, never writes
        found = await reader.lookup_many(["new", "changed", "failed", "partial", "ended"])
        assert {name: r.state for name, r in found.items()} == {
            "new": FileState.PENDING,
            "changed": FileState.PENDING,
            "failed": FileState.PENDING,
            "partial": FileState.PARTIAL,
            "ended": FileState.DONE,
        }
        changed = reader.lookup("changed")
        assert changed is not None and (changed.size, changed.mtime_ns) == (100, MTIME)
        assert list(reader.failures()) == []
    assert "new" not in rows_on_disk(path)

    async with Journal.open(path, exclusive=True) as journal:  # the next run
        rows = rows_on_disk(path)
        assert {name: row[0] for name, row in rows.items()} == {
            "new": "pending",
            "changed": "pending",
            "failed": "pending",
            "partial": "partial",
            "ended": "done",
        }
        assert rows["partial"][1] == 40  # its session's offset, to continue from
        changed = journal.lookup("changed")
        assert changed is not None and (changed.size, changed.mtime_ns) == (100, MTIME)
        assert changed.file_guid is None and changed.state is FileState.PENDING
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM in_flight").fetchone()[0] == 0


async def test_a_batch_mark_goes_with_its_files_ends(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    async with Journal.open(path, exclusive=True) as journal:
        committed = await journal.mark_in_flight([("a", 100, MTIME), ("b", 100, MTIME)])
        await journal.flush(through=journal.sequence)
        never_written = await journal.mark_in_flight([("c", 100, MTIME)])
        journal.unmark(never_written)  # ended before its commit: nothing to write
        await journal.record_many([rec("a", state=FileState.DONE, offset=100)])
        await journal.record(rec("b", state=FileState.FAILED, last_error="no"))
        journal.unmark(committed)
        await journal.flush()
        with sqlite3.connect(path) as conn:
            assert conn.execute("SELECT count(*) FROM in_flight").fetchone()[0] == 0
    assert {name: row[0] for name, row in rows_on_disk(path).items()} == {
        "a": "done",
        "b": "failed",
    }
    summary = read_summary(path)
    assert summary.total_files == 2 and summary.files[FileState.PENDING] == 0


async def test_a_batch_mark_is_committed_ahead_of_the_ends_queued_before_it(
    tmp_path: Path,
) -> None:
    """The files of a batch wait for their mark's commit only: the ends of earlier batches
    queued before it stay queued for the writer's next commit."""
    path = tmp_path / "j.sqlite"

    async with Journal.open(path, exclusive=True, flush_interval=3600) as journal:
        await journal.record_many(
            [rec(f"done{i}", state=FileState.DONE, offset=100) for i in range(3)]
        )
        mark = await journal.mark_in_flight([("a", 100, MTIME), ("b", 100, MTIME)])
        await journal.flush_mark(mark)
        assert marks_on_disk(path) == 1
        assert rows_on_disk(path) == {}  # the ends queued before it: not yet
        assert journal.lookup("done0") is not None  # and still read from the queue
        await journal.flush_mark(mark)  # committed: nothing more to do
        await journal.record(rec("a", state=FileState.DONE, offset=100))
        await journal.record(rec("b", state=FileState.DONE, offset=100))
        journal.unmark(mark)
        await journal.flush()
        assert marks_on_disk(path) == 0
    assert {name: row[0] for name, row in rows_on_disk(path).items()} == {
        name: "done" for name in ("done0", "done1", "done2", "a", "b")
    }


async def test_a_background_commit_takes_the_oldest_records_and_deletes_marks_last(
    tmp_path: Path,
) -> None:
    """A commit of the writer holds at most COMMIT_ROWS records (a mark to commit waits for
    one such transaction), the oldest first; a batch mark is deleted only in the transaction
    that takes the last records queued, so never before the ends of its files."""
    path = tmp_path / "j.sqlite"

    async with Journal.open(path, exclusive=True, flush_interval=3600) as journal:
        files = [(f"f{i}", 100, MTIME) for i in range(5)]
        mark = await journal.mark_in_flight(files)
        await journal.flush_mark(mark)
        await journal.record_done_many([(r, s, m, f"g{r}", 1, False) for r, s, m in files])
        journal.unmark(mark)
        await journal._commit(most=2)
        assert set(rows_on_disk(path)) == {"f0", "f1"} and marks_on_disk(path) == 1
        await journal._commit(most=2)
        assert set(rows_on_disk(path)) == {"f0", "f1", "f2", "f3"} and marks_on_disk(path) == 1
        await journal._commit(most=2)  # the last record: the mark goes with it
        assert len(rows_on_disk(path)) == 5 and marks_on_disk(path) == 0
        await journal.record_many([rec(f"more{i}") for i in range(3)])
        await journal.flush()  # a flush commits everything queued at once
        assert len(rows_on_disk(path)) == 8


async def test_done_records_queued_in_one_call_read_as_records(tmp_path: Path) -> None:
    """`record_done_many` (a --cluster batch's ends) queues what `record_many` of each file's
    DONE record would: the same fields, the creation time of a record already queued kept."""
    path = tmp_path / "j.sqlite"
    async with Journal.open(path, flush_interval=3600) as journal:
        await journal.record(rec("a", request_id="req-1", offset=40))
        first = journal.lookup("a")
        assert first is not None
        await journal.record_done_many(
            [("a", 100, MTIME, "guid-a", 2, True), ("b", 7, MTIME, "guid-b", 1, False)]
        )
        a, b = journal.lookup("a"), journal.lookup("b")
        assert a is not None and b is not None
        assert a.created_at == first.created_at and a.updated_at >= first.updated_at
        expected = {
            "a": ("a", 100, MTIME, FileState.DONE, None, 100, b"", "guid-a", 2, None),
            "b": ("b", 7, MTIME, FileState.DONE, None, 7, b"", "guid-b", 1, None),
        }
        assert a[:10] == expected["a"] and a.verified is True
        assert b[:10] == expected["b"] and b.verified is False
        await journal.flush()
    async with Journal.open(path) as reader:
        for name, fields in expected.items():
            stored = reader.lookup(name)
            assert stored is not None and stored[:10] == fields


async def test_done_records_of_their_own_time_stamps_many_to_a_statement_read_back(
    tmp_path: Path,
) -> None:
    """A single-process run queues each file's DONE record on its own (a time stamp each):
    written many to a statement, a commit of several statements' worth, new rows and rows
    they replace (a session and an error to clear), reads back record by record."""
    path = tmp_path / "j.sqlite"
    names = [f"f{i:03d}" for i in range(130)]  # 55 + 55 + 20 rows
    async with Journal.open(path, batch_size=1000, flush_interval=3600) as journal:
        for name in names[::3]:
            await journal.record(
                rec(name, state=FileState.PARTIAL, request_id="r", offset=4, last_error="slow")
            )
        await journal.flush()
        for i, name in enumerate(names):
            await journal.record_done_many([(name, 100 + i, MTIME, f"g{i}", 1 + i % 3, i % 2 == 0)])
        queued = {name: journal.lookup(name) for name in names}
        await journal.flush()
    async with Journal.open(path) as reader:
        for i, name in enumerate(names):
            stored, expected = reader.lookup(name), queued[name]
            assert stored is not None and expected is not None
            assert stored.updated_at == expected.updated_at
            if i % 3:  # a new row; a replaced one keeps its creation time
                assert stored.created_at == expected.created_at
            assert stored[:10] == (
                name,
                100 + i,
                MTIME,
                FileState.DONE,
                None,
                100 + i,
                b"",
                f"g{i}",
                1 + i % 3,
                None,
            )
            assert stored.verified is (i % 2 == 0)


async def test_a_commit_of_thousands_of_done_records_in_a_few_statements_reads_back(
    tmp_path: Path,
) -> None:
    """A coordinator's commit: thousands of DONE records in statements of a few sizes
    (512 rows, then powers of two), names not ASCII and not UTF-8 among them (keyed as
    bytes), a replaced row among new ones; each reads back as queued, none lost, none twice."""
    path = tmp_path / "j.sqlite"
    names = [f"d{i // 500}/f{i:05d}" for i in range(3001)]  # 5 × 512 + 256 + 128 + ... + 1
    names[7] = "d0/caf\u00e9-\u5199\u771f"
    names[2500] = os.fsdecode(b"d5/not-utf8-\xff")
    async with Journal.open(path, exclusive=True, batch_size=4096, flush_interval=3600) as journal:
        await journal.record(rec(names[9], state=FileState.PARTIAL, request_id="r", offset=4))
        await journal.flush()
        await journal.record_done_many(
            [(name, i, MTIME, f"g{i}", 1, i % 2 == 0) for i, name in enumerate(names)]
        )
        await journal.flush()
        assert journal.statistics().batches_committed == 2
    async with Journal.open(path) as reader:
        found = await reader.lookup_many(names)
        summary = reader.summary()
    assert summary.files[FileState.DONE] == summary.total_files == len(names)
    assert summary.bytes[FileState.DONE] == sum(range(len(names)))
    for i, name in enumerate(names):
        record = found[name]
        assert record[:10] == (name, i, MTIME, FileState.DONE, None, i, b"", f"g{i}", 1, None)
        assert record.verified is (i % 2 == 0)
    with sqlite3.connect(path) as conn:
        keys = {row[0] for row in conn.execute("SELECT relative FROM files")}
    assert b"d5/not-utf8-\xff" in keys and "d0/caf\u00e9-\u5199\u771f" in keys


async def test_a_done_record_replaces_every_field_of_the_row_it_updates(tmp_path: Path) -> None:
    """DONE records are written by a narrower statement: the row must read as the record."""
    path = tmp_path / "j.sqlite"
    async with Journal.open(path) as journal:
        await journal.record(
            rec(
                "a",
                state=FileState.PARTIAL,
                request_id="req-1",
                offset=40,
                digests=digests("a", 1),
                attempts=2,
                last_error="timed out",
            )
        )
        await journal.flush()
        first = journal.lookup("a")
        assert first is not None
        await journal.record(
            rec("a", state=FileState.DONE, offset=100, file_guid="g-1", attempts=3, verified=True)
        )
    async with Journal.open(path) as journal:
        done = journal.lookup("a")
        assert done is not None
        assert done == FileRecord(
            "a",
            100,
            MTIME,
            FileState.DONE,
            None,
            100,
            b"",
            "g-1",
            3,
            None,
            first.created_at,
            done.updated_at,
            True,
        )
        assert done.updated_at >= first.updated_at


# --- refusals and one-line errors --------------------------------------------------------------


async def test_a_journal_of_another_job_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    async with Journal.open(path, KEY):
        pass
    async with Journal.open(path):  # no key: opens whatever it holds
        pass
    other = JobKey.of(KEY.url, KEY.share, KEY.remote_folder, "/data/music")
    with pytest.raises(ConfigError, match="another job") as caught:
        async with Journal.open(path, other):
            pass
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)
    assert read_summary(path).key == KEY


async def test_a_run_holds_its_journal_alone_and_readers_still_open_it(tmp_path: Path) -> None:
    path = tmp_path / "state" / "j.sqlite"  # its folder does not exist yet
    async with Journal.open(path, KEY, exclusive=True) as first:
        await first.record(FileRecord("a.txt", 1, 1, FileState.DONE))
        await first.flush()
        with pytest.raises(JournalInUse) as caught:
            async with Journal.open(path, KEY, exclusive=True):
                pass
        assert f"process {os.getpid()}" in str(caught.value)
        assert str(path) in str(caught.value) and "\n" not in str(caught.value)
        assert caught.value.exit_code == 2 and "--journal" in caught.value.hint
        async with Journal.open(path) as reader:  # `bulkdrive status` beside the run
            assert reader.lookup("a.txt") is not None
    # Released at the end of the run (and by the kernel if the process dies).
    async with Journal.open(path, KEY, exclusive=True) as second:
        assert second.lookup("a.txt") is not None


async def test_a_run_journal_path_without_a_file_name_is_a_config_error(
    tmp_path: Path,
) -> None:
    with pytest.raises(ConfigError, match="file path"):
        async with Journal.open(Path("/"), KEY, exclusive=True):
            pass


async def test_unreadable_journals_give_one_line_config_errors(tmp_path: Path) -> None:
    missing = tmp_path / "missing.sqlite"
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"this is not an SQLite file\n" * 200)
    foreign = tmp_path / "foreign.sqlite"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE t (x)")
    newer = tmp_path / "newer.sqlite"
    async with Journal.open(newer):
        pass
    with sqlite3.connect(newer) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")

    for path in (missing, garbage, foreign, newer):
        with pytest.raises(ConfigError) as caught:
            read_summary(path)
        message = str(caught.value)
        assert str(path) in message and "\n" not in message
    assert not missing.exists()  # status never creates a journal
    for path in (garbage, foreign, newer):
        with pytest.raises(ConfigError) as caught:
            async with Journal.open(path):
                pass
        assert str(path) in str(caught.value) and "\n" not in str(caught.value)


# --- where journals live -----------------------------------------------------------------------


def test_the_default_path_is_readable_stable_and_per_job(tmp_path: Path) -> None:
    env = {"BULKDRIVE_STATE_DIR": str(tmp_path), "HOME": "/home/u"}
    path = default_journal_path(KEY, env=env)
    assert path.parent == tmp_path / "journals"
    assert re.fullmatch(r"edge\.example\.com-1-photos-[0-9a-f]{16}\.sqlite", path.name)
    same = JobKey.of(
        "https://edge.example.com/webconsole/api", "1", "/Backups/2024/", "/data/photos/"
    )
    assert default_journal_path(same, env=env) == path
    for other in (
        JobKey.of("https://other.example.com/webconsole/api", "1", "Backups/2024", "/data/photos"),
        JobKey.of(KEY.url, "2", KEY.remote_folder, KEY.source),
        JobKey.of(KEY.url, KEY.share, "Backups/2025", KEY.source),
        JobKey.of(KEY.url, KEY.share, KEY.remote_folder, "/other/photos"),
    ):
        assert default_journal_path(other, env=env) != path

    home = {"HOME": "/home/u"}
    linux = default_journal_path(KEY, env=home, platform="linux")
    assert linux.parent == Path("/home/u/.local/state/bulkdrive/journals")
    xdg = default_journal_path(KEY, env=home | {"XDG_STATE_HOME": "/xdg"}, platform="linux")
    assert xdg.parent == Path("/xdg/bulkdrive/journals")
    mac = default_journal_path(KEY, env=home, platform="darwin")
    assert mac.parent == Path("/home/u/Library/Application Support/bulkdrive/journals")
    windows = default_journal_path(KEY, env={"LOCALAPPDATA": "/appdata"}, platform="win32")
    assert windows.parent == Path("/appdata/bulkdrive/journals")
    assert linux.name == mac.name == windows.name == path.name


async def test_the_default_path_honours_the_environment_and_is_created(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BULKDRIVE_STATE_DIR", str(tmp_path / "state"))
    path = default_journal_path(KEY)
    assert path.is_relative_to(tmp_path / "state")
    async with Journal.open(path, KEY) as journal:
        await journal.record(rec("x"))
    assert read_summary(path).total_files == 1


# --- SIGKILL at any moment ---------------------------------------------------------------------

WRITER = textwrap.dedent(
    """
    import hashlib, sys
    from pathlib import Path
    import anyio
    from bulkdrive.journal import FileRecord, FileState, Journal

    GROUP = int(sys.argv[2])

    async def main():
        async with Journal.open(
            Path(sys.argv[1]), batch_size=GROUP, flush_interval=3600, max_pending=GROUP
        ) as journal:
            for g in range(1_000_000):
                for i in range(GROUP):
                    name = f"g{g:06d}/f{i:04d}"
                    digests = hashlib.sha256(name.encode()).digest() * 4
                    await journal.record(FileRecord(
                        name, size=g * GROUP + i + 1, mtime_ns=g, state=FileState.PARTIAL,
                        offset=g * GROUP + i, digests=digests, attempts=g,
                    ))
                await journal.flush()  # one transaction: the whole group
                print(g, flush=True)

    anyio.run(main)
    """
)


async def reopen_and_record(path: Path, last_reported: str) -> None:
    async with Journal.open(path) as journal:  # opens cleanly and goes on
        last = journal.lookup(last_reported)
        assert last is not None and last.state is FileState.PARTIAL
        await journal.record(rec("after-the-kill"))


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_sigkill_at_any_moment_leaves_whole_committed_batches(tmp_path: Path) -> None:
    group = 500
    rng = random.Random(5)
    for attempt, wait_for in enumerate((2, 10, 25, 50, 90)):
        path = tmp_path / f"killed-{attempt}.sqlite"
        process = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), str(group)],
            stdout=subprocess.PIPE,
            cwd=REPO,
            env=os.environ | {"PYTHONPATH": str(REPO)},
        )
        try:
            assert process.stdout is not None
            for _ in range(wait_for):
                assert process.stdout.readline(), "the writer died before it was killed"
            time.sleep(rng.random() * 0.01)  # land anywhere in the next commit
            os.kill(process.pid, signal.SIGKILL)
        finally:
            process.kill()
            process.wait(timeout=10)
        assert process.stdout is not None
        with process.stdout:
            # The groups reported committed before the kill, read or still in the pipe.
            printed = wait_for - 1 + len(process.stdout.read().splitlines())
        assert process.returncode == -signal.SIGKILL

        with sqlite3.connect(path) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            rows = conn.execute(
                "SELECT relative, size, mtime_ns, confirmed_offset, digests, attempts FROM files"
            ).fetchall()
        groups: dict[int, int] = {}
        for relative, size, mtime_ns, offset, blob, attempts in rows:
            g, i = int(relative[1:7]), int(relative[9:])
            assert (size, mtime_ns, offset, attempts) == (g * group + i + 1, g, g * group + i, g)
            assert blob == hashlib.sha256(relative.encode()).digest() * 4
            groups[g] = groups.get(g, 0) + 1
        assert set(groups.values()) == {group}  # every committed batch is whole
        assert sorted(groups) == list(range(len(groups)))  # and they are a prefix
        assert printed < len(groups) <= printed + 2  # nothing reported committed was lost

        anyio.run(reopen_and_record, path, f"g{printed:06d}/f{group - 1:04d}")
        assert read_summary(path).total_files == len(groups) * group + 1


# --- memory does not grow with the journal ------------------------------------------------------


def rss_bytes() -> int | None:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except OSError:
        return None
    return pages * os.sysconf("SC_PAGE_SIZE")


async def fill(path: Path, count: int) -> None:
    async with Journal.open(path):
        pass  # the schema
    blob = digests("fill", 6)
    with sqlite3.connect(path) as conn:
        conn.executemany(
            "INSERT INTO files (relative, size, mtime_ns, state, confirmed_offset, digests,"
            " attempts, created_at, updated_at) VALUES (?, ?, 1, 'done', ?, ?, 0, 1.0, 1.0)",
            ((f"dir{i % 997}/file-{i:07d}.dat", i, i, blob) for i in range(count)),
        )


async def lookup_cost(path: Path, count: int) -> tuple[int, int | None]:
    """Python heap peak and RSS growth of 1000 lookups of random rows of a fresh journal."""
    rng = random.Random(count)
    names = [f"dir{i % 997}/file-{i:07d}.dat" for i in rng.sample(range(count), 1000)]
    gc.collect()
    rss_before = rss_bytes()
    async with Journal.open(path) as journal:
        journal.lookup(names[0])
        tracemalloc.start()
        try:
            for name in names:
                found = journal.lookup(name)
                assert found is not None and found.relative == name
                assert found.digests == digests("fill", 6)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        rss_after = rss_bytes()
    growth = None if rss_before is None or rss_after is None else rss_after - rss_before
    return peak, growth


async def test_lookups_cost_the_same_memory_in_a_big_journal_as_in_a_small_one(
    tmp_path: Path,
) -> None:
    small, big = tmp_path / "small.sqlite", tmp_path / "big.sqlite"
    await fill(small, 1_000)
    await fill(big, 200_000)
    assert big.stat().st_size > 40 << 20  # loading it whole would show in RSS

    small_peak, _ = await lookup_cost(small, 1_000)
    big_peak, big_rss = await lookup_cost(big, 200_000)
    assert big_peak < small_peak + 64 << 10
    if big_rss is not None:
        # Absolute, not relative to the small run: RSS also drops when earlier garbage is
        # freed. The page cache is bounded at 2 MiB; the file is > 40 MiB.
        assert big_rss < 8 << 20
    summary = read_summary(big)
    assert summary.total_files == 200_000
    assert summary.total_bytes == sum(range(200_000))
