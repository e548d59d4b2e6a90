"""The streaming tree walk: SRC's folders and files, filtered, in bounded memory.

`walk` goes depth-first with `os.scandir`, reading each directory a batch at a time (listing and
`stat` together), on the event loop while folders read quickly and in a worker thread, one hop
per batch, once the disk is slow (see `_Walker.open_folder`), and sends every item into a
bounded object stream. The stream is the backlog: when it is full the walker waits, so the
uploads drain it while the walk goes on, and memory holds at most one batch per level of the
current path plus the stream's buffer, however many files the tree has.

A folder is sent lazily, just before the first file inside it, so empty folders and folders
whose files are all filtered out are never created remotely (unless `empty_folders` asks for
them: then a folder not sent yet is sent as the walk leaves it). Only the current path is kept
(its open listings, the folders on it that were already sent, and with `--follow-symlinks`
the (st_dev, st_ino) of its folders for loop detection); nothing grows with the tree's size.
"""

from __future__ import annotations

import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import anyio
import anyio.to_thread
from anyio.abc import ObjectSendStream
from anyio.streams.memory import MemoryObjectSendStream

from bulkdrive.errors import ConfigError, FileFailed, SourceUnreadable, UnreadableFolder, Vanished
from bulkdrive.globs import GlobSet, compile_globs
from bulkdrive.scan import (
    FAIL,
    FILE,
    FOLDER,
    SKIP_SPECIAL,
    VANISHED,
    Batch,
    Listing,
    open_folder,
    read_batch,
    special_kind,
)
from bulkdrive.shard import Shard

#: A folder is read (a batch of its entries) on the event loop while that takes less than
#: this per INLINE_ENTRIES entries (at least this); longer, and the next reads go to a worker
#: thread until one is quick again. From the page cache an entry reads in ~3-6 µs: a batch of
#: 512 in ~2-3 ms, which a limit per folder sent to the thread, where beside a busy loop its
#: two GIL hand-overs per entry made it ~30 ms (measured on `--cluster`'s coordinator, 500
#: files a folder: the walk, ~16 000 files/s at most, was what it waited for). A cold or
#: network disk takes 100 µs and more per entry.
INLINE_OPEN_LIMIT = 0.002  # seconds
INLINE_ENTRIES = 64


def _quick(seconds: float, entries: int) -> bool:
    return seconds <= INLINE_OPEN_LIMIT * max(1.0, entries / INLINE_ENTRIES)


SYMLINK_LOOP = "symbolic link loop (points to a folder above it)"
SKIP_LOOP = "symbolic link loop"


# --- what the walk sends ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FolderEntry:
    """A folder to create remotely; sent before the first file inside it, once.

    Paths relative to SRC are "/"-separated strings, not PurePosixPath objects: a path object
    per file costs more than its upload's own bookkeeping when the files are small.
    """

    relative: str


class FileEntry(NamedTuple):
    """A regular file to upload. `size` and `mtime_ns` are from the walk's `stat`.

    A named tuple, not a frozen dataclass: one per file, built in a third of the time."""

    path: str
    relative: str  # "/"-separated, relative to SRC
    size: int
    mtime_ns: int


@dataclass(frozen=True, slots=True)
class SkippedEntry:
    """Something the walk saw and will not upload because the user asked so (symbolic link
    policy, special files), with the reason for people and its kind for the summary."""

    relative: str  # "." for SRC itself
    reason: str
    kind: str = SKIP_SPECIAL


@dataclass(frozen=True, slots=True)
class WalkFailure:
    """Something the walk could not read (a folder, a file's metadata) or that vanished while
    it was read: whatever it held is not uploaded, so it is a failure, never a skip."""

    relative: str  # "." for SRC itself
    reason: str
    error: type[FileFailed] = SourceUnreadable


WalkItem = FolderEntry | FileEntry | SkippedEntry | WalkFailure


