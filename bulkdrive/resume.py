"""The per-file resume policy against the journal, pure: which version of a file the journal
knows, whether an earlier run left it in flight or left another version unfinished, what a
worker is handed to continue it, and the journal records the run writes. The scheduler asks
and applies; tests/test_resume.py drives the whole policy through runs that are cut short.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from bulkdrive.journal import FileRecord, FileState
from bulkdrive.source import LocalContent
from bulkdrive.upload import ResumePoint
from bulkdrive.walk import FileEntry

#: Skip kinds, as the summary counts them.
SKIP_UNCHANGED = "unchanged since the last run"
SKIP_ON_SERVER = "already on the server"


class ReadyFile(NamedTuple):
    """A file handed to a worker."""

    entry: FileEntry
    #: Another version of it was left unfinished: discard that session first.
    stale: bool
    #: Its bytes, when it was small enough to be read ahead with its batch.
    content: LocalContent | None
    #: The session and offset the journal kept of this very version, to continue.
    resume: ResumePoint | None
    #: The block digests the journal kept of that prefix.
    digests: bytes


def same_version(record: FileRecord | None, entry: FileEntry) -> bool:
    return record is not None and (record.size, record.mtime_ns) == (entry.size, entry.mtime_ns)


def was_in_flight(record: FileRecord | None, entry: FileEntry) -> bool:
    """The journal saw this very version of the file start, and not end."""
    return (
        record is not None
        and record.state in (FileState.PENDING, FileState.PARTIAL)
        and (record.size, record.mtime_ns) == (entry.size, entry.mtime_ns)
    )


def is_stale(record: FileRecord | None, entry: FileEntry) -> bool:
    """Another version of the file was left unfinished: the server may hold a session of it."""
    return (
        entry.size > 0
        and record is not None
        and record.state in (FileState.PENDING, FileState.PARTIAL, FileState.FAILED)
        and (record.size, record.mtime_ns) != (entry.size, entry.mtime_ns)
    )


def ready_file(
    entry: FileEntry, stale: bool, content: LocalContent | None, record: FileRecord | None
) -> ReadyFile:
    """What a worker gets: a resume point only for the version the journal saw sent (its
    session, or any session of it when an earlier run's requests are of unknown outcome)."""
    if record is not None and same_version(record, entry):
        resume = None
        if record.request_id or was_in_flight(record, entry):
            # An earlier run sent this version: its session is ours to continue.
            resume = ResumePoint(record.request_id or "", record.offset)
        return ReadyFile(entry, stale, content, resume, record.digests)
    return ReadyFile(entry, stale, content, None, b"")


def journal_record(entry: FileEntry, state: FileState, **fields: Any) -> FileRecord:
    """The journal's record of this version of the file."""
    return FileRecord(
        relative=entry.relative,
        size=entry.size,
        mtime_ns=entry.mtime_ns,
        state=state,
        **fields,
    )
