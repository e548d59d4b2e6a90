"""One `bulkdrive upload` job, from settings to exit code.

Resolves the target (a real server, or the embedded emulator when no URL is configured),
opens the resume journal, logs in, runs the tree upload with the chosen reporter, writes the
reports, and turns the outcome into the documented exit code.
"""

from __future__ import annotations

import logging
import secrets
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
from rich.console import Console
from rich.logging import RichHandler

from bulkdrive import errors
from bulkdrive.client import EdgeDriveClient
from bulkdrive.config import Credentials, Secret, Settings, transfer_config
from bulkdrive.journal import (
    FileRecord,
    FileState,
    JobKey,
    Journal,
    default_journal_path,
    read_summary,
)
from bulkdrive.names import InvalidNames
from bulkdrive.progress import make_reporter
from bulkdrive.protocol import join_remote_path, split_remote_path
from bulkdrive.report import (
    FileReportWriter,
    RunSummary,
    check_writable,
    format_bytes,
    write_json_report,
)
from bulkdrive.scheduler import RunPlan, TreeUpload
from bulkdrive.walk import WalkFilters, read_exclude_from

EXIT_INTERRUPTED = 130
EMBEDDED_USER = "bulkdrive"
EMBEDDED_SHARE = "1"
#: Failed files `bulkdrive status` lists; the rest are counted.
STATUS_FAILURES_SHOWN = 20


@dataclass(frozen=True)
class JobRequest:
    source: Path
    settings: Settings
    credentials_from: Callable[[], Credentials]
    dry_run: bool = False
    no_progress: bool = False
    quiet: bool = False
    verbosity: int = 0
    report: Path | None = None
    report_files: Path | None = None
    log_file: Path | None = None


@dataclass(frozen=True)
class Target:
    url: str
    share: str | None
    credentials: Credentials
    journal_url: str  # stable across runs, unlike the embedded emulator's port


def exit_code(summary: RunSummary, run_error: errors.RunFailed | None) -> int:
    if summary.interrupted:
        return EXIT_INTERRUPTED
    if run_error is not None:
        return run_error.exit_code
    return 1 if summary.files.failed else 0


def filters_from(settings: Settings) -> WalkFilters:
    exclude = tuple(settings["exclude"])
    if settings["exclude_from"]:
        exclude += read_exclude_from(Path(settings["exclude_from"]))
    return WalkFilters(
        include=tuple(settings["include"]),
        exclude=exclude,
        min_size=settings["min_size"] or None,
        max_size=settings["max_size"] or None,
        follow_symlinks=settings["follow_symlinks"],
    )


@asynccontextmanager
async def open_target(
    settings: Settings, credentials_from: Callable[[], Credentials], console: Console
) -> AsyncIterator[Target]:
    """The configured server, or an emulator started in this process on 127.0.0.1."""
    if settings["url"]:
        yield Target(settings["url"], settings["share"], credentials_from(), settings["url"])
        return
    from bulkdrive.emulator import EmulatorConfig, Share, User, running_emulator

    data_dir = Path(settings["data_dir"]).resolve()
    password = secrets.token_urlsafe(18)
    config = EmulatorConfig(
        root=data_dir,
        users=(User(EMBEDDED_USER, password),),
        shares=(Share(EMBEDDED_SHARE, "local"),),
    )
    async with running_emulator(config) as emulator:
        share = settings["share"] or EMBEDDED_SHARE
        console.print(
            f"no --url given: uploading to a local emulator at {emulator.base_url}, "
            f"files stored in {data_dir / share}",
            highlight=False,
            soft_wrap=True,
        )
        yield Target(
            emulator.base_url,
            share,
            Credentials(user=EMBEDDED_USER, password=Secret(password)),
            f"embedded:{data_dir}",
        )