@dataclass(frozen=True, slots=True)
class WalkStatistics:
    """Counts of what was sent; `filtered` counts what the filters left out, unsent.

    A folder pruned by an exclude pattern counts once in `filtered`, whatever it holds.
    `stopped` is true when the receiver closed the stream before the walk was done.
    """

    folders: int
    files: int
    bytes: int
    skipped: int
    filtered: int = 0
    stopped: bool = False
    failed: int = 0
    #: Files, skips and failures left to the other shards of `--shard K/N`.
    other_shards: int = 0
    #: Folders opened on the event loop and in a worker thread (see `_Walker.open_folder`):
    #: how, not what, so two walks of one tree compare equal whichever way they read it.
    opened_inline: int = field(default=0, compare=False)
    opened_in_thread: int = field(default=0, compare=False)


# --- what the walk keeps -----------------------------------------------------------------


@dataclass(frozen=True)
class WalkFilters:
    """What the walk keeps. include/exclude: globs on the path relative to SRC ("/"-separated,
    see `GlobSet`); empty include = everything. A glob matching a folder applies to everything
    under it (exclude prunes it; include keeps all of it). Exclude wins over include.
    min_size/max_size bound file sizes in bytes, both inclusive. `shard`: only the paths of
    this shard (a folder is sent only before a file of the shard, so each shard creates the
    folders it needs). `empty_folders` keeps the folders that hold no (kept) files too: they
    are sent when the walk leaves them, by the shard that owns the folder's path."""

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    min_size: int | None = None
    max_size: int | None = None
    follow_symlinks: bool = False
    shard: Shard | None = None
    empty_folders: bool = False
    _include: GlobSet = field(init=False, repr=False, compare=False)
    _exclude: GlobSet = field(init=False, repr=False, compare=False)
    #: No glob, size bound or shard: every file is kept (the walk skips asking, per file).
    keeps_every_file: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("min_size", "max_size"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ConfigError(f"{name.replace('_', '-')} must not be negative: {value}")
        low, high = self.min_size, self.max_size
        if low is not None and high is not None and low > high:
            raise ConfigError(f"min-size ({low}) is larger than max-size ({high})")
        object.__setattr__(self, "_include", compile_globs(self.include))
        object.__setattr__(self, "_exclude", compile_globs(self.exclude))
        every = not (self.include or self.exclude or self.shard is not None)
        every = every and low is None and high is None
        object.__setattr__(self, "keeps_every_file", every)

    def excludes(self, relative: str, *, is_folder: bool) -> bool:
        return self._exclude.matches(relative, is_folder=is_folder)

    def includes(self, relative: str, *, is_folder: bool) -> bool:
        """True when no include globs are given, or one of them matches."""
        return not self._include or self._include.matches(relative, is_folder=is_folder)

    def in_shard(self, relative: str) -> bool:
        return self.shard is None or self.shard.owns(relative)

    @property
    def size_bounded(self) -> bool:
        """Whether `size_ok` can say no (a count with no bound skips the call per file)."""
        return self.min_size is not None or self.max_size is not None

    def size_ok(self, size: int) -> bool:
        if self.min_size is not None and size < self.min_size:
            return False
        return self.max_size is None or size <= self.max_size


# --- the walk -----------------------------------------------------------------------------


@dataclass(slots=True)
class _Frame:
    """One folder on the current path."""

    path: str
    relative: str  # "" for SRC itself
    batch: Batch
    index: int = 0
    key: tuple[int, int] | None = None
    included: bool = False  # this folder or one above it matched an include glob
    #: `path` and `relative` ready for a name to be appended (`os.path.join`'s result).
    path_prefix: str = ""
    relative_prefix: str = ""

    def __post_init__(self) -> None:
        self.path_prefix = os.path.join(self.path, "")
        self.relative_prefix = f"{self.relative}/" if self.relative else ""


def _join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


T = TypeVar("T")


def _timed(read: Callable[[T, bool], Batch], what: T, follow: bool) -> tuple[Batch, float]:
    """`read` and the seconds it took (in a worker thread: whether the disk is quick)."""
    began = time.perf_counter()
    batch = read(what, follow)
    return batch, time.perf_counter() - began


class _ReceiverGone(Exception):
    pass


@dataclass
class _Walker:
    filters: WalkFilters
    send_stream: ObjectSendStream[WalkItem]
    on_file: Callable[[FileEntry], None] | None = None
    on_folder: Callable[[FolderEntry], None] | None = None
    folders: int = 0
    files: int = 0
    bytes: int = 0
    skipped: int = 0
    filtered: int = 0
    failed: int = 0
    other_shards: int = 0
    opened_inline: int = 0
    opened_in_thread: int = 0
    inline: bool = True
    _nowait: Any = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.send_stream, MemoryObjectSendStream):
            # Room in the buffer: no need to go through the event loop for every item.
            self._nowait = self.send_stream.send_nowait

    async def open_folder(self, path: str, follow: bool) -> Batch:
        """A folder's first batch. From the page cache, a small folder reads in ~30-40 µs and
        a hop to a worker thread and back costs ~110-130 µs of CPU more (measured on the
        benchmark's tree: one folder per ~5.6 files): so it is read on the event loop. A read
        that took longer than INLINE_OPEN_LIMIT per INLINE_ENTRIES entries (a cold or network
        disk) sends the next ones to a worker thread, so a slow disk never holds up the
        uploads for long; a quick read there brings them back. OSError when it cannot be
        opened."""
        if self.inline:
            self.opened_inline += 1
        else:
            self.opened_in_thread += 1
        return await self._read(open_folder, path, follow)

    async def read_more(self, listing: Listing, follow: bool) -> Batch:
        """The next batch of a folder with more entries than a batch: as `open_folder`."""
        return await self._read(read_batch, listing, follow)

    async def _read(self, read: Callable[[T, bool], Batch], what: T, follow: bool) -> Batch:
        if self.inline:
            began = time.perf_counter()
            batch = read(what, follow)
            self.inline = _quick(time.perf_counter() - began, len(batch.entries))
            return batch
        batch, seconds = await anyio.to_thread.run_sync(_timed, read, what, follow)
        self.inline = _quick(seconds, len(batch.entries))
        return batch

    def theirs(self, relative: str) -> bool:
        """Another shard's file, skip or failure: counted once, by that shard."""
        if self.filters.in_shard(relative):
            return False
        self.other_shards += 1
        return True

    async def send(self, item: WalkItem) -> None:
        if self.sent_at_once(item):
            return
        try:
            await self.send_stream.send(item)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            raise _ReceiverGone from None
        self._sent(item)

    def sent_at_once(self, item: WalkItem) -> bool:
        """`item` sent without a wait (and without a coroutine: once per file) while the
        stream has room; False when it has none."""
        if self._nowait is None:
            return False
        try:
            self._nowait(item)
        except anyio.WouldBlock:
            return False
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            raise _ReceiverGone from None
        self._sent(item)
        return True

    def _sent(self, item: WalkItem) -> None:
        if isinstance(item, FileEntry):
            self.files += 1
            self.bytes += item.size
            if self.on_file is not None:
                self.on_file(item)

    async def send_path(self, stack: list[_Frame], sent: int) -> None:
        """The folders on the path that were not yet sent (`stack[sent + 1 :]`), from the top."""
        for frame in stack[sent + 1 :]:
            folder = FolderEntry(frame.relative)
            if self.on_folder is not None:
                self.on_folder(folder)
            await self.send(folder)
            self.folders += 1

    async def skip(self, relative: str, reason: str, kind: str) -> None:
        if self.theirs(relative or "."):
            return
        await self.send(SkippedEntry(relative or ".", reason, kind))
        self.skipped += 1

    async def fail(self, relative: str, reason: str, error: type[FileFailed]) -> None:
        if self.theirs(relative or "."):
            return
        await self.send(WalkFailure(relative or ".", reason, error))
        self.failed += 1

    def statistics(self, *, stopped: bool = False) -> WalkStatistics:
        return WalkStatistics(
            self.folders,
            self.files,
            self.bytes,
            self.skipped,
            self.filtered,
            stopped,
            self.failed,
            self.other_shards,
            self.opened_inline,
            self.opened_in_thread,
        )

    def wanted(self, relative: str, *, is_folder: bool, included: bool) -> bool:
        f = self.filters
        if f.excludes(relative, is_folder=is_folder):
            return False
        return included or f.includes(relative, is_folder=is_folder)

    async def root_file(self, root: Path, st: os.stat_result) -> None:
        name = root.name
        if not self.wanted(name, is_folder=False, included=False) or not self.filters.size_ok(
            st.st_size
        ):
            self.filtered += 1
            return
        if self.theirs(name):
            return
        await self.send(FileEntry(os.fspath(root), name, st.st_size, st.st_mtime_ns))

    async def tree(self, root: Path, st: os.stat_result) -> None:
        follow = self.filters.follow_symlinks
        root_path = os.fspath(root)
        try:
            first = await anyio.to_thread.run_sync(open_folder, root_path, follow)
        except OSError as exc:
            raise ConfigError(f"cannot read source folder {root}: {exc.strerror}") from None
        stack = [
            _Frame(
                root_path, "", first, key=(st.st_dev, st.st_ino), included=not self.filters.include
            )
        ]
        sent = 0  # stack[1 : sent + 1] are folders already sent; SRC itself is never sent
        every_file = self.filters.keeps_every_file
        sent_at_once = self.sent_at_once
        try:
            while stack:
                frame = stack[-1]
                batch = frame.batch
                if frame.index >= len(batch.entries):
                    if batch.error:
                        await self.fail(frame.relative, batch.error, UnreadableFolder)
                    if batch.listing is None:
                        if (
                            self.filters.empty_folders
                            and frame.included
                            and self.filters.in_shard(frame.relative)  # one shard makes it
                        ):
                            await self.send_path(stack, sent)
                            sent = len(stack) - 1
                        stack.pop()
                        sent = min(sent, len(stack) - 1)
                        continue
                    frame.batch = await self.read_more(batch.listing, follow)
                    frame.index = 0
                    continue
                seen = batch.entries[frame.index]
                frame.index += 1
                relative = frame.relative_prefix + seen.name
                if seen.kind == FILE:
                    if not every_file:
                        if not self.wanted(
                            relative, is_folder=False, included=frame.included
                        ) or not self.filters.size_ok(seen.size):
                            self.filtered += 1
                            continue
                        if self.theirs(relative):
                            continue
                    # The folders on the path that were not yet sent, from the top.
                    while sent < len(stack) - 1:
                        folder = FolderEntry(stack[sent + 1].relative)
                        if self.on_folder is not None:
                            self.on_folder(folder)
                        await self.send(folder)
                        sent += 1
                        self.folders += 1
                    item = FileEntry(
                        frame.path_prefix + seen.name, relative, seen.size, seen.mtime_ns
                    )
                    if not sent_at_once(item):
                        await self.send(item)
                elif seen.kind == FOLDER:
                    if self.filters.excludes(relative, is_folder=True):
                        self.filtered += 1
                        continue
                    if follow and any(f.key == seen.key for f in stack):
                        await self.skip(relative, SYMLINK_LOOP, SKIP_LOOP)
                        continue
                    path = os.path.join(frame.path, seen.name)
                    try:
                        child = await self.open_folder(path, follow)
                    except FileNotFoundError:
                        await self.fail(relative, f"folder {VANISHED}", Vanished)
                        continue
                    except OSError as exc:
                        await self.fail(
                            relative, f"unreadable folder: {exc.strerror}", UnreadableFolder
                        )
                        continue
                    included = frame.included or self.filters.includes(relative, is_folder=True)
                    stack.append(_Frame(path, relative, child, key=seen.key, included=included))
                elif seen.kind == FAIL:
                    # Not known to be a file or a folder: filters see it as a file.
                    if self.wanted(relative, is_folder=False, included=frame.included):
                        await self.fail(relative, seen.reason, seen.error)
                    else:
                        self.filtered += 1
                elif self.wanted(relative, is_folder=False, included=frame.included):
                    await self.skip(relative, seen.reason, seen.skip_kind)
                else:
                    self.filtered += 1
        finally:
            for frame in stack:
                if frame.batch.listing is not None:
                    frame.batch.listing.close()


