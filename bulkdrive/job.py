"""One `bulkdrive upload` job, from settings to exit code.

Resolves the target (a real server, or the embedded emulator when no URL is configured),
opens the resume journal, logs in, runs the tree upload with the chosen reporter, writes the
reports, and turns the outcome into the documented exit code.
"""

from __future__ import annotations

import logging
import os
import secrets
import sys
import time
import traceback
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
from rich.console import Console
from rich.logging import RichHandler

from bulkdrive import errors
from bulkdrive.client import EdgeDriveClient
from bulkdrive.config import Credentials, Secret, Settings, transfer_config
from bulkdrive.eventlog import event_formatter
from bulkdrive.globs import read_exclude_from
from bulkdrive.journal import (
    FileRecord,
    FileState,
    JobKey,
    Journal,
    default_journal_path,
    read_held,
    read_summary,
)
from bulkdrive.names import InvalidNames
from bulkdrive.progress import NullReporter, make_reporter
from bulkdrive.protocol import join_remote_path, split_remote_path
from bulkdrive.report import (
    FileReportWriter,
    RunSummary,
    RunTally,
    check_writable,
    format_bytes,
    summary_to_json,
    write_json_report,
)
from bulkdrive.scheduler import RunPlan, SchedulerStatistics, TreeUpload
from bulkdrive.shard import Shard, parse_shard, shard_journal_path
from bulkdrive.walk import WalkFilters

log = logging.getLogger("bulkdrive.job")

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
    log_format: str = "text"


@dataclass(frozen=True)
class Target:
    url: str
    share: str | None
    credentials_from: Callable[[], Credentials]
    journal_url: str  # stable across runs, unlike the embedded emulator's port

    @property
    def credentials(self) -> Credentials:
        """Asked for only when a login is needed: a dry run never prompts for a password."""
        return self.credentials_from()


def shard_of_job(settings: Settings) -> Shard | None:
    text: str | None = settings.shard
    return None if text is None else parse_shard(text)


def job_journal_path(key: JobKey, shard: Shard | None) -> Path:
    """The job's default journal; with --shard K/N each shard's own."""
    path = default_journal_path(key)
    return path if shard is None else shard_journal_path(path, shard)


def filters_from(settings: Settings) -> WalkFilters:
    exclude = tuple(settings.exclude)
    if settings.exclude_from:
        exclude += read_exclude_from(Path(settings.exclude_from))
    return WalkFilters(
        include=tuple(settings.include),
        exclude=exclude,
        min_size=settings.min_size or None,
        max_size=settings.max_size or None,
        follow_symlinks=settings.follow_symlinks,
        shard=shard_of_job(settings),
        empty_folders=settings.create_empty_folders,
    )


#: Where a target comes from when it is not the embedded emulator: any of these, from a flag,
#: the environment or a config file, means the user meant a real server.
TARGET_SETTINGS = ("url", "user", "share")


def check_target(settings: Settings, environ: Mapping[str, str] | None = None) -> None:
    """The embedded emulator is for trying bulkdrive: it is used only when no target at all is
    given. A user, share or token without a URL is a mistake a cron job must hear about."""
    if settings.url:
        return
    environ = os.environ if environ is None else environ
    given = [
        f"--{key} ({_origin(settings, key)})"
        for key in TARGET_SETTINGS
        if settings.origin.get(key, "default") != "default"
    ]
    if environ.get("BULKDRIVE_TOKEN"):
        given.append("BULKDRIVE_TOKEN (environment)")
    if given:
        raise errors.ConfigError(
            f"--url is missing: {', '.join(given)} given without a server; pass --url "
            f"({errors.URL_FORMS}), or give none of them to try the local emulator"
        )


def _origin(settings: Settings, key: str) -> str:
    where = settings.origin.get(key, "default")
    return where if where in ("flag", "environment") else f"file {where}"


@asynccontextmanager
async def open_target(
    settings: Settings,
    credentials_from: Callable[[], Credentials],
    *,
    quiet: bool = False,
) -> AsyncIterator[Target]:
    """The configured server, or an emulator started in this process on 127.0.0.1."""
    if settings.url:
        yield Target(settings.url, settings.share, credentials_from, settings.url)
        return
    check_target(settings)
    from bulkdrive.emulator import EmulatorConfig, Share, User, running_emulator

    data_dir = Path(settings.data_dir).resolve()
    password = secrets.token_urlsafe(18)
    config = EmulatorConfig(
        root=data_dir,
        users=(User(EMBEDDED_USER, password),),
        shares=(Share(EMBEDDED_SHARE, "local"),),
    )
    async with running_emulator(config) as emulator:
        if not quiet:
            # stderr: stdout stays the run's own output, for scripts that read it
            print(
                f"bulkdrive: no --url given: uploading to a local emulator at "
                f"{emulator.base_url}, files stored in {data_dir / EMBEDDED_SHARE}",
                file=sys.stderr,
            )
        credentials = Credentials(user=EMBEDDED_USER, password=Secret(password))
        yield Target(emulator.base_url, EMBEDDED_SHARE, lambda: credentials, f"embedded:{data_dir}")


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


