"""One file, one upload session: spec §4–§8 as a state machine with a thin async driver.

The middle of this module is pure: `SessionState` and the transition functions below it
decide, from a server reply or a lost request, what the upload does next. `_Upload` around
them does the I/O: it reads chunks with aiofiles (the next one while the current one is sent),
calls the client, and applies the tenacity policy between attempts.

The rule that matters most (§8): a request whose outcome is unknown is never sent again.
The server may have stored it; the only safe move is to ask the server for its offset by
initiating again, and to continue from there.

Local-file errors (OSError) are translated into `bulkdrive.errors` here, and only here.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import os
import stat
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol, TypeVar

import aiofiles
import anyio
import anyio.to_thread
from aiofiles.threadpool.binary import AsyncBufferedReader
from tenacity import RetryCallState, RetryError

from bulkdrive import errors, protocol
from bulkdrive.client import EdgeDriveClient, exhausted, retrying
from bulkdrive.config import TransferConfig
from bulkdrive.integrity import BlockHasher, hash_off_loop
from bulkdrive.protocol import BLOCK_SIZE, FileResource, UploadReply

__all__ = [
    "LocalContent",
    "NullEvents",
    "Phase",
    "SessionState",
    "UploadEvents",
    "UploadResult",
    "read_small_files",
    "upload_file",
]

T = TypeVar("T")

#: Fresh sessions after an integrity failure (or foreign bytes) before the file fails.
MAX_RESTARTS = 2


# --- what the caller hears ------------------------------------------------------------------


class UploadEvents(Protocol):
    """Hooks for progress and the resume journal. Called on the event loop; keep them cheap."""

    def bytes_confirmed(self, n: int) -> None:
        """The server now holds `n` more bytes of this file than it ever did (sums to size)."""

    def offset_confirmed(self, request_id: str, offset: int) -> None:
        """Session `request_id` holds `offset` bytes: what a resume journal records."""

    def retrying(self, error: errors.BulkdriveError, attempt: int, wait: float) -> None:
        """Attempt `attempt` ended with `error`; the next one starts after `wait` seconds."""

    def resumed(self, offset: int) -> None:
        """The upload continues an existing session from server offset `offset` > 0."""

    def block_confirmed(self, index: int, digest: bytes) -> None:
        """The server holds whole 4 MiB block `index` of the file; `digest` is its SHA-256.
        Blocks come in order; an index seen before replaces what followed it (a restart)."""


class NullEvents:
    def bytes_confirmed(self, n: int) -> None:
        pass

    def offset_confirmed(self, request_id: str, offset: int) -> None:
        pass

    def retrying(self, error: errors.BulkdriveError, attempt: int, wait: float) -> None:
        pass

    def resumed(self, offset: int) -> None:
        pass

    def block_confirmed(self, index: int, digest: bytes) -> None:
        pass


@dataclass(frozen=True)
class UploadResult:
    local_path: str | os.PathLike[str]  # as it was given to upload_file
    remote_path: str
    size: int
    file_guid: str
    bytes_sent: int  # request bodies put on the wire, including lost and refused ones
    attempts: int  # 1 + the §8 recoveries
    resumes: int  # continuations from a server offset > 0
    restarts: int  # sessions started over with forceRestart
    integrity_verified: bool  # the server checked BlockLevelHash and it matched


# --- the state machine ----------------------------------------------------------------------


class Phase(enum.Enum):
    """What the upload does next.

    INITIATE ──200──▶ SEND ──final 200──▶ DONE
      │  ▲  └──409──────▲│
      │  └── restart ───┼┤ (integrity failure, foreign bytes, offset past the end)
      ▼                 │▼
    (outcome unknown) ─▶ RECOVER ──409 or 200──▶ SEND
                          └──200 after a lost final request──▶ CHECK ──complete──▶ DONE
    """

    INITIATE = "initiate"  # open a session with the first chunk (forceRestart when restarting)
    SEND = "send"  # send the chunk at `offset` to session `request_id`
    RECOVER = "recover"  # re-initiate, without requestId or forceRestart, to learn the offset
    CHECK = "check"  # a lost final request and no session left: is the file complete?
    DONE = "done"


@dataclass(frozen=True)
class SessionState:
    phase: Phase
    size: int
    request_id: str = ""
    offset: int = 0  # bytes the server holds for request_id: where the next chunk starts
    force_restart: bool = False  # the next initiate discards what the server holds
    adopted: bool = False  # a session found by a 409, whose bytes may not be this file's
    lost_final: bool = False  # the request with the unknown outcome carried FileEOF
    file_guid: str = ""
    integrity_verified: bool = False
    resumes: int = 0
    restarts: int = 0


def restarted(state: SessionState, reason: str) -> SessionState:
    """Start over at offset 0, discarding the server's bytes; fail after MAX_RESTARTS."""
    if state.restarts >= MAX_RESTARTS:
        raise errors.IntegrityMismatch(f"{reason} (after {state.restarts} fresh starts)")
    return replace(
        state,
        phase=Phase.INITIATE,
        request_id="",
        offset=0,
        force_restart=True,
        adopted=False,
        lost_final=False,
        restarts=state.restarts + 1,
    )


