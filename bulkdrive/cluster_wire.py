"""`--cluster`: what travels between the coordinator and the workers. Plain data, no Dask.

The per-file records are named tuples: a batch of 512 pickles as 512 tuples (a dataclass
with slots pickles through `dataclasses.fields()` per object, several times the cost)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from bulkdrive.config import Credentials, TransferConfig
from bulkdrive.session import ResumePoint

CANCELLED = "its batch was cancelled on the worker (the coordinator went away)"


@dataclass(frozen=True)
class WorkerAccess:
    """What a worker needs to reach the server: broadcast once per run, never the password
    (`Secret` values show as ******** in any repr or log)."""

    run_id: str
    url: str
    share_id: str | None
    credentials: Credentials
    config: TransferConfig


class BatchFile(NamedTuple):
    path: str  # as the workers see it (`--worker-path`)
    size: int
    mtime_ns: int
    remote_folder: str
    remote_name: str
    resume: ResumePoint | None
    known_digests: bytes


@dataclass(frozen=True)
class Batch:
    """A task's files. Not a list: Dask walks a task's list and tuple arguments element by
    element looking for futures (a third of the coordinator's time with 512-file lists)."""

    files: tuple[BatchFile, ...]


class FileReport(NamedTuple):
    """One file's outcome on a worker, with what the run needs to account for it: the
    server's offsets as they moved (turning points only), resumes, retries, block digests."""

    ok: bool
    file_guid: str = ""
    attempts: int = 1
    resumes: int = 0
    restarts: int = 0
    bytes_sent: int = 0
    integrity_verified: bool = False
    request_id: str | None = None
    #: ("resumed", offset) | ("offset", offset) | ("retrying", class, message, attempt, wait)
    events: tuple[tuple[Any, ...], ...] = ()
    digests: bytes = b""
    error_class: str = ""
    error_message: str = ""
    already_there: bool = False


@dataclass(frozen=True, slots=True)
class BatchReport:
    worker: str
    files: tuple[FileReport, ...]
    started: float  # the worker's clock
    ended: float
    accepted: int  # bytes the server accepted from this batch
    rerun: bool


def plugin_name(run_id: str) -> str:
    """The name of the run's worker plugin (its access), the one thing a task names."""
    return f"bulkdrive-access-{run_id}"


def marker_name(run_id: str, batch_id: int) -> str:
    """The Dask Event a batch sets when it starts: found set, the batch is run again."""
    return f"bulkdrive-{run_id}-{batch_id}"