def job_key(target: Target, remote_folder: str, source: Path) -> JobKey:
    return JobKey(
        url=target.journal_url,
        share=target.share or "",
        remote_folder=remote_folder,
        source=str(source.resolve()),
    )


def journal_path_of(settings: Settings, key: JobKey) -> Path:
    """--journal, or the job's own journal in the state folder (`check` reads the same one)."""
    if settings.journal:
        return Path(settings.journal).expanduser()
    return job_journal_path(key, shard_of_job(settings))


async def run_job(request: JobRequest, interrupt: anyio.Event) -> int:
    """The whole job, and its exit code. Whatever ends it (the last file, a refused login, an
    unknown share, SIGINT while connecting, a bug), the --report is written, --log-file ends
    with the summary, and a run-stopping error is told once on stderr."""
    started = time.monotonic()
    console = Console(highlight=False)
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
    remote_folder = join_remote_path(_remote_parts(settings.to))
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


def setup_logging(
    console: Console, verbosity: int, log_file: Path | None, log_format: str = "text"
) -> None:
    """-vv: protocol detail on the console; --log-file: per-file lines (and -vv detail), ending
    with the summary. On a terminal the detail goes through rich (above the live display);
    anywhere else, and in every file, one plain event per line with an ISO-8601 UTC time, or
    one JSON object per line with --log-format json."""
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
    formatter = event_formatter(log_format)
    if log_file is not None:
        try:
            # A name that is not UTF-8 is logged escaped (\udcXX), never a logging error.
            handler: logging.Handler = logging.FileHandler(
                log_file, encoding="utf-8", errors="backslashreplace"
            )
        except OSError as exc:
            raise errors.ConfigError(
                f"--log-file: cannot write {log_file}: {exc.strerror}"
            ) from None
        handler.setFormatter(formatter)
        handler.setLevel(detail)
        logger.addHandler(handler)
    if json_screen(console, log_format):
        # stdout is one JSON object per line: the events (per file with -v, protocol detail
        # with -vv), warnings and errors, and the summary last; the reporter prints nothing
        screen_json = logging.StreamHandler(console.file)
        screen_json.setFormatter(formatter)
        screen_json.setLevel(logging.DEBUG)
        screen_json.addFilter(_screen_events(verbosity))
        logger.addHandler(screen_json)
        logger.setLevel(min(logger.level, logging.INFO))
    elif verbosity >= 2:
        # Protocol detail; per-file lines come from the reporter itself.
        if console.is_terminal and log_format == "text":
            # through the reporter's console, so that log lines never tear the live display
            screen: logging.Handler = RichHandler(console=console, show_path=False, markup=False)
        else:
            screen = logging.StreamHandler(console.file)
            screen.setFormatter(formatter)
        screen.setLevel(logging.DEBUG)
        screen.addFilter(logging.Filter("bulkdrive.client"))
        logger.addHandler(screen)


def json_screen(console: Console, log_format: str) -> bool:
    """--log-format json off a terminal: stdout carries JSON lines only."""
    return log_format == "json" and not console.is_terminal


FILTERED = "left out by filters"  # with the skip kinds in the journal's last-run counts
CLOSING_EVENTS = ("summary", "dry_run")  # on the JSON screen even with -q


def _screen_events(verbosity: int) -> Callable[[logging.LogRecord], bool]:
    def keep(record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING or getattr(record, "event", None) in CLOSING_EVENTS:
            return True
        if record.name.startswith("bulkdrive.client"):
            return verbosity >= 2
        return verbosity >= 1 and record.levelno >= logging.INFO

    return keep


def _remote_parts(folder: str) -> tuple[str, ...]:
    try:
        return split_remote_path(folder)
    except ValueError as exc:
        raise errors.ConfigError(f"--to: {exc}") from None


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
            remote_folder=join_remote_path(_remote_parts(remote_folder)),
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
