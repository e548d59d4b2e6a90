"""The local file: opened once, read at offsets, watched for changes.

This is the one place where OSError becomes a `bulkdrive.errors` error (SourceUnreadable,
SourceChanged): the upload driver above it sees only those.
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import aiofiles
import anyio
import anyio.to_thread
from aiofiles.threadpool.binary import AsyncBufferedReader

from bulkdrive import errors
from bulkdrive.inline_io import InlineIO

__all__ = [
    "BufferStatistics",
    "ChunkBuffers",
    "Identity",
    "LocalContent",
    "Source",
    "read_small_files",
]


class Identity(NamedTuple):
    """What tells us the bytes changed: size and mtime of the inode we read. (Named tuples
    here and in `LocalContent`: one or two per file, built faster than frozen dataclasses.)"""

    size: int
    mtime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> Identity:
        return cls(st.st_size, st.st_mtime_ns)


#: O_NONBLOCK keeps a FIFO from blocking the open; it changes nothing for regular files.
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)


def _open_regular(
    path: str, preload_limit: int, into: memoryview | None = None
) -> tuple[int, Identity, bytes | memoryview | None]:
    """Open, check it is a regular file, and read it whole when it is small: one thread hop.
    Into `into` when it has room (a view of it), else into a new bytes."""
    fd = os.open(path, _OPEN_FLAGS)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise IsADirectoryError(f"{path} is not a regular file")
        size, mtime_ns = st.st_size, st.st_mtime_ns
        if size > preload_limit:
            return fd, Identity(size, mtime_ns), None
        data: bytes | memoryview
        if into is not None and size <= len(into):
            data = _read_into(fd, into[:size])
        else:
            # One read from the page cache for a small file; more only when it comes short.
            data = os.read(fd, size) if size else b""
            if 0 < len(data) < size:
                parts = [data]
                left = size - len(data)
                while left > 0:
                    part = os.read(fd, left)
                    if not part:
                        break
                    parts.append(part)
                    left -= len(part)
                data = b"".join(parts)
        after = os.fstat(fd)
    except BaseException:
        os.close(fd)
        raise
    os.close(fd)
    if len(data) != size or after.st_size != size or after.st_mtime_ns != mtime_ns:
        raise _Changed(Identity(size, mtime_ns), Identity.of(after))
    return -1, Identity(size, mtime_ns), data


def _read_into(fd: int, view: memoryview) -> memoryview:
    """As much of the file as fits in `view`, from its start (shorter at its end)."""
    got = 0
    with io.FileIO(fd, "rb", closefd=False) as raw:
        while got < len(view):
            n = raw.readinto(view[got:])
            if not n:
                break
            got += n
    return view[:got]


class LocalContent(NamedTuple):
    """A small file read whole ahead of its upload, with the size and mtime it had then."""

    data: bytes
    size: int
    mtime_ns: int


def read_small_files(paths: Sequence[str], limit: int) -> list[LocalContent | None]:
    """Read small files whole, in the calling thread: one thread hop for a batch of them.

    None for a file that cannot be read whole now (larger than `limit`, changing, gone,
    unreadable): its upload opens it again and reports what is wrong.
    """
    return [read_small_file(path, limit) for path in paths]


def read_small_file(path: str, limit: int) -> LocalContent | None:
    """One file of `read_small_files`."""
    try:
        fd, identity, data = _open_regular(path, limit)
    except (OSError, _Changed):
        return None
    if data is None:
        os.close(fd)
        return None
    assert isinstance(data, bytes)  # read without a buffer to read into
    return LocalContent(data, identity.size, identity.mtime_ns)


#: A small file's read on the event loop slower than this, while the thread waited in the
#: kernel, counts as slow for the policy (`bulkdrive.inline_io`) that then sends small files to
#: a worker thread for a while. From the page cache a small file reads in ~15 µs of CPU on the
#: loop, but ~55 µs in a worker thread beside a busy loop (its five system calls each hand the
#: GIL over and take it back), plus the hop's wake-ups.
INLINE_READ_SLOW_SECONDS = 0.001


class InlineReads:
    """Small files read on the event loop while `InlineIO` allows it, else in a worker thread.
    The dispatcher's, and a `--cluster` worker's (which reads its batches' files itself).

    `policy` decides (tests hand in one with their own clock)."""

    def __init__(self, limit: int, policy: InlineIO | None = None) -> None:
        self._limit = limit  # the size up to which a file is read ahead (`read_small_files`)
        self._policy = policy if policy is not None else InlineIO(INLINE_READ_SLOW_SECONDS)
        self.files_inline = 0
        self.files_in_thread = 0

    def read(self, paths: list[str], into: list[LocalContent | None]) -> int:
        """Read `paths` on the event loop while the policy allows it; how many were read (the
        caller reads the rest in a worker thread). Per read, not per batch: on a busy machine
        a whole batch is often preempted."""
        done = 0
        policy, limit = self._policy, self._limit
        if paths and policy.allowed():
            for path in paths:
                begun = policy.begin()
                into.append(read_small_file(path, limit))
                done += 1
                if not policy.end(begun):
                    break  # this read paused the I/O on the loop: the rest go to a thread
        self.files_inline += done
        return done

    async def read_all(self, paths: list[str]) -> list[LocalContent | None]:
        """Each of `paths` read (None: not small enough to hold), on the loop while quick."""
        read: list[LocalContent | None] = []
        inline = self.read(paths, read)
        if inline < len(paths):
            self.files_in_thread += len(paths) - inline
            read += await anyio.to_thread.run_sync(read_small_files, paths[inline:], self._limit)
        return read


def _holders(buffers: list[bytearray], index: int) -> int:
    """References to `buffers[index]`, counted the same way for every buffer and for the
    calibration below (what a reference count includes differs between Python versions)."""
    return sys.getrefcount(buffers[index])


#: What `_holders` counts for a buffer that only its pool's list holds: no chunk's view of it,
#: no slice of it in a transport's queue, no read into it in a thread.
_FREE = _holders([bytearray()], 0)


@dataclass(frozen=True)
class BufferStatistics:
    made: int  # buffers allocated and kept for reuse
    reused: int  # chunks read into a kept buffer
    spare: int  # chunks read into a buffer of their own (every kept one was in use)


class ChunkBuffers:
    """Chunk buffers reused from chunk to chunk and from file to file: a run's (or a file's)
    at most `most` buffers of `size` bytes, each read into again once nothing refers to it.

    A fresh buffer per chunk (a 4 MiB `bytes` from each read) cost page faults and system
    time: glibc serves it from the reading thread's own malloc arena, which gives its top back
    to the kernel when the chunk is freed, so every page of the next chunk faults in again
    (the CLI limits itself to one arena; a Dask worker has one per thread). 32 × 128 MiB
    `--no-verify`, medians of 3: a `--cluster local:1` worker 456 k minor faults and 9.0 CPU
    seconds before, 32 k and 7.6 s with these buffers; one process 85 k → 26 k faults.

    A buffer is handed out again only when its pool's list is the one reference left: no
    chunk holds a view of it any more, no transport still queues a slice of it to send, no
    thread reads into it. So a chunk whose send ended early (an error, a cancel) keeps its
    buffer for as long as anything may still read it; the next chunk gets another one.
    Memory: at most `most` buffers kept (a run: transfers × 2, the chunk being sent and the
    one read ahead of each file in flight); a chunk that finds them all in use gets a buffer
    of its own, freed with it. Used from one thread, the event loop's."""

    def __init__(self, size: int, most: int) -> None:
        self.size = size
        self.most = most
        self._kept: list[bytearray] = []
        self._next = 0  # where the search for a free buffer starts: the least recently used
        self._reused = self._spare = 0

    def take(self, length: int) -> memoryview:
        """A writable view of `length` bytes of a buffer nothing else refers to."""
        kept = self._kept
        if length <= self.size:
            count = len(kept)
            for step in range(count):
                index = (self._next + step) % count
                if _holders(kept, index) == _FREE:
                    self._next = (index + 1) % count
                    self._reused += 1
                    return memoryview(kept[index])[:length]
            if count < self.most:
                buffer = bytearray(self.size)
                kept.append(buffer)
                return memoryview(buffer)[:length]
        self._spare += 1
        return memoryview(bytearray(length))

    def statistics(self) -> BufferStatistics:
        return BufferStatistics(made=len(self._kept), reused=self._reused, spare=self._spare)


