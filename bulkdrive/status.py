"""`bulkdrive status`: a job's progress read from its resume journal (or the sum of several):
files and bytes by state, what the server holds of partial files, the last run's skips and
the first failures. Reads only; bounded however many files the journal holds."""

from __future__ import annotations

from pathlib import Path

import anyio
from rich.console import Console

from bulkdrive import errors
from bulkdrive.journal import (
    FileRecord,
    FileState,
    JobKey,
    Journal,
    default_journal_path,
    read_held,
    read_summary,
)
from bulkdrive.report import format_bytes
from bulkdrive.shard import Shard
from bulkdrive.target import EMBEDDED_SHARE, job_journal_path, remote_folder_of

#: Failed files `bulkdrive status` lists; the rest are counted.
STATUS_FAILURES_SHOWN = 20


def print_status(
    console: Console,
    source: Path | None,
    journal_paths: tuple[str, ...],
    url: str | None,
    share: str | None,
    remote_folder: str,
    shards: int | None = None,
) -> None:
    """One job's journal, or the sum of several (`--shards N`: the N shards' default journals;
    or `--journal` given more than once)."""
    paths = [Path(p) for p in journal_paths]
    if not paths and source is not None:
        key = JobKey(
            url=url or f"embedded:{Path('bulkdrive-data').resolve()}",
            share=share or (EMBEDDED_SHARE if not url else ""),
            remote_folder=remote_folder_of(remote_folder),
            source=str(source.resolve()),
        )
        if shards is None:
            paths = [default_journal_path(key)]
        else:
            paths = [job_journal_path(key, Shard(k, shards)) for k in range(shards)]
    if not paths:
        raise errors.ConfigError("give --journal PATH, or SOURCE with the job's --url/--share/--to")
    summaries = [read_summary(path) for path in paths]
    for path, summary in zip(paths, summaries, strict=True):
        # Paths may hold [brackets]: never read them as markup.
        console.print(f"journal: {path}", markup=False, soft_wrap=True)
        if summary.key is not None and (len(paths) == 1 or path == paths[0]):
            console.print(
                f"job: {summary.key.source} → {summary.key.url} share {summary.key.share or '-'} "
                f"folder {summary.key.remote_folder}",
                markup=False,
                soft_wrap=True,
            )
    files: dict[FileState, int] = {}
    sizes: dict[FileState, int] = {}
    for summary in summaries:
        for state, count in summary.files.items():
            files[state] = files.get(state, 0) + count
            sizes[state] = sizes.get(state, 0) + summary.bytes.get(state, 0)
    if len(paths) > 1:
        console.print(f"sum of {len(paths)} journals:")
    for state, count in files.items():
        console.print(f"  {state:<8} {count:>10} files {format_bytes(sizes[state]):>12}")
    total_files = sum(s.total_files for s in summaries)
    total_bytes = sum(s.total_bytes for s in summaries)
    console.print(f"  {'total':<8} {total_files:>10} files {format_bytes(total_bytes):>12}")
    _print_held(console, paths)
    skips: dict[str, int] = {}
    for summary in summaries:
        for kind, count in summary.last_run_skips.items():
            skips[kind] = skips.get(kind, 0) + count
    if skips:
        counted = ", ".join(f"{count} {kind}" for kind, count in sorted(skips.items()))
        console.print(f"last run skipped: {counted}", markup=False, soft_wrap=True)
    failed = files.get(FileState.FAILED, 0)
    if failed:
        console.print(f"failures ({failed}):")
        shown = 0
        for path in paths:
            for record in _failures(path, STATUS_FAILURES_SHOWN - shown):
                shown += 1
                console.print(
                    f"  {record.relative}: {record.last_error or 'unknown error'}",
                    markup=False,
                    soft_wrap=True,
                )
        if failed > shown:
            console.print(f"  … and {failed - shown} more")


def _print_held(console: Console, paths: list[Path]) -> None:
    """Partial files: how much of each the server holds, from the journal."""
    held = [read_held(path, STATUS_FAILURES_SHOWN) for path in paths]
    count = sum(h.files for h in held)
    if not count:
        return
    console.print(
        f"partial ({count}): the server holds {format_bytes(sum(h.held for h in held))} "
        f"of {format_bytes(sum(h.size for h in held))}; a re-run continues from there",
        soft_wrap=True,
    )
    shown = [record for h in held for record in h.first][:STATUS_FAILURES_SHOWN]
    for record in shown:
        console.print(
            f"  {record.relative}: {format_bytes(record.offset)} of "
            f"{format_bytes(record.size)} held",
            markup=False,
            soft_wrap=True,
        )
    if count > len(shown):
        console.print(f"  … and {count - len(shown)} more")


def _failures(path: Path, limit: int) -> list[FileRecord]:
    """The first `limit` failed files of a journal: a bounded read, however many failed."""

    async def read() -> list[FileRecord]:
        async with Journal.open(path) as journal:
            return list(journal.failures(limit=limit))

    return anyio.run(read)