async def run_job(request: JobRequest, interrupt: anyio.Event) -> int:
    settings = request.settings
    config = transfer_config(settings)
    filters = filters_from(settings)
    remote_folder = join_remote_path(_remote_parts(settings["to"]))
    console = Console(highlight=False)
    setup_logging(console, request.verbosity, request.log_file)
    for flag, report_path in (
        ("--report", request.report),
        ("--report-files", request.report_files),
    ):
        if report_path is not None:
            try:
                check_writable(report_path)
            except OSError as exc:
                raise errors.ConfigError(
                    f"{flag}: cannot write {report_path}: {exc.strerror or exc}"
                ) from None
    if settings["insecure"]:
        print(
            "bulkdrive: warning: TLS certificate verification is off (--insecure)", file=sys.stderr
        )
    reporter = make_reporter(
        console=console,
        is_terminal=console.is_terminal,
        quiet=request.quiet,
        no_progress=request.no_progress,
        verbosity=request.verbosity,
        stats_interval=settings["stats_interval"],
    )
    plan = RunPlan(
        source=request.source,
        remote_folder=remote_folder,
        filters=filters,
        config=config,
        check_remote=settings["check_remote"],
        dry_run=request.dry_run,
        invalid_names=InvalidNames(settings["invalid_names"]),
    )
    async with AsyncExitStack() as stack:
        target = await stack.enter_async_context(
            open_target(settings, request.credentials_from, console)
        )
        key = JobKey(
            url=target.journal_url,
            share=target.share or "",
            remote_folder=remote_folder,
            source=str(request.source.resolve()),
        )
        journal_path = (
            Path(settings["journal"]).expanduser()
            if settings["journal"]
            else default_journal_path(key)
        )
        journal = await stack.enter_async_context(
            Journal.open(journal_path, key, exclusive=not request.dry_run)
        )
        client: EdgeDriveClient | None = None
        if not request.dry_run or plan.check_remote:
            client = await stack.enter_async_context(
                EdgeDriveClient.connect(
                    target.url, target.credentials, share_id=target.share, config=config
                )
            )
        file_report = None
        if request.report_files is not None:
            file_report = stack.enter_context(FileReportWriter(request.report_files))
        run = TreeUpload(client, plan, reporter=reporter, journal=journal, file_report=file_report)
        async with anyio.create_task_group() as tg:

            async def stop_on_interrupt() -> None:
                await interrupt.wait()
                run.interrupt()

            tg.start_soon(stop_on_interrupt)
            summary = await run.run()
            tg.cancel_scope.cancel()
    if request.report is not None:
        try:
            write_json_report(request.report, summary)
        except OSError as exc:
            print(
                f"bulkdrive: error: cannot write --report {request.report}: {exc.strerror}",
                file=sys.stderr,
            )
            return max(exit_code(summary, run.run_error), 1)
    if request.dry_run:
        stats = run.statistics()
        console.print(
            f"dry run: would upload {stats.would_upload_files} files "
            f"({stats.would_upload_bytes} bytes), skip {summary.files.skipped} files "
            f"({summary.bytes.skipped} bytes); nothing was sent"
        )
    if summary.interrupted:
        print(
            "bulkdrive: interrupted; run the same command again to resume where it stopped",
            file=sys.stderr,
        )
    elif run.run_error is not None:
        error = run.run_error
        print(f"bulkdrive: error: {error} ({error.hint})", file=sys.stderr)
    return exit_code(summary, run.run_error)


def setup_logging(console: Console, verbosity: int, log_file: Path | None) -> None:
    """-vv: protocol detail on the console; --log-file: per-file lines (and -vv detail)."""
    logger = logging.getLogger("bulkdrive")
    logger.handlers.clear()
    logger.propagate = False
    # The reporter shows failures and warnings; without a handler of ours, logging's
    # last-resort handler would print them a second time, raw, on stderr.
    logger.addHandler(logging.NullHandler())
    detail = logging.DEBUG if verbosity >= 2 else logging.INFO
    logger.setLevel(
        detail if log_file is not None else logging.DEBUG if verbosity >= 2 else logging.WARNING
    )
    if log_file is not None:
        try:
            handler: logging.Handler = logging.FileHandler(log_file, encoding="utf-8")
        except OSError as exc:
            raise errors.ConfigError(
                f"--log-file: cannot write {log_file}: {exc.strerror}"
            ) from None
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler.setLevel(detail)
        logger.addHandler(handler)
    if verbosity >= 2:
        # Protocol detail, through the reporter's console so that log lines never tear the
        # live display; per-file lines come from the reporter itself.
        rich_handler = RichHandler(console=console, show_path=False, markup=False)
        rich_handler.setLevel(logging.DEBUG)
        rich_handler.addFilter(logging.Filter("bulkdrive.client"))
        logger.addHandler(rich_handler)


def _remote_parts(folder: str) -> tuple[str, ...]:
    try:
        return split_remote_path(folder)
    except ValueError as exc:
        raise errors.ConfigError(f"--to: {exc}") from None


def print_status(
    console: Console,
    source: Path | None,
    journal_path: str | None,
    url: str | None,
    share: str | None,
    remote_folder: str,
) -> None:
    if journal_path:
        path = Path(journal_path)
    elif source is not None:
        key = JobKey(
            url=url or f"embedded:{Path('bulkdrive-data').resolve()}",
            share=share or (EMBEDDED_SHARE if not url else ""),
            remote_folder=join_remote_path(_remote_parts(remote_folder)),
            source=str(source.resolve()),
        )
        path = default_journal_path(key)
    else:
        raise errors.ConfigError("give --journal PATH, or SOURCE with the job's --url/--share/--to")
    summary = read_summary(path)
    # Paths may hold [brackets]: never read them as markup.
    console.print(f"journal: {path}", markup=False, soft_wrap=True)
    if summary.key is not None:
        console.print(
            f"job: {summary.key.source} → {summary.key.url} share {summary.key.share or '-'} "
            f"folder {summary.key.remote_folder}",
            markup=False,
            soft_wrap=True,
        )
    for state, count in summary.files.items():
        size = summary.bytes.get(state, 0)
        console.print(f"  {state:<8} {count:>10} files {format_bytes(size):>12}")
    console.print(
        f"  {'total':<8} {summary.total_files:>10} files {format_bytes(summary.total_bytes):>12}"
    )
    failed = summary.files.get(FileState.FAILED, 0)
    if failed:
        console.print(f"failures ({failed}):")
        shown = 0
        for record in _failures(path, STATUS_FAILURES_SHOWN):
            shown += 1
            console.print(
                f"  {record.relative}: {record.last_error or 'unknown error'}",
                markup=False,
                soft_wrap=True,
            )
        if failed > shown:
            console.print(f"  … and {failed - shown} more")


def _failures(path: Path, limit: int) -> list[FileRecord]:
    """The first `limit` failed files of a journal: a bounded read, however many failed."""

    async def read() -> list[FileRecord]:
        async with Journal.open(path) as journal:
            return list(journal.failures(limit=limit))

    return anyio.run(read)
