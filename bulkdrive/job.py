"""One `bulkdrive upload` job, from settings to exit code.

Opens the job's target (`target`: a real server, or the embedded emulator when no URL is
configured) and its resume journal, logs in, runs the tree upload with the chosen reporter,
writes the reports, and turns the outcome into the documented exit code.
"""

from __future__ import annotations

import logging
import sys
import time
import traceback
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import anyio
from rich.console import Console

from bulkdrive import errors
from bulkdrive.client import EdgeDriveClient
from bulkdrive.config import Credentials
from bulkdrive.eventlog import json_screen, setup_logging
from bulkdrive.journal import Journal
from bulkdrive.names import InvalidNames
from bulkdrive.progress import NullReporter, make_reporter
from bulkdrive.report import FileReportWriter, RunSummary, RunTally
from bulkdrive.report_json import check_writable, summary_to_json, write_json_report
from bulkdrive.scheduler import RunPlan, SchedulerStatistics, TreeUpload
from bulkdrive.settings import Settings, transfer_config
from bulkdrive.target import (
    check_target,
    filters_from,
    job_key,
    journal_path_of,
    open_target,
    remote_folder_of,
)

log = logging.getLogger("bulkdrive.job")


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
    log_format: str = "text"


def error_line(error: BaseException) -> str:
    """The one line a run-stopping error is told in, on stderr."""
    if isinstance(error, errors.BulkdriveError):
        hint = f" ({error.hint})" if error.hint else ""
        return f"bulkdrive: error: {error}{hint}"
    return (
        f"bulkdrive: error: internal error: {type(error).__name__}: {error} "
        "(run with -vv for the traceback and please report it)"
    )


def summary_without_run(
    elapsed: float, *, error: BaseException | None = None, interrupted: bool = False
) -> RunSummary:
    """The summary of a run that ended before any file was looked at (bad settings, login
    refused, unknown share, interrupted while connecting): zeros, and why."""
    return RunTally().summary(elapsed, run_error=error, interrupted=interrupted)


def conclude(summary: RunSummary, report: Path | None, *, logged: bool = True) -> int:
    """Every exit of `bulkdrive upload` ends here: the summary as the last lines of
    --log-file, the --report, and the exit code, which is the report's. (`logged=False`
    before logging is set up: the settings themselves were wrong.)"""
    if logged:
        log_summary(summary)
    if report is not None:
        try:
            write_json_report(report, summary)
        except OSError as exc:
            print(
                f"bulkdrive: error: cannot write --report {report}: {exc.strerror or exc}",
                file=sys.stderr,
            )
            return max(summary.exit_code, errors.EXIT_FILES_FAILED)
    return summary.exit_code


def log_summary(summary: RunSummary) -> None:
    """The end of --log-file: what the table and the report say, in two lines."""
    files, sizes = summary.files, summary.bytes
    state = (
        "stopped"
        if summary.run_error is not None
        else "interrupted"
        if summary.interrupted
        else "finished"
    )
    if summary.run_error is not None:
        error = summary.run_error
        log.error("run stopped: %s (%s)", error.reason, error.exit_class)
    log.info(
        "summary: upload %s; files: %d uploaded, %d resumed, %d skipped, %d failed, %d total; "
        "bytes: %d sent of %d; elapsed %.3fs; retries %d, resumes %d; exit code %d",
        state,
        files.uploaded,
        files.resumed,
        files.skipped,
        files.failed,
        files.total,
        sizes.sent,
        sizes.total,
        summary.elapsed_seconds,
        summary.retries,
        summary.resumes,
        summary.exit_code,
        extra={"event": "summary", "fields": summary_to_json(summary)},
    )


FILTERED = "left out by filters"  # with the skip kinds in the journal's last-run counts


async def run_job(request: JobRequest, interrupt: anyio.Event) -> int:
    """The whole job, and its exit code. Whatever ends it (the last file, a refused login, an
    unknown share, SIGINT while connecting, a bug), the --report is written, --log-file ends
    with the summary, and a run-stopping error is told once on stderr."""
    started = time.monotonic()
    console = Console(highlight=False, emoji=False)
    setup_logging(console, request.verbosity, request.log_file, request.log_format)
    state = _JobState()
    error: BaseException | None = None
    summary: RunSummary | None = None
    async with anyio.create_task_group() as tg:

        async def stop_on_interrupt() -> None:
            await interrupt.wait()
            state.interrupted = True
            if state.run is not None:
                state.run.interrupt()
            else:
                body.cancel()  # still connecting: nothing to finish cleanly

        tg.start_soon(stop_on_interrupt)
        with anyio.CancelScope() as body:
            try:
                summary = await _run(request, console, state)
            except errors.BulkdriveError as exc:
                error = exc
            except Exception as exc:  # a bug: still a report and one line
                log.debug("internal error", exc_info=True)
                error = exc
        tg.cancel_scope.cancel()
    if error is not None and request.verbosity >= 2:
        traceback.print_exception(error)
    if summary is None:
        summary = summary_without_run(
            time.monotonic() - started, error=error, interrupted=state.interrupted
        )
    report = None if isinstance(error, errors.ReportUnwritable) else request.report
    code = conclude(summary, report)
    stopper = error if error is not None else state.run_error
    if stopper is not None:
        print(error_line(stopper), file=sys.stderr)
    elif summary.interrupted:
        print(
            "bulkdrive: interrupted; run the same command again to resume where it stopped",
            file=sys.stderr,
        )
    return code


