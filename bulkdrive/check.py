"""Does the share hold the tree? The comparison behind `bulkdrive check` and `--check-remote`.

One file is compared by `difference`: the same size and the same modified time in whole
seconds (what the server keeps) make it the same file; the upload's `--check-remote` skips a
file by the same rule. `TreeCheck` compares a whole tree:

    walk(SRC, the upload's filters) ──▶ local rows  ┐
                                                      ├─▶ one ordered join ─▶ findings
    TreeListing(REMOTE_FOLDER, N at once) ─▶ remote rows ┘

Both sides stream into a private temporary SQLite database (on disk, a small page cache), so
memory stays flat however many files the tree holds and whatever order the two sides arrive
in; the join then streams the findings in path order. Files that match are "verified" when
the job's journal holds a completed upload of this exact local version (size and mtime to the
nanosecond) whose integrity the server checked, of the very file the share holds (same GUID).
"""

from __future__ import annotations

import enum
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from bulkdrive import errors
from bulkdrive.client import EdgeDriveClient
from bulkdrive.journal import FileRecord, FileState, Journal
from bulkdrive.listing import DEFAULT_CONCURRENCY, ListingFailure, RemoteEntry, TreeListing
from bulkdrive.names import remote_name
from bulkdrive.protocol import mtime_seconds
from bulkdrive.walk import (
    FileEntry,
    FolderEntry,
    SkippedEntry,
    WalkFailure,
    WalkFilters,
    WalkItem,
    walk,
)

#: Rows written (or findings read) per thread hop.
BATCH = 500
#: SQLite page cache of the comparison, KiB: what bounds its memory.
CACHE_KIB = 4096


# --- one file -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Version:
    """What both sides of a comparison are told apart by."""

    size: int
    mtime: int  # whole UNIX seconds, as the server keeps it

    @classmethod
    def local(cls, size: int, mtime_ns: int) -> Version:
        return cls(size, mtime_seconds(mtime_ns))


def difference(local: Version, remote: Version | None) -> str | None:
    """None when the remote holds this version of the file; otherwise why not, for people."""
    if remote is None:
        return "not on the remote"
    reasons = []
    if local.size != remote.size:
        reasons.append(f"size {local.size} here, {remote.size} there")
    if local.mtime != remote.mtime:
        reasons.append(f"modified {_when(local.mtime)} here, {_when(remote.mtime)} there")
    return "; ".join(reasons) or None


def _when(seconds: int) -> str:
    try:
        return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return str(seconds)


def verified(record: FileRecord | None, size: int, mtime_ns: int, remote_guid: str) -> bool:
    """The journal saw this very local version uploaded whole, with the server's integrity
    check, as the file the share holds now (when both sides name its GUID)."""
    return (
        record is not None
        and record.state is FileState.DONE
        and record.verified
        and (record.size, record.mtime_ns) == (size, mtime_ns)
        and (not record.file_guid or not remote_guid or record.file_guid == remote_guid)
    )


# --- what a tree comparison finds ---------------------------------------------------------


class Status(enum.StrEnum):
    SAME = "same"  # same size and modified time
    VERIFIED = "verified"  # the same, and uploaded with a verified integrity check
    MISSING = "missing"  # here, not on the remote
    DIFFERS = "differs"  # on both sides, not the same
    REMOTE_ONLY = "remote-only"  # on the remote, not here
    SKIPPED = "skipped"  # here, but not something upload sends (symbolic link, socket...)
    UNREADABLE = "unreadable"  # here, but it cannot be read: neither uploaded nor compared


#: The statuses that keep the remote from matching the tree.
DIFFERENT = frozenset({Status.MISSING, Status.DIFFERS, Status.REMOTE_ONLY, Status.UNREADABLE})


