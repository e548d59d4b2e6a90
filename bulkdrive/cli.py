"""The `bulkdrive` command: upload, serve, status.

Every error a user can cause ends here as one line on stderr and a documented exit code
(`errors.exit_code` decides it): 0 all uploaded or skipped · 1 some files failed · 2 usage or
configuration · 3 authentication, permission or unknown share · 4 quota · 5 server
unreachable · 130 interrupted. A traceback only with -vv.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import gc
import importlib
import os
import signal
import sys
import traceback
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any, ClassVar, NoReturn

import anyio
import click

from bulkdrive import collector, errors
from bulkdrive.config import Credentials, Secret
from bulkdrive.settings import SETTINGS, Settings, load_settings, parse_size

# The command ends the process: the interpreter's last garbage collections, over every object
# the modules and the run left (~45 k tracked after the imports), free nothing that matters
# and took ~50 ms of the ~65 ms a `bulkdrive upload` spent after its last exit hook. Frozen,
# they are skipped; what is not in a reference cycle is still freed as before, and the files
# the run wrote are closed by then. At the interpreter's exit only: a program that imports
# this module keeps its collector as it was.
atexit.register(gc.freeze)


class _Commands(click.Group):
    """`serve` is imported only when it runs: the emulator's server code is not the
    uploader's, and every `bulkdrive upload` would pay for importing it."""

    lazy: ClassVar[dict[str, tuple[str, str]]] = {
        "serve": ("bulkdrive.emulator.command", "serve"),
        # The commands of a migration besides the upload itself.
        **{name: ("bulkdrive.migration", name) for name in ("shares", "ls", "journals")},
        "check": ("bulkdrive.check_command", "check"),
    }

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.lazy:
            module, attribute = self.lazy[name]
            command: click.Command = getattr(importlib.import_module(module), attribute)
            return command
        return super().get_command(ctx, name)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(None, "-V", "--version", package_name="bulkdrive")
def main() -> None:
    """Upload directory trees to Commvault Edge Drive shares, fast and safely."""
    _never_fail_on_output()