def _continue_existing(state: SessionState, reply: UploadReply) -> SessionState:
    """A 409: an unfinished session exists; its chunkOffset is where the file continues."""
    if reply.chunk_offset > state.size:
        return restarted(state, f"the server holds {reply.chunk_offset} bytes of a smaller file")
    return replace(
        state,
        phase=Phase.SEND,
        request_id=reply.request_id,
        offset=reply.chunk_offset,
        adopted=state.adopted or reply.request_id != state.request_id,
        lost_final=False,
        resumes=state.resumes + (1 if reply.chunk_offset > 0 else 0),
    )


def _advanced(
    state: SessionState, reply: UploadReply, *, final: bool, **fresh: Any
) -> SessionState:
    """The server took the chunk; `fresh` are the changes of a new session (one replace per
    reply: it is most of a small file's state-machine time)."""
    if reply.chunk_offset > state.size:
        return restarted(state, f"the server holds {reply.chunk_offset} bytes of a smaller file")
    if reply.file_guid or (final and reply.chunk_offset == state.size):
        return replace(
            state,
            phase=Phase.DONE,
            offset=state.size,
            file_guid=reply.file_guid or "",
            integrity_verified=reply.integrity_verified,
            **fresh,
        )
    return replace(state, phase=Phase.SEND, offset=reply.chunk_offset, **fresh)


def initiated(state: SessionState, reply: UploadReply, *, final: bool) -> SessionState:
    """The reply to an INITIATE (first chunk in the body)."""
    if reply.error_code == 409:
        return _continue_existing(state, reply)
    return _advanced(
        state,
        reply,
        final=final,
        request_id=reply.request_id,
        force_restart=False,
        adopted=False,
        lost_final=False,
    )


def chunk_sent(state: SessionState, reply: UploadReply, *, final: bool) -> SessionState:
    return _advanced(state, reply, final=final)


def outcome_unknown(state: SessionState, *, final: bool) -> SessionState:
    """The request in flight may or may not have been applied (§8)."""
    if state.phase is Phase.INITIATE:
        if final:
            # The whole file travelled in that initiate: it either completed or did nothing.
            return replace(state, phase=Phase.CHECK, request_id="", lost_final=True)
        if state.force_restart:
            return state  # a forceRestart initiate discards whatever the lost one did
        return replace(state, phase=Phase.RECOVER, lost_final=False)
    if state.phase is Phase.SEND:
        return replace(state, phase=Phase.RECOVER, lost_final=final)
    return state  # RECOVER and CHECK only ask: ask again


