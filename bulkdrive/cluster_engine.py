"""`--cluster`, the coordinator's engine: a batch of the run's files out as Dask tasks, each
file's end back, replayed into the run's accounting.

A batch the run hands over (up to 512 files, their in-flight marks already committed) goes
out as one task, or as a few when it holds more than `batch_bytes` bytes or when the run has
just begun (the first tasks carry 16, 32, 64… files, so that every worker starts at once),
or toward the end of the tree (each task then carries its share of the files left, so that
the workers end together).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import anyio

from bulkdrive import errors
from bulkdrive.cluster_replay import replay
from bulkdrive.cluster_wire import Batch, BatchReport, FileReport, batch_key, marker_name
from bulkdrive.engine_batches import EngineFile, EventsOf
from bulkdrive.outcomes import Completed
from bulkdrive.progress import Reporter
from bulkdrive.report import RunSummary, WorkerFigures

#: A task holds at most this many files, or this many bytes (a larger file goes alone); past
#: START_TASK_FILES, only while it takes a worker about TASK_SECONDS at the pace its last
#: tasks went. A task costs the coordinator and Dask's scheduler the same messages whatever
#: it holds (on the coordinator benchmark, ~10 µs per file at 512 files a task, a quarter of
#: its event loop), while short tasks keep the run's end even across the workers. Real
#: uploads of small files (~350 files/s a task, two tasks a worker, 5 ms away) keep 512.
BATCH_FILES = 2048
BATCH_BYTES = 1 << 30
TASK_SECONDS = 1.0
START_TASK_FILES = 512
#: The first tasks are smaller (16, 32, 64, ... files) so that every worker gets work at
#: once, even from a small tree.
FIRST_BATCH_FILES = 16
#: Toward the end of the tree a task carries its share of the files still to go out (these
#: included) over the tasks the workers run at once (half the batches out), down to
#: TAIL_FILES (guided self-scheduling): the last tasks to start are short, so the worker that
#: takes one ends about when the others end. With tasks of 512 small files (~1.4 s each
#: against a 5 ms server, `local:2`) one worker ran the last ones alone for 0.04-0.86 s of a
#: 6-7 s run. A task costs the coordinator several ms whatever it holds (Dask's messages, the
#: rerun marker): a share over all the batches out (80 tasks for 10 000 files, not 25) cost
#: ~0.4 CPU s there.
TAIL_FILES = 32
#: Dask runs a task again this many times if it raises (a worker that dies is Dask's own
#: business: the scheduler reruns its tasks elsewhere).
TASK_RETRIES = 2


@dataclass
class _Worker:
    files: int = 0
    bytes: int = 0
    batches: int = 0
    first: float = float("inf")
    last: float = 0.0


class ClusterEngine:
    """The run's `FileEngine` for `--cluster`: `batches` of the run's batches out at once."""

    def __init__(
        self,
        dask: Any,
        run_id: str,
        *,
        in_flight: int,
        path_map: tuple[str, str] | None = None,
        task: Callable[..., Any] | None = None,
        reporter: Reporter | None = None,
        verbose: bool = False,
        batch_files: int = BATCH_FILES,
        batch_bytes: int = BATCH_BYTES,
    ) -> None:
        self._dask = dask
        self._run_id = run_id
        self.batches = max(1, in_flight)
        #: A file's path on the workers, from its path here.
        self._worker_path = _worker_paths(path_map)
        #: The Dask task that uploads a batch (a benchmark gives a stub).
        if task is None:
            from bulkdrive.cluster_worker import upload_batch

            task = upload_batch
        self._task = task
        self._reporter = reporter
        self._verbose = verbose
        #: The most files a task holds.
        self.most_batch_files = batch_files
        self._batch_bytes = batch_bytes
        #: Files per task now (see TASK_SECONDS), and the workers' seconds per file.
        self._task_files = min(START_TASK_FILES, batch_files)
        self._seconds_per_file: float | None = None
        self._tasks = 0
        self._workers: dict[str, _Worker] = {}
        self._reruns = 0

    # --- FileEngine ----------------------------------------------------------------------

    async def upload_batch(
        self, files: Sequence[EngineFile], events: EventsOf, left: int | None = None
    ) -> list[Completed | Exception]:
        results: list[Completed | Exception] = []
        most = self._task_files
        if left is not None and files:
            # In equal pieces: 512 files at most 500 a task go as 256 and 256, not 500 and 12.
            tasks = -(-len(files) // self.tail_task_files(len(files) + left))
            most = -(-len(files) // tasks)
        pieces = list(self._pieces(files, most))
        reports: list[tuple[FileReport, ...] | Exception] = [()] * len(pieces)

        async def one(index: int, piece: Sequence[EngineFile]) -> None:
            reports[index] = await self._run_task(piece)

        async with anyio.create_task_group() as tg:
            for index, piece in enumerate(pieces):
                tg.start_soon(one, index, piece)
        for piece, report in zip(pieces, reports, strict=True):
            if isinstance(report, Exception):
                results += [report] * len(piece)
                continue
            if len(report) != len(piece):
                raise ValueError(f"a report of {len(report)} files for a task of {len(piece)}")
            if not any(not r.ok or r.events or r.already_there for r in report):
                # Nothing to replay, the common case: each file that completed is told its
                # end only (its block digests serve only to continue an unfinished one).
                results += report
                continue
            for file, file_report in zip(piece, report, strict=True):
                if file_report.ok and not (file_report.events or file_report.already_there):
                    # Nothing to replay, the common case: a file that completed is told its
                    # end only (its block digests serve only to continue an unfinished one).
                    results.append(file_report)
                    continue
                try:
                    result: Completed | Exception = replay(
                        file_report, events(len(results)), file.entry.size
                    )
                except Exception as exc:  # the file's error, as the worker's upload ended
                    result = exc
                results.append(result)
        return results

    def summarize(self, summary: RunSummary) -> RunSummary:
        workers = tuple(
            WorkerFigures(
                address=address,
                files=w.files,
                bytes=w.bytes,
                seconds=max(0.0, w.last - w.first),
                batches=w.batches,
            )
            for address, w in sorted(self._workers.items())
        )
        return dataclasses.replace(summary, workers=workers)

    @property
    def batch_files(self) -> int:
        """The run's next batch: a task's files at the workers' pace (a batch holds one task,
        or the first few smaller ones), so that the batches out are the tasks out."""
        return self._task_files

    def tail_task_files(self, left: int) -> int:
        """A task's files when `left` files of the tree are still to go out (these included):
        their share of the tasks the workers run at once, between TAIL_FILES and
        `batch_files`."""
        return min(self._task_files, max(TAIL_FILES, -(-left // self.tasks_at_once)))

    @property
    def tasks_at_once(self) -> int:
        """Tasks the workers run at once: half the batches out (`cluster.batches_out`)."""
        return max(1, self.batches // 2)

    def statistics(self) -> dict[str, int]:
        return {"batches": self._tasks, "reruns": self._reruns, "workers": len(self._workers)}

    # --- tasks ---------------------------------------------------------------------------

    def _pieces(self, files: Sequence[EngineFile], most: int) -> list[Sequence[EngineFile]]:
        """The tasks a batch goes out as: bounded by count (`most`, and smaller at first) and
        bytes."""
        pieces: list[Sequence[EngineFile]] = []
        start, size = 0, 0
        limit = self._first_limit(0, most)
        for index, file in enumerate(files):
            count = index - start
            if count and (count >= limit or size + file.entry.size > self._batch_bytes):
                pieces.append(files[start:index])
                start, size = index, 0
                limit = self._first_limit(len(pieces), most)
            size += file.entry.size
        if start < len(files):
            pieces.append(files[start:])
        return pieces

    def _first_limit(self, pieces_before: int, most: int) -> int:
        return min(most, FIRST_BATCH_FILES << min(self._tasks + pieces_before, 16))

    def _paced(self, report: BatchReport) -> None:
        """The files per task from the pace of the tasks so far: a moving average of the
        worker's seconds per file (the time its task took, shared with the tasks beside it)."""
        files = len(report.files)
        if not files:
            return
        pace = max(0.0, report.ended - report.started) / files
        last = self._seconds_per_file
        pace = pace if last is None else 0.7 * last + 0.3 * pace
        self._seconds_per_file = pace
        most = self.most_batch_files
        fit = most if pace <= 0 else int(TASK_SECONDS / pace)
        self._task_files = max(min(START_TASK_FILES, most), min(most, fit))

    async def _run_task(self, piece: Sequence[EngineFile]) -> tuple[FileReport, ...] | Exception:
        """One Dask task: its files' reports, or why the cluster could not run it."""
        self._tasks += 1
        batch_id = self._tasks
        worker_path = self._worker_path
        batch = Batch(
            [  # in BatchFile's order
                (worker_path(entry[0]), entry[2], entry[3], folder, name, resume, digests)
                for entry, folder, name, resume, digests in piece
            ]
        )
        future = None
        try:
            future = self._dask.submit(
                self._task,
                self._run_id,
                batch_id,
                batch,
                key=batch_key(self._run_id, batch_id),
                retries=TASK_RETRIES,
                pure=False,
            )
            report: BatchReport = await future
        except Exception as exc:  # the cluster could not run the batch: its files fail
            return errors.RetriesExhausted(
                f"the cluster could not upload its batch: {type(exc).__name__}: {exc}"
            )
        finally:
            if future is not None:
                future.release()
        with contextlib.suppress(Exception):
            await self._clear_marker(batch_id)
        self._record(report)
        self._paced(report)
        return report.files

    async def _clear_marker(self, batch_id: int) -> None:
        from distributed import Event

        marker: Any = Event(  # type: ignore[no-untyped-call]
            marker_name(self._run_id, batch_id), client=self._dask
        )
        await marker.clear()

    def _record(self, report: BatchReport) -> None:
        worker = self._workers.setdefault(report.worker, _Worker())
        worker.files += len(report.files)
        worker.bytes += report.accepted
        worker.batches += 1
        worker.first = min(worker.first, report.started)
        worker.last = max(worker.last, report.ended)
        if report.rerun:
            self._reruns += 1
        if self._reporter is not None and self._verbose:
            self._reporter.message(
                f"worker {report.worker}: {len(report.files)} files, {report.accepted} bytes "
                f"in {report.ended - report.started:.2f}s"
                + (" (a batch run again)" if report.rerun else "")
            )


def _worker_paths(path_map: tuple[str, str] | None) -> Callable[[str], str]:
    """The files' paths on the workers: SRC as the walk spelled it (maybe relative to the
    coordinator's folder) becomes `--worker-path`, or else SRC's absolute path. The walk's
    paths are SRC, a separator unless SRC ends with one, then the path in SRC."""
    if path_map is None:
        return os.path.abspath
    source, prefix = path_map
    start = len(source)
    if source[-1:] in ("/", "\\"):  # SRC given as "src/": "src/a" leaves "a"
        prefix += os.sep
    return lambda local_path: prefix + local_path[start:]
