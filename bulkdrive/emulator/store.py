"""What the emulator keeps: upload sessions in SQLite, files on disk, under one root.

Layout of ROOT:

    ROOT/<shareId>/<path>            completed files of a share, plain files anyone can look at
    ROOT/drive/<user>/<path>         a user's own Edge Drive
    ROOT/.bulkdrive/state.sqlite3    sessions, tokens (hashed) and the GUIDs of stored files
    ROOT/.bulkdrive/partial/<id>     the bytes of unfinished sessions, never visible in a share

Order of writes, so that a crash never leaves an offset that the partial file does not back:
a chunk body is written to the partial file first, then the session row is updated; on start,
partial files are cut back to their recorded offset and orphans are removed.

Every SQLite call runs on one dedicated thread (calls stay in order); file operations run on a
small thread pool, except whole files of at most INLINE_WRITE_BYTES in one request, which are
written on the event loop (see there). The event loop otherwise only streams request bodies and
makes decisions.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import os
import random
import secrets
import sqlite3
import stat
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from bulkdrive import protocol

T = TypeVar("T")

try:
    import resource

    _RUSAGE_THREAD: int | None = getattr(resource, "RUSAGE_THREAD", None)
except ImportError:  # not a Unix
    _RUSAGE_THREAD = None


def _voluntary_waits() -> int | None:
    """How often this thread has waited in the kernel so far; None where unknown."""
    if _RUSAGE_THREAD is None:
        return None
    return resource.getrusage(_RUSAGE_THREAD).ru_nvcsw


STATE_DIR = ".bulkdrive"
#: Bytes gathered from the socket before one write on the I/O pool (bounds memory per request).
WRITE_BATCH = 1024 * 1024
_IOV_MAX = 512
#: A whole file up to this size that arrives in one request is checked, written and renamed on
#: the event loop itself. Measured on this machine kind: open + write + futimens + close +
#: rename of 4 KiB costs ~20-40 us of CPU (64 KiB: about 20 us more for the copy), while one hop
#: to the I/O pool costs ~50-100 us (queue, futex wake-ups, the loop's self-pipe) and was most
#: of the emulator's CPU per small file. Above 64 KiB the copy starts to hold up other
#: connections while the hop becomes cheap next to the body, so larger bodies keep the pool.
INLINE_WRITE_BYTES = 64 * 1024
#: Page-cache writes may still stall (dirty-page throttling, a slow disk). An inline write that
#: takes longer than this sends the following ones to the I/O pool for INLINE_PAUSE_SECONDS, so
#: a stalling disk blocks the event loop once, briefly, and then never again while it stalls.
INLINE_SLOW_SECONDS = 0.005
INLINE_PAUSE_SECONDS = 5.0
#: GUID rows of stored files are gathered this long before one database hop writes them all.
GUID_FLUSH_DELAY_SECONDS = 0.05
#: The variant (RFC 4122) and version (4) bits that uuid.UUID(version=4) sets.
_UUID4_KEEP = ~((0xC000 << 48) | (0xF000 << 64)) & ((1 << 128) - 1)
_UUID4_SET = (0x8000 << 48) | (4 << 76)
_GUID_NAMESPACE = uuid.UUID("6b1f3c2e-0d44-4f8e-9a55-2b0c8f3e7d10")
_FULL_DISK = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
# 404 messages never name the path: clients tell an unknown share from a missing folder by
# the word "share" in the message (protocol.error_for), and a path may contain that word.
_NO_PARENT = "the parent folder does not exist (this server does not create folders)"
_NOTHING_THERE = "no file or folder at this path"
_NO_FOLDER = "no folder at this path"


#: The refusal of an initiate while the file's session is receiving a request: no requestId,
#: since its offset is about to change (a 409 that offers no session to resume).
BUSY_SESSION = "the unfinished session of this file is still receiving a request; try again"


class StoreError(Exception):
    """A refusal with its HTTP status; 409s carry the session's requestId and offset."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        request_id: str = "",
        chunk_offset: int | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.request_id = request_id
        self.chunk_offset = chunk_offset


class BodyIncomplete(Exception):
    """The request body ended before Content-Length (connection lost): nothing was stored."""


@dataclass(frozen=True)
class Target:
    """Where uploads go: a share (`key` = shareId) or a user's own drive (`drive:<user>`)."""

    key: str
    directory: Path
    label: str


@dataclass
class Session:
    """An unfinished upload session. Mutated only on the event loop."""

    request_id: str
    target: str
    parent: tuple[str, ...]
    name: str
    size: int
    offset: int
    mtime: int
    verify_block: bool
    guid: str
    created: float
    last_used: float
    digests: list[bytes] = field(default_factory=list)
    persisted: bool = False
    busy: bool = False
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def path(self) -> str:
        return protocol.join_remote_path((*self.parent, self.name))


@dataclass(frozen=True)
class Completed:
    guid: str
    size: int
    integrity_verified: bool


@dataclass(frozen=True)
class StoredToken:
    digest: str
    user: str
    device_id: str
    idle_seconds: float


