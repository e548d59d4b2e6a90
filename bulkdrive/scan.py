"""One local folder read off the event loop: `os.scandir` a batch of entries at a time in a
worker thread, each entry classified there (file, folder, skip or failure, with its `stat`), so
the walk's loop never blocks on the disk and holds one batch per folder on its path."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from bulkdrive.errors import FileFailed, SourceUnreadable, Vanished

#: Directory entries read (and stat'ed) per thread hop. Bounds memory per level of the path.
BATCH_SIZE = 512

SYMLINK_NOT_FOLLOWED = "symbolic link (use --follow-symlinks)"
VANISHED = "vanished while the tree was read"

#: Why things are skipped, by kind: what the user asked for (the summary counts each kind).
SKIP_SYMLINK = "symbolic link not followed"
SKIP_SPECIAL = "special file"


class Listing(Iterator["os.DirEntry[str]"], Protocol):
    def close(self) -> None: ...


FILE, FOLDER, SKIP, FAIL = 0, 1, 2, 3


@dataclass(slots=True)
class Seen:
    """One directory entry, classified in the worker thread so the loop never blocks."""

    name: str
    kind: int
    size: int = 0
    mtime_ns: int = 0
    key: tuple[int, int] | None = None  # (st_dev, st_ino) of a folder
    reason: str = ""
    skip_kind: str = SKIP_SPECIAL
    error: type[FileFailed] = SourceUnreadable


def special_kind(mode: int) -> str:
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISFIFO(mode):
        return "FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "character device"
    if stat.S_ISBLK(mode):
        return "block device"
    return "not a regular file or folder"


def classify(entry: os.DirEntry[str], follow_symlinks: bool) -> Seen:
    name = entry.name
    try:
        if entry.is_symlink():
            if not follow_symlinks:
                return Seen(name, SKIP, reason=SYMLINK_NOT_FOLLOWED, skip_kind=SKIP_SYMLINK)
            try:
                st = os.stat(entry.path)
            except OSError as exc:
                # Asked to follow it, and it leads nowhere: what it stood for is not uploaded.
                return Seen(name, FAIL, reason=f"broken symbolic link ({exc.strerror})")
        else:
            st = entry.stat(follow_symlinks=False)
    except FileNotFoundError:
        return Seen(name, FAIL, reason=VANISHED, error=Vanished)
    except OSError as exc:
        return Seen(name, FAIL, reason=f"cannot read: {exc.strerror}")
    mode = st.st_mode
    if stat.S_ISREG(mode):
        return Seen(name, FILE, st.st_size, st.st_mtime_ns)  # by position: once per file
    if stat.S_ISDIR(mode):
        return Seen(name, FOLDER, key=(st.st_dev, st.st_ino))
    return Seen(name, SKIP, reason=special_kind(mode))


def _sort_key(seen: Seen) -> tuple[bool, str]:
    # Files of a batch before its folders, by name: deterministic, and a small directory's
    # files are all sent before the walk descends.
    return (seen.kind == FOLDER, seen.name)


@dataclass(slots=True)
class Batch:
    entries: list[Seen]
    listing: Listing | None  # None once the directory has been read to its end
    error: str = ""  # the listing broke off part-way


def read_batch(listing: Listing, follow_symlinks: bool) -> Batch:
    entries: list[Seen] = []
    error = ""
    try:
        while len(entries) < BATCH_SIZE:
            entries.append(classify(next(listing), follow_symlinks))
        entries.sort(key=_sort_key)
        return Batch(entries, listing)
    except StopIteration:
        pass
    except OSError as exc:
        error = f"folder listing broke off: {exc.strerror}"
    listing.close()  # no file descriptor held for a directory that is done
    entries.sort(key=_sort_key)
    return Batch(entries, None, error)


def open_folder(path: str, follow_symlinks: bool) -> Batch:
    """The first batch of a directory; OSError when it cannot be opened."""
    listing: Listing = os.scandir(path)
    return read_batch(listing, follow_symlinks)
