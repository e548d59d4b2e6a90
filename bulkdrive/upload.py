"""One file, one upload session: the thin async driver around `bulkdrive.session`.

`bulkdrive.session` decides, purely, what the upload does next from each reply or error;
`_Upload` here does the I/O: it reads chunks from `bulkdrive.source` (the next one while the
current one is sent), hashes them off the loop, calls the client, and applies the tenacity
policy between attempts.

The rule that matters most (§8): a request whose outcome is unknown is never sent again.
The server may have stored it; the only safe move is to ask the server for its offset by
initiating again, and to continue from there, and only from an offset that is provably ours.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import NamedTuple, Protocol

import anyio
from tenacity import RetryCallState, RetryError

from bulkdrive import errors, protocol
from bulkdrive.client import EdgeDriveClient, parent_folder_path
from bulkdrive.config import CHUNKS_PER_TRANSFER, TransferConfig
from bulkdrive.integrity import BlockHasher, extended_if_quick, hash_off_loop
from bulkdrive.protocol import BLOCK_SIZE, UploadReply
from bulkdrive.retry import exhausted, repeat
from bulkdrive.session import (
    Phase,
    ResumePoint,
    checked,
    chunk_sent,
    failed,
    initiated,
    opened,
    recovered,
    sending,
    waited,
)
from bulkdrive.source import ChunkBuffers, LocalContent, Source, read_small_files

__all__ = [
    "LocalContent",
    "NullEvents",
    "ResumePoint",
    "UploadEvents",
    "UploadResult",
    "read_small_files",
    "upload_file",
]


# Enum members on each small file's path, read as module names (why: `bulkdrive.session`).
_INITIATE, _SEND, _DONE = Phase.INITIATE, Phase.SEND, Phase.DONE

# --- what the caller hears ------------------------------------------------------------------


class UploadEvents(Protocol):
    """Hooks for progress and the resume journal. Called on the event loop; keep them cheap."""

    def confirmed_more(self, n: int) -> None:
        """The server now holds `n` more bytes of this file than it ever did: an increment
        (the calls sum to the size), where a reporter's `bytes_done` is an offset."""

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
    def confirmed_more(self, n: int) -> None:
        pass

    def offset_confirmed(self, request_id: str, offset: int) -> None:
        pass

    def retrying(self, error: errors.BulkdriveError, attempt: int, wait: float) -> None:
        pass

    def resumed(self, offset: int) -> None:
        pass

    def block_confirmed(self, index: int, digest: bytes) -> None:
        pass


class UploadResult(NamedTuple):
    """How one upload_file call ended. A named tuple, not a frozen dataclass: one per file,
    and a frozen dataclass of nine fields cost ~2 µs more to build (benchmarks/README.md)."""

    local_path: str | os.PathLike[str]  # as it was given to upload_file
    remote_path: str
    size: int
    file_guid: str
    bytes_sent: int  # request bodies put on the wire, including lost and refused ones
    attempts: int  # 1 + the §8 recoveries
    resumes: int  # continuations from a server offset > 0
    restarts: int  # sessions started over with forceRestart
    integrity_verified: bool  # the server checked BlockLevelHash and it matched


# --- the driver -----------------------------------------------------------------------------


class _Chunk(NamedTuple):
    offset: int
    data: bytes | memoryview  # a view of one of the run's chunk buffers, or a small file's bytes
    hasher: BlockHasher | None  # the block-level hash of the local file's [0, end), if hashed

    @property
    def end(self) -> int:
        return self.offset + len(self.data)


