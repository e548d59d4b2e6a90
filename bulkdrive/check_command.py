"""`bulkdrive check`: prove the result of a migration. Compares the tree SOURCE with the remote
folder through `check.TreeCheck` (the same filters and symbolic-link policy as `upload`), shows
progress, prints the counts and the first differences, and writes --report / --report-files.
Settings, login and errors go through `migration`, as for the other commands."""

from __future__ import annotations

import dataclasses
import json
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import anyio
import click
from rich.console import Console
from rich.table import Table

from bulkdrive import cli, errors
from bulkdrive.check import (
    DIFFERENT,
    CheckPlan,
    CheckSummary,
    Finding,
    Status,
    TreeCheck,
    journal_if_any,
)
from bulkdrive.listing import DEFAULT_CONCURRENCY
from bulkdrive.migration import (
    CONNECTION,
    connected,
    run_command,
    setting_options,
    settings_from,
)
from bulkdrive.report_json import check_writable, write_json_document
from bulkdrive.settings import Settings
from bulkdrive.target import Target, filters_from, job_key, journal_path_of, remote_folder_of

#: Differences listed on the console and in --report; all are counted, and --report-files
#: has a line for every path.
DIFFERENCES_SHOWN = 20
DIFFERENCES_IN_REPORT = 1000


@dataclass(frozen=True)
class CheckRequest:
    source: Path
    settings: Settings
    concurrency: int = DEFAULT_CONCURRENCY
    report: Path | None = None
    report_files: Path | None = None
    progress: bool = True
    quiet: bool = False


@click.command()
@click.argument("source", type=click.Path(path_type=Path))
@setting_options(
    *CONNECTION,
    "share",
    "to",
    "include",
    "exclude",
    "exclude_from",
    "min_size",
    "max_size",
    "follow_symlinks",
    "create_empty_folders",
    "journal",
    "stats_interval",
)
@click.option("--config", "config_file", help="TOML config file.")
@click.option(
    "--checkers",
    type=click.IntRange(min=1, max=64),
    default=DEFAULT_CONCURRENCY,
    show_default=True,
    help="Remote folders listed at once.",
)
@click.option("--report", type=click.Path(path_type=Path), help="Write a JSON summary.")
@click.option(
    "--report-files", type=click.Path(path_type=Path), help="Write one NDJSON line per path."
)
@click.option("--no-progress", is_flag=True, help="No live progress display.")
@click.option("-q", "--quiet", is_flag=True, help="Errors only; the exit code tells the rest.")
@click.option("-v", "--verbose", count=True, help="-vv: a traceback on errors.")
def check(
    source: Path,
    config_file: str | None,
    checkers: int,
    report: Path | None,
    report_files: Path | None,
    no_progress: bool,
    quiet: bool,
    verbose: int,
    **flags: Any,
) -> None:
    """Compare the tree SOURCE with the remote folder --to: files missing there, files that
    differ (size; modified time in whole seconds), files only there.

    The same filters and symbolic-link policy as `upload`, so both mean the same tree.
    Matching files are "verified" when the job's journal holds an upload of that very version
    whose integrity the server checked. With --create-empty-folders, folders are compared too.

    Exit codes: 0 the remote matches; 1 something differs or a remote folder could not be
    read; 2 usage; 3 login, permission or unknown share.
    """
    settings = settings_from(flags, config_file)
    if not source.exists():
        cli._fail(f"source not found: {source}", 2)
    request = CheckRequest(
        source=source,
        settings=settings,
        concurrency=checkers,
        report=report,
        report_files=report_files,
        progress=not (no_progress or quiet),
        quiet=quiet,
    )

    async def work() -> int:
        return await run_check(request)

    run_command(work, verbose)