@dataclass(frozen=True, slots=True)
class Finding:
    #: "/"-separated, relative to SRC and to the remote folder alike, spelled as on the
    #: remote (a name that is not valid UTF-8 as `names.remote_name` escapes it)
    relative: str
    status: Status
    folder: bool = False
    reason: str = ""
    local: Version | None = None
    remote: Version | None = None

    def to_json(self) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "path": self.relative,
            "status": str(self.status),
            "type": "folder" if self.folder else "file",
        }
        if self.reason:
            fields["reason"] = self.reason
        for side, version in (("local", self.local), ("remote", self.remote)):
            if version is not None and not self.folder:
                fields[side] = {"size": version.size, "mtime": version.mtime}
        return fields


@dataclass(frozen=True)
class CheckPlan:
    source: Path
    remote_folder: str = "\\"
    filters: WalkFilters = field(default_factory=WalkFilters)
    #: Compare folders too (the upload's --create-empty-folders): empty ones must exist.
    folders: bool = False
    concurrency: int = DEFAULT_CONCURRENCY


@dataclass(frozen=True)
class CheckSummary:
    files: dict[Status, int]  # per status
    folders: dict[Status, int]  # per status; compared only with CheckPlan.folders
    unlisted: tuple[ListingFailure, ...]  # the first few remote folders that could not be read
    unlisted_count: int
    remote_missing: bool  # REMOTE_FOLDER itself does not exist
    seconds: float
    folders_compared: bool = False

    @property
    def differences(self) -> int:
        return sum(self.files[s] + self.folders[s] for s in DIFFERENT)

    @property
    def matches(self) -> bool:
        return self.differences == 0 and self.unlisted_count == 0

    def counts(self) -> dict[str, int]:
        counts = {str(status): n for status, n in self.files.items()}
        for status, n in self.folders.items():
            if self.folders_compared and status not in (Status.SKIPPED, Status.VERIFIED):
                counts[f"{status}-folders"] = n
        counts["unlisted-folders"] = self.unlisted_count
        return counts


@dataclass(frozen=True)
class CheckStatistics:
    local_files: int
    local_folders: int
    remote_entries: int
    remote_folders_listed: int
    remote_folders_waiting: int
    listings_in_flight_max: int
    compared: int
    done: bool


# --- the comparison database (used from one worker thread at a time) -----------------------

_SCHEMA = """
CREATE TABLE local (relative TEXT PRIMARY KEY, folder INTEGER NOT NULL,
                    size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE remote (relative TEXT PRIMARY KEY, folder INTEGER NOT NULL,
                     size INTEGER NOT NULL, mtime INTEGER NOT NULL, guid TEXT NOT NULL)
                    WITHOUT ROWID;
"""
# Every local path, with what the remote holds there; then what only the remote holds.
_LOCAL_SIDE = """
SELECT l.relative, l.folder, l.size, l.mtime_ns, r.folder, r.size, r.mtime, r.guid
FROM local AS l LEFT JOIN remote AS r ON r.relative = l.relative ORDER BY l.relative
"""
_REMOTE_ONLY = """
SELECT r.relative, r.folder, r.size, r.mtime FROM remote AS r
WHERE NOT EXISTS (SELECT 1 FROM local AS l WHERE l.relative = r.relative)
  AND (r.folder = 0 OR ?) ORDER BY r.relative
"""


