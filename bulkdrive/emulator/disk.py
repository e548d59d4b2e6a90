"""The emulator's files on disk: path safety (no symbolic link, no escape from a target's
folder), placing a finished file, and the plain I/O helpers that run on the store's I/O pool
(or, for small files, on the event loop)."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bulkdrive import protocol
from bulkdrive.emulator.refusals import StoreError, Why

#: Bytes gathered from the socket before one write on the I/O pool (bounds memory per request).
WRITE_BATCH = 1024 * 1024


_IOV_MAX = 512


#: A whole file up to this size that arrives in one request is checked, written and renamed on
#: the event loop itself: the hop to the I/O pool costs more than the write of a small file
#: (the measurements: benchmarks/README.md, "Measured choices"). Above it the copy would hold
#: up other connections while the hop becomes cheap next to the body, so larger bodies keep
#: the pool.
INLINE_WRITE_BYTES = 64 * 1024


#: A small file's write on the event loop slower than this, while the thread waited in the
#: kernel, counts as slow for the policy (`bulkdrive.inline_io`) that then sends small files to
#: the I/O pool for a while, so a stalling disk blocks the event loop a few times, briefly.
INLINE_SLOW_SECONDS = 0.005


_GUID_NAMESPACE = uuid.UUID("6b1f3c2e-0d44-4f8e-9a55-2b0c8f3e7d10")
_GUID_NAMESPACE_BYTES = _GUID_NAMESPACE.bytes
#: The bits uuid.UUID(version=5) sets: the version (5) and the RFC 4122 variant.
_VERSION_5_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_VERSION_5_SET = (0x5000 << 64) | (0x8000 << 48)


_FULL_DISK = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def is_full_disk(exc: OSError) -> bool:
    return exc.errno in _FULL_DISK


def write_batch(fd: int, pieces: list[bytes], offset: int, hasher: Any) -> None:
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


def truncate_and_close(fd: int, length: int) -> None:
    try:
        os.ftruncate(fd, length)
    finally:
        os.close(fd)


def hash_file(path: Path) -> str:
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
        raise StoreError(Why.FILE_IN_PATH) from exc
    except OSError as exc:
        raise StoreError(Why.INVALID_PATH, exc.strerror) from exc
    if stat.S_ISLNK(st.st_mode):
        raise StoreError(Why.LINK_IN_PATH)
    return st


def lstat_path(directory: str, parts: tuple[str, ...]) -> tuple[str, os.stat_result | None, int]:
    """The path of `parts` under `directory`, the lstat of its last component and how many
    components exist; refuses symlinks and files in the middle (400). safe_path adds realpath.

    No realpath: `parts` come from protocol.split_remote_path (no `..`, `.`, empty or NUL
    components) and this function contains no separator in a component, so when no component
    is a symlink the path resolves inside `directory` as long as `directory` itself does —
    which RootCheck verifies (see there).
    """
    path = directory
    st: os.stat_result | None = None
    existing = 0
    missing = False
    for part in parts:
        if os.sep in part or part in ("", ".", ".."):
            raise StoreError(Why.LEAVES_SHARE)
        path = path + os.sep + part
        if missing:
            continue
        st = _lstat_component(path)
        if st is None:
            missing = True
            continue
        existing += 1
    return path, st, existing


def safe_path(directory: Path, parts: tuple[str, ...]) -> Path:
    """The on-disk path of `parts` under `directory`, refusing symlinks and escapes (400):
    lstat_path's checks, then realpath as well, off the small-file path where its cost does
    not count."""
    path, _, _ = lstat_path(os.fspath(directory), parts)
    if not _inside(os.path.realpath(path), directory):
        raise StoreError(Why.LEAVES_SHARE)
    return Path(path)


def folder_exists(directory: Path, parts: tuple[str, ...]) -> bool:
    path = safe_path(directory, parts)
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def ensure_folder(directory: Path, parts: tuple[str, ...], strict: bool) -> Path:
    """The folder `parts`, created with its parents unless `strict` (then 404 if missing)."""
    path = safe_path(directory, parts)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        if strict:
            raise StoreError(Why.NO_PARENT) from None
        try:
            path.mkdir(parents=True, exist_ok=True)
        except FileExistsError as exc:
            raise StoreError(Why.FILE_IN_PATH) from exc
        except NotADirectoryError as exc:
            raise StoreError(Why.FILE_IN_PATH) from exc
        # A symlink could have appeared while the folders were created.
        safe_path(directory, parts)
        return path
    if not stat.S_ISDIR(st.st_mode):
        raise StoreError(Why.NOT_A_FOLDER, protocol.join_remote_path(parts))
    return path


def rename_into(
    directory: Path, parent: tuple[str, ...], name: str, source: Path, strict: bool
) -> int:
    """Move a finished file to its place in the share; returns the old version's size."""
    ensure_folder(directory, parent, strict)
    final = safe_path(directory, (*parent, name))
    try:
        st = os.lstat(final)
    except FileNotFoundError:
        old = 0
    else:
        if stat.S_ISDIR(st.st_mode):
            raise StoreError(Why.IS_A_FOLDER, protocol.join_remote_path((*parent, name)))
        old = st.st_size if stat.S_ISREG(st.st_mode) else 0
    os.replace(source, final)
    return old