def _never_fail_on_output() -> None:
    """A character the terminal cannot show (an accented name under PYTHONIOENCODING=ascii,
    an undecodable file name) is written escaped, never stops the run."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            with contextlib.suppress(ValueError, OSError):
                reconfigure(errors="backslashreplace")


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"bulkdrive: error: {message}", err=True)
    sys.exit(code)


def _setting_options(
    func: Callable[..., Any], *, only: Collection[str] | None = None
) -> Callable[..., Any]:
    """One flag per setting (or per setting in `only`), all defaulting to None so that
    precedence can see what was given."""
    flags: dict[str, Callable[[Callable[..., Any]], Callable[..., Any]]] = {
        "url": click.option("--url", help="Server root, e.g. https://HOST/webconsole/api."),
        "share": click.option("--share", help="Share id (syncWebFolderId)."),
        "to": click.option("--to", help="Remote folder, backslash path (default \\)."),
        "user": click.option(
            "--user",
            help="User name; password from BULKDRIVE_PASSWORD, --password-file or a prompt.",
        ),
        "password_file": click.option("--password-file", help="File holding the password."),
        "transfers": click.option(
            "--transfers",
            help="Files in flight, or auto: tuned while the run goes.",
        ),
        "max_transfers": click.option(
            "--max-transfers", help="Under --transfers auto, the most files in flight (256)."
        ),
        "max_memory": click.option(
            "--max-memory",
            help="Under --transfers auto, file data in memory: transfers x 2 x chunk (1GiB).",
        ),
        "chunk_size": click.option(
            "--chunk-size", help="Chunk size, e.g. 4MiB (needs --no-verify unless 4MiB)."
        ),
        "verify": click.option(
            "--verify/--no-verify",
            default=None,
            help="Block-level SHA-256 integrity check.",
        ),
        "retries": click.option(
            "--retries",
            help="Attempts in a row without progress before a file is reported failed.",
        ),
        "give_up_after": click.option(
            "--give-up-after",
            help="Stop when every request failed (no connection, 5xx) this long.",
        ),
        "bwlimit": click.option("--bwlimit", help="Bytes per second for the run, e.g. 50MiB."),
        "include": click.option("--include", multiple=True, help="Only paths matching GLOB."),
        "exclude": click.option("--exclude", multiple=True, help="Skip paths matching GLOB."),
        "exclude_from": click.option("--exclude-from", help="File of exclude globs."),
        "min_size": click.option("--min-size", help="Skip smaller files."),
        "max_size": click.option("--max-size", help="Skip larger files."),
        "follow_symlinks": click.option(
            "--follow-symlinks", is_flag=True, default=None, help="Follow symbolic links."
        ),
        "invalid_names": click.option(
            "--invalid-names",
            type=click.Choice(["escape", "fail"]),
            help="Names not valid UTF-8: escape bad bytes as \u201bXX (default) or fail the file.",
        ),
        "insecure": click.option(
            "--insecure",
            is_flag=True,
            default=None,
            help="Do not verify TLS certificates (unsafe).",
        ),
        "ca_bundle": click.option("--ca-bundle", help="PEM file of CA certificates."),
        "journal": click.option("--journal", help="Resume journal path."),
        "check_remote": click.option(
            "--check-remote", is_flag=True, default=None, help="Skip files the server already has."
        ),
        "create_empty_folders": click.option(
            "--create-empty-folders",
            is_flag=True,
            default=None,
            help="Create folders that hold no files remotely too.",
        ),
        "connect_timeout": click.option("--connect-timeout", help="Seconds to connect."),
        "read_timeout": click.option("--read-timeout", help="Seconds to wait for a response."),
        "stats_interval": click.option(
            "--stats-interval", help="Seconds between stat lines off a terminal."
        ),
        "data_dir": click.option("--data-dir", help="Storage of the embedded emulator."),
        "shard": click.option("--shard", help="K/N: upload only this shard of the tree."),
        "cluster": click.option(
            "--cluster", help="Spread the files over Dask workers: local:N or tcp://HOST:8786."
        ),
        "worker_path": click.option(
            "--worker-path", help="Where the cluster's workers see SOURCE (default: its path)."
        ),
    }
    for setting in reversed(SETTINGS):
        if only is None or setting.key in only:
            func = flags[setting.key](func)
    _describe_values(func)
    return func


#: What each setting's value is, in --help (the values are parsed by `config`, so click sees
#: text): the type people type, and the default in their words.
_METAVARS = {
    "url": "URL",
    "share": "ID",
    "to": "FOLDER",
    "user": "NAME",
    "password_file": "PATH",
    "transfers": "INTEGER|auto",
    "max_transfers": "INTEGER",
    "max_memory": "SIZE",
    "chunk_size": "SIZE",
    "retries": "INTEGER",
    "bwlimit": "RATE",
    "include": "GLOB",
    "exclude": "GLOB",
    "exclude_from": "PATH",
    "min_size": "SIZE",
    "max_size": "SIZE",
    "ca_bundle": "PATH",
    "journal": "PATH",
    "connect_timeout": "SECONDS",
    "read_timeout": "SECONDS",
    "stats_interval": "SECONDS",
    "data_dir": "PATH",
    "shard": "K/N",
}
_DEFAULTS = {
    "url": "none: a local emulator, to try bulkdrive out",
    "share": "the user's own drive",
    "to": "\\",
    "chunk_size": "4MiB",
    "bwlimit": "unlimited",
    "max_size": "no limit",
    "verify": "on",
    "journal": "one per job, in the state folder",
    "ca_bundle": "the system's trust store",
}


def _size_text(size: int) -> str:
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)


def _describe_values(func: Callable[..., Any]) -> None:
    by_key = {setting.key: setting for setting in SETTINGS}
    for param in getattr(func, "__click_params__", ()):
        setting = by_key.get(param.name or "")
        if setting is None or not isinstance(param, click.Option):
            continue
        if setting.key in _METAVARS:
            param.metavar = _METAVARS[setting.key]
        default = _DEFAULTS.get(setting.key)
        if default is None and setting.default not in (None, (), False, 0, ""):
            default = (
                _size_text(setting.default) if setting.parse is parse_size else str(setting.default)
            )
        if default is not None and param.help and "default" not in param.help.lower():
            param.help = f"{param.help}  [default: {default}]"


@main.command()
@click.argument("source", type=click.Path(path_type=Path))
@_setting_options
@click.option("--config", "config_file", help="TOML config file.")
@click.option("--dry-run", is_flag=True, help="Show what would be uploaded; send nothing.")
@click.option("--no-progress", is_flag=True, help="No live progress display.")
@click.option("-q", "--quiet", is_flag=True, help="Errors only.")
@click.option("-v", "--verbose", count=True, help="-v: a line per file; -vv: protocol detail.")
@click.option(
    "--log-file",
    type=click.Path(path_type=Path),
    help="Write a log to FILE (per-file lines, -vv detail), ending with the summary.",
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="Log lines off a terminal and in --log-file: plain text with ISO-8601 UTC times, "
    "or one JSON object per line.",
)
@click.option("--report", type=click.Path(path_type=Path), help="Write a JSON summary.")
@click.option(
    "--report-files", type=click.Path(path_type=Path), help="Write one NDJSON line per file."
)
def upload(
    source: Path,
    config_file: str | None,
    dry_run: bool,
    no_progress: bool,
    quiet: bool,
    verbose: int,
    log_file: Path | None,
    log_format: str,
    report: Path | None,
    report_files: Path | None,
    **flags: Any,
) -> None:
    """Upload the directory tree SOURCE (or one file) to an Edge Drive share.

    The contents of SOURCE go into the remote folder --to (no folder named after SOURCE is
    made). Without --url, --user or --share (flag, BULKDRIVE_* or config file) the files go
    to a local emulator started for this run, to try bulkdrive out."""
    from bulkdrive.job import JobRequest, conclude, run_job, summary_without_run

    def stop_early(error: errors.BulkdriveError) -> NoReturn:
        # the settings are wrong: no log yet, but a --report that says so
        code = conclude(summary_without_run(0.0, error=error), report, logged=False)
        _fail(f"{error}", code)

    try:
        settings = load_settings(flags, config_option=config_file)
    except errors.ConfigError as exc:
        stop_early(exc)
    if not source.exists():
        stop_early(errors.ConfigError(f"source not found: {source}"))
    if not (source.is_dir() or source.is_file()):
        stop_early(errors.ConfigError(f"source is neither a file nor a folder: {source}"))
    request = JobRequest(
        source=source,
        settings=settings,
        credentials_from=lambda: _credentials(settings),
        dry_run=dry_run,
        no_progress=no_progress,
        quiet=quiet,
        verbosity=verbose,
        report=report,
        report_files=report_files,
        log_file=log_file,
        log_format=log_format,
    )
    try:
        _one_malloc_arena()
        with collector.fewer_collections():
            code = anyio.run(_with_signals, request, run_job, backend_options=_loop_options())
    except KeyboardInterrupt:  # before the signal handlers were in place
        code = conclude(summary_without_run(0.0, interrupted=True), report, logged=False)
        _fail("interrupted; run the same command again to resume", code)
    except Exception as exc:  # a bug outside the job: still one line, the detail with -vv
        if verbose >= 2:
            traceback.print_exc()
        code = conclude(summary_without_run(0.0, error=exc), report, logged=False)
        _fail(
            f"internal error: {type(exc).__name__}: {exc} (run with -vv for the traceback "
            "and please report it)",
            code,
        )
    sys.exit(code)


async def _with_signals(request: Any, run: Callable[..., Any]) -> int:
    """Run the upload; SIGINT/SIGTERM stop it cleanly (exit 130)."""
    interrupt = anyio.Event()

    async def watch() -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                interrupt.set()
                return

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(watch)
            code: int = await run(request, interrupt)
            tg.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        raise errors.alone(group) from None
    return code


def _one_malloc_arena() -> None:
    """glibc gives threads that allocate their own malloc arenas; chunks read in aiofiles'
    threads then leave freed blocks in several arenas and RSS grows above the chunks alive.
    One arena keeps it near transfers × 2 × chunk size (measured: benchmarks/README.md). The
    CLI only: a library does not change its user's allocator (the README says how to).
    M_ARENA_MAX is -8 in glibc's malloc.h; elsewhere this does nothing."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(-8, 1)