class _Ids:
    """Request ids and file GUIDs. Unique, not secret: a PRNG seeded once from the OS, because
    os.urandom on the event loop releases the GIL and then waits for it behind the I/O threads."""

    def __init__(self) -> None:
        self._random = random.Random(secrets.randbits(128))

    def request_id(self) -> str:
        """Opaque session identifier: a long string of digits, like Commvault's."""
        return str(self._random.getrandbits(140) | (1 << 139))

    def guid(self) -> str:
        """uuid.UUID(int=…, version=4).hex, without building the UUID object."""
        bits = self._random.getrandbits(128) & _UUID4_KEEP | _UUID4_SET
        return f"{bits:032x}"


def is_full_disk(exc: OSError) -> bool:
    return exc.errno in _FULL_DISK


def block_level_hash(digests: Iterable[bytes]) -> str:
    """SHA-256 over the joined per-block digests; an empty file has one empty block."""
    joined = b"".join(digests) or hashlib.sha256(b"").digest()
    return hashlib.sha256(joined).hexdigest()


# --- file operations (run on the I/O pool) ------------------------------------------------


def _write_batch(fd: int, pieces: list[bytes], offset: int, hasher: Any) -> None:
    for start in range(0, len(pieces), _IOV_MAX):
        group = pieces[start : start + _IOV_MAX]
        if hasher is not None:
            for piece in group:
                hasher.update(piece)
        views = [memoryview(p) for p in group]
        while views:
            done = os.pwritev(fd, views, offset)
            offset += done
            while views and done >= len(views[0]):
                done -= len(views[0])
                views.pop(0)
            if views and done:
                views[0] = views[0][done:]


def _truncate_and_close(fd: int, length: int) -> None:
    try:
        os.ftruncate(fd, length)
    finally:
        os.close(fd)


def _hash_file(path: Path) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(WRITE_BATCH):
            hasher.update(block)
    return hasher.hexdigest()


def _inside(real: str, directory: Path) -> bool:
    base = str(directory)
    return real == base or real.startswith(base + os.sep)


def _lstat_component(path: str | Path) -> os.stat_result | None:
    """lstat one component of a stored path: None when it does not exist; 400 for a file in
    the middle of the path or a symbolic link anywhere in it."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    except NotADirectoryError as exc:
        raise StoreError(400, "a component of the path is a file, not a folder") from exc
    except OSError as exc:
        raise StoreError(400, f"invalid path: {exc.strerror}") from exc
    if stat.S_ISLNK(st.st_mode):
        raise StoreError(400, "the path goes through a symbolic link, which is refused")
    return st


def safe_path(directory: Path, parts: tuple[str, ...]) -> Path:
    """The on-disk path of `parts` under `directory`, refusing symlinks and escapes (400)."""
    current = directory
    for part in parts:
        current = current / part
        if _lstat_component(current) is None:
            break
    path = directory.joinpath(*parts)
    if not _inside(os.path.realpath(path), directory):
        raise StoreError(400, "the path leaves the share")
    return path


def _walk(directory: str, parts: tuple[str, ...]) -> tuple[str, os.stat_result | None, int]:
    """The path of `parts` under `directory`, the lstat of its last component and how many
    components exist; refuses symlinks and files in the middle (400) exactly as safe_path does.

    No realpath: `parts` come from protocol.split_remote_path (no `..`, `.`, empty or NUL
    components) and this function contains no separator in a component, so when no component
    is a symlink the path resolves inside `directory` as long as `directory` itself does —
    which Store._check_root verifies (see there).
    """
    path = directory
    st: os.stat_result | None = None
    existing = 0
    missing = False
    for part in parts:
        if os.sep in part or part in ("", ".", ".."):
            raise StoreError(400, "the path leaves the share")
        path = path + os.sep + part
        if missing:
            continue
        st = _lstat_component(path)
        if st is None:
            missing = True
            continue
        existing += 1
    return path, st, existing


def _folder_exists(directory: Path, parts: tuple[str, ...]) -> bool:
    path = safe_path(directory, parts)
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def _ensure_folder(directory: Path, parts: tuple[str, ...], strict: bool) -> Path:
    """The folder `parts`, created with its parents unless `strict` (then 404 if missing)."""
    path = safe_path(directory, parts)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        if strict:
            raise StoreError(404, _NO_PARENT) from None
        try:
            path.mkdir(parents=True, exist_ok=True)
        except FileExistsError as exc:
            raise StoreError(400, "a component of the path is a file, not a folder") from exc
        except NotADirectoryError as exc:
            raise StoreError(400, "a component of the path is a file, not a folder") from exc
        # A symlink could have appeared while the folders were created.
        safe_path(directory, parts)
        return path
    if not stat.S_ISDIR(st.st_mode):
        raise StoreError(400, f"{protocol.join_remote_path(parts)} is a file, not a folder")
    return path


def _rename_into(
    target: Target, parent: tuple[str, ...], name: str, source: Path, strict: bool
) -> int:
    """Move a finished file to its place in the share; returns the old version's size."""
    _ensure_folder(target.directory, parent, strict)
    final = safe_path(target.directory, (*parent, name))
    try:
        st = os.lstat(final)
    except FileNotFoundError:
        old = 0
    else:
        if stat.S_ISDIR(st.st_mode):
            raise StoreError(400, f"{protocol.join_remote_path((*parent, name))} is a folder")
        old = st.st_size if stat.S_ISREG(st.st_mode) else 0
    os.replace(source, final)
    return old