class _Upload:
    """Drives one file through the state machine; one instance per upload_file call.

    Every chunk of a file of a whole block or more is hashed, with or without the server's
    integrity check: the block digests go to the journal, so that a resume can tell whether
    the local file still holds the bytes an earlier run sent (a same-size, same-mtime edit in
    place). A smaller file has no whole block, and without the check nothing reads its hash:
    it is not hashed."""

    def __init__(
        self,
        client: EdgeDriveClient,
        source: Source,
        *,
        folder: str,
        name: str,
        config: TransferConfig,
        events: UploadEvents,
        resume: ResumePoint | None = None,
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
        self.state = opened(source.size, resume)
        self.bytes_sent = 0
        self._confirmed_high = 0
        self._ahead: _Chunk | None = None  # read while the initiate was in flight
        self._hashing = self.verify or source.size >= BLOCK_SIZE
        # Block-level hashers by prefix length: the confirmed offset, the chunk in flight.
        self._hashers: dict[int, BlockHasher] = self._fresh_hashers()
        self._known_digests = known_digests  # the journal's, for [0, n × 4 MiB) of this file
        self._blocks_reported = 0
        self._restarts_seen = 0
        self.attempts = 0  # calls of `run`: 1 + the §8 recoveries

    def progress(self) -> int:
        """What the retry budget counts from: the most bytes the server ever confirmed to
        this upload, plus how far another writer it waits for moved on, plus the looks that
        found it still while it may yet be live (waiting for it is not a failed attempt)."""
        return self._confirmed_high + self.state.watched_bytes + self.state.watched_looks

    async def run(self) -> None:
        """One attempt: the file driven through the state machine until it is done, or an
        error ends the attempt (the retry policy decides on the next one)."""
        self.attempts += 1
        while self.state.phase is not _DONE:
            if self.state.restarts != self._restarts_seen:
                self._started_over()
            try:
                if self.state.phase is _INITIATE:
                    await self._initiate()
                elif self.state.phase is _SEND:
                    await self._send_chunks()
                elif self.state.phase is Phase.RECOVER:
                    await self._recover()
                elif self.state.phase is Phase.WAIT:
                    self._wait_for_other_writer()
                else:
                    await self._check()
            except errors.BulkdriveError as exc:
                self._ahead = None
                self.state = failed(self.state, exc)  # raises what ends the file
                if exc.retryable:
                    raise  # the backoff, then the next attempt from the state reached
        if self._confirmed_high < self.state.size:
            self.events.confirmed_more(self.state.size - self._confirmed_high)
            self._confirmed_high = self.state.size

    def _started_over(self) -> None:
        """A fresh session from offset 0: what was known of the old one means nothing now."""
        self._restarts_seen = self.state.restarts
        self._hashers = self._fresh_hashers()
        self._known_digests = b""
        self._blocks_reported = 0
        self._ahead = None

    def _fresh_hashers(self) -> dict[int, BlockHasher]:
        return {0: BlockHasher()} if self._hashing else {}

    async def discard_session(self, error: errors.BulkdriveError) -> None:
        """The file failed for good (changed, quota, retries): its unfinished session would
        hold bytes, and count against the quota, until it expires. Replace it with an empty
        one of size 0 (forceRestart, spec §4: the only way the API offers to drop a session),
        once, without retries; the error's message says whether that worked."""
        if not self.state.request_id:
            return  # no session of ours is known
        discarded = False
        with (
            anyio.CancelScope(shield=True),
            anyio.move_on_after(self.config.timeouts.connect),
            contextlib.suppress(errors.BulkdriveError),
        ):
            await self.client.initiate(
                name=self.name,
                folder=self.folder,
                size=0,
                mtime=self.mtime,
                body=b"",
                eof=False,
                verify=False,
                force_restart=True,
            )
            discarded = True
        outcome = "was discarded" if discarded else "could not be discarded"
        error.message += f"; its unfinished session on the server {outcome}"

    # --- one method per phase -------------------------------------------------------------

    async def _initiate(self) -> None:
        # A file read whole and hashed in one go (every small file): its only chunk without a
        # wait, and nothing to watch before it goes.
        chunk = self._whole_chunk()
        if chunk is None:
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

        if final:  # a small file: nothing to read ahead (and one coroutine less per resume)
            reply = await send()
        else:
            reply, self._ahead = await self._send_reading_ahead(send, chunk, final)
        self.state = initiated(self.state, reply, now=time.monotonic())
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
            self.state = chunk_sent(self.state, reply)
            self._heard(reply)

    async def _recover(self) -> None:
        # No body: a 409 would not apply it, and a 200 means a new session from offset 0.
        reply = await self.client.initiate(
            name=self.name,
            folder=self.folder,
            size=self.state.size,
            mtime=self.mtime,
            body=b"",
            eof=False,
            verify=self.verify,
        )
        self.state = recovered(self.state, reply, now=time.monotonic())
        self._heard(reply)

    def _wait_for_other_writer(self) -> None:
        """Back off (the retry policy's wait) while another writer's session moves on."""
        state = self.state
        self.state = waited(state)
        raise errors.SessionBusy(
            f"{self.source.path}: another writer is uploading this file (session "
            f"{state.watching} holds {state.watched_at} bytes); waiting for it"
        )

    async def _check(self) -> None:
        resource = await self.client.metadata(protocol.remote_child(self.folder, self.name))
        self.state = checked(self.state, resource, mtime=self.mtime)

    # --- chunks ---------------------------------------------------------------------------

    def _chunk_length(self, offset: int) -> int:
        # Chunks end on chunk-size boundaries of the file, so that after a resume from an odd
        # offset the server's per-chunk blocks line up with the file's 4 MiB blocks again.
        return min(self.chunk_size - offset % self.chunk_size, self.state.size - offset)

    def _whole_chunk(self) -> _Chunk | None:
        """The first chunk as `_chunk_at(0)` makes it, when that needs no wait: the source
        holds the file whole, the chunk is all of it, and it is hashed (if at all) on the loop
        from the known hash of nothing. None otherwise."""
        whole = self.source.whole
        if whole is None or len(whole) != self.state.size or len(whole) > self.chunk_size:
            return None
        return self._chunk_now(0, whole, self._hashers.get(0))

    async def _chunk_at(self, offset: int, hasher: BlockHasher | None = None) -> _Chunk:
        data = await self.source.read(offset, self._chunk_length(offset))
        if self._hashing and hasher is None:
            hasher = await self._hasher_at(offset)
        chunk = self._chunk_now(offset, data, hasher)
        if chunk is None:
            assert hasher is not None
            chunk = _Chunk(offset, data, await hash_off_loop(hasher, data))
        return chunk

    def _chunk_now(
        self, offset: int, data: bytes | memoryview, hasher: BlockHasher | None
    ) -> _Chunk | None:
        """`data` at `offset` as a chunk, hashed here when that is quick (a small chunk,
        without `hash_off_loop`'s coroutine); None when its hash needs a thread, or needs a
        hasher at `offset` that is not at hand."""
        if not self._hashing:
            return _Chunk(offset, data, None)
        hashed = None if hasher is None else extended_if_quick(hasher, data)
        return None if hashed is None else _Chunk(offset, data, hashed)

    async def _hasher_at(self, offset: int) -> BlockHasher:
        """The block-level hash of the local file's [0, offset), a server-confirmed offset:
        remembered, or hashed from the local file now (a session found at an offset this
        upload never sent from). Never taken from the journal's digests alone: they describe
        what was sent, and the final hash must describe the file as it is. Each whole block
        is compared with the journal's digest of it; a difference means the file was edited
        in place since (same size and modified time), and the session holds old bytes."""
        hasher = self._hashers.get(offset)
        if hasher is None:
            hasher = BlockHasher()
            known = self._known_digests
            while hasher.position < offset:
                position = hasher.position
                length = min(BLOCK_SIZE - position % BLOCK_SIZE, offset - position)
                hasher = await hash_off_loop(hasher, await self.source.read(position, length))
                index = hasher.position // BLOCK_SIZE - 1
                journaled = known[index * 32 : index * 32 + 32]
                if hasher.position % BLOCK_SIZE == 0 and journaled not in (b"", hasher.last_block):
                    raise errors.IntegrityMismatch(
                        f"{self.source.path}: block {index} differs from what an earlier run "
                        "sent (edited in place since); starting over"
                    )
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
        self.state = sending(self.state, chunk.end, final=final)
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
        if not self.verify:
            return None
        assert chunk.hasher is not None  # verify: every chunk is hashed
        return chunk.hasher.hexdigest()

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
        if state.phase is _DONE:
            offset = state.size
        elif state.phase is _SEND and reply.request_id == state.request_id:
            offset = state.offset
            if reply.error_code == 409 and offset > 0:
                self.events.resumed(offset)
        else:
            return
        if (hasher := self._hashers.get(offset)) is not None:
            self._report_block(hasher)
        if reply.request_id:
            self.events.offset_confirmed(reply.request_id, offset)
        if offset > self._confirmed_high:
            self.events.confirmed_more(offset - self._confirmed_high)
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
    resume: ResumePoint | None = None,
    known_digests: bytes = b"",
    buffers: ChunkBuffers | None = None,
) -> UploadResult:
    """Upload one local file into `remote_folder` (backslash or slash separated) of the
    client's share, complete and byte-identical, or raise a `bulkdrive.errors` error.

    FileFailed subclasses fail this file only; RunFailed subclasses mean nothing more can
    succeed. The remote folder must exist on servers that do not create parents (§7).
    `content`, from `read_small_files`, saves reading a small file again. `resume`, the
    session and offset a journal kept of this very file (same size and modified time), lets
    the upload continue that session: it asks the server for its offset with an empty
    initiate, and continues only from an offset that session can hold of ours.
    `known_digests`, the block digests the journal kept, are compared with the local file's
    prefix before it continues (a difference costs a restart, never a wrong file).
    `buffers`, the run's chunk buffers (`transfers × 2` of the chunk size), are read into and
    reused from file to file; without them the file reuses its own two.
    """
    config = config or client.config
    events = events or NullEvents()
    path = os.fspath(local_path)
    name = os.path.basename(path) if remote_name is None else remote_name
    folder, remote_path = _remote_target(remote_folder, name)
    if content is not None and content.size <= config.chunk_size:
        source = Source.of_content(path, content)
    else:
        if buffers is None or buffers.size != config.chunk_size:
            buffers = ChunkBuffers(config.chunk_size, most=CHUNKS_PER_TRANSFER)
        source = await Source.open(path, preload_limit=config.chunk_size, buffers=buffers)
    upload = _Upload(
        client,
        source,
        folder=folder,
        name=name,
        config=config,
        events=events,
        resume=resume,
        known_digests=known_digests,
    )

    try:
        # The first attempt here, the rest through the retry policy (`repeat`, without its
        # coroutine for the files that need one attempt: nearly all of them).
        try:
            await upload.run()
        except errors.OutcomeUnknown as first:
            await repeat(
                upload.run,
                config.retry,
                first=first,
                sleep=sleep,
                before_sleep=_telling(events),
                progress=upload.progress,
            )
    except RetryError as failure:
        error = exhausted(failure, f"upload {remote_path}")
        await upload.discard_session(error)
        raise error from None
    except (errors.SourceChanged, errors.QuotaExceeded) as error:
        await upload.discard_session(error)
        raise
    finally:
        await source.close()
    state = upload.state
    return UploadResult(
        local_path=local_path,
        remote_path=remote_path,
        size=state.size,
        file_guid=state.file_guid,
        bytes_sent=upload.bytes_sent,
        attempts=upload.attempts,
        resumes=state.resumes,
        restarts=state.restarts,
        integrity_verified=state.integrity_verified,
    )


def _telling(events: UploadEvents) -> Callable[[RetryCallState], None]:
    """The retry policy's `before_sleep`: each retry told to `events`."""

    def before_sleep(retry_state: RetryCallState) -> None:
        outcome = retry_state.outcome
        error = outcome.exception() if outcome is not None else None
        wait = retry_state.next_action.sleep if retry_state.next_action else 0.0
        if isinstance(error, errors.BulkdriveError):
            events.retrying(error, retry_state.attempt_number, wait)

    return before_sleep


def _remote_target(remote_folder: str, name: str) -> tuple[str, str]:
    """The normalised folder and the file's remote path; Rejected for names Edge Drive
    cannot hold (it separates paths with backslashes, and names travel as UTF-8)."""
    if name in ("", ".", "..") or "\\" in name or "/" in name or "\x00" in name:
        raise errors.Rejected(f"{name!r}: not a file name Edge Drive can store")
    if not name.isascii():
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            raise errors.Rejected(f"{name!r}: the name is not valid UTF-8") from None
    folder = parent_folder_path(remote_folder)
    # `remote_child(folder, name)` for a normalised folder and one checked name, joined
    # directly: once per file.
    return folder, ("" if folder == "\\" else folder) + "\\" + name