@dataclass
class _JobState:
    run: TreeUpload | None = None
    run_error: errors.RunFailed | None = None
    interrupted: bool = False


async def _run(request: JobRequest, console: Console, state: _JobState) -> RunSummary:
    settings = request.settings
    config = transfer_config(settings)
    filters = filters_from(settings)
    remote_folder = remote_folder_of(settings.to)
    check_target(settings)
    for flag, report_path in (
        ("--report", request.report),
        ("--report-files", request.report_files),
    ):
        if report_path is not None:
            try:
                check_writable(report_path)
            except OSError as exc:
                unwritable = errors.ReportUnwritable if flag == "--report" else errors.ConfigError
                raise unwritable(
                    f"{flag}: cannot write {report_path}: {exc.strerror or exc}"
                ) from None
    if settings.insecure:
        print(
            "bulkdrive: warning: TLS certificate verification is off (--insecure)", file=sys.stderr
        )
    plan = RunPlan(
        source=request.source,
        remote_folder=remote_folder,
        filters=filters,
        config=config,
        check_remote=settings.check_remote,
        dry_run=request.dry_run,
        invalid_names=InvalidNames(settings.invalid_names),
    )
    async with AsyncExitStack() as stack:
        target = await stack.enter_async_context(
            open_target(settings, request.credentials_from, quiet=request.quiet)
        )
        key = job_key(target, remote_folder, request.source)
        journal_path = journal_path_of(settings, key)
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
            await client.check_share()
        file_report = None
        if request.report_files is not None:
            file_report = stack.enter_context(FileReportWriter(request.report_files))
        reporter = (
            NullReporter()
            if json_screen(console, request.log_format)
            else make_reporter(
                console=console,
                is_terminal=console.is_terminal,
                quiet=request.quiet,
                no_progress=request.no_progress or request.dry_run,
                # a dry run lists what it would upload and skip, one line each (-q: counts only)
                verbosity=max(request.verbosity, 1) if request.dry_run else request.verbosity,
                stats_interval=settings.stats_interval,
                summary=not request.dry_run,  # nothing was uploaded: no "upload finished" table
            )
        )
        engine = None
        if settings.cluster and client is not None and not request.dry_run:
            from bulkdrive.cluster import ClusterOptions, open_cluster

            options = ClusterOptions(
                address=settings.cluster,
                source=request.source,
                worker_path=settings.worker_path,
                verbose=request.verbosity >= 1,
            )
            engine = await stack.enter_async_context(
                open_cluster(options, client, target.url, config, reporter)
            )
        run = TreeUpload(
            client,
            plan,
            reporter=reporter,
            journal=journal,
            file_report=file_report,
            engine=engine,
        )
        state.run = run
        summary = await run.run()
        state.run_error = run.run_error
        if not request.dry_run:
            skips = dict(summary.skipped_by_kind)
            if summary.filtered:
                skips[FILTERED] = summary.filtered
            await journal.note_run_skips(skips)
    if request.dry_run:
        log_dry_run(run.statistics(), summary, console, request.log_format)
    return summary


def log_dry_run(
    stats: SchedulerStatistics, summary: RunSummary, console: Console, log_format: str
) -> None:
    """The dry run's closing line, with exact byte counts (scripts read them): on the screen,
    a JSON object there in JSON mode, and in --log-file either way."""
    fields = {
        "would_upload_files": stats.would_upload_files,
        "would_upload_bytes": stats.would_upload_bytes,
        "skipped_files": summary.files.skipped,
        "skipped_bytes": summary.bytes.skipped,
        "filtered": summary.filtered,
    }
    line = (
        f"dry run: would upload {stats.would_upload_files} files "
        f"({stats.would_upload_bytes} bytes), skip {summary.files.skipped} files "
        f"({summary.bytes.skipped} bytes), {summary.filtered} left out by the "
        "filters; nothing was sent"
    )
    log.info("%s", line, extra={"event": "dry_run", "fields": fields})
    if not json_screen(console, log_format):  # else the JSON screen handler printed it
        console.print(line, soft_wrap=True, markup=False)