def count_files(
    root: Path, filters: WalkFilters, stop: threading.Event | None = None
) -> tuple[int, int] | None:
    """The files and bytes `walk` would send, counted in one pass that keeps nothing per file
    and sends nothing: the count-only pass that fixes a run's totals early. Blocking: run it
    in a worker thread. About a tenth of `walk`'s CPU per file. What cannot be read is left out
    (the walk itself reports it). None when SRC is not a folder or symbolic links are followed
    (then only the walk knows), or when `stop` is set (checked at each folder)."""
    if filters.follow_symlinks or not os.path.isdir(root):
        return None
    plain = not (filters.include or filters.exclude or filters.shard is not None)
    # No size bound: no `size_ok` call per file (the count runs beside the upload's loop).
    sized = filters.size_bounded
    files = size = 0
    stack: list[tuple[str, str, bool]] = [(os.fspath(root), "", not filters.include)]
    while stack:
        if stop is not None and stop.is_set():
            return None
        path, relative, included = stack.pop()
        try:
            with os.scandir(path) as listing:
                for entry in listing:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            if plain:
                                stack.append((entry.path, "", True))
                                continue
                            folder = _join(relative, entry.name)
                            if not filters.excludes(folder, is_folder=True):
                                inside = included or filters.includes(folder, is_folder=True)
                                stack.append((entry.path, folder, inside))
                        elif entry.is_file(follow_symlinks=False):
                            bytes_ = entry.stat(follow_symlinks=False).st_size
                            if sized and not filters.size_ok(bytes_):
                                continue
                            if not plain:
                                name = _join(relative, entry.name)
                                if (
                                    filters.excludes(name, is_folder=False)
                                    or not (included or filters.includes(name, is_folder=False))
                                    or not filters.in_shard(name)
                                ):
                                    continue
                            files += 1
                            size += bytes_
                    except OSError:
                        continue
        except OSError:
            continue
    return files, size


