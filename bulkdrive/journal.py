"""The resume journal: one SQLite row per source file, so a re-run skips what is done.

Durability: WAL mode with one transaction per batch, so a process killed at any moment (even
SIGKILL) leaves a journal that opens cleanly holding every committed batch whole, and none of the
batch that was being written. `synchronous=NORMAL` is enough for that; a power cut may lose the
last batches, which only costs re-sending them (the server's offset is the authority anyway).

Writes are queued in memory and committed by a background task off the event loop. The queue is
a dict keyed by relative path, so the many offset updates of one file between two commits
coalesce into one row write, and its size is bounded: `record()` is async and waits for a
commit when the queue is full. Reads (`lookup`, `summary`, `failures`) look at the queue first,
so they always see the latest record, committed or not.

Memory does not grow with the journal: lookups are primary-key reads through a page cache of
bounded size, and `summary()` is computed by SQL aggregates.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import hashlib
import itertools
import json
import operator
import os
import re
import sqlite3
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, TypeVar
from urllib.parse import urlsplit

import anyio
import anyio.to_thread

from bulkdrive.errors import ConfigError, JournalFailed, JournalInUse, RunFailed, alone

__all__ = [
    "DIGEST_SIZE",
    "SCHEMA_VERSION",
    "FileRecord",
    "FileState",
    "JobKey",
    "Journal",
    "JournalStatistics",
    "JournalSummary",
    "default_journal_path",
    "read_summary",
]

DIGEST_SIZE = 32
SCHEMA_VERSION = 3
# Per connection, in KiB (negative = KiB for SQLite): what bounds the journal's memory.
CACHE_KIB = 2048
BUSY_TIMEOUT_MS = 5000
#: Records a background commit holds at most: a batch mark to commit (`Journal.flush_mark`)
#: waits for one such transaction, not for the thousands of ends a `--cluster` coordinator
#: queues (a transaction of 16 384 took up to ~0.9 s beside its busy event loop).
COMMIT_ROWS = 2048
#: DONE rows a statement holds at most (`_statement_sizes`): a commit of COMMIT_ROWS in four.
STATEMENT_ROWS = 512

T = TypeVar("T")


class FileState(enum.StrEnum):
    PENDING = "pending"
    PARTIAL = "partial"
    DONE = "done"
    FAILED = "failed"
    SKIPPED = "skipped"


# Enum members on each small file's path, read as module names (why: `bulkdrive.session`).
_DONE = FileState.DONE


class FileRecord(NamedTuple):
    """What the journal knows of one source file.

    `offset` is the last offset the server confirmed; `digests` the concatenated 32-byte block
    digests already computed for the start of the file. Both only save work: on resume the
    server's reported offset wins. The journal stamps `created_at` (first record of the file)
    and `updated_at` (every record) itself with time.time().

    A named tuple, not a frozen dataclass: a run builds two per file, and a frozen dataclass
    of 13 fields costs four times as much to build (benchmarks/README.md). The journal
    checks a record's values when it is queued (`ValueError`), before anything stores it.
    """

    relative: str
    size: int
    mtime_ns: int
    state: FileState
    request_id: str | None = None
    offset: int = 0
    digests: bytes = b""
    file_guid: str | None = None
    attempts: int = 0
    last_error: str | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
    #: The upload completed with the server's integrity check matching (`bulkdrive check`
    #: reports such files as "verified").
    verified: bool = False

    def is_done_for(self, size: int, mtime_ns: int) -> bool:
        """Done with this very size and mtime: skip the file without any request."""
        return self.state is FileState.DONE and self.size == size and self.mtime_ns == mtime_ns


def _checked(record: FileRecord) -> FileRecord:
    """The record, if its values can be stored; ValueError (a bug of the caller) if not."""
    if len(record.digests) % DIGEST_SIZE:
        raise ValueError(f"digests of {record.relative!r} are not whole 32-byte digests")
    if not 0 <= record.offset <= record.size:
        raise ValueError(f"offset {record.offset} of {record.relative!r} is outside its size")
    return record


def _stamped(record: FileRecord, created_at: float, updated_at: float) -> FileRecord:
    """The record with the journal's times: its fields up to `last_error`, the two times,
    `verified` (a tuple built in C: `_replace` costs several times as much, on every file)."""
    return FileRecord._make((*record[:10], created_at, updated_at, record[12]))


@dataclass(frozen=True)
class JobKey:
    """What identifies a job: the same four values on a re-run find the same journal."""

    url: str
    share: str
    remote_folder: str
    source: str

    @classmethod
    def of(cls, url: str, share: str, remote_folder: str, source: str | Path) -> JobKey:
        """Normalize spellings of one job (`./photos/`, `https://h/`) to one key."""
        return cls(
            url=url.rstrip("/"),
            share=share,
            remote_folder=remote_folder.replace("\\", "/").strip("/"),
            source=os.path.abspath(source),
        )

    def to_json(self) -> str:
        fields = [self.url, self.share, self.remote_folder, self.source]
        text = json.dumps(fields, ensure_ascii=False)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            # A SOURCE path that is not valid UTF-8: \udcXX escapes, which json.loads restores.
            return json.dumps(fields)
        return text

    @classmethod
    def from_json(cls, text: str) -> JobKey:
        url, share, remote_folder, source = json.loads(text)
        return cls(str(url), str(share), str(remote_folder), str(source))


@dataclass(frozen=True)
class JournalSummary:
    files: Mapping[FileState, int]
    bytes: Mapping[FileState, int]
    total_files: int
    total_bytes: int
    key: JobKey | None
    updated_at: float
    # the last finished run's skips, counted by kind (no row per skipped file): kind → files
    last_run_skips: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class JournalStatistics:
    records_queued: int  # record() calls
    records_pending: int  # distinct files queued or being committed now
    records_committing: int  # of which a worker thread is committing now
    batches_committed: int
    rows_written: int  # fewer than records_queued: updates of one file coalesce
    backpressure_waits: int  # record() calls that waited for a commit: the queue was full
    batch_reads: int = 0  # lookup_many() calls that read the file (a worker-thread hop each)


# --- where journals live -----------------------------------------------------------------------


def state_dir(env: Mapping[str, str] | None = None, platform: str | None = None) -> Path:
    """bulkdrive's folder under the user's state folder ($BULKDRIVE_STATE_DIR wins)."""
    env = os.environ if env is None else env
    platform = sys.platform if platform is None else platform
    if env.get("BULKDRIVE_STATE_DIR"):
        return Path(env["BULKDRIVE_STATE_DIR"])
    home = Path(env.get("HOME") or Path.home())
    if platform == "win32":
        base = env.get("LOCALAPPDATA") or str(home / "AppData" / "Local")
        return Path(base) / "bulkdrive"
    if platform == "darwin":
        return home / "Library" / "Application Support" / "bulkdrive"
    xdg = env.get("XDG_STATE_HOME", "")
    # The XDG spec says to ignore relative paths.
    base_path = Path(xdg) if os.path.isabs(xdg) else home / ".local" / "state"
    return base_path / "bulkdrive"


def default_journal_path(
    key: JobKey, *, env: Mapping[str, str] | None = None, platform: str | None = None
) -> Path:
    """`<state>/journals/<host-share-source>-<16 hex of sha256(key)>.sqlite`."""
    digest = hashlib.sha256(key.to_json().encode()).hexdigest()[:16]
    host = urlsplit(key.url).hostname or "server"
    source_name = re.split(r"[\\/]", key.source.rstrip("/\\"))[-1] or "root"
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{host}-{key.share}-{source_name}").strip("._-")
    return state_dir(env, platform) / "journals" / f"{slug[:60]}-{digest}.sqlite"


# --- the SQLite side (runs in worker threads, except the short reads) ----------------------------

_COLUMNS = (
    "relative, size, mtime_ns, state, request_id, confirmed_offset, digests, file_guid,"
    " attempts, last_error, created_at, updated_at, verified"
)
_SCHEMA_V1 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value);
CREATE TABLE files (
    relative TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    state TEXT NOT NULL
        CHECK (state IN ('pending', 'partial', 'done', 'failed', 'skipped')),
    request_id TEXT,
    confirmed_offset INTEGER NOT NULL DEFAULT 0,
    digests BLOB NOT NULL DEFAULT x'',
    file_guid TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
-- covers summary()'s GROUP BY and failures()'s filter
CREATE INDEX files_by_state ON files (state, size);
"""
# user_version the file has → script that brings it one version further, in one transaction.
_MIGRATIONS: dict[int, str] = {
    0: _SCHEMA_V1,
    1: "ALTER TABLE files ADD COLUMN verified INTEGER NOT NULL DEFAULT 0",
    # A batch's files in flight, in one row (`Journal.mark_in_flight`): `files` is a JSON list
    # of [relative, size, mtime_ns].
    2: "CREATE TABLE in_flight"
    " (id INTEGER PRIMARY KEY, marked_at REAL NOT NULL, files TEXT NOT NULL)",
}