def _loop_options() -> dict[str, bool]:
    """uvloop where it is installed (a dependency off Windows): cheaper per request."""
    if os.environ.get("BULKDRIVE_LOOP", "").lower() == "asyncio":
        return {}
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return {}
    return {"use_uvloop": True}


def _credentials(settings: Settings) -> Credentials:
    token = os.environ.get("BULKDRIVE_TOKEN")
    if token:
        return Credentials(user=settings.user or "", token=Secret(token.strip()))
    user = settings.user
    if not user:
        raise errors.ConfigError(
            "no user: give --user NAME (or BULKDRIVE_USER), or a token in BULKDRIVE_TOKEN"
        )
    password = os.environ.get("BULKDRIVE_PASSWORD") or None  # set but empty: not given
    if password is None and settings.password_file:
        path = Path(settings.password_file).expanduser()
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise errors.ConfigError(
                f"--password-file: cannot read {path}: {exc.strerror}"
            ) from None
        except UnicodeDecodeError:
            raise errors.ConfigError(f"--password-file: {path} is not UTF-8 text") from None
        if not lines or not lines[0]:
            raise errors.ConfigError(
                f"--password-file: {path} is empty (its first line must be the password)"
            )
        password = lines[0]
    if password is None:
        if not sys.stdin.isatty():
            raise errors.ConfigError(
                "no password: set BULKDRIVE_PASSWORD or --password-file (no terminal to ask on)"
            )
        password = click.prompt(f"Password for {user}", hide_input=True, err=True)
    return Credentials(user=user, password=Secret(password))