def directory_usage(directory: Path) -> int:
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


def resource_fields(parts: tuple[str, ...], st: os.stat_result, guid: str) -> dict[str, str | int]:
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
    """A stable GUID for a path that has no recorded one (folders, files put there by hand):
    uuid.uuid5(_GUID_NAMESPACE, f"{target}\\x00{path}").hex, without the UUID object (~3.6
    against ~1.5 µs; one per folder created, listed or looked at)."""
    name = f"{target}\x00{'/'.join(parts)}".encode()
    digest = hashlib.sha1(_GUID_NAMESPACE_BYTES + name).digest()
    return f"{int.from_bytes(digest[:16]) & _VERSION_5_CLEAR | _VERSION_5_SET:032x}"


def replace_checked(final: str, parent: tuple[str, ...], name: str, partial: str) -> int:
    """Rename into an existing folder; the final name is looked at again right before (it
    may have changed while the body was written), as rename_into does."""
    try:
        st = os.lstat(final)
    except FileNotFoundError:
        old = 0
    except NotADirectoryError as exc:
        raise StoreError(Why.FILE_IN_PATH) from exc
    except OSError as exc:
        raise StoreError(Why.INVALID_PATH, exc.strerror) from exc
    else:
        if stat.S_ISLNK(st.st_mode):
            raise StoreError(Why.LINK_IN_PATH)
        if stat.S_ISDIR(st.st_mode):
            raise StoreError(Why.IS_A_FOLDER, protocol.join_remote_path((*parent, name)))
        old = st.st_size if stat.S_ISREG(st.st_mode) else 0
    os.replace(partial, final)
    return old


def make_folder(
    directory: Path, parent: tuple[str, ...], name: str, strict: bool
) -> os.stat_result:
    """Create the folder `name` in `parent` (parents too unless `strict`); 409 if it exists."""
    ensure_folder(directory, parent, strict)
    path = safe_path(directory, (*parent, name))
    try:
        path.mkdir()
    except FileExistsError:
        raise StoreError(Why.EXISTS) from None
    return os.lstat(path)


def make_folder_in_place(
    directory: str, parent: tuple[str, ...], name: str
) -> os.stat_result | None:
    """make_folder for the common case, without its two realpaths: when every folder of a
    non-empty `parent` exists, create `name` in it and return its lstat (409 if it exists,
    with make_folder's answers for a file in the path or a symbolic link); None when a parent
    is missing or `parent` is the target's folder itself (the caller then takes make_folder).
    `directory` must have passed RootCheck (see lstat_path for why that is enough)."""
    if not parent:
        return None
    parent_path, parent_st, existing = lstat_path(directory, parent)
    if existing < len(parent) or parent_st is None:
        return None
    if not stat.S_ISDIR(parent_st.st_mode):
        raise StoreError(Why.NOT_A_FOLDER, protocol.join_remote_path(parent))
    if os.sep in name or name in ("", ".", ".."):
        raise StoreError(Why.LEAVES_SHARE)
    path = parent_path + os.sep + name
    try:
        os.mkdir(path)
    except FileExistsError:
        # make_folder looks at the name before mkdir: a symbolic link there is a 400
        _lstat_component(path)
        raise StoreError(Why.EXISTS) from None
    return os.lstat(path)