def _open_db() -> sqlite3.Connection:
    # "" is a private database in a temporary file, removed when it is closed.
    conn = sqlite3.connect("", isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
    conn.execute("PRAGMA journal_mode = OFF")
    conn.execute("PRAGMA synchronous = OFF")
    conn.executescript(_SCHEMA)
    return conn


@asynccontextmanager
async def journal_if_any(path: Path) -> AsyncIterator[Journal | None]:
    """The job's journal, read beside a run that may hold it; None when the job has none."""
    if not path.is_file():
        yield None
        return
    async with Journal.open(path) as journal:
        yield journal


def _insert(conn: sqlite3.Connection, table: str, rows: list[tuple[Any, ...]]) -> None:
    marks = ", ".join("?" * len(rows[0]))
    conn.execute("BEGIN")
    # A path seen twice (a name the server lists twice) keeps its first row.
    conn.executemany(f"INSERT OR IGNORE INTO {table} VALUES ({marks})", rows)
    conn.execute("COMMIT")


def _batches(conn: sqlite3.Connection, query: str, *args: Any) -> Iterator[list[Any]]:
    cursor = conn.execute(query, args)
    while rows := cursor.fetchmany(BATCH):
        yield rows


# --- the tree comparison ------------------------------------------------------------------


class _RemoteFilter:
    """The walk's filters applied to remote paths, so that both sides are the same "tree"."""

    def __init__(self, filters: WalkFilters) -> None:
        self._filters = filters

    def included(self, folder: str) -> bool:
        """As in the walk: with include globs, a folder counts whole when it or a folder
        above it matches one; without them, every folder counts."""
        f = self._filters
        if not f.include:
            return True
        parts = folder.split("/")
        return any(
            f.includes("/".join(parts[:depth]), is_folder=True)
            for depth in range(1, len(parts) + 1)
        )

    def descend(self, folder: str) -> bool:
        return not self._filters.excludes(folder, is_folder=True)

    def wants_file(self, relative: str, size: int) -> bool:
        f = self._filters
        if f.excludes(relative, is_folder=False) or not f.size_ok(size):
            return False
        if not f.include or f.includes(relative, is_folder=False):
            return True
        parent = relative.rpartition("/")[0]
        return bool(parent) and self.included(parent)


class TreeCheck:
    """Compare SRC with REMOTE_FOLDER: construct, `await run(on_finding)`, read
    `statistics()` (also while it runs, for progress)."""

    def __init__(
        self,
        client: EdgeDriveClient,
        plan: CheckPlan,
        *,
        journal: Journal | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._plan = plan
        self._journal = journal
        self._clock = clock
        self._remote_filter = _RemoteFilter(plan.filters)
        self._listing = TreeListing(
            client,
            plan.remote_folder,
            concurrency=plan.concurrency,
            descend=self._remote_filter.descend,
            missing_root_ok=True,
        )
        self._db_lock = anyio.Lock()
        self._local_files = 0
        self._local_folders = 0
        self._compared = 0
        self._skipped = 0
        self._unreadable = 0
        self._done = False

    def statistics(self) -> CheckStatistics:
        listing = self._listing.statistics()
        return CheckStatistics(
            local_files=self._local_files,
            local_folders=self._local_folders,
            remote_entries=listing.entries,
            remote_folders_listed=listing.folders_listed,
            remote_folders_waiting=listing.folders_waiting,
            listings_in_flight_max=listing.max_in_flight,
            compared=self._compared,
            done=self._done,
        )

    async def run(self, on_finding: Callable[[Finding], None]) -> CheckSummary:
        """Compare, calling `on_finding` for every path of either side, in path order
        (skipped local entries as the walk meets them)."""
        started = self._clock()
        conn = await anyio.to_thread.run_sync(_open_db)
        try:
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._read_local, conn, on_finding)
                    tg.start_soon(self._read_remote, conn)
            except BaseExceptionGroup as group:
                raise errors.alone(group) from None
            files = dict.fromkeys(Status, 0)
            folders = dict.fromkeys(Status, 0)
            files[Status.SKIPPED] = self._skipped
            files[Status.UNREADABLE] = self._unreadable

            def count(finding: Finding) -> None:
                self._compared += 1
                (folders if finding.folder else files)[finding.status] += 1
                on_finding(finding)

            await self._compare(conn, count)
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(conn.close)
        self._done = True
        listing = self._listing
        return CheckSummary(
            files=files,
            folders=folders,
            unlisted=tuple(listing.failures),
            unlisted_count=listing.statistics().failures,
            remote_missing=listing.root_missing,
            seconds=self._clock() - started,
            folders_compared=self._plan.folders,
        )

    async def _store(
        self, conn: sqlite3.Connection, table: str, rows: list[tuple[Any, ...]]
    ) -> None:
        if rows:
            async with self._db_lock:
                await anyio.to_thread.run_sync(_insert, conn, table, rows)

    async def _read_local(
        self, conn: sqlite3.Connection, on_finding: Callable[[Finding], None]
    ) -> None:
        send, receive = anyio.create_memory_object_stream[WalkItem](BATCH * 2)
        folders = self._plan.folders
        async with anyio.create_task_group() as tg:
            tg.start_soon(walk, self._plan.source, self._plan.filters, send)
            rows: list[tuple[Any, ...]] = []
            async with receive:
                async for item in receive:
                    # Keyed by the name the upload gives the file remotely.
                    relative = remote_name(item.relative)
                    if isinstance(item, FileEntry):
                        self._local_files += 1
                        rows.append((relative, 0, item.size, item.mtime_ns))
                    elif isinstance(item, FolderEntry):
                        self._local_folders += 1
                        if folders:
                            rows.append((relative, 1, 0, 0))
                    elif isinstance(item, SkippedEntry):
                        self._skipped += 1
                        on_finding(Finding(relative, Status.SKIPPED, reason=item.reason))
                    elif isinstance(item, WalkFailure):
                        self._unreadable += 1
                        on_finding(Finding(relative, Status.UNREADABLE, reason=item.reason))
                    if len(rows) >= BATCH:
                        await self._store(conn, "local", rows)
                        rows = []
            await self._store(conn, "local", rows)

    async def _read_remote(self, conn: sqlite3.Connection) -> None:
        send, receive = anyio.create_memory_object_stream[RemoteEntry](BATCH * 2)
        wanted = self._remote_filter
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._listing.run, send)
            rows: list[tuple[Any, ...]] = []
            async with receive:
                async for entry in receive:
                    resource = entry.resource
                    if entry.is_folder:
                        if not wanted.descend(entry.relative):
                            continue
                        if self._plan.folders and not wanted.included(entry.relative):
                            continue
                        rows.append((entry.relative, 1, 0, 0, resource.guid))
                    elif wanted.wants_file(entry.relative, resource.size):
                        rows.append(
                            (
                                entry.relative,
                                0,
                                resource.size,
                                resource.modified_time,
                                resource.guid,
                            )
                        )
                    if len(rows) >= BATCH:
                        await self._store(conn, "remote", rows)
                        rows = []
            await self._store(conn, "remote", rows)

    async def _compare(self, conn: sqlite3.Connection, report: Callable[[Finding], None]) -> None:
        local_side = iter(_batches(conn, _LOCAL_SIDE))
        while rows := await anyio.to_thread.run_sync(next, local_side, None):
            records: dict[str, FileRecord] = {}
            if self._journal is not None:
                records = await self._journal.lookup_many(r[0] for r in rows if not r[1])
            for finding in _local_findings(rows, records):
                report(finding)
        remote_only = iter(_batches(conn, _REMOTE_ONLY, self._plan.folders))
        while rows := await anyio.to_thread.run_sync(next, remote_only, None):
            for relative, folder, size, mtime in rows:
                report(
                    Finding(
                        relative,
                        Status.REMOTE_ONLY,
                        folder=bool(folder),
                        reason="not here",
                        remote=None if folder else Version(size, mtime),
                    )
                )


def _local_findings(rows: Iterable[Any], records: dict[str, FileRecord]) -> Iterator[Finding]:
    for relative, folder, size, mtime_ns, r_folder, r_size, r_mtime, r_guid in rows:
        if folder:
            if r_folder is None:
                yield Finding(relative, Status.MISSING, folder=True, reason="no such folder there")
            elif not r_folder:
                yield Finding(relative, Status.DIFFERS, folder=True, reason="a file there")
            else:
                yield Finding(relative, Status.SAME, folder=True)
            continue
        local = Version.local(size, mtime_ns)
        if r_folder is None:
            yield Finding(relative, Status.MISSING, reason="not there", local=local)
            continue
        if r_folder:
            yield Finding(relative, Status.DIFFERS, reason="a folder there", local=local)
            continue
        remote = Version(r_size, r_mtime)
        why = difference(local, remote)
        if why is not None:
            yield Finding(relative, Status.DIFFERS, reason=why, local=local, remote=remote)
        elif verified(records.get(relative), size, mtime_ns, r_guid):
            yield Finding(relative, Status.VERIFIED, local=local, remote=remote)
        else:
            yield Finding(relative, Status.SAME, local=local, remote=remote)