_UPSERT = f"""
INSERT INTO files ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (relative) DO UPDATE SET
    size = excluded.size, mtime_ns = excluded.mtime_ns, state = excluded.state,
    request_id = excluded.request_id, confirmed_offset = excluded.confirmed_offset,
    digests = excluded.digests, file_guid = excluded.file_guid, attempts = excluded.attempts,
    last_error = excluded.last_error, updated_at = excluded.updated_at,
    verified = excluded.verified
"""
#: The common record, a file done (no session, digests nor error left to keep): the same
#: upsert with 9 values bound instead of 13, a third cheaper per row.
_DONE_VALUES = "(?, ?, ?, 'done', ?, ?, ?, ?, ?, ?)"
_UPSERT_DONE = """
INSERT INTO files (relative, size, mtime_ns, state, confirmed_offset, file_guid, attempts,
    created_at, updated_at, verified)
VALUES {values}
ON CONFLICT (relative) DO UPDATE SET
    size = excluded.size, mtime_ns = excluded.mtime_ns, state = 'done', request_id = NULL,
    confirmed_offset = excluded.confirmed_offset, digests = x'', file_guid = excluded.file_guid,
    attempts = excluded.attempts, last_error = NULL, updated_at = excluded.updated_at,
    verified = excluded.verified
"""
_LOOKUP = f"SELECT {_COLUMNS} FROM files WHERE relative = ?"
#: A batch mark's file becomes a PENDING row unless its row is newer than the mark (this run
#: recorded its end) or holds this very version in flight already (its session to continue).
_MARK_APPLIES = """(files.updated_at < excluded.updated_at
    AND NOT (files.state IN ('pending', 'partial')
        AND files.size = excluded.size AND files.mtime_ns = excluded.mtime_ns))"""
_EXPAND_MARK = f"""
INSERT INTO files (relative, size, mtime_ns, state, created_at, updated_at)
VALUES (?, ?, ?, 'pending', ?, ?)
ON CONFLICT (relative) DO UPDATE SET
    size = excluded.size, mtime_ns = excluded.mtime_ns, state = 'pending', request_id = NULL,
    confirmed_offset = 0, digests = x'', file_guid = NULL, attempts = 0, last_error = NULL,
    updated_at = excluded.updated_at, verified = 0
WHERE {_MARK_APPLIES}
"""
_MARKS = "SELECT id, marked_at, files FROM in_flight ORDER BY id"
_LOOKUP_MANY = f"SELECT {_COLUMNS} FROM files WHERE relative IN"
_IN_LIMIT = 500  # parameters per query, well under SQLITE_MAX_VARIABLE_NUMBER
#: Parameters a DONE row binds (`_DONE_VALUES`).
_DONE_PARAMETERS = 9
#: The fields of a DONE record `_UPSERT_DONE` binds, in its order (`_done_row`), read in C.
_DONE_FIELDS = operator.itemgetter(0, 1, 2, 5, 7, 8, 10, 11, 12)
_UPDATED_AT = operator.itemgetter(11)


@functools.lru_cache(maxsize=64)
def _upsert_done(rows: int) -> str:
    """The upsert of `rows` DONE rows, `_done_row` of each one after the other (one step of
    SQLite for them all; measured with callgrind on a run of 2 500 small files: ~30 k fewer
    instructions a file than `executemany`, the writer's and the event loop's together)."""
    return _UPSERT_DONE.format(values=", ".join([_DONE_VALUES] * rows))


