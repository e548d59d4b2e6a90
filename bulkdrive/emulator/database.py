"""The emulator's SQLite database: sessions, their block digests, the GUIDs of stored files
and tokens (hashed). Every call runs on the store's one database thread."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

#: GUID rows of stored files are gathered this long before one database hop writes them all.
GUID_FLUSH_DELAY_SECONDS = 0.05


class SessionRow(Protocol):
    """What the database reads of a session (the store's Session)."""

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
    digests: list[bytes]


@dataclass(frozen=True)
class StoredToken:
    digest: str
    user: str
    device_id: str
    idle_seconds: float


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


class Database:
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

    def save_session(self, s: SessionRow, new_digest: bytes | None, insert: bool) -> None:
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


class GuidBook:
    """The GUIDs of stored files: rows are written in batches, one database hop for the files
    of the next moment rather than one per file; lookups see the rows not yet written."""

    def __init__(
        self,
        on_db: Callable[..., Awaitable[Any]],
        database: Callable[[], Database],
    ) -> None:
        self._on_db = on_db
        self._database = database
        self._pending: dict[tuple[str, str], str] = {}
        self._flush: asyncio.Task[None] | None = None

    def remember(self, target: str, path: str, guid: str) -> None:
        self._pending[(target, path)] = guid
        if self._flush is None:
            self._flush = asyncio.get_running_loop().create_task(self._write())

    async def flushed(self) -> None:
        if self._flush is not None:
            await self._flush

    async def _write(self) -> None:
        try:
            while self._pending:
                await asyncio.sleep(GUID_FLUSH_DELAY_SECONDS)
                rows = [(t, p, g) for (t, p), g in self._pending.items()]
                with contextlib.suppress(sqlite3.Error):
                    await self._on_db(self._database().save_guids, rows)
                for t, p, g in rows:
                    if self._pending.get((t, p)) == g:
                        del self._pending[(t, p)]
        finally:
            self._flush = None

    async def look_up(self, target: str, paths: list[str]) -> dict[str, str]:
        found: dict[str, str] = (
            await self._on_db(self._database().file_guids, target, paths) if paths else {}
        )
        for path in paths:
            pending = self._pending.get((target, path))
            if pending is not None:
                found[path] = pending
        return found
