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
small thread pool, except whole files of at most disk.INLINE_WRITE_BYTES in one request, which are
written on the event loop while that stays quick (`bulkdrive.inline_io`). The event loop
otherwise only streams request bodies and makes decisions.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import os
import sqlite3
import stat
import time
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from bulkdrive import protocol
from bulkdrive.emulator.database import Database, GuidBook, StoredToken
from bulkdrive.emulator.disk import (
    INLINE_SLOW_SECONDS,
    INLINE_WRITE_BYTES,
    WRITE_BATCH,
    Partials,
    RootCheck,
    check_destination,
    derived_guid,
    directory_usage,
    hash_file,
    is_full_disk,
    look_up,
    make_folder,
    make_folder_in_place,
    rename_into,
    resource_fields,
    scan_folder,
    truncate_and_close,
    write_batch,
    write_small,
)
from bulkdrive.emulator.records import (
    Completed,
    Ids,
    Session,
    StoreTarget,
    integrity_verified,
)
from bulkdrive.emulator.refusals import BodyIncomplete, StoreError, Why
from bulkdrive.inline_io import InlineIO

T = TypeVar("T")


STATE_DIR = ".bulkdrive"


# --- the store ----------------------------------------------------------------------------


class Store:
    """Upload sessions, stored files and folders of every target, under one root."""

    def __init__(
        self,
        root: Path,
        targets: Iterable[StoreTarget],
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
        self.partials = Partials(root / STATE_DIR / "partial")
        self._sessions: dict[str, Session] = {}
        self._by_file: dict[tuple[str, tuple[str, ...], str], Session] = {}
        self._used = 0
        self._reserved = 0
        self._db_thread = ThreadPoolExecutor(1, thread_name_prefix="emulator-db")
        self._io = ThreadPoolExecutor(8, thread_name_prefix="emulator-io")
        self._db: Database | None = None
        self.tokens: list[StoredToken] = []
        self._ids = Ids()
        self._guid_book = GuidBook(self._on_db, lambda: self.db)
        self._dir_text = {t.key: str(t.directory) for t in self.targets.values()}
        self._roots = RootCheck()
        self._inline = InlineIO(INLINE_SLOW_SECONDS)

    # -- plumbing

    async def _on_db(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._db_thread, fn, *args)

    def _on_io(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        return asyncio.get_running_loop().run_in_executor(self._io, fn, *args)

    @property
    def db(self) -> Database:
        assert self._db is not None, "store is not open"
        return self._db

    # -- lifecycle

    async def open(self) -> None:
        await self._on_io(self._prepare_dirs)
        self._db = await self._on_db(Database, self.root / STATE_DIR / "state.sqlite3")
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
                usable = await self._on_io(self.partials.recover, rid, offset)
            if usable and session.verify_block:
                session.digests = await self._on_db(self.db.load_digests, rid)
            if not usable:
                await self._on_io(self.partials.remove, rid)
                await self._on_db(self.db.delete_session, rid)
                continue
            self._register(session)
        await self._on_io(self.partials.remove_orphans, set(self._sessions))
        self.tokens = await self._on_db(self.db.load_tokens)
        if self.quota is not None:
            for target in self.targets.values():
                self._used += await self._on_io(directory_usage, target.directory)

    async def close(self) -> None:
        await self._guid_book.flushed()
        if self._db is not None:
            await self._on_db(self.db.conn.close)
            self._db = None
        self._db_thread.shutdown(wait=False)
        # Let writes of handlers cancelled at shutdown finish (and cut partials back) first.
        await asyncio.get_running_loop().run_in_executor(None, self._io.shutdown, True)

    def _prepare_dirs(self) -> None:
        self.partials.directory.mkdir(parents=True, exist_ok=True)
        for target in self.targets.values():
            if target.directory.is_symlink():
                raise ValueError(f"{target.directory} is a symbolic link; refusing to serve it")
            target.directory.mkdir(parents=True, exist_ok=True)

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

    @property
    def receiving_sessions(self) -> int:
        """Sessions whose request body is being received now (tests wait on it, not on time)."""
        return sum(1 for session in self._sessions.values() if session.busy)

    def _expired(self, session: Session) -> bool:
        return not session.busy and self.clock() - session.last_used > self.session_ttl_seconds

    async def find(self, request_id: str) -> Session | None:
        session = self._sessions.get(request_id)
        if session is not None and self._expired(session):
            await self.discard(session)
            return None
        return session

    def holds(self, target: str, parent: tuple[str, ...], name: str) -> bool:
        """Whether a session of the file may exist (find_for says which, if not expired)."""
        return (target, parent, name) in self._by_file

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
            raise StoreError(Why.QUOTA, self.quota)

    async def begin(
        self,
        target: StoreTarget,
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
        await self._on_io(check_destination, target.directory, parent, name, strict_parents)
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
                raise StoreError(Why.SESSION_BUSY)
            if other is not None:
                raise StoreError(
                    Why.SESSION_EXISTS,
                    request_id=other.request_id,
                    chunk_offset=other.offset,
                )
            self._register(session)
        else:
            self._reserved += size
        try:
            await self._on_io(self.partials.create, session.request_id)
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

    @staticmethod
    def _disk_error(exc: OSError) -> StoreError:
        if is_full_disk(exc):
            return StoreError(Why.DISK_FULL)
        return StoreError(Why.WRITE_FAILED, exc.strerror)

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
        path = self.partials.path(session.request_id)
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
                    raise StoreError(Why.BODY_TOO_LARGE)
                if total > limit:
                    raise StoreError(Why.PAST_FILE_SIZE)
                batch.append(piece)
                batch_len += len(piece)
                if batch_len >= WRITE_BATCH:
                    # Receive the next batch while this one is written.
                    if pending is not None:
                        await pending
                    pending = self._on_io(write_batch, fd, batch, base + written, hasher)
                    written += batch_len
                    batch, batch_len = [], 0
            if pending is not None:
                await pending
                pending = None
            if batch:
                await self._on_io(write_batch, fd, batch, base + written, hasher)
                written += batch_len
        except BaseException as exc:
            if pending is not None:
                with contextlib.suppress(BaseException):
                    await asyncio.shield(pending)
            await asyncio.shield(self._on_io(truncate_and_close, fd, base))
            if isinstance(exc, OSError):
                raise self._disk_error(exc) from exc
            raise
        await self._on_io(os.close, fd)
        return written, (hasher.digest() if hasher is not None else None)

    async def rollback(self, session: Session) -> None:
        """Cut the partial file back to the session's offset (a body that was refused late)."""
        await self._on_io(os.truncate, self.partials.path(session.request_id), session.offset)

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
            why = Why.RECORD_FULL if "full" in str(exc).lower() else Why.RECORD_FAILED
            raise StoreError(why, exc) from exc
        session.persisted = True

    async def discard(self, session: Session, *, registered: bool = True) -> None:
        """Forget a session: its requestId, bytes and row (the old requestId then gets 404)."""
        self._release(session, registered)
        await self._on_io(self.partials.remove, session.request_id)
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
        try:
            verified = integrity_verified(
                session.digests if session.verify_block else None, block_hash, None, None
            )
            if full_hash is not None:
                actual = await self._on_io(hash_file, self.partials.path(session.request_id))
                verified = integrity_verified(None, None, actual, full_hash) or verified
        except StoreError:
            await self.discard(session, registered=registered)
            raise
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
        self._guid_book.remember(
            session.target, "/".join((*session.parent, session.name)), session.guid
        )
        session.persisted = False
        return Completed(session.guid, session.size, verified)

    def _place(self, target: StoreTarget, session: Session, strict: bool) -> int:
        """Rename the partial file to its final name; returns the size of the old version."""
        partial = self.partials.path(session.request_id)
        os.utime(partial, (session.mtime, session.mtime))
        return rename_into(target.directory, session.parent, session.name, partial, strict)

    async def store_small(
        self,
        target: StoreTarget,
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
        step: on the event loop when at most INLINE_WRITE_BYTES and `InlineIO` allows it, else
        in one hop to the I/O pool (per-file overhead is what limits many small files)."""
        size = len(body)
        self.check_quota(size)
        request_id = self._ids.request_id()
        write = functools.partial(
            self._write_small,
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
            if size <= INLINE_WRITE_BYTES and self._inline.allowed():
                # Nothing awaits between the quota check and the accounting below, so no
                # reservation is needed; nor between the write's first look at the final
                # name and its rename, so the rename needs no second look.
                begun = self._inline.begin()
                try:
                    old, verified = write(recheck=False)
                finally:
                    self._inline.end(begun)
            else:
                self._reserved += size
                try:
                    old, verified = await self._on_io(functools.partial(write, recheck=True))
                finally:
                    self._reserved -= size
        except OSError as exc:
            raise self._disk_error(exc) from exc
        self._used += size - old
        completed = Completed(guid or self._ids.guid(), size, verified)
        self._guid_book.remember(target.key, "/".join((*parent, name)), completed.guid)
        return request_id, completed

    def _write_small(
        self,
        target: StoreTarget,
        parent: tuple[str, ...],
        name: str,
        body: bytes,
        request_id: str,
        mtime: int,
        verify_block: bool,
        block_hash: str | None,
        full_hash: str | None,
        strict: bool,
        *,
        recheck: bool,
    ) -> tuple[int, bool]:
        def verify() -> bool:
            return integrity_verified(
                ([hashlib.sha256(body).digest()] if body else []) if verify_block else None,
                block_hash,
                hashlib.sha256(body).hexdigest() if full_hash is not None else None,
                full_hash,
            )

        directory = self._dir_text[target.key]
        self._roots.check(directory)
        partial = self.partials.prefix + request_id
        return write_small(
            directory,
            target.directory,
            partial,
            parent,
            name,
            body,
            mtime,
            strict,
            verify,
            recheck=recheck,
        )

    # -- folders and properties

    async def create_folder(
        self, target: StoreTarget, parent: tuple[str, ...], name: str, strict: bool
    ) -> dict[str, str | int]:
        parts = (*parent, name)
        if self._inline.allowed():
            # On the loop, as a small file's write is: the hop to the I/O pool cost more than
            # the mkdir and its checks, once per folder of a tree (benchmarks/README.md).
            begun = self._inline.begin()
            try:
                directory = self._dir_text[target.key]
                self._roots.check(directory)
                found = make_folder_in_place(directory, parent, name)
                if found is None:
                    found = make_folder(target.directory, parent, name, strict)
                st = found
            finally:
                self._inline.end(begun)
        else:
            st = await self._on_io(make_folder, target.directory, parent, name, strict)
        return resource_fields(parts, st, derived_guid(target.key, parts))

    async def metadata(self, target: StoreTarget, parts: tuple[str, ...]) -> dict[str, str | int]:
        st = await self._on_io(look_up, target.directory, parts)
        guid = derived_guid(target.key, parts)
        if stat.S_ISREG(st.st_mode):
            found = await self._guid_book.look_up(target.key, ["/".join(parts)])
            guid = found.get("/".join(parts), guid)
        return resource_fields(parts, st, guid)

    async def list_folder(
        self, target: StoreTarget, parts: tuple[str, ...], offset: int, limit: int
    ) -> tuple[int, list[protocol.Fields]]:
        total, page = await self._on_io(scan_folder, target.directory, parts, offset, limit)
        keys = ["/".join((*parts, name)) for name, est in page if stat.S_ISREG(est.st_mode)]
        guids = await self._guid_book.look_up(target.key, keys)
        items: list[protocol.Fields] = []
        for name, est in page:
            child = (*parts, name)
            guid = guids.get("/".join(child)) or derived_guid(target.key, child)
            items.append(resource_fields(child, est, guid))
        return total, items

    # -- tokens (only hashes are stored)

    async def save_token(self, token: StoredToken) -> None:
        await self._on_db(self.db.save_token, token)

    async def delete_token(self, digest: str) -> None:
        await self._on_db(self.db.delete_token, digest)