@main.command(
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    add_help_option=False,
)
@click.pass_context
def bench(ctx: click.Context) -> None:
    """Measure throughput against baselines (`bulkdrive bench --help`)."""
    # bench.run's own click command parses (and answers --help); imported only here, so
    # that every other command starts without the harness
    from bulkdrive.bench.run import main as bench_main

    sys.exit(bench_main(list(ctx.args)))


@main.command()
@click.argument("source", required=False, type=click.Path(path_type=Path))
@click.option(
    "--journal", "journal_paths", multiple=True, help="Journal to read (repeat to sum several)."
)
@click.option("--url", help="Server root the job uploaded to.")
@click.option("--share", help="Share id of the job.")
@click.option("--to", "remote_folder", default="\\", help="Remote folder of the job.")
@click.option(
    "--shards", type=click.IntRange(min=1), help="Sum the N journals of a job run as --shard K/N."
)
def status(
    source: Path | None,
    journal_paths: tuple[str, ...],
    url: str | None,
    share: str | None,
    remote_folder: str,
    shards: int | None,
) -> None:
    """Show a job's progress from its resume journal (or the sum of several)."""
    from rich.console import Console  # here: `--help` and the upload's own start need none

    from bulkdrive.status import print_status

    try:
        print_status(
            Console(highlight=False, emoji=False),
            source,
            journal_paths,
            url,
            share,
            remote_folder,
            shards,
        )
    except errors.BulkdriveError as exc:
        _fail(str(exc), exc.exit_code)