def _directory_usage(directory: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(directory):
        for name in files:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
    return total


def _resource(parts: tuple[str, ...], st: os.stat_result, guid: str) -> dict[str, str | int]:
    fields: dict[str, str | int] = {
        "name": parts[-1] if parts else "",
        "GUID": guid,
        "path": protocol.join_remote_path(parts),
        "parentPath": protocol.join_remote_path(parts[:-1]),
        "modifiedTime": int(st.st_mtime),
    }
    if stat.S_ISDIR(st.st_mode):
        fields["directory"] = 1
        fields["sizeinBytes"] = 0
    else:
        fields["file"] = 1
        fields["sizeinBytes"] = st.st_size
    return fields


def derived_guid(target: str, parts: tuple[str, ...]) -> str:
    """A stable GUID for a path that has no recorded one (folders, files put there by hand)."""
    return uuid.uuid5(_GUID_NAMESPACE, f"{target}\x00{'/'.join(parts)}").hex


# --- SQLite (runs on the one database thread) ---------------------------------------------

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    request_id TEXT PRIMARY KEY, target TEXT NOT NULL, parent TEXT NOT NULL,
    name TEXT NOT NULL, size INTEGER NOT NULL, offset INTEGER NOT NULL, mtime INTEGER NOT NULL,
    verify_block INTEGER NOT NULL, guid TEXT NOT NULL, created REAL NOT NULL,
    last_used REAL NOT NULL);
CREATE TABLE IF NOT EXISTS chunk_digests (
    request_id TEXT NOT NULL, seq INTEGER NOT NULL, digest BLOB NOT NULL,
    PRIMARY KEY (request_id, seq));
CREATE TABLE IF NOT EXISTS files (
    target TEXT NOT NULL, path TEXT NOT NULL, guid TEXT NOT NULL, PRIMARY KEY (target, path));
CREATE TABLE IF NOT EXISTS tokens (
    digest TEXT PRIMARY KEY, user TEXT NOT NULL, device_id TEXT NOT NULL, idle REAL NOT NULL);