def look_up(directory: Path, parts: tuple[str, ...]) -> os.stat_result:
    """The lstat of a stored file or folder; 404 when neither is there."""
    path = safe_path(directory, parts)
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        raise StoreError(Why.NOTHING_THERE) from None
    if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
        raise StoreError(Why.NOTHING_THERE)
    return st


def scan_folder(
    directory: Path, parts: tuple[str, ...], offset: int, limit: int
) -> tuple[int, list[tuple[str, os.stat_result]]]:
    """How many entries a folder holds, and the names and lstats of one page of them."""
    path = safe_path(directory, parts)
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        raise StoreError(Why.NO_FOLDER) from None
    if not stat.S_ISDIR(st.st_mode):
        raise StoreError(Why.NO_FOLDER)
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


def check_destination(directory: Path, parent: tuple[str, ...], name: str, strict: bool) -> None:
    """Refuse a new file where it cannot go: a missing parent (404 when `strict`), a folder."""
    path = safe_path(directory, (*parent, name))
    if strict and not folder_exists(directory, parent):
        raise StoreError(Why.NO_PARENT)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise StoreError(Why.INVALID_PATH, exc.strerror) from exc
    if stat.S_ISDIR(st.st_mode):
        raise StoreError(Why.IS_A_FOLDER, protocol.join_remote_path((*parent, name)))


def write_small(
    directory: str,
    root: Path,
    partial: str,
    parent: tuple[str, ...],
    name: str,
    body: bytes,
    mtime: int,
    strict: bool,
    verify: Callable[[], bool],
    *,
    recheck: bool = True,
) -> tuple[int, bool]:
    """A whole small file written and renamed into `root` (`directory`: its path as text) in one
    step: the path checked, then `verify` (the integrity check: True when a hash matched),
    then the bytes written to `partial` and renamed. Returns the old version's size and
    what `verify` said. `recheck=False` when nothing else can act between the first look at
    the final name and the rename (on the event loop): that look then also serves for the
    rename, which otherwise looks at the name again (replace_checked)."""
    final, st, existing = lstat_path(directory, (*parent, name))
    if existing < len(parent) and strict:
        raise StoreError(Why.NO_PARENT)
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise StoreError(Why.IS_A_FOLDER, protocol.join_remote_path((*parent, name)))
    verified = verify()
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
            return rename_into(root, parent, name, Path(partial), strict), verified
        if recheck:
            return replace_checked(final, parent, name, partial), verified
        # `st` is the final name's lstat when every component exists (lstat_path), else None;
        # a symbolic link or a folder there was refused above.
        old = st.st_size if st is not None and stat.S_ISREG(st.st_mode) else 0
        os.replace(partial, final)
        return old, verified
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(partial)
        raise


class RootCheck:
    """Refuses (400) a target folder that no longer resolves to itself, cheaply."""

    def __init__(self) -> None:
        self._verified: dict[str, tuple[int, int]] = {}

    def check(self, directory: str) -> None:
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
            if self._verified.get(directory) == ident:
                return
        if os.path.realpath(directory) != directory:
            raise StoreError(Why.LEAVES_SHARE)
        if ident is not None:
            self._verified[directory] = ident


class Partials:
    """The bytes of unfinished sessions, one file per requestId, never visible in a share."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.prefix = str(directory) + os.sep

    def path(self, request_id: str) -> Path:
        return self.directory / request_id

    def create(self, request_id: str) -> None:
        fd = os.open(self.path(request_id), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.close(fd)

    def recover(self, request_id: str, offset: int) -> bool:
        """Cut a partial file back to its recorded offset; False when it lost bytes."""
        path = self.path(request_id)
        try:
            size = os.lstat(path).st_size
        except FileNotFoundError:
            return False
        if size < offset:
            return False
        if size > offset:
            os.truncate(path, offset)
        return True

    def remove(self, request_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path(request_id))

    def remove_orphans(self, known: set[str]) -> None:
        for entry in os.scandir(self.directory):
            if entry.name not in known:
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