class _Changed(Exception):
    def __init__(self, before: Identity, after: Identity) -> None:
        super().__init__("changed")
        self.before = before
        self.after = after


class Source:
    """The local file: chunks read with aiofiles at their offset; notices when it changes."""

    def __init__(
        self,
        path: str,
        identity: Identity,
        handle: AsyncBufferedReader | None,
        preloaded: bytes | memoryview | None,
        buffers: ChunkBuffers | None = None,
    ) -> None:
        self.path = path
        self.identity = identity
        self.size = identity.size
        self._handle = handle
        self._preloaded = preloaded
        self._buffers = buffers
        self._position = 0

    @classmethod
    def of_content(cls, path: str, content: LocalContent) -> Source:
        """A small file read ahead by `read_small_files`."""
        return cls(path, Identity(content.size, content.mtime_ns), None, content.data)

    @classmethod
    async def open(cls, path: str, preload_limit: int, buffers: ChunkBuffers) -> Source:
        """The file at `path`, read whole now when it is no larger than `preload_limit`, else
        read a chunk at a time into `buffers`."""
        # A file read whole goes into one of the buffers too, not a new bytes from the
        # thread's arena: 1 000 files of 1 MiB, medians of 3, one process 82 k → 17 k minor
        # faults (2.9 → 2.5 CPU s), a `--cluster local:1` worker 86 k → 23 k (3.4 → 2.8 s).
        into = buffers.take(preload_limit) if preload_limit <= buffers.size else None
        try:
            fd, identity, data = await anyio.to_thread.run_sync(
                _open_regular, path, preload_limit, into
            )
        except _Changed as changed:
            raise _source_changed(path, changed.before, changed.after) from None
        except OSError as exc:
            raise errors.SourceUnreadable(f"{path}: {exc.strerror or exc}") from None
        del into  # free for the file's chunks when it is not read whole
        if data is not None:
            return cls(path, identity, None, data)
        try:
            handle = await aiofiles.open(fd, "rb")
        except OSError as exc:
            os.close(fd)
            raise errors.SourceUnreadable(f"{path}: {exc.strerror or exc}") from None
        return cls(path, identity, handle, None, buffers)

    @property
    def whole(self) -> bytes | memoryview | None:
        """The file's bytes when it was read whole (and checked) when opened, else None: then
        nothing is read or watched any more, and the upload takes them without a wait."""
        return self._preloaded

    async def read(self, offset: int, length: int) -> bytes | memoryview:
        """`length` bytes at `offset`: a view of a buffer of the pool, which the pool hands
        out again once the view (and whatever was made of it) is gone."""
        if self._preloaded is not None:
            return self._preloaded[offset : offset + length]
        assert self._handle is not None and self._buffers is not None
        view = self._buffers.take(length)
        # Shielded: a read abandoned half-way would leave the file position unknown.
        with anyio.CancelScope(shield=True):
            try:
                if self._position != offset:
                    await self._handle.seek(offset)
                    self._position = offset
                got = await self._handle.readinto(view) or 0
            except OSError as exc:
                self._position = -1
                raise errors.SourceUnreadable(f"{self.path}: {exc.strerror or exc}") from None
        self._position += got
        if got != length:
            now = await self._identity_now()
            raise _source_changed(self.path, self.identity, now)
        return view

    async def check_unchanged(self) -> None:
        """Before the final request: the bytes sent must all be from one version of the file."""
        if self._handle is None:
            return  # read whole, and checked, in one go
        now = await self._identity_now()
        if now != self.identity:
            raise _source_changed(self.path, self.identity, now)

    async def _identity_now(self) -> Identity:
        assert self._handle is not None
        try:
            st = await anyio.to_thread.run_sync(os.fstat, self._handle.fileno())
        except OSError as exc:
            raise errors.SourceUnreadable(f"{self.path}: {exc.strerror or exc}") from None
        return Identity.of(st)

    async def close(self) -> None:
        if self._handle is not None:
            with anyio.CancelScope(shield=True):
                with contextlib.suppress(OSError):
                    await self._handle.close()
            self._handle = None


def _source_changed(path: str, before: Identity, after: Identity) -> errors.SourceChanged:
    if before.size != after.size:
        what = f"size {before.size} → {after.size}"
    elif before.mtime_ns != after.mtime_ns:
        what = "modified time changed"
    else:
        what = "shorter than its size"
    return errors.SourceChanged(f"{path}: changed while it was uploaded ({what}); not stored")
