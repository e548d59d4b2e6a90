"""The journals under the state folder: what `bulkdrive journals` lists and prunes.

Every job leaves its resume journal (also a failed or interrupted one), so they pile up. A
journal whose upload is running is held by that upload (an exclusive flock on PATH.lock, see
`journal`); pruning takes the same lock before it deletes anything, so it never deletes the
journal of a live run, and no run can start on a journal while it is being deleted.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from bulkdrive.errors import ConfigError
from bulkdrive.journal import FileState, JobKey, read_summary, state_dir

#: Files that belong to one journal, besides the database itself.
_COMPANIONS = ("-wal", "-shm", ".lock")

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$", re.IGNORECASE)


def parse_age(text: str) -> float:
    """`30d`, `12h`, `90m`, `45s`, `2w` → seconds."""
    match = _DURATION.match(text)
    if match is None:
        raise ConfigError(
            f"--older-than: expected a duration such as 30d, 12h or 90m, not {text!r}"
        )
    return float(match.group(1)) * _UNITS[match.group(2).lower()]


@dataclass(frozen=True)
class JournalInfo:
    path: Path
    key: JobKey | None  # None: not a journal of a job, or unreadable (see `error`)
    last_run: float  # UNIX seconds: the last time a run opened or wrote it
    files: Mapping[FileState, int]
    total_files: int
    total_bytes: int
    size_on_disk: int  # the database with its WAL, shared-memory and lock files
    running: bool  # an upload holds it now
    error: str = ""

    @property
    def done(self) -> int:
        return self.files.get(FileState.DONE, 0)

    @property
    def failed(self) -> int:
        return self.files.get(FileState.FAILED, 0)

    @property
    def url(self) -> str:
        """The job's server, without any user:password a URL might carry."""
        if self.key is None:
            return ""
        parts = urlsplit(self.key.url)
        if parts.username is None and parts.password is None:
            return self.key.url
        host = parts.hostname or ""
        netloc = f"{host}:{parts.port}" if parts.port else host
        return urlunsplit(parts._replace(netloc=netloc))


def journals_folder() -> Path:
    return state_dir() / "journals"


def _files_of(path: Path) -> list[Path]:
    return [path, *(path.with_name(path.name + suffix) for suffix in _COMPANIONS)]


@contextlib.contextmanager
def _held(path: Path) -> Iterator[bool]:
    """Hold the journal's lock while the block runs; False when a run holds it."""
    try:
        import fcntl
    except ImportError:  # no flock (Windows): runs take no lock either
        yield True
        return
    try:
        fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR)
    except FileNotFoundError:
        yield True  # never locked: no run has it
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def describe(path: Path) -> JournalInfo:
    sizes = 0
    last = 0.0
    for part in _files_of(path):
        with contextlib.suppress(OSError):
            st = part.stat()
            sizes += st.st_size
            last = max(last, st.st_mtime)
    with _held(path) as free:
        running = not free
    try:
        summary = read_summary(path)
    except ConfigError as exc:
        return JournalInfo(path, None, last, {}, 0, 0, sizes, running, error=str(exc))
    return JournalInfo(
        path=path,
        key=summary.key,
        last_run=max(last, summary.updated_at),
        files=summary.files,
        total_files=summary.total_files,
        total_bytes=summary.total_bytes,
        size_on_disk=sizes,
        running=running,
    )


def inventory(folder: Path) -> Iterator[JournalInfo]:
    """The journals in `folder`, by name; one at a time, however many there are."""
    try:
        names = sorted(p.name for p in os.scandir(folder) if p.name.endswith(".sqlite"))
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ConfigError(f"cannot read the journal folder {folder}: {exc.strerror}") from None
    for name in names:
        yield describe(folder / name)


@dataclass(frozen=True)
class PruneOutcome:
    info: JournalInfo
    removed: bool  # deleted now (False in a dry run: it would be)
    reason: str  # why it was kept, when it was


def prune(
    folder: Path, older_than: float, *, now: float, dry_run: bool = False
) -> Iterator[PruneOutcome]:
    """Delete the journals last run more than `older_than` seconds before `now`, except those
    a running upload holds and files that are not readable journals of a job."""
    for info in inventory(folder):
        if now - info.last_run < older_than:
            continue
        if info.key is None:
            yield PruneOutcome(info, False, f"kept: not a readable journal ({info.error})")
            continue
        with _held(info.path) as free:
            if not free:
                yield PruneOutcome(info, False, "kept: an upload is using it")
                continue
            if not dry_run:
                try:
                    # The lock file last: while it is held, no run can start on this journal.
                    for part in _files_of(info.path):
                        with contextlib.suppress(FileNotFoundError):
                            part.unlink()
                except OSError as exc:
                    yield PruneOutcome(info, False, f"kept: cannot delete it: {exc.strerror}")
                    continue
        yield PruneOutcome(info, not dry_run, "")