async def run_check(request: CheckRequest) -> int:
    settings = request.settings
    # The whole tree, whatever --shard a config or the environment sets for uploads.
    filters = dataclasses.replace(filters_from(settings), shard=None)
    remote_folder = remote_folder_of(settings.to)
    for flag, path in (("--report", request.report), ("--report-files", request.report_files)):
        if path is not None:
            try:
                check_writable(path)
            except OSError as exc:
                raise errors.ConfigError(
                    f"{flag}: cannot write {path}: {exc.strerror or exc}"
                ) from None
    plan = CheckPlan(
        source=request.source,
        remote_folder=remote_folder,
        filters=filters,
        folders=settings.create_empty_folders,
        concurrency=request.concurrency,
    )
    listed: list[Finding] = []
    console = Console(highlight=False, emoji=False)
    async with AsyncExitStack() as stack:
        client, target = await stack.enter_async_context(
            connected(settings, concurrency=request.concurrency)
        )
        journal_path = journal_path_of(settings, job_key(target, remote_folder, request.source))
        journal = await stack.enter_async_context(journal_if_any(journal_path))
        ndjson: TextIO | None = None
        if request.report_files is not None:
            ndjson = stack.enter_context(request.report_files.open("w", encoding="utf-8"))

        def on_finding(finding: Finding) -> None:
            if ndjson is not None:
                ndjson.write(json.dumps(finding.to_json(), ensure_ascii=False) + "\n")
            if finding.status in DIFFERENT and len(listed) < DIFFERENCES_IN_REPORT:
                listed.append(finding)

        tree = TreeCheck(client, plan, journal=journal)
        try:
            async with anyio.create_task_group() as tg:
                if request.progress:
                    tg.start_soon(_show_progress, tree, settings.stats_interval)
                summary = await tree.run(on_finding)
                tg.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            raise errors.alone(group) from None
    if not request.quiet:
        _print_summary(console, request.source, plan, target, summary, listed)
    if request.report is not None:
        document = {
            "source": str(request.source),
            "remote_folder": remote_folder,
            "share": target.share or "",
            "match": summary.matches,
            "remote_folder_missing": summary.remote_missing,
            "counts": summary.counts(),
            "differences_total": summary.differences,
            "differences": [f.to_json() for f in listed],
            "differences_listed": len(listed),
            "unlisted_folders": [
                {"folder": u.folder, "reason": u.reason} for u in summary.unlisted
            ],
            "seconds": round(summary.seconds, 3),
        }
        try:
            write_json_document(request.report, document)
        except OSError as exc:
            cli._fail(f"cannot write --report {request.report}: {exc.strerror or exc}", 1)
    return 0 if summary.matches else 1


async def _show_progress(tree: TreeCheck, interval: float) -> None:
    """A live line on a terminal; off one, a plain line every `interval` seconds."""
    console = Console(stderr=True, highlight=False, emoji=False)

    def line() -> str:
        s = tree.statistics()
        return (
            f"checking: {s.local_files} local files · {s.remote_folders_listed} remote folders "
            f"listed ({s.remote_folders_waiting} to go), {s.remote_entries} entries · "
            f"{s.compared} compared"
        )

    if console.is_terminal:
        with console.status(line()) as status:
            while True:
                await anyio.sleep(0.2)
                status.update(line())
    while interval > 0:
        await anyio.sleep(interval)
        console.print(line(), soft_wrap=True)


def _print_summary(
    console: Console,
    source: Path,
    plan: CheckPlan,
    target: Target,
    summary: CheckSummary,
    listed: list[Finding],
) -> None:
    share = f"share {target.share}" if target.share else "your drive"
    console.print(f"check: {source} against {plan.remote_folder} on {share}", markup=False)
    if summary.remote_missing:
        console.print(f"the remote folder {plan.remote_folder} does not exist", markup=False)
    table = Table("", "files", *(["folders"] if plan.folders else []), box=None)
    for status in Status:
        row = [str(status), str(summary.files[status])]
        if plan.folders:
            row.append("-" if status in (Status.VERIFIED, Status.SKIPPED) else "")
            row[-1] = row[-1] or str(summary.folders[status])
        table.add_row(*row)
    console.print(table)
    for finding in listed[:DIFFERENCES_SHOWN]:
        name = finding.relative + ("/" if finding.folder else "")
        console.print(
            f"  {finding.status:<11} {name}  ({finding.reason})", markup=False, soft_wrap=True
        )
    if summary.differences > min(len(listed), DIFFERENCES_SHOWN):
        more = summary.differences - min(len(listed), DIFFERENCES_SHOWN)
        console.print(f"  … and {more} more (--report-files lists every path)")
    for failure in summary.unlisted:
        console.print(f"cannot list {failure.folder}: {failure.reason}", markup=False)
    if summary.matches:
        console.print(f"the remote matches ({summary.seconds:.1f}s)")
    else:
        unlisted = (
            f", {summary.unlisted_count} remote folders could not be listed"
            if summary.unlisted_count
            else ""
        )
        console.print(f"{summary.differences} differences{unlisted} ({summary.seconds:.1f}s)")