def _statement_sizes(largest: int) -> tuple[int, ...]:
    """The DONE rows a statement holds: `largest`, then the powers of 2 below it.

    Few statements a commit (2 048 rows in four, fewer in at most a dozen): SQLite steps
    a statement without the interpreter lock, and each step ends with the writer taking the
    lock back from a busy event loop (up to a switch interval, 5 ms, each time: a
    coordinator's commits of 2 048 rows took a median 20 ms in statements of 2 048 rows,
    26-29 ms in statements of 55). Few distinct
    statements: SQLite prepares one in ~4 µs a row, more than running it costs, and a
    prepared one holds ~1 KiB a row, so only these sizes are prepared (kept in the
    connection's statement cache: ~1 MiB for them all)."""
    sizes = [largest]
    size = 1 << (largest.bit_length() - 1)
    if size == largest:
        size >>= 1
    while size >= 1:
        sizes.append(size)
        size >>= 1
    return tuple(sizes)


def _done_statements(rows: int, sizes: Sequence[int]) -> Iterator[int]:
    """`rows` DONE rows as statements of `sizes` (largest first), the largest that fit."""
    for size in sizes:
        while rows >= size:
            yield size
            rows -= size


_FAILURES = f"SELECT {_COLUMNS} FROM files WHERE state = 'failed' ORDER BY relative"
_AGGREGATE = "SELECT state, count(*), total(size) FROM files GROUP BY state"
#: Files a run left unfinished with bytes on the server: what `bulkdrive status` shows of them.
_HELD_WHERE = "state IN ('pending', 'partial') AND confirmed_offset > 0"
_HELD = f"SELECT count(*), total(confirmed_offset), total(size) FROM files WHERE {_HELD_WHERE}"
_HELD_FILES = f"SELECT {_COLUMNS} FROM files WHERE {_HELD_WHERE} ORDER BY relative LIMIT ?"


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _key(relative: str) -> str | bytes:
    """The row key of a path: the text itself when it is valid UTF-8, else its raw bytes.

    A name that is not valid UTF-8 reaches us with lone surrogates (surrogateescape), which
    SQLite cannot store as text; its bytes are stored as a BLOB instead. Each path has exactly
    one form, so the key stays unique per path, and journals of earlier versions read the same.
    """
    try:
        relative.encode("utf-8")
    except UnicodeEncodeError:
        return relative.encode("utf-8", "surrogateescape")
    return relative


def _relative(key: str | bytes) -> str:
    """The inverse of `_key`."""
    return key.decode("utf-8", "surrogateescape") if isinstance(key, bytes) else key


def _text(value: str | None) -> str | None:
    """Free text (an error message) that may quote an undecodable name, made storable."""
    if value is None:
        return None
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _row_to_record(row: tuple[Any, ...]) -> FileRecord:
    return FileRecord(
        relative=_relative(row[0]),
        size=row[1],
        mtime_ns=row[2],
        state=FileState(row[3]),
        request_id=row[4],
        offset=row[5],
        digests=bytes(row[6]),
        file_guid=row[7],
        attempts=row[8],
        last_error=row[9],
        created_at=row[10],
        updated_at=row[11],
        verified=bool(row[12]),
    )


def _record_to_row(r: FileRecord) -> tuple[Any, ...]:
    return (
        _key(r.relative),
        r.size,
        r.mtime_ns,
        r.state.value,
        r.request_id,
        r.offset,
        r.digests,
        r.file_guid,
        r.attempts,
        _text(r.last_error),
        r.created_at,
        r.updated_at,
        int(r.verified),
    )


def _done_row(r: FileRecord) -> tuple[Any, ...]:
    """`_record_to_row` of a record `_UPSERT_DONE` writes."""
    return (
        _key(r.relative),
        r.size,
        r.mtime_ns,
        r.offset,
        r.file_guid,
        r.attempts,
        r.created_at,
        r.updated_at,
        int(r.verified),
    )


def _mark_text(files: list[tuple[str, int, int]]) -> str:
    """A batch mark's files as stored: JSON keeps an undecodable name's surrogates (escaped)."""
    return json.dumps(files, separators=(",", ":"))


def _marked_files(conn: sqlite3.Connection) -> Iterator[tuple[float, str, int, int]]:
    """The files of the batch marks on disk, oldest mark first: (marked_at, relative, size,
    mtime_ns)."""
    for _id, marked_at, text in conn.execute(_MARKS).fetchall():
        for relative, size, mtime_ns in json.loads(text):
            yield float(marked_at), str(relative), int(size), int(mtime_ns)


def _marks_applied(conn: sqlite3.Connection) -> dict[str, FileRecord]:
    """What the batch marks on disk say, read without writing: each marked file's PENDING
    record where the mark applies to its row (`_MARK_APPLIES`)."""
    applied: dict[str, FileRecord] = {}
    for marked_at, relative, size, mtime_ns in _marked_files(conn):
        row = conn.execute(_LOOKUP, (_key(relative),)).fetchone()
        old = None if row is None else _row_to_record(row)
        if old is not None and (
            old.updated_at >= marked_at
            or (
                old.state in (FileState.PENDING, FileState.PARTIAL)
                and (old.size, old.mtime_ns) == (size, mtime_ns)
            )
        ):
            continue
        created_at = marked_at if old is None else old.created_at
        applied[relative] = FileRecord(
            relative, size, mtime_ns, FileState.PENDING, created_at=created_at, updated_at=marked_at
        )
    return applied


