"""`--cluster`: what travels between the coordinator and the workers. Plain data, no Dask.

The per-file records are named tuples: a batch of 512 pickles as 512 tuples (a dataclass
with slots pickles through `dataclasses.fields()` per object, several times the cost)."""

from __future__ import annotations

import pickle
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


class Batch:
    """A task's files. Not a list: Dask walks a task's list and tuple arguments element by
    element looking for futures (a third of the coordinator's time with 512-file lists).

    It travels as one bytes object, its files as plain tuples (`pickle` in C end to end):
    Dask's pickler calls back into Python for each object that is not a builtin (each
    BatchFile), and a task is pickled by the client, then unpickled and pickled again by a
    scheduler in the coordinator's process (`--cluster local:N`). Unpickled, a batch keeps
    its bytes and builds its files only when a worker reads them.

    Made of plain tuples in `BatchFile`'s order (what the coordinator builds: no named tuple
    per file to build, then take apart again to pickle) or of `BatchFile`s."""

    __slots__ = ("_files", "_packed", "_plain")

    def __init__(self, files: list[tuple[Any, ...]] | tuple[BatchFile, ...]) -> None:
        self._plain: list[tuple[Any, ...]] | None = (
            files if isinstance(files, list) else [tuple(file) for file in files]
        )
        self._files: tuple[BatchFile, ...] | None = None
        self._packed: bytes | None = None

    @classmethod
    def _unpickle(cls, packed: bytes) -> Batch:
        batch = cls.__new__(cls)
        batch._files, batch._plain, batch._packed = None, None, packed
        return batch

    @property
    def files(self) -> tuple[BatchFile, ...]:
        if self._files is None:
            if self._plain is None:
                assert self._packed is not None
                self._plain = pickle.loads(self._packed)
            self._files = tuple(map(BatchFile._make, self._plain))
        return self._files

    def __reduce__(self) -> tuple[Any, ...]:
        if self._packed is None:
            assert self._plain is not None
            self._packed = pickle.dumps(self._plain, protocol=pickle.HIGHEST_PROTOCOL)
        return (Batch._unpickle, (self._packed,))


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


class BatchReport:
    """A batch's end on a worker: each file's report, in the batch's order.

    It travels as a `Batch` does: its files as one bytes object of plain tuples (pickled by
    the worker, passed through by a scheduler, read by the coordinator; Dask's pickler
    called back into Python for each `FileReport`, and unpickling one called its class)."""

    __slots__ = ("_files", "_packed", "accepted", "ended", "rerun", "started", "worker")

    def __init__(
        self,
        *,
        worker: str,
        files: tuple[FileReport, ...],
        started: float,  # the worker's clock
        ended: float,
        accepted: int,  # bytes the server accepted from this batch
        rerun: bool,
    ) -> None:
        self.worker = worker
        self._files: tuple[FileReport, ...] | None = files
        self._packed: bytes | None = None
        self.started = started
        self.ended = ended
        self.accepted = accepted
        self.rerun = rerun

    @property
    def files(self) -> tuple[FileReport, ...]:
        if self._files is None:
            assert self._packed is not None
            self._files = tuple(map(FileReport._make, pickle.loads(self._packed)))
        return self._files

    @classmethod
    def _unpickle(
        cls, worker: str, packed: bytes, started: float, ended: float, accepted: int, rerun: bool
    ) -> BatchReport:
        report = cls.__new__(cls)
        report.worker, report.started, report.ended = worker, started, ended
        report.accepted, report.rerun = accepted, rerun
        report._files, report._packed = None, packed
        return report

    def __reduce__(self) -> tuple[Any, ...]:
        if self._packed is None:
            assert self._files is not None
            plain = [tuple(file) for file in self._files]
            self._packed = pickle.dumps(plain, protocol=pickle.HIGHEST_PROTOCOL)
        args = (self.worker, self._packed, self.started, self.ended, self.accepted, self.rerun)
        return (BatchReport._unpickle, args)


def plugin_name(run_id: str) -> str:
    """The name of the run's worker plugin (its access), the one thing a task names."""
    return f"bulkdrive-access-{run_id}"


def batch_key(run_id: str, batch_id: int) -> str:
    """A batch's Dask task key (the worker looks its task's state up by it)."""
    return f"bulkdrive-batch-{run_id}-{batch_id}"


def marker_name(run_id: str, batch_id: int) -> str:
    """The Dask Event a batch sets when it starts: found set, the batch is run again."""
    return f"bulkdrive-{run_id}-{batch_id}"