async def walk(
    root: Path,
    filters: WalkFilters,
    send: ObjectSendStream[WalkItem],
    *,
    on_file: Callable[[FileEntry], None] | None = None,
    on_folder: Callable[[FolderEntry], None] | None = None,
) -> WalkStatistics:
    """Walk SRC and send its folders, files and skipped entries into `send`, then close it.

    `send` should be a bounded stream: the walk waits while it is full. SRC may be a file (one
    FileEntry named after it) or a folder (SRC itself is not sent; its contents are relative
    to it); a symbolic link given as SRC is followed. If the receiver closes its end, the walk
    stops and returns what it counted (`stopped=True`). A missing or unreadable SRC raises
    ConfigError; anything unreadable inside it, or vanishing while read, is sent as a
    WalkFailure and the walk goes on; a SkippedEntry is only what the user asked to skip.
    `on_file` hears of each file as it enters the stream, so that totals are whole as soon as
    the walk ends, however many files still wait in the stream. `on_folder` hears of each
    folder before it enters the stream (so before any file inside it), which lets a receiver
    create folders well ahead of their files.
    """
    walker = _Walker(filters, send, on_file, on_folder)
    async with send:
        try:
            st = await anyio.to_thread.run_sync(os.stat, root)
        except FileNotFoundError:
            raise ConfigError(f"source not found: {root}") from None
        except OSError as exc:
            raise ConfigError(f"cannot read source {root}: {exc.strerror}") from None
        try:
            if stat.S_ISREG(st.st_mode):
                await walker.root_file(Path(root), st)
            elif stat.S_ISDIR(st.st_mode):
                await walker.tree(Path(root), st)
            else:
                raise ConfigError(
                    f"source is a {special_kind(st.st_mode)}, not a file or folder: {root}"
                )
        except _ReceiverGone:
            return walker.statistics(stopped=True)
    return walker.statistics()