def recovered(state: SessionState, reply: UploadReply) -> SessionState:
    """The reply to the RECOVER initiate (empty body, no requestId, no forceRestart)."""
    if reply.error_code == 409:
        return _continue_existing(state, reply)
    # 200: no unfinished session remained (it completed or expired); a new one has started.
    fresh = replace(state, request_id=reply.request_id, offset=reply.chunk_offset, adopted=False)
    if state.lost_final:
        return replace(fresh, phase=Phase.CHECK)
    return replace(fresh, phase=Phase.SEND)


def checked(state: SessionState, resource: FileResource | None, *, mtime: int) -> SessionState:
    """The remote file's properties after a lost final request."""
    complete = (
        resource is not None
        and not resource.is_directory
        and resource.size == state.size
        and resource.modified_time == mtime
    )
    if complete and resource is not None:
        return replace(
            state, phase=Phase.DONE, offset=state.size, file_guid=resource.guid, lost_final=False
        )
    if state.request_id:
        return replace(state, phase=Phase.SEND, lost_final=False)
    return replace(state, phase=Phase.INITIATE, lost_final=False)


# --- the local file -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Chunk:
    offset: int
    data: bytes
    hasher: BlockHasher | None  # the block-level hash of [0, end) when integrity is on

    @property
    def end(self) -> int:
        return self.offset + len(self.data)


@dataclass(frozen=True)
class _Identity:
    """What tells us the bytes changed: size and mtime of the inode we read."""

    size: int
    mtime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> _Identity:
        return cls(st.st_size, st.st_mtime_ns)