def _expand_marks(conn: sqlite3.Connection) -> None:
    """The batch marks a killed run left, made the PENDING rows they stand for (one
    transaction): the journal then reads as if each file had been marked on its own."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        rows = [
            (_key(relative), size, mtime_ns, marked_at, marked_at)
            for marked_at, relative, size, mtime_ns in _marked_files(conn)
        ]
        if rows:
            conn.executemany(_EXPAND_MARK, rows)
        conn.execute("DELETE FROM in_flight")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _connect(path: Path, *, create: bool) -> sqlite3.Connection:
    # mode=rw never creates a file, so a mistyped --journal for `status` is an error, not a
    # fresh empty journal.
    mode = "rwc" if create else "rw"
    conn = sqlite3.connect(
        f"{path.resolve().as_uri()}?mode={mode}",
        uri=True,
        isolation_level=None,  # explicit BEGIN/COMMIT: one transaction per batch
        check_same_thread=False,  # used from worker threads, one at a time
        timeout=BUSY_TIMEOUT_MS / 1000,
    )
    try:
        conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
    except BaseException:
        conn.close()
        raise
    return conn


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    conn.execute("BEGIN IMMEDIATE")  # no other process migrates between our read and write
    try:
        version: int = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise ConfigError(
                f"journal {path} has schema version {version}, newer than this bulkdrive "
                f"understands ({SCHEMA_VERSION}); upgrade bulkdrive or pass another --journal"
            )
        if version == 0 and conn.execute("SELECT count(*) FROM sqlite_schema").fetchone()[0]:
            raise ConfigError(f"{path} is an SQLite file but not a bulkdrive journal")
        while version < SCHEMA_VERSION:
            for statement in _MIGRATIONS[version].split(";"):
                if statement.strip():
                    conn.execute(statement)
            version += 1
            conn.execute(f"PRAGMA user_version = {version}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _check_version(conn: sqlite3.Connection, path: Path) -> None:
    version: int = conn.execute("PRAGMA user_version").fetchone()[0]
    if version == 0:
        raise ConfigError(f"{path} is not a bulkdrive journal")
    if version > SCHEMA_VERSION:
        raise ConfigError(
            f"journal {path} has schema version {version}, newer than this bulkdrive "
            f"understands ({SCHEMA_VERSION}); upgrade bulkdrive"
        )


def _stored_key(conn: sqlite3.Connection) -> JobKey | None:
    row = conn.execute("SELECT value FROM meta WHERE key = 'job'").fetchone()
    return None if row is None else JobKey.from_json(row[0])


def _claim(conn: sqlite3.Connection, path: Path, key: JobKey | None) -> JobKey | None:
    stored = _stored_key(conn)
    if key is None or stored == key:
        return stored
    if stored is not None:
        raise ConfigError(
            f"journal {path} belongs to another job (source {stored.source}, share "
            f"{stored.share}, folder {stored.remote_folder!r} on {stored.url}); "
            "pass another --journal"
        )
    conn.execute("INSERT INTO meta (key, value) VALUES ('job', ?)", (key.to_json(),))
    return key


def _lock(path: Path) -> int | None:
    """Hold PATH.lock exclusively (an advisory flock, released when the descriptor closes or
    the process dies): two runs writing one journal would each skip or redo the other's files.
    None where flock does not exist or the file system does not lock."""
    try:
        import fcntl
    except ImportError:  # Windows: no flock; one run per journal is then the user's care
        return None
    if not path.name:
        raise ConfigError(f"journal {path}: give a file path, not a folder")
    lock_path = path.with_name(path.name + ".lock")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise ConfigError(f"cannot create the journal's lock {lock_path}: {exc.strerror}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = ""
        with contextlib.suppress(OSError):
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        os.close(fd)
        by = f" (process {holder})" if holder.isdigit() else ""
        raise JournalInUse(f"journal {path} is in use by another bulkdrive upload{by}") from None
    except OSError:
        os.close(fd)
        return None
    with contextlib.suppress(OSError):  # the pid only names the holder in the message above
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _open_files(
    path: Path, key: JobKey | None
) -> tuple[sqlite3.Connection, sqlite3.Connection, sqlite3.Connection]:
    """The writer and the two reader connections of a journal (one for the loop's reads,
    one for `lookup_many`'s worker thread), created and migrated if need be."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        message = f"cannot create the journal folder {path.parent}: {exc.strerror}"
        raise ConfigError(message) from exc
    writer = reader = batch_reader = None
    try:
        writer = _connect(path, create=True)
        _migrate(writer, path)
        _claim(writer, path, key)
        reader = _connect(path, create=False)
        batch_reader = _connect(path, create=False)
        return writer, reader, batch_reader
    except BaseException as exc:
        for conn in (batch_reader, reader, writer):
            if conn is not None:
                conn.close()
        if isinstance(exc, sqlite3.Error):
            raise ConfigError(f"cannot open journal {path}: {_one_line(exc)}") from exc
        raise


def _summarize(
    conn: sqlite3.Connection, overlay: Mapping[str, FileRecord] | None = None
) -> tuple[dict[FileState, int], dict[FileState, int], float]:
    """Counts and bytes per state from SQL aggregates, corrected by the records not yet written.

    One read transaction, so the aggregate and the rows it is corrected by are one snapshot.
    """
    files = dict.fromkeys(FileState, 0)
    sizes = dict.fromkeys(FileState, 0)
    conn.execute("BEGIN")
    try:
        for state, count, total in conn.execute(_AGGREGATE):
            files[FileState(state)] += count
            sizes[FileState(state)] += int(total)
        row = conn.execute("SELECT value FROM meta WHERE key = 'updated_at'").fetchone()
        updated_at = float(row[0]) if row else 0.0
        if _has_marks(conn):
            # Records not yet written are newer than any mark on disk: they win.
            overlay = {**_marks_applied(conn), **(overlay or {})}
        for record in (overlay or {}).values():
            old = conn.execute(_LOOKUP, (_key(record.relative),)).fetchone()
            if old is not None:
                files[FileState(old[3])] -= 1
                sizes[FileState(old[3])] -= old[1]
            files[record.state] += 1
            sizes[record.state] += record.size
            updated_at = max(updated_at, record.updated_at)
    finally:
        conn.execute("COMMIT")
    return files, sizes, updated_at


def _newer(marked: FileRecord | None, row: FileRecord | None) -> FileRecord | None:
    """A reader's record of a file: its batch mark, unless its row was written since."""
    if marked is not None and (row is None or row.updated_at < marked.updated_at):
        return marked
    return row


def _has_marks(conn: sqlite3.Connection) -> bool:
    version: int = conn.execute("PRAGMA user_version").fetchone()[0]
    return version >= 3 and conn.execute("SELECT 1 FROM in_flight LIMIT 1").fetchone() is not None


def read_summary(path: Path) -> JournalSummary:
    """The summary of a journal on disk, for `bulkdrive status` (no event loop needed)."""
    if not path.is_file():
        raise ConfigError(f"no journal at {path}")
    conn = None
    try:
        conn = _connect(path, create=False)
        _check_version(conn, path)
        files, sizes, updated_at = _summarize(conn)
        key = _stored_key(conn)
        skips = conn.execute("SELECT value FROM meta WHERE key = 'last_run_skips'").fetchone()
        last_run_skips = {str(k): int(v) for k, v in json.loads(skips[0]).items()} if skips else {}
    except (sqlite3.Error, ValueError) as exc:
        raise ConfigError(f"cannot read journal {path}: {_one_line(exc)}") from exc
    finally:
        if conn is not None:
            conn.close()
    return JournalSummary(
        files, sizes, sum(files.values()), sum(sizes.values()), key, updated_at, last_run_skips
    )


@dataclass(frozen=True)
class HeldBytes:
    """Unfinished files whose first bytes the server holds, as the journal last heard it: a
    re-run continues them from there (the server's offset is asked for again first)."""

    files: int
    held: int  # bytes the server confirmed, summed
    size: int  # the same files' sizes, summed
    first: tuple[FileRecord, ...]  # the first few, by path


def read_held(path: Path, limit: int) -> HeldBytes:
    """The partial files of a journal on disk (bounded: counts, and the first `limit`)."""
    conn = None
    try:
        conn = _connect(path, create=False)
        count, held, size = conn.execute(_HELD).fetchone()
        first = tuple(_row_to_record(row) for row in conn.execute(_HELD_FILES, (limit,)))
    except (sqlite3.Error, ValueError) as exc:
        raise ConfigError(f"cannot read journal {path}: {_one_line(exc)}") from exc
    finally:
        if conn is not None:
            conn.close()
    return HeldBytes(int(count), int(held), int(size), first)


# --- the journal -------------------------------------------------------------------------------


class Journal:
    """Open with `async with Journal.open(path, key) as journal:`.

    - `lookup(relative)`: sync, a primary-key read (queued records first).
    - `await lookup_many(relatives)`: the same for a batch, in one worker-thread hop.
    - `await record(record)`: queue an upsert; returns at once unless the queue is full, then
      waits for a commit. Raises RunFailed once the journal cannot be written.
    - `await flush()`: commit everything queued now.
    - `summary()`, `failures()`, `statistics()`: sync and bounded.
    """

    def __init__(
        self,
        path: Path,
        writer: sqlite3.Connection,
        reader: sqlite3.Connection,
        batch_reader: sqlite3.Connection,
        *,
        batch_size: int,
        flush_interval: float,
        max_pending: int,
    ) -> None:
        self.path = path
        self._writer = writer
        self._reader = reader
        self._batch_reader = batch_reader  # lookup_many's, in a worker thread
        self._batch_read_lock = anyio.Lock()
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._max_pending = max_pending
        self._pending: dict[str, FileRecord] = {}
        self._inflight: dict[str, FileRecord] = {}  # being committed by a worker thread
        # Batch marks (`mark_in_flight`) queued, and marks to delete, by id.
        self._marks: dict[int, tuple[float, list[tuple[str, int, int]]]] = {}
        self._unmarks: list[int] = []
        self._next_mark = 1
        #: Every mark up to this id is committed (commits take all the marks queued, and
        #: ids grow).
        self._marks_committed_through = 0
        #: A reader's view of the marks a run wrote (the run expands them when it opens).
        self._marked: dict[str, FileRecord] = {}
        self._commit_lock = anyio.Lock()  # one batch at a time, in order
        self._has_pending = anyio.Event()
        self._batch_full = anyio.Event()
        self._failure: RunFailed | None = None
        self._closed = False
        self._records_queued = 0
        self._committed_through = 0  # every record queued up to this count is committed
        self._batches_committed = 0
        self._rows_written = 0
        self._backpressure_waits = 0
        self._batch_reads = 0
        #: A run's journal that held no file when it opened (`lookup_many(first_look=True)`).
        self._started_empty = False
        variables = writer.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
        most = max(1, min(STATEMENT_ROWS, variables // _DONE_PARAMETERS))
        self._done_sizes = _statement_sizes(most)

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        path: Path,
        key: JobKey | None = None,
        *,
        batch_size: int = 512,
        flush_interval: float = 0.5,
        max_pending: int = 16384,
        exclusive: bool = False,
    ) -> AsyncIterator[Journal]:
        """Open (creating, migrating) the journal at `path`; a commit every `batch_size`
        records or `flush_interval` seconds; at most `max_pending` files queued in memory.
        (`--cluster` queues the ends of a batch of up to 2 048 files at once, a few batches
        at a time: 16 384 records of a few hundred bytes each, ~4 MiB at most.)
        At exit, even on error or cancellation, what is queued is committed and the file closed.
        `key` is stored on first open; a journal of another job is refused with ConfigError.
        `exclusive` (a run's journal) refuses a journal another process holds exclusively
        with JournalInUse; readers such as `bulkdrive status` open it beside a run.
        """
        if not 1 <= batch_size <= max_pending:
            raise ValueError("need 1 <= batch_size <= max_pending")
        lock = await anyio.to_thread.run_sync(_lock, path) if exclusive else None
        try:
            writer, reader, batch_reader = await anyio.to_thread.run_sync(_open_files, path, key)
        except BaseException:
            if lock is not None:
                os.close(lock)
            raise
        journal = cls(
            path,
            writer,
            reader,
            batch_reader,
            batch_size=batch_size,
            flush_interval=flush_interval,
            max_pending=max_pending,
        )
        try:
            await anyio.to_thread.run_sync(journal._read_marks, exclusive)
        except BaseException as exc:
            await anyio.to_thread.run_sync(journal._close_connections)
            if lock is not None:
                os.close(lock)
            if isinstance(exc, sqlite3.Error):
                raise ConfigError(f"cannot open journal {path}: {_one_line(exc)}") from exc
            raise
        try:
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(journal._write_in_background)
                    try:
                        yield journal
                    finally:
                        tg.cancel_scope.cancel()
            except BaseExceptionGroup as group:
                # The writer task never raises, so the group only wraps the caller's own
                # exception: hand it back as it was raised.
                raise alone(group) from None
        finally:
            with anyio.CancelScope(shield=True):
                try:
                    journal._failure = None  # one last try for what is queued
                    await journal._commit_all()
                finally:
                    journal._closed = True
                    try:
                        await anyio.to_thread.run_sync(journal._close_connections)
                    finally:
                        if lock is not None:
                            os.close(lock)

    def _read_marks(self, exclusive: bool) -> None:
        """A run (`exclusive`) turns the marks a killed run left into rows; a reader keeps
        what they say for its reads."""
        if exclusive:
            _expand_marks(self._writer)
            empty = self._writer.execute("SELECT 1 FROM files LIMIT 1").fetchone() is None
            self._started_empty = empty
        else:
            self._marked = _marks_applied(self._reader)
        row = self._writer.execute("SELECT coalesce(max(id), 0) FROM in_flight").fetchone()
        self._next_mark = int(row[0]) + 1
        self._marks_committed_through = self._next_mark - 1

    # --- writes ---

    async def mark_in_flight(self, files: Iterable[tuple[str, int, int]]) -> int:
        """Queue one mark for a batch of files going out together, (relative, size, mtime_ns)
        each: what a PENDING record of each would say, in one row. Returns the mark's id for
        `unmark`, once the batch's records are queued; `flush(through=sequence)` commits it.

        Cheaper than a record per file (one row, not one per file, and no row to rewrite when
        the file ends). A run that opens the journal after a kill turns the marks left into
        the PENDING records they stand for, except where a file's row is newer (its end was
        recorded) or already holds this version in flight; readers see them so meanwhile.
        A file whose old version's session may be on the server is marked on its own
        (`record`), after that session is discarded."""
        if self._closed:
            raise RuntimeError("the journal is closed")
        if self._failure is not None:
            raise self._failure
        mark = self._next_mark
        self._next_mark += 1
        self._marks[mark] = (time.time(), list(files))
        self._records_queued += 1
        if not self._has_pending.is_set():
            self._has_pending.set()
        return mark

    def unmark(self, mark: int) -> None:
        """Queue the deletion of a batch mark, after the records of its files' ends (it
        commits with them or after them)."""
        if self._closed or self._failure is not None:
            return  # left on disk: the next run's open handles it
        if self._marks.pop(mark, None) is not None:
            return  # never written
        self._unmarks.append(mark)
        self._records_queued += 1
        if not self._has_pending.is_set():
            self._has_pending.set()

    async def record(self, record: FileRecord) -> None:
        """Queue an upsert of `record` (timestamps are stamped here)."""
        await self.record_many((record,))

    async def record_many(self, records: Iterable[FileRecord]) -> None:
        """Queue upserts of `records`, in order, as `record()` each would: for a batch of
        files, one call (it waits only when the queue is full)."""
        if self._closed:
            raise RuntimeError("the journal is closed")
        if self._failure is not None:
            raise self._failure
        pending, most = self._pending, self._max_pending
        if not isinstance(records, list | tuple):
            records = list(records)
        if len(pending) + len(records) <= most:
            self._queue_all(records)  # no room to wait for: the whole batch in one pass
            return
        for record in records:
            if len(pending) >= most and record.relative not in pending:
                # Full: commit rather than grow. The lock orders us behind a commit in progress.
                self._backpressure_waits += 1
                await self._commit(only_if_full=True, most=COMMIT_ROWS)
                pending = self._pending  # a commit swapped it out
            self._queue(record)

    async def record_done_many(self, done: Sequence[tuple[str, int, int, str, int, bool]]) -> None:
        """Queue the DONE records of files the server holds whole, (relative, size, mtime_ns,
        file_guid, attempts, verified) each: `record_many` of those records, each built once
        with its times (a `--cluster` coordinator records thousands a second)."""
        if self._closed:
            raise RuntimeError("the journal is closed")
        if self._failure is not None:
            raise self._failure
        pending, inflight = self._pending, self._inflight
        now = time.time()
        state = _DONE
        if len(pending) + len(done) > self._max_pending:
            records = [  # stamped with their times when queued
                FileRecord(r, size, mtime, state, None, size, b"", guid, tries, verified=verified)
                for r, size, mtime, guid, tries, verified in done
            ]
            await self.record_many(records)  # room to wait for
            return
        make = FileRecord._make
        for relative, size, mtime_ns, file_guid, attempts, verified in done:
            previous = pending.get(relative) or (inflight.get(relative) if inflight else None)
            created = now if previous is None else previous.created_at
            # In FileRecord's order: no session, offset at the end, no digests nor error.
            pending[relative] = make(
                (
                    relative,
                    size,
                    mtime_ns,
                    state,
                    None,
                    size,
                    b"",
                    file_guid,
                    attempts,
                    None,
                    created,
                    now,
                    verified,
                )
            )
        self._records_queued += len(done)
        if done and not self._has_pending.is_set():
            self._has_pending.set()
        if len(pending) >= self._batch_size and not self._batch_full.is_set():
            self._batch_full.set()

    def note(self, record: FileRecord) -> None:
        """Queue the progress of a file in flight without waiting (best effort).

        Each file has at most one queued record, so notes can pass `max_pending` by no more
        than the number of files in flight.
        """
        if not self._closed and self._failure is None:
            self._queue(record)

    def _queue_all(self, records: Sequence[FileRecord]) -> None:
        """`_queue` of each record, in one pass: one time stamp, one look at the events."""
        pending, inflight = self._pending, self._inflight
        make = FileRecord._make
        now = time.time()
        queued = 0
        try:
            for record in records:
                relative = _checked(record).relative
                previous = pending.get(relative) or inflight.get(relative)
                created = previous.created_at if previous is not None else record.created_at or now
                pending[relative] = make((*record[:10], created, now, record[12]))
                queued += 1
        finally:
            self._records_queued += queued  # those before a refused record are queued
        if records and not self._has_pending.is_set():
            self._has_pending.set()
        if len(pending) >= self._batch_size and not self._batch_full.is_set():
            self._batch_full.set()

    def _queue(self, record: FileRecord) -> None:
        relative = _checked(record).relative
        previous = self._pending.get(relative) or self._inflight.get(relative)
        now = time.time()
        created_at = previous.created_at if previous is not None else record.created_at or now
        self._pending[relative] = _stamped(record, created_at, now)
        self._records_queued += 1
        if not self._has_pending.is_set():
            self._has_pending.set()
        if len(self._pending) >= self._batch_size and not self._batch_full.is_set():
            self._batch_full.set()

    @property
    def sequence(self) -> int:
        """How many records were queued so far: a ticket for `flush(through=…)`."""
        return self._records_queued

    async def flush(self, through: int | None = None) -> None:
        """Return once every record queued so far (or the first `through` of them) is
        committed; raises RunFailed if the journal cannot be written. Concurrent callers share
        commits (group commit): one whose records went out in another's batch does not commit.
        """
        if self._failure is not None:
            raise self._failure
        target = self._records_queued if through is None else through
        while self._committed_through < target:
            await self._commit(through=target)

    async def flush_mark(self, mark: int) -> None:
        """Return once the batch mark `mark` is committed: the marks queued now are committed
        on their own if need be, ahead of the records queued before them (the files going out
        wait for their mark only: not behind the ends of the batches before, which a
        coordinator queues by the thousand). Raises RunFailed if the journal cannot be
        written."""
        if self._failure is not None:
            raise self._failure
        if mark <= self._marks_committed_through:
            return
        async with self._commit_lock:
            if self._failure is not None:
                raise self._failure
            if mark <= self._marks_committed_through or mark not in self._marks:
                return  # committed while we waited for the lock
            marks, self._marks = self._marks, {}
            try:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(self._write_batch, [], marks, [])
            except sqlite3.Error as exc:
                self._marks = {**marks, **self._marks}
                self._failure = JournalFailed(f"cannot write journal {self.path}: {_one_line(exc)}")
                raise self._failure from exc
            self._marks_committed_through = max(self._marks_committed_through, *marks)
            self._batches_committed += 1

    async def _write_in_background(self) -> None:
        while self._failure is None:
            if not self._pending and not self._marks and not self._unmarks:
                self._has_pending = anyio.Event()
                await self._has_pending.wait()
            with anyio.move_on_after(self._flush_interval):
                while len(self._pending) < self._batch_size:
                    self._batch_full = anyio.Event()
                    await self._batch_full.wait()
            try:
                await self._commit(most=COMMIT_ROWS)
            except RunFailed:
                return  # record() and flush() raise it now; the exit retries once

    async def _commit(
        self, *, only_if_full: bool = False, through: int | None = None, most: int | None = None
    ) -> None:
        """One transaction: the marks queued, and the records queued (or the `most` oldest of
        them); with the last of the records queued, the marks to delete (each one after the
        ends of its files)."""
        async with self._commit_lock:
            if only_if_full and len(self._pending) < self._max_pending:
                return
            if through is not None and self._committed_through >= through:
                return  # a batch committed while we waited for the lock held our records
            if not self._pending and not self._marks and not self._unmarks:
                # Nothing queued, nothing being committed: every record is on disk.
                self._committed_through = self._records_queued
                return
            sequence = self._records_queued
            pending = self._pending
            whole = most is None or len(pending) <= most
            if whole:
                self._inflight, self._pending = pending, {}
                unmarks, self._unmarks = self._unmarks, []
            else:
                chunk = dict(itertools.islice(pending.items(), most))
                for relative in chunk:
                    del pending[relative]
                self._inflight, unmarks = chunk, []
            marks, self._marks = self._marks, {}
            batch = list(self._inflight.values())
            try:
                # Shielded: a batch is either committed and accounted, or rolled back and
                # requeued; never abandoned halfway by a cancellation.
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(self._write_batch, batch, marks, unmarks)
            except sqlite3.Error as exc:
                # Keep the batch; records queued meanwhile are newer and win.
                self._pending = {**self._inflight, **self._pending}
                self._inflight = {}
                self._marks = {**marks, **self._marks}
                self._unmarks = unmarks + self._unmarks
                self._failure = JournalFailed(f"cannot write journal {self.path}: {_one_line(exc)}")
                raise self._failure from exc
            self._inflight = {}
            if whole:
                self._committed_through = sequence
            if marks:
                self._marks_committed_through = max(self._marks_committed_through, *marks)
            self._batches_committed += 1
            self._rows_written += len(batch)

    async def _commit_all(self) -> None:
        """Commit until nothing is queued."""
        while self._pending or self._marks or self._unmarks:
            await self._commit()

    async def note_run_skips(self, skips: Mapping[str, int]) -> None:
        """The run's skipped files counted by kind, in the run metadata (replacing the last
        run's): a few numbers, however many files were skipped."""
        async with self._commit_lock:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self._write_run_skips, json.dumps(dict(skips)))

    def _write_run_skips(self, skips: str) -> None:
        try:  # one statement in autocommit mode: atomic
            self._writer.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('last_run_skips', ?)", (skips,)
            )
        except sqlite3.Error as exc:
            raise JournalFailed(f"cannot write journal {self.path}: {_one_line(exc)}") from exc

    def _write_batch(
        self,
        batch: list[FileRecord],
        marks: Mapping[int, tuple[float, list[tuple[str, int, int]]]] | None = None,
        unmarks: list[int] | None = None,
    ) -> None:
        conn = self._writer
        conn.execute("BEGIN IMMEDIATE")
        try:
            if batch:
                # One record per file in a batch: the two statements touch other rows.
                plain: list[FileRecord] = []
                others: list[FileRecord] = []
                for r in batch:
                    simple = r.request_id is None and not r.digests and not r.last_error
                    (plain if simple and r.state is _DONE else others).append(r)
                if others:
                    conn.executemany(_UPSERT, map(_record_to_row, others))
                if plain:
                    self._write_done(plain)
                conn.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES ('updated_at', ?)",
                    (max(map(_UPDATED_AT, batch)),),
                )
            if marks:
                conn.executemany(
                    "INSERT OR REPLACE INTO in_flight (id, marked_at, files) VALUES (?, ?, ?)",
                    [(mark, at, _mark_text(files)) for mark, (at, files) in marks.items()],
                )
            if unmarks:
                conn.executemany("DELETE FROM in_flight WHERE id = ?", [(m,) for m in unmarks])
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _write_done(self, plain: list[FileRecord]) -> None:
        """DONE rows, many to a statement (`_statement_sizes`): `executemany` would step
        SQLite once a row, and take the interpreter lock back from the event loop after each."""
        conn = self._writer
        values = list(itertools.chain.from_iterable(map(_DONE_FIELDS, plain)))
        if not all(map(str.isascii, values[::_DONE_PARAMETERS])):
            # Names that are not ASCII: keyed as `_key` says (a name not valid UTF-8 as bytes).
            values = list(itertools.chain.from_iterable(map(_done_row, plain)))
        start = 0
        for rows in _done_statements(len(plain), self._done_sizes):
            end = start + rows * _DONE_PARAMETERS
            conn.execute(_upsert_done(rows), values[start:end])
            start = end

    def _close_connections(self) -> None:
        self._batch_reader.close()
        self._reader.close()
        # The last connection to close checkpoints the WAL into the main file.
        self._writer.close()

    # --- reads ---

    def lookup(self, relative: str) -> FileRecord | None:
        """The latest record of `relative`, queued or committed; None if never recorded."""
        record = self._pending.get(relative) or self._inflight.get(relative)
        if record is not None:
            return record
        committed = self._lookup_committed(relative)
        if self._marked:
            return _newer(self._marked.get(relative), committed)
        return committed

    async def lookup_many(
        self, relatives: Iterable[str], *, first_look: bool = False
    ) -> dict[str, FileRecord]:
        """The latest records of many files (those never recorded are absent), read in one
        worker-thread hop: for a batch of walked files, cheaper than one lookup() each.

        `first_look`: the caller asks for each of these paths for the first time in this
        run, before anything of it was recorded (a run's dispatcher: the walk yields each
        path once). If the run's journal held no file when it opened, nothing on disk can be
        theirs, so there is nothing to read: a first migration saves a worker-thread hop and
        a query per batch (the dispatcher's stage waited 10-15 ms a batch for them).

        It never waits for a commit in progress (a run's dispatcher would wait for every
        commit): a connection of its own reads (WAL: the writer does not block it), then the
        records being committed or queued when the read began are laid over, and those
        queued now. Records only move queued → being committed → committed, so each path
        gets its latest record as of some moment of the call, never an older one."""
        wanted = list(relatives)
        if self._closed:
            raise RuntimeError("the journal is closed")
        inflight, pending = self._inflight, self._pending
        if first_look and self._started_empty:
            found: dict[str, FileRecord] = {}
        else:
            async with self._batch_read_lock:
                self._batch_reads += 1
                try:
                    found = await anyio.to_thread.run_sync(self._read_many, wanted)
                except sqlite3.Error as exc:
                    message = f"cannot read journal {self.path}: {_one_line(exc)}"
                    raise JournalFailed(message) from exc
        if self._marked:
            for relative in wanted:
                marked = _newer(self._marked.get(relative), found.get(relative))
                if marked is not None:
                    found[relative] = marked
        for layer in (inflight, pending, self._inflight, self._pending):
            if layer:
                for relative in wanted:
                    queued = layer.get(relative)
                    if queued is not None:
                        found[relative] = queued
        return found

    def _read_many(self, relatives: list[str]) -> dict[str, FileRecord]:
        found: dict[str, FileRecord] = {}
        for start in range(0, len(relatives), _IN_LIMIT):
            part = relatives[start : start + _IN_LIMIT]
            query = f"{_LOOKUP_MANY} ({', '.join('?' * len(part))})"
            for row in self._batch_reader.execute(query, [_key(p) for p in part]):
                record = _row_to_record(row)
                found[record.relative] = record
        return found

    def _lookup_committed(self, relative: str) -> FileRecord | None:
        row = self._read(lambda: self._reader.execute(_LOOKUP, (_key(relative),)).fetchone())
        return None if row is None else _row_to_record(row)

    def _read(self, read: Callable[[], T]) -> T:
        if self._closed:
            raise RuntimeError("the journal is closed")
        try:
            return read()
        except sqlite3.Error as exc:
            raise JournalFailed(f"cannot read journal {self.path}: {_one_line(exc)}") from exc

    def _overlay(self) -> dict[str, FileRecord]:
        return {**self._inflight, **self._pending}

    def _overlay_with_marks(self) -> dict[str, FileRecord]:
        marked = self._read(lambda: _marks_applied(self._reader))
        return {**marked, **self._inflight, **self._pending}

    def summary(self) -> JournalSummary:
        """Counts and bytes per state, queued records included; SQL aggregates, no row loading.

        A full index scan: ~0.1 s per million rows, so call it at the end of a run or via
        anyio.to_thread.run_sync on a large journal.
        """
        overlay = self._overlay()
        files, sizes, updated_at = self._read(lambda: _summarize(self._reader, overlay))
        key = self._read(lambda: _stored_key(self._reader))
        total_files, total_bytes = sum(files.values()), sum(sizes.values())
        return JournalSummary(files, sizes, total_files, total_bytes, key, updated_at)

    def failures(self, limit: int = 1000) -> Iterator[FileRecord]:
        """Failed files, at most `limit`, streamed: queued ones first, then committed ones
        ordered by path."""
        # A snapshot: bounded by max_pending and the batches in flight.
        overlay = self._overlay_with_marks()
        emitted = 0
        for record in overlay.values():
            if emitted >= limit:
                return
            if record.state is FileState.FAILED:
                emitted += 1
                yield record
        cursor = self._read(lambda: self._reader.execute(_FAILURES))
        try:
            while emitted < limit:
                row = self._read(cursor.fetchone)
                if row is None:
                    return
                if _relative(row[0]) in overlay:
                    continue  # its newer record was handled above
                emitted += 1
                yield _row_to_record(row)
        finally:
            cursor.close()

    def statistics(self) -> JournalStatistics:
        return JournalStatistics(
            records_queued=self._records_queued,
            records_pending=len(self._pending) + len(self._inflight),
            records_committing=len(self._inflight),
            batches_committed=self._batches_committed,
            rows_written=self._rows_written,
            backpressure_waits=self._backpressure_waits,
            batch_reads=self._batch_reads,
        )