"""


#: Rows of one multi-row INSERT: 3 parameters each stays under SQLite's oldest limit (999).
_ROWS_PER_INSERT = 300


class _Database:
    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.executescript(_SCHEMA)

    def load_sessions(self) -> list[tuple[Any, ...]]:
        rows = self.conn.execute(
            "SELECT request_id, target, parent, name, size, offset, mtime, verify_block, guid,"
            " created, last_used FROM sessions"
        ).fetchall()
        return list(rows)

    def load_digests(self, request_id: str) -> list[bytes]:
        rows = self.conn.execute(
            "SELECT digest FROM chunk_digests WHERE request_id = ? ORDER BY seq", (request_id,)
        ).fetchall()
        return [bytes(row[0]) for row in rows]

    def save_session(self, s: Session, new_digest: bytes | None, insert: bool) -> None:
        with self.conn:
            self.conn.execute("BEGIN")
            if insert:
                self.conn.execute(
                    "INSERT OR REPLACE INTO sessions VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        s.request_id,
                        s.target,
                        "/".join(s.parent),
                        s.name,
                        s.size,
                        s.offset,
                        s.mtime,
                        int(s.verify_block),
                        s.guid,
                        s.created,
                        s.last_used,
                    ),
                )
                self.conn.executemany(
                    "INSERT OR REPLACE INTO chunk_digests VALUES (?,?,?)",
                    [(s.request_id, i, d) for i, d in enumerate(s.digests)],
                )
            else:
                self.conn.execute(
                    "UPDATE sessions SET offset = ?, last_used = ? WHERE request_id = ?",
                    (s.offset, s.last_used, s.request_id),
                )
                if new_digest is not None:
                    self.conn.execute(
                        "INSERT OR REPLACE INTO chunk_digests VALUES (?,?,?)",
                        (s.request_id, len(s.digests) - 1, new_digest),
                    )

    def delete_session(self, request_id: str) -> None:
        with self.conn:
            self.conn.execute("BEGIN")
            self.conn.execute("DELETE FROM sessions WHERE request_id = ?", (request_id,))
            self.conn.execute("DELETE FROM chunk_digests WHERE request_id = ?", (request_id,))

    def save_guids(self, rows: list[tuple[str, str, str]]) -> None:
        # Many rows per statement: executemany steps SQLite once per row and releases the GIL
        # each time, which makes the event loop wait for it again after every system call.
        with self.conn:
            self.conn.execute("BEGIN")
            for start in range(0, len(rows), _ROWS_PER_INSERT):
                group = rows[start : start + _ROWS_PER_INSERT]
                marks = ",".join(["(?,?,?)"] * len(group))
                self.conn.execute(
                    f"INSERT OR REPLACE INTO files VALUES {marks}",
                    [value for row in group for value in row],
                )

    def file_guids(self, target: str, paths: list[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        for start in range(0, len(paths), 500):
            group = paths[start : start + 500]
            marks = ",".join("?" * len(group))
            rows = self.conn.execute(
                f"SELECT path, guid FROM files WHERE target = ? AND path IN ({marks})",
                (target, *group),
            ).fetchall()
            found.update({row[0]: row[1] for row in rows})
        return found

    def load_tokens(self) -> list[StoredToken]:
        rows = self.conn.execute("SELECT digest, user, device_id, idle FROM tokens").fetchall()
        return [StoredToken(*row) for row in rows]

    def save_token(self, token: StoredToken) -> None:
        self.conn.execute(
            "INSERT OR REPLACE INTO tokens VALUES (?,?,?,?)",
            (token.digest, token.user, token.device_id, token.idle_seconds),
        )

    def delete_token(self, digest: str) -> None:
        self.conn.execute("DELETE FROM tokens WHERE digest = ?", (digest,))


# --- the store ----------------------------------------------------------------------------


class Store:
    """Upload sessions, stored files and folders of every target, under one root."""

    def __init__(
        self,
        root: Path,
        targets: Iterable[Target],
        *,
        session_ttl_seconds: float,
        quota: int | None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.root = root
        self.targets = {t.key: t for t in targets}
        self.session_ttl_seconds = session_ttl_seconds
        self.quota = quota
        self.clock = clock
        self.partial_dir = root / STATE_DIR / "partial"
        self._sessions: dict[str, Session] = {}
        self._by_file: dict[tuple[str, tuple[str, ...], str], Session] = {}
        self._used = 0
        self._reserved = 0
        self._db_thread = ThreadPoolExecutor(1, thread_name_prefix="emulator-db")
        self._io = ThreadPoolExecutor(8, thread_name_prefix="emulator-io")
        self._db: _Database | None = None
        self.tokens: list[StoredToken] = []
        self._ids = _Ids()
        self._pending_guids: dict[tuple[str, str], str] = {}
        self._guid_flush: asyncio.Task[None] | None = None
        self._partial_prefix = str(self.partial_dir) + os.sep
        self._dir_text = {t.key: str(t.directory) for t in self.targets.values()}
        self._verified_dirs: dict[str, tuple[int, int]] = {}
        self._inline_paused_until = 0.0

    # -- plumbing

    async def _on_db(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._db_thread, fn, *args)

    def _on_io(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        return asyncio.get_running_loop().run_in_executor(self._io, fn, *args)

    @property
    def db(self) -> _Database:
        assert self._db is not None, "store is not open"
        return self._db

    def partial_path(self, request_id: str) -> Path:
        return self.partial_dir / request_id

    # -- lifecycle

    async def open(self) -> None:
        await self._on_io(self._prepare_dirs)
        self._db = await self._on_db(_Database, self.root / STATE_DIR / "state.sqlite3")
        rows = await self._on_db(self.db.load_sessions)
        now = self.clock()
        for row in rows:
            (rid, target, parent, name, size, offset, mtime, verify, guid, created, used) = row
            session = Session(
                request_id=rid,
                target=target,
                parent=tuple(p for p in parent.split("/") if p),
                name=name,
                size=size,
                offset=offset,
                mtime=mtime,
                verify_block=bool(verify),
                guid=guid,
                created=created,
                last_used=used,
                persisted=True,
            )
            session.idle.set()
            usable = target in self.targets and now - used <= self.session_ttl_seconds
            if usable:
                usable = await self._on_io(self._recover_partial, rid, offset)
            if usable and session.verify_block:
                session.digests = await self._on_db(self.db.load_digests, rid)
            if not usable:
                await self._on_io(self._remove_partial, rid)
                await self._on_db(self.db.delete_session, rid)
                continue
            self._register(session)
        await self._on_io(self._remove_orphans, set(self._sessions))
        self.tokens = await self._on_db(self.db.load_tokens)
        if self.quota is not None:
            for target in self.targets.values():
                self._used += await self._on_io(_directory_usage, target.directory)

    async def close(self) -> None:
        if self._guid_flush is not None:
            await self._guid_flush
        if self._db is not None:
            await self._on_db(self.db.conn.close)
            self._db = None
        self._db_thread.shutdown(wait=False)
        # Let writes of handlers cancelled at shutdown finish (and cut partials back) first.
        await asyncio.get_running_loop().run_in_executor(None, self._io.shutdown, True)

    def _prepare_dirs(self) -> None:
        self.partial_dir.mkdir(parents=True, exist_ok=True)
        for target in self.targets.values():
            if target.directory.is_symlink():
                raise ValueError(f"{target.directory} is a symbolic link; refusing to serve it")
            target.directory.mkdir(parents=True, exist_ok=True)

    def _recover_partial(self, request_id: str, offset: int) -> bool:
        """Cut a partial file back to its recorded offset; False when it lost bytes."""
        path = self.partial_path(request_id)
        try:
            size = os.lstat(path).st_size
        except FileNotFoundError:
            return False
        if size < offset:
            return False
        if size > offset:
            os.truncate(path, offset)
        return True

    def _remove_partial(self, request_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.partial_path(request_id))

    def _remove_orphans(self, known: set[str]) -> None:
        for entry in os.scandir(self.partial_dir):
            if entry.name not in known:
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)

    # -- sessions

    def _register(self, session: Session) -> None:
        self._sessions[session.request_id] = session
        self._by_file[(session.target, session.parent, session.name)] = session
        self._reserved += session.size

    def _unregister(self, session: Session) -> None:
        if self._sessions.get(session.request_id) is session:
            del self._sessions[session.request_id]
            self._reserved -= session.size
        key = (session.target, session.parent, session.name)
        if self._by_file.get(key) is session:
            del self._by_file[key]

    @property
    def active_sessions(self) -> int:
        return len(self._sessions)

    def _expired(self, session: Session) -> bool:
        return not session.busy and self.clock() - session.last_used > self.session_ttl_seconds

    async def find(self, request_id: str) -> Session | None:
        session = self._sessions.get(request_id)
        if session is not None and self._expired(session):
            await self.discard(session)
            return None
        return session

    async def find_for(self, target: str, parent: tuple[str, ...], name: str) -> Session | None:
        session = self._by_file.get((target, parent, name))
        if session is not None and self._expired(session):
            await self.discard(session)
            return None
        return session

    async def expire_idle(self) -> int:
        expired = [s for s in list(self._sessions.values()) if self._expired(s)]
        for session in expired:
            await self.discard(session)
        return len(expired)

    def check_quota(self, size: int) -> None:
        if self.quota is not None and self._used + self._reserved + size > self.quota:
            raise StoreError(413, f"the quota of {self.quota} bytes would be exceeded")

    async def begin(
        self,
        target: Target,
        parent: tuple[str, ...],
        name: str,
        *,
        size: int,
        mtime: int,
        verify_block: bool,
        guid: str | None,
        strict_parents: bool,
        register: bool = True,
    ) -> Session:
        """A new session with an empty partial file; `register=False` for full-file uploads."""
        await self._on_io(self._check_destination, target, parent, name, strict_parents)
        self.check_quota(size)
        now = self.clock()
        session = Session(
            request_id=self._ids.request_id(),
            target=target.key,
            parent=parent,
            name=name,
            size=size,
            offset=0,
            mtime=mtime,
            verify_block=verify_block,
            guid=guid or self._ids.guid(),
            created=now,
            last_used=now,
        )
        # Busy from the moment others can find it until its initiate's body is stored (the
        # caller marks it idle): a re-initiate meanwhile must not report offset 0 as final.
        session.busy = True
        session.idle.clear()
        if register:
            # Another initiate for the same file may have won while this one waited on disk.
            other = self._by_file.get((target.key, parent, name))
            if other is not None and other.busy:
                raise StoreError(409, BUSY_SESSION)
            if other is not None:
                raise StoreError(
                    409,
                    "an unfinished upload session exists for this file",
                    request_id=other.request_id,
                    chunk_offset=other.offset,
                )
            self._register(session)
        else:
            self._reserved += size
        try:
            await self._on_io(self._create_partial, session.request_id)
        except OSError as exc:
            self._release(session, register)
            session.busy = False
            session.idle.set()
            raise self._disk_error(exc) from exc
        return session

    def _release(self, session: Session, registered: bool) -> None:
        if registered:
            self._unregister(session)
        else:
            self._reserved -= session.size

    def _create_partial(self, request_id: str) -> None:
        fd = os.open(self.partial_path(request_id), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.close(fd)

    def _check_destination(
        self, target: Target, parent: tuple[str, ...], name: str, strict: bool
    ) -> None:
        path = safe_path(target.directory, (*parent, name))
        if strict and not _folder_exists(target.directory, parent):
            raise StoreError(404, _NO_PARENT)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StoreError(400, f"invalid path: {exc.strerror}") from exc
        if stat.S_ISDIR(st.st_mode):
            raise StoreError(400, f"{protocol.join_remote_path((*parent, name))} is a folder")

    @staticmethod
    def _disk_error(exc: OSError) -> StoreError:
        if is_full_disk(exc):
            return StoreError(413, "the server's disk is full")
        return StoreError(500, f"the server could not write the file: {exc.strerror}")

    async def write_body(
        self,
        session: Session,
        read: Callable[[], Awaitable[bytes]],
        *,
        limit: int,
        max_bytes: int,
        want_digest: bool,
    ) -> tuple[int, bytes | None]:
        """Stream a request body into the partial file at the session's offset.

        Returns the bytes appended and, when asked, the body's SHA-256. The offset is not
        moved here (see `commit`). On any failure the partial file is cut back: raises
        BodyIncomplete (body cut short), StoreError 400 (longer than `limit`) or 413 (longer than
        `max_bytes`, or disk full).
        """
        base = session.offset
        hasher = hashlib.sha256() if want_digest else None
        path = self.partial_path(session.request_id)
        try:
            fd = await self._on_io(os.open, path, os.O_WRONLY)
        except OSError as exc:
            raise self._disk_error(exc) from exc
        written = 0
        pending: asyncio.Future[None] | None = None
        batch: list[bytes] = []
        batch_len = 0
        try:
            while True:
                try:
                    piece = await read()
                except Exception as exc:
                    raise BodyIncomplete(str(exc)) from exc
                if not piece:
                    break
                total = written + batch_len + len(piece)
                # Without Content-Length (chunked encoding) the limits are only seen here.
                if total > max_bytes:
                    raise StoreError(413, "the body is larger than the largest accepted request")
                if total > limit:
                    raise StoreError(400, "the body would take the file past its FileSize")
                batch.append(piece)
                batch_len += len(piece)
                if batch_len >= WRITE_BATCH:
                    # Receive the next batch while this one is written.
                    if pending is not None:
                        await pending
                    pending = self._on_io(_write_batch, fd, batch, base + written, hasher)
                    written += batch_len
                    batch, batch_len = [], 0
            if pending is not None:
                await pending
                pending = None
            if batch:
                await self._on_io(_write_batch, fd, batch, base + written, hasher)
                written += batch_len
        except BaseException as exc:
            if pending is not None:
                with contextlib.suppress(BaseException):
                    await asyncio.shield(pending)
            await asyncio.shield(self._on_io(_truncate_and_close, fd, base))
            if isinstance(exc, OSError):
                raise self._disk_error(exc) from exc
            raise
        await self._on_io(os.close, fd)
        return written, (hasher.digest() if hasher is not None else None)

    async def rollback(self, session: Session) -> None:
        """Cut the partial file back to the session's offset (a body that was refused late)."""
        await self._on_io(os.truncate, self.partial_path(session.request_id), session.offset)

    async def commit(
        self, session: Session, appended: int, digest: bytes | None, *, persist: bool = True
    ) -> None:
        """Move the offset past an applied body and record it (after the bytes are on disk).

        `persist=False` when the file completes with this request: the row would only be
        deleted again a moment later.
        """
        session.offset += appended
        session.last_used = self.clock()
        if session.verify_block and digest is not None and appended > 0:
            session.digests.append(digest)
        if not persist:
            return
        insert = not session.persisted
        try:
            await self._on_db(
                self.db.save_session, session, digest if appended > 0 else None, insert
            )
        except sqlite3.Error as exc:
            # Unrecorded bytes must not count: undo the chunk, as if it never arrived.
            session.offset -= appended
            if session.verify_block and digest is not None and appended > 0:
                session.digests.pop()
            await self.rollback(session)
            status = 413 if "full" in str(exc).lower() else 500
            raise StoreError(status, f"the server could not record the upload: {exc}") from exc
        session.persisted = True

    async def discard(self, session: Session, *, registered: bool = True) -> None:
        """Forget a session: its requestId, bytes and row (the old requestId then gets 404)."""
        self._release(session, registered)
        await self._on_io(self._remove_partial, session.request_id)
        if session.persisted:
            session.persisted = False
            await self._on_db(self.db.delete_session, session.request_id)

    async def complete(
        self,
        session: Session,
        *,
        full_hash: str | None,
        block_hash: str | None,
        strict_parents: bool,
        registered: bool = True,
    ) -> Completed:
        """Check the hashes, then rename the partial file into the share (a new version)."""
        verified = False
        if session.verify_block:
            if block_hash is None or block_level_hash(session.digests) != block_hash.lower():
                await self.discard(session, registered=registered)
                raise StoreError(400, "file integrity check failed")
            verified = True
        if full_hash is not None:
            actual = await self._on_io(_hash_file, self.partial_path(session.request_id))
            if actual != full_hash.lower():
                await self.discard(session, registered=registered)
                raise StoreError(400, "file integrity check failed")
            verified = True
        target = self.targets[session.target]
        try:
            replaced = await self._on_io(self._place, target, session, strict_parents)
        except OSError as exc:
            raise self._disk_error(exc) from exc
        self._release(session, registered)
        self._used += session.size - replaced
        # The file is in place whatever happens now; a row left behind is dropped on restart,
        # because its partial file is gone.
        if session.persisted:
            with contextlib.suppress(sqlite3.Error):
                await self._on_db(self.db.delete_session, session.request_id)
        self._remember_guid(session.target, "/".join((*session.parent, session.name)), session.guid)
        session.persisted = False
        return Completed(session.guid, session.size, verified)

    def _place(self, target: Target, session: Session, strict: bool) -> int:
        """Rename the partial file to its final name; returns the size of the old version."""
        partial = self.partial_path(session.request_id)
        os.utime(partial, (session.mtime, session.mtime))
        return _rename_into(target, session.parent, session.name, partial, strict)

    async def store_small(
        self,
        target: Target,
        parent: tuple[str, ...],
        name: str,
        body: bytes,
        *,
        mtime: int,
        guid: str | None,
        verify_block: bool,
        block_hash: str | None,
        full_hash: str | None,
        strict_parents: bool,
    ) -> tuple[str, Completed]:
        """A whole file that came in one small request: checked, written and renamed in one
        step — on the event loop up to INLINE_WRITE_BYTES, else in one hop to the I/O pool
        (per-file overhead is what limits many small files)."""
        size = len(body)
        self.check_quota(size)
        request_id = self._ids.request_id()
        args = (
            target,
            parent,
            name,
            body,
            request_id,
            mtime,
            verify_block,
            block_hash,
            full_hash,
            strict_parents,
        )
        try:
            if size <= INLINE_WRITE_BYTES and time.monotonic() >= self._inline_paused_until:
                # Nothing awaits between the quota check and the accounting below, so no
                # reservation is needed.
                started = time.perf_counter()
                waits = _voluntary_waits()
                try:
                    old, verified = self._write_small(*args)
                finally:
                    self._watch_inline(started, waits)
            else:
                self._reserved += size
                try:
                    old, verified = await self._on_io(self._write_small, *args)
                finally:
                    self._reserved -= size
        except OSError as exc:
            raise self._disk_error(exc) from exc
        self._used += size - old
        completed = Completed(guid or self._ids.guid(), size, verified)
        self._remember_guid(target.key, "/".join((*parent, name)), completed.guid)
        return request_id, completed

    def _watch_inline(self, started: float, waits: int | None) -> None:
        """Pause inline writes when one was slow because the thread waited in the kernel
        (a voluntary context switch: the disk), not because the CPU was busy elsewhere (then
        the I/O pool would only add work). Where waits are unknown, slow is enough."""
        if time.perf_counter() - started <= INLINE_SLOW_SECONDS:
            return
        if waits is None or _voluntary_waits() != waits:
            self._inline_paused_until = time.monotonic() + INLINE_PAUSE_SECONDS

    def _remember_guid(self, target: str, path: str, guid: str) -> None:
        """Record a stored file's GUID; rows are written in batches, one thread hop for many
        files (lookups see the pending ones)."""
        self._pending_guids[(target, path)] = guid
        if self._guid_flush is None:
            self._guid_flush = asyncio.get_running_loop().create_task(self._flush_guids())

    async def _flush_guids(self) -> None:
        try:
            while self._pending_guids:
                # One database hop for the files of the next moment, not one per file.
                await asyncio.sleep(GUID_FLUSH_DELAY_SECONDS)
                rows = [(t, p, g) for (t, p), g in self._pending_guids.items()]
                with contextlib.suppress(sqlite3.Error):
                    await self._on_db(self.db.save_guids, rows)
                for t, p, g in rows:
                    if self._pending_guids.get((t, p)) == g:
                        del self._pending_guids[(t, p)]
        finally:
            self._guid_flush = None

    async def _guids(self, target: str, paths: list[str]) -> dict[str, str]:
        found = await self._on_db(self.db.file_guids, target, paths) if paths else {}
        for path in paths:
            pending = self._pending_guids.get((target, path))
            if pending is not None:
                found[path] = pending
        return found

    def _write_small(
        self,
        target: Target,
        parent: tuple[str, ...],
        name: str,
        body: bytes,
        request_id: str,
        mtime: int,
        verify_block: bool,
        block_hash: str | None,
        full_hash: str | None,
        strict: bool,
    ) -> tuple[int, bool]:
        directory = self._dir_text[target.key]
        self._check_root(directory)
        final, st, existing = _walk(directory, (*parent, name))
        if existing < len(parent) and strict:
            raise StoreError(404, _NO_PARENT)
        if st is not None and stat.S_ISDIR(st.st_mode):
            raise StoreError(400, f"{protocol.join_remote_path((*parent, name))} is a folder")
        verified = False
        if verify_block:
            digests = [hashlib.sha256(body).digest()] if body else []
            if block_hash is None or block_level_hash(digests) != block_hash.lower():
                raise StoreError(400, "file integrity check failed")
            verified = True
        if full_hash is not None:
            if hashlib.sha256(body).hexdigest() != full_hash.lower():
                raise StoreError(400, "file integrity check failed")
            verified = True
        partial = self._partial_prefix + request_id
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(body)
            while view:
                view = view[os.write(fd, view) :]
            os.utime(fd, (mtime, mtime))
        except BaseException:
            os.close(fd)
            os.unlink(partial)
            raise
        os.close(fd)
        try:
            if existing < len(parent):
                # Missing folders: the careful path (creates them, checks again after).
                return _rename_into(target, parent, name, Path(partial), strict), verified
            return self._replace_checked(final, parent, name, partial), verified
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(partial)
            raise

    @staticmethod
    def _replace_checked(final: str, parent: tuple[str, ...], name: str, partial: str) -> int:
        """Rename into an existing folder; the final name is looked at again right before (it
        may have changed while the body was written), as _rename_into does."""
        try:
            st = os.lstat(final)
        except FileNotFoundError:
            old = 0
        except NotADirectoryError as exc:
            raise StoreError(400, "a component of the path is a file, not a folder") from exc
        except OSError as exc:
            raise StoreError(400, f"invalid path: {exc.strerror}") from exc
        else:
            if stat.S_ISLNK(st.st_mode):
                raise StoreError(400, "the path goes through a symbolic link, which is refused")
            if stat.S_ISDIR(st.st_mode):
                raise StoreError(400, f"{protocol.join_remote_path((*parent, name))} is a folder")
            old = st.st_size if stat.S_ISREG(st.st_mode) else 0
        os.replace(partial, final)
        return old

    def _check_root(self, directory: str) -> None:
        """Refuse (400) when a target's folder no longer resolves to itself (an ancestor was
        replaced by a symlink), without a realpath per request.

        realpath costs one lstat per component of the absolute path, in Python. The result
        only changes when some ancestor is swapped for a link or another folder, and that
        changes which inode the path leads to: so realpath runs when the (device, inode)
        reached by the path differs from the one last verified, and the cache is per target
        folder. A missing folder is verified every time (it is recreated on upload).
        """
        try:
            st = os.stat(directory)
        except OSError:
            ident = None
        else:
            ident = (st.st_dev, st.st_ino)
            if self._verified_dirs.get(directory) == ident:
                return
        if os.path.realpath(directory) != directory:
            raise StoreError(400, "the path leaves the share")
        if ident is not None:
            self._verified_dirs[directory] = ident

    # -- folders and properties

    async def create_folder(
        self, target: Target, parent: tuple[str, ...], name: str, strict: bool
    ) -> dict[str, str | int]:
        def create() -> dict[str, str | int]:
            _ensure_folder(target.directory, parent, strict)
            path = safe_path(target.directory, (*parent, name))
            try:
                path.mkdir()
            except FileExistsError:
                raise StoreError(409, "a file or folder with this name exists already") from None
            parts = (*parent, name)
            return _resource(parts, os.lstat(path), derived_guid(target.key, parts))

        return await self._on_io(create)

    async def metadata(self, target: Target, parts: tuple[str, ...]) -> dict[str, str | int]:
        def look() -> tuple[os.stat_result, str]:
            path = safe_path(target.directory, parts)
            try:
                st = os.lstat(path)
            except (FileNotFoundError, NotADirectoryError):
                raise StoreError(404, _NOTHING_THERE) from None
            if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
                raise StoreError(404, _NOTHING_THERE)
            return st, derived_guid(target.key, parts)

        st, guid = await self._on_io(look)
        if stat.S_ISREG(st.st_mode):
            found = await self._guids(target.key, ["/".join(parts)])
            guid = found.get("/".join(parts), guid)
        return _resource(parts, st, guid)

    async def list_folder(
        self, target: Target, parts: tuple[str, ...], offset: int, limit: int
    ) -> tuple[int, list[protocol.Fields]]:
        def scan() -> tuple[int, list[tuple[str, os.stat_result]]]:
            path = safe_path(target.directory, parts)
            try:
                st = os.lstat(path)
            except (FileNotFoundError, NotADirectoryError):
                raise StoreError(404, _NO_FOLDER) from None
            if not stat.S_ISDIR(st.st_mode):
                raise StoreError(404, _NO_FOLDER)
            # Names only (the directory entry's type needs no stat): a page of a folder of
            # 100 000 entries then costs one sort of names and `limit` stat calls, not a
            # stat of every entry for every page.
            with os.scandir(path) as it:
                names = [
                    entry.name
                    for entry in it
                    if entry.is_dir(follow_symlinks=False) or entry.is_file(follow_symlinks=False)
                ]
            names.sort()
            page: list[tuple[str, os.stat_result]] = []
            for name in names[offset : offset + limit]:
                try:
                    page.append((name, os.lstat(os.path.join(path, name))))
                except FileNotFoundError:
                    continue  # removed since the listing was read
            return len(names), page

        total, page = await self._on_io(scan)
        keys = ["/".join((*parts, name)) for name, est in page if stat.S_ISREG(est.st_mode)]
        guids = await self._guids(target.key, keys)
        items: list[protocol.Fields] = []
        for name, est in page:
            child = (*parts, name)
            guid = guids.get("/".join(child)) or derived_guid(target.key, child)
            items.append(_resource(child, est, guid))
        return total, items

    # -- tokens (only hashes are stored)

    async def save_token(self, token: StoredToken) -> None:
        await self._on_db(self.db.save_token, token)

    async def delete_token(self, digest: str) -> None:
        await self._on_db(self.db.delete_token, digest)