def _open_regular(path: str, preload_limit: int) -> tuple[int, _Identity, bytes | None]:
    """Open, check it is a regular file, and read it whole when it is small: one thread hop.

    O_NONBLOCK keeps a FIFO from blocking the open; it changes nothing for regular files.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise IsADirectoryError(f"{path} is not a regular file")
        if st.st_size > preload_limit:
            return fd, _Identity.of(st), None
        parts = []
        left = st.st_size
        while left > 0:
            part = os.read(fd, left)
            if not part:
                break
            parts.append(part)
            left -= len(part)
        after = os.fstat(fd)
    except BaseException:
        os.close(fd)
        raise
    os.close(fd)
    data = b"".join(parts)
    if len(data) != st.st_size or _Identity.of(after) != _Identity.of(st):
        raise _Changed(_Identity.of(st), _Identity.of(after))
    return -1, _Identity.of(st), data


@dataclass(frozen=True)
class LocalContent:
    """A small file read whole ahead of its upload, with the size and mtime it had then."""

    data: bytes
    size: int
    mtime_ns: int


def read_small_files(paths: Sequence[str], limit: int) -> list[LocalContent | None]:
    """Read small files whole, in the calling thread: one thread hop for a batch of them.

    None for a file that cannot be read whole now (larger than `limit`, changing, gone,
    unreadable): its upload opens it again and reports what is wrong.
    """
    contents: list[LocalContent | None] = []
    for path in paths:
        try:
            fd, identity, data = _open_regular(path, limit)
        except (OSError, _Changed):
            contents.append(None)
            continue
        if data is None:
            os.close(fd)
            contents.append(None)
        else:
            contents.append(LocalContent(data, identity.size, identity.mtime_ns))
    return contents


class _Changed(Exception):
    def __init__(self, before: _Identity, after: _Identity) -> None:
        super().__init__("changed")
        self.before = before
        self.after = after


class _Source:
    """The local file: chunks read with aiofiles at their offset; notices when it changes."""

    def __init__(
        self,
        path: str,
        identity: _Identity,
        handle: AsyncBufferedReader | None,
        preloaded: bytes | None,
    ) -> None:
        self.path = path
        self.identity = identity
        self.size = identity.size
        self._handle = handle
        self._preloaded = preloaded
        self._position = 0

    @classmethod
    async def open(cls, path: str, preload_limit: int) -> _Source:
        try:
            fd, identity, data = await anyio.to_thread.run_sync(_open_regular, path, preload_limit)
        except _Changed as changed:
            raise _source_changed(path, changed.before, changed.after) from None
        except OSError as exc:
            raise errors.SourceUnreadable(f"{path}: {exc.strerror or exc}") from None
        if data is not None:
            return cls(path, identity, None, data)
        try:
            handle = await aiofiles.open(fd, "rb")
        except OSError as exc:
            os.close(fd)
            raise errors.SourceUnreadable(f"{path}: {exc.strerror or exc}") from None
        return cls(path, identity, handle, None)

    async def read(self, offset: int, length: int) -> bytes:
        if self._preloaded is not None:
            return self._preloaded[offset : offset + length]
        assert self._handle is not None
        # Shielded: a read abandoned half-way would leave the file position unknown.
        with anyio.CancelScope(shield=True):
            try:
                if self._position != offset:
                    await self._handle.seek(offset)
                    self._position = offset
                data = await self._handle.read(length)
            except OSError as exc:
                self._position = -1
                raise errors.SourceUnreadable(f"{self.path}: {exc.strerror or exc}") from None
        self._position += len(data)
        if len(data) != length:
            now = await self._identity_now()
            raise _source_changed(self.path, self.identity, now)
        return data

    async def check_unchanged(self) -> None:
        """Before the final request: the bytes sent must all be from one version of the file."""
        if self._handle is None:
            return  # read whole, and checked, in one go
        now = await self._identity_now()
        if now != self.identity:
            raise _source_changed(self.path, self.identity, now)

    async def _identity_now(self) -> _Identity:
        assert self._handle is not None
        try:
            st = await anyio.to_thread.run_sync(os.fstat, self._handle.fileno())
        except OSError as exc:
            raise errors.SourceUnreadable(f"{self.path}: {exc.strerror or exc}") from None
        return _Identity.of(st)

    async def close(self) -> None:
        if self._handle is not None:
            with anyio.CancelScope(shield=True):
                with contextlib.suppress(OSError):
                    await self._handle.close()
            self._handle = None


def _source_changed(path: str, before: _Identity, after: _Identity) -> errors.SourceChanged:
    if before.size != after.size:
        what = f"size {before.size} → {after.size}"
    elif before.mtime_ns != after.mtime_ns:
        what = "modified time changed"
    else:
        what = "shorter than its size"
    return errors.SourceChanged(f"{path}: changed while it was uploaded ({what}); not stored")


# --- the driver -----------------------------------------------------------------------------


class _Upload:
    """Drives one file through the state machine; one instance per upload_file call."""

    def __init__(
        self,
        client: EdgeDriveClient,
        source: _Source,
        *,
        folder: str,
        name: str,
        config: TransferConfig,
        events: UploadEvents,
        known_digests: bytes = b"",
    ) -> None:
        self.client = client
        self.source = source
        self.folder = folder
        self.name = name
        self.config = config
        self.events = events
        self.chunk_size = config.chunk_size
        self.verify = config.verify
        self.mtime = protocol.mtime_seconds(source.identity.mtime_ns)
        self.state = SessionState(Phase.INITIATE, size=source.size)
        self.bytes_sent = 0
        self._final_in_flight = False
        self._confirmed_high = 0
        self._ahead: _Chunk | None = None  # read while the initiate was in flight
        # Block-level hashers by prefix length: the confirmed offset, the chunk in flight.
        self._hashers: dict[int, BlockHasher] = {0: BlockHasher()} if self.verify else {}
        self._known_digests = known_digests  # the journal's, for [0, n × 4 MiB) of this file
        self._blocks_reported = 0

    def progress(self) -> int:
        """The most bytes the server ever confirmed: what the retry budget counts from."""
        return self._confirmed_high

    async def run(self) -> None:
        while self.state.phase is not Phase.DONE:
            try:
                if self.state.phase is Phase.INITIATE:
                    await self._initiate()
                elif self.state.phase is Phase.SEND:
                    await self._send_chunks()
                elif self.state.phase is Phase.RECOVER:
                    await self._recover()
                else:
                    await self._check()
            except errors.OutcomeUnknown:
                self._ahead = None
                self.state = outcome_unknown(self.state, final=self._final_in_flight)
                raise
            except errors.IntegrityMismatch as exc:
                self.state = restarted(self.state, str(exc))
                # The digests we started from may be what was wrong: trust only the file now.
                self._known_digests = b""
                self._blocks_reported = 0
            except errors.Rejected as exc:
                if not self.state.adopted:
                    raise
                # The session we found was for other bytes (another size, another version).
                self.state = restarted(self.state, str(exc))
        if self._confirmed_high < self.state.size:
            self.events.bytes_confirmed(self.state.size - self._confirmed_high)
            self._confirmed_high = self.state.size

    # --- one method per phase -------------------------------------------------------------

    async def _initiate(self) -> None:
        chunk = await self._chunk_at(0)
        final = chunk.end == self.state.size
        block_hash = await self._before_sending(chunk, final)
        force = self.state.force_restart

        def send() -> Awaitable[UploadReply]:
            return self.client.initiate(
                name=self.name,
                folder=self.folder,
                size=self.state.size,
                mtime=self.mtime,
                body=chunk.data,
                eof=final,
                verify=self.verify,
                force_restart=force,
                block_hash=block_hash,
            )

        reply, self._ahead = await self._send_reading_ahead(send, chunk, final)
        self.state = initiated(self.state, reply, final=final)
        self._heard(reply)

    async def _send_chunks(self) -> None:
        ahead, self._ahead = self._ahead, None
        while self.state.phase is Phase.SEND:
            offset = self.state.offset
            chunk = ahead if ahead is not None and ahead.offset == offset else None
            if chunk is None:
                chunk = await self._chunk_at(offset)
            final = chunk.end == self.state.size
            block_hash = await self._before_sending(chunk, final)
            send = functools.partial(
                self.client.send_chunk,
                self.state.request_id,
                chunk.data,
                eof=final,
                block_hash=block_hash,
            )
            reply, ahead = await self._send_reading_ahead(send, chunk, final)
            self.state = chunk_sent(self.state, reply, final=final)
            self._heard(reply)

    async def _recover(self) -> None:
        # No body: a 409 would not apply it, and a 200 means a new session from offset 0.
        self._final_in_flight = False
        reply = await self.client.initiate(
            name=self.name,
            folder=self.folder,
            size=self.state.size,
            mtime=self.mtime,
            body=b"",
            eof=False,
            verify=self.verify,
        )
        self.state = recovered(self.state, reply)
        self._heard(reply)

    async def _check(self) -> None:
        self._final_in_flight = False
        resource = await self.client.metadata(protocol.remote_child(self.folder, self.name))
        self.state = checked(self.state, resource, mtime=self.mtime)

    # --- chunks ---------------------------------------------------------------------------

    def _chunk_length(self, offset: int) -> int:
        # Chunks end on chunk-size boundaries of the file, so that after a resume from an odd
        # offset the server's per-chunk blocks line up with the file's 4 MiB blocks again.
        return min(self.chunk_size - offset % self.chunk_size, self.state.size - offset)

    async def _chunk_at(self, offset: int, hasher: BlockHasher | None = None) -> _Chunk:
        data = await self.source.read(offset, self._chunk_length(offset))
        if not self.verify:
            return _Chunk(offset, data, None)
        if hasher is None:
            hasher = await self._hasher_at(offset)
        return _Chunk(offset, data, await hash_off_loop(hasher, data))

    async def _hasher_at(self, offset: int) -> BlockHasher:
        """The block-level hash of [0, offset), a server-confirmed offset: remembered, or
        rebuilt from the journal's block digests and the file for what they do not cover."""
        hasher = self._hashers.get(offset)
        if hasher is None:
            # A session found at an offset we never sent from: the prefix it holds.
            whole = min(offset // BLOCK_SIZE, len(self._known_digests) // 32)
            known = self._known_digests[: whole * 32]
            hasher = BlockHasher.from_digests(known) if whole else BlockHasher()
            for index in range(self._blocks_reported, whole):
                self.events.block_confirmed(index, known[index * 32 : index * 32 + 32])
            self._blocks_reported = max(self._blocks_reported, whole)
            position = hasher.position
            while position < offset:
                length = min(self.chunk_size - position % self.chunk_size, offset - position)
                hasher = await hash_off_loop(hasher, await self.source.read(position, length))
                position += length
                self._report_block(hasher)
        self._hashers = {offset: hasher}
        return hasher

    def _report_block(self, hasher: BlockHasher) -> None:
        """Hand the journal the digest of each whole block the server holds, once, in order."""
        if hasher.position == (self._blocks_reported + 1) * BLOCK_SIZE and hasher.last_block:
            self.events.block_confirmed(self._blocks_reported, hasher.last_block)
            self._blocks_reported += 1

    async def _before_sending(self, chunk: _Chunk, final: bool) -> str | None:
        """Everything decided before a chunk goes out; returns its BlockLevelHash header."""
        self._final_in_flight = final
        self.bytes_sent += len(chunk.data)
        if chunk.hasher is not None:
            # Keep only what a recovery may need: the hash at either end of this chunk.
            before = self._hashers.get(chunk.offset)
            self._hashers = {chunk.end: chunk.hasher}
            if before is not None:
                self._hashers[chunk.offset] = before
        if not final:
            return None
        await self.source.check_unchanged()
        return chunk.hasher.hexdigest() if chunk.hasher is not None else None

    async def _send_reading_ahead(
        self, send: Callable[[], Awaitable[UploadReply]], chunk: _Chunk, final: bool
    ) -> tuple[UploadReply, _Chunk | None]:
        """Send `chunk` while the next one is read: at most two chunks of a file in memory."""
        if final:
            return await send(), None
        box: list[_Chunk] = []

        async def read_next() -> None:
            box.append(await self._chunk_at(chunk.end, chunk.hasher))

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(read_next)
                reply = await send()
        except BaseExceptionGroup as group:
            raise _most_telling(group) from None
        return reply, (box[0] if box else None)

    def _heard(self, reply: UploadReply) -> None:
        """A reply is authoritative about the session: tell the journal and the progress."""
        state = self.state
        if state.phase is Phase.DONE:
            offset = state.size
        elif state.phase is Phase.SEND and reply.request_id == state.request_id:
            offset = state.offset
            if reply.error_code == 409 and offset > 0:
                self.events.resumed(offset)
        else:
            return
        if self.verify and (hasher := self._hashers.get(offset)) is not None:
            self._report_block(hasher)
        if reply.request_id:
            self.events.offset_confirmed(reply.request_id, offset)
        if offset > self._confirmed_high:
            self.events.bytes_confirmed(offset - self._confirmed_high)
            self._confirmed_high = offset


def _leaves(group: BaseExceptionGroup[BaseException]) -> Iterator[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc


def _most_telling(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error that decides what happens next: run-level, then file-level, then transient."""
    leaves = list(_leaves(group))
    for kind in (errors.RunFailed, errors.FileFailed, errors.BulkdriveError):
        for exc in leaves:
            if isinstance(exc, kind):
                return exc
    return group


# --- the public entry point -----------------------------------------------------------------


async def upload_file(
    client: EdgeDriveClient,
    local_path: str | os.PathLike[str],
    remote_folder: str,
    *,
    remote_name: str | None = None,
    config: TransferConfig | None = None,
    events: UploadEvents | None = None,
    sleep: Callable[[float], Awaitable[None]] | None = None,
    content: LocalContent | None = None,
    known_digests: bytes = b"",
) -> UploadResult:
    """Upload one local file into `remote_folder` (backslash or slash separated) of the
    client's share, complete and byte-identical, or raise a `bulkdrive.errors` error.

    FileFailed subclasses fail this file only; RunFailed subclasses mean nothing more can
    succeed. The remote folder must exist on servers that do not create parents (§7).
    `content`, from `read_small_files`, saves reading a small file again; `known_digests`,
    the block digests a journal kept of this very file, save re-reading the prefix that an
    unfinished session holds (a wrong one costs a restart, never a wrong file).
    """
    config = config or client.config
    events = events or NullEvents()
    path = os.fspath(local_path)
    name = os.path.basename(path) if remote_name is None else remote_name
    _check_chunking(config)
    folder, remote_path = _remote_target(remote_folder, name)
    if content is not None and content.size <= config.chunk_size:
        identity = _Identity(content.size, content.mtime_ns)
        source = _Source(path, identity, None, content.data)
    else:
        source = await _Source.open(path, preload_limit=config.chunk_size)
    upload = _Upload(
        client,
        source,
        folder=folder,
        name=name,
        config=config,
        events=events,
        known_digests=known_digests if config.verify else b"",
    )
    attempts = 0

    def before_sleep(retry_state: RetryCallState) -> None:
        outcome = retry_state.outcome
        error = outcome.exception() if outcome is not None else None
        wait = retry_state.next_action.sleep if retry_state.next_action else 0.0
        if isinstance(error, errors.BulkdriveError):
            events.retrying(error, retry_state.attempt_number, wait)

    try:
        # Most files need no second attempt: the retry machinery is set up only for those
        # that do, with the first failure handed to it as its first attempt.
        first_failure: errors.OutcomeUnknown | None = None
        try:
            attempts = 1
            await upload.run()
        except errors.OutcomeUnknown as exc:
            first_failure = exc
        if first_failure is not None:
            replay = [first_failure]
            async for attempt in retrying(
                config.retry, sleep=sleep, before_sleep=before_sleep, progress=upload.progress
            ):
                attempts = attempt.retry_state.attempt_number
                with attempt:
                    if replay:
                        raise replay.pop()
                    await upload.run()
    except RetryError as failure:
        raise exhausted(failure, f"upload {remote_path}") from None
    finally:
        await source.close()
    state = upload.state
    return UploadResult(
        local_path=local_path,
        remote_path=remote_path,
        size=state.size,
        file_guid=state.file_guid,
        bytes_sent=upload.bytes_sent,
        attempts=attempts,
        resumes=state.resumes,
        restarts=state.restarts,
        integrity_verified=state.integrity_verified,
    )


def _check_chunking(config: TransferConfig) -> None:
    if config.chunk_size <= 0:
        raise errors.ConfigError(f"chunk_size must be positive, not {config.chunk_size}")
    if config.verify and config.chunk_size != BLOCK_SIZE:
        raise errors.ConfigError(
            f"chunk_size must be {BLOCK_SIZE} (4 MiB) while integrity checks are on; "
            "turn verification off (--no-verify) to use another chunk size"
        )


def _remote_target(remote_folder: str, name: str) -> tuple[str, str]:
    """The normalised folder and the file's remote path; Rejected for names Edge Drive
    cannot hold (it separates paths with backslashes, and names travel as UTF-8)."""
    if name in ("", ".", "..") or "\\" in name or "/" in name or "\x00" in name:
        raise errors.Rejected(f"{name!r}: not a file name Edge Drive can store")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise errors.Rejected(f"{name!r}: the name is not valid UTF-8") from None
    try:
        parts = protocol.split_remote_path(remote_folder)
    except ValueError as exc:
        raise errors.Rejected(f"invalid remote folder {remote_folder!r}: {exc}") from None
    return protocol.join_remote_path(parts), protocol.join_remote_path((*parts, name))
