"""The commands of a migration besides `upload`: find the share (`shares`), look at the remote
side (`ls`) and tidy the state folder (`journals`); proving the result (`check`) is
`check_command`'s, which uses the plumbing here.

Thin click commands: the work is done in `listing` and `journals`; this module turns settings
into a logged-in client and errors into one line and the documented exit code. Loaded only
when one of these commands runs (see `cli._Commands`).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn, TextIO

import anyio
import click
from rich.console import Console
from rich.table import Table

from bulkdrive import cli, errors
from bulkdrive.client import EdgeDriveClient
from bulkdrive.journals import JournalInfo, inventory, journals_folder, parse_age
from bulkdrive.journals import prune as prune_journals
from bulkdrive.listing import DEFAULT_CONCURRENCY, RemoteEntry, TreeListing
from bulkdrive.protocol import ShareInfo
from bulkdrive.report import format_bytes
from bulkdrive.settings import Settings, load_settings, transfer_config
from bulkdrive.target import Target, open_target, remote_folder_of

#: The settings that reach a server: every command here takes these.
CONNECTION = (
    "url",
    "user",
    "password_file",
    "insecure",
    "ca_bundle",
    "connect_timeout",
    "read_timeout",
    "retries",
    "data_dir",
)


def setting_options(*keys: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The upload's flags for these settings, with the same names, help and precedence."""

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        return cli._setting_options(func, only=frozenset(keys))

    return decorate


def settings_from(flags: dict[str, Any], config_file: str | None) -> Settings:
    try:
        return load_settings(flags, config_option=config_file)
    except errors.ConfigError as exc:
        cli._fail(str(exc), exc.exit_code)


def run_command(work: Callable[[], Awaitable[int]], verbose: int = 0) -> NoReturn:
    """Run `work` and exit with its code; every error is one line on stderr."""
    try:
        code = anyio.run(work)
    except errors.BulkdriveError as exc:
        if verbose >= 2:
            traceback.print_exc()
        hint = f" ({exc.hint})" if exc.hint else ""
        cli._fail(f"{exc}{hint}", exc.exit_code)
    except KeyboardInterrupt:
        cli._fail("interrupted", errors.EXIT_INTERRUPTED)
    except Exception as exc:  # a bug: still one line, the detail with -vv
        if verbose >= 2:
            traceback.print_exc()
        cli._fail(
            f"internal error: {type(exc).__name__}: {exc} (run with -vv for the traceback "
            "and please report it)",
            1,
        )
    sys.exit(code)


@asynccontextmanager
async def connected(
    settings: Settings, *, concurrency: int = 1, with_share: bool = True
) -> AsyncIterator[tuple[EdgeDriveClient, Target]]:
    """A logged-in client of the configured server (or of the embedded emulator)."""
    # The emulator's notice goes to stderr: stdout may be a --json document.
    async with open_target(settings, lambda: cli._credentials(settings)) as target:
        # Connections for the listings in flight, whatever --transfers says.
        config = dataclasses.replace(transfer_config(settings), transfers=concurrency)
        async with EdgeDriveClient.connect(
            target.url,
            target.credentials,
            share_id=target.share if with_share else None,
            config=config,
        ) as client:
            yield client, target


# --- bulkdrive shares ---------------------------------------------------------------------


def _permission(share: ShareInfo) -> str:
    writable = share.writable
    return "unknown" if writable is None else "writable" if writable else "read-only"


def share_json(share: ShareInfo) -> dict[str, Any]:
    return {
        "id": share.share_id,
        "name": share.name,
        "permission": _permission(share),
        "owner": share.owner,
        "public": share.public,
    }


@click.command()
@setting_options(*CONNECTION)
@click.option("--config", "config_file", help="TOML config file.")
@click.option("--json", "as_json", is_flag=True, help="A JSON array instead of a table.")
@click.option("-v", "--verbose", count=True, help="-vv: a traceback on errors.")
def shares(config_file: str | None, as_json: bool, verbose: int, **flags: Any) -> None:
    """List the shares you can see: the id to pass as --share, and whether you may write."""
    settings = settings_from(flags, config_file)

    async def work() -> int:
        async with connected(settings, with_share=False) as (client, _):
            found = await client.shares()
        if as_json:
            click.echo(json.dumps([share_json(s) for s in found], indent=2, ensure_ascii=False))
            return 0
        table = Table("id", "name", "permission", "owner", "public", box=None)
        for share in found:
            table.add_row(
                share.share_id,
                share.name,
                _permission(share),
                share.owner or "-",
                "yes" if share.public else "no",
            )
        Console(highlight=False, emoji=False).print(table)
        if not found:
            click.echo("no shares visible to this user", err=True)
        return 0

    run_command(work, verbose)


# --- bulkdrive ls -------------------------------------------------------------------------


def _when(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S")


def entry_json(entry: RemoteEntry) -> dict[str, Any]:
    resource = entry.resource
    return {
        "path": entry.relative,
        "type": "folder" if resource.is_directory else "file",
        "size": 0 if resource.is_directory else resource.size,
        "mtime": resource.modified_time,
    }


def _entry_line(entry: RemoteEntry) -> str:
    resource = entry.resource
    size = "-" if resource.is_directory else str(resource.size)
    name = entry.relative + ("/" if resource.is_directory else "")
    return f"{_when(resource.modified_time)} {size:>14}  {name}"


async def print_listing(listing: TreeListing, as_json: bool, out: TextIO) -> int:
    """Entries as they arrive: one page in memory, however large the folder."""
    send, receive = anyio.create_memory_object_stream[RemoteEntry](1000)
    count = 0
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(listing.run, send)
            async with receive:
                if as_json:
                    out.write("[")
                async for entry in receive:
                    if as_json:
                        out.write(",\n" if count else "\n")
                        out.write(json.dumps(entry_json(entry), ensure_ascii=False))
                    else:
                        out.write(_entry_line(entry) + "\n")
                    count += 1
                if as_json:
                    out.write("\n]\n" if count else "]\n")
    except BaseExceptionGroup as group:
        raise errors.alone(group) from None
    return count


@click.command("ls")
@click.argument("remote_folder", default="\\", required=False)
@setting_options(*CONNECTION, "share")
@click.option("--config", "config_file", help="TOML config file.")
@click.option("-R", "--recursive", is_flag=True, help="Also list the folders below, all the way.")
@click.option("--json", "as_json", is_flag=True, help="A JSON array of entries.")
@click.option("-v", "--verbose", count=True, help="-vv: a traceback on errors.")
def ls(
    remote_folder: str,
    config_file: str | None,
    recursive: bool,
    as_json: bool,
    verbose: int,
    **flags: Any,
) -> None:
    """List REMOTE_FOLDER of the share (default: its root): modified time (UTC), size, path.

    Folders end with "/". Large folders are read page by page, so memory stays flat.
    """
    settings = settings_from(flags, config_file)

    async def work() -> int:
        folder = remote_folder_of(remote_folder, "REMOTE_FOLDER")
        concurrency = DEFAULT_CONCURRENCY if recursive else 1
        async with connected(settings, concurrency=concurrency) as (client, _):
            listing = TreeListing(client, folder, recursive=recursive, concurrency=concurrency)
            await print_listing(listing, as_json, sys.stdout)
        for failure in listing.failures:
            message = f"bulkdrive: error: cannot list {failure.folder}: {failure.reason}"
            click.echo(message, err=True)
        return 1 if listing.statistics().failures else 0

    run_command(work, verbose)


# --- bulkdrive journals -------------------------------------------------------------------


def journal_json(info: JournalInfo) -> dict[str, Any]:
    key = info.key
    return {
        "journal": str(info.path),
        "source": key.source if key else None,
        "url": info.url or None,
        "share": key.share if key else None,
        "remote_folder": key.remote_folder if key else None,
        "last_run": datetime.fromtimestamp(info.last_run, UTC).isoformat(timespec="seconds"),
        "files": {str(state): n for state, n in info.files.items()},
        "total_files": info.total_files,
        "total_bytes": info.total_bytes,
        "size_on_disk": info.size_on_disk,
        "running": info.running,
        **({"error": info.error} if info.error else {}),
    }


@click.command()
@click.option("--prune", is_flag=True, help="Delete the journals of jobs not run for a while.")
@click.option(
    "--older-than",
    "older_than",
    help="Only journals last run longer ago than this, e.g. 30d, 12h (with --prune: 30d).",
)
@click.option("--dry-run", is_flag=True, help="With --prune: say what would go; delete nothing.")
@click.option("--json", "as_json", is_flag=True, help="A JSON array instead of a table.")
@click.option(
    "--state-dir",
    type=click.Path(path_type=Path),
    help="bulkdrive's state folder (default: $BULKDRIVE_STATE_DIR or the platform's).",
)
def journals(
    prune: bool, older_than: str | None, dry_run: bool, as_json: bool, state_dir: Path | None
) -> None:
    """List the resume journals of past jobs (job, last run, counts, size on disk), or delete
    old ones with --prune. A journal that a running upload holds is never deleted.

    Journals given with --journal elsewhere are not in the state folder, so not listed."""
    if dry_run and not prune:
        cli._fail("--dry-run goes with --prune", 2)
    folder = (state_dir / "journals") if state_dir else journals_folder()

    async def work() -> int:
        age = parse_age(older_than) if older_than else (30 * 86400.0 if prune else 0.0)
        now = time.time()
        if prune:
            return _prune(folder, age, now, dry_run, as_json)
        infos = [i for i in inventory(folder) if now - i.last_run >= age]
        if as_json:
            click.echo(json.dumps([journal_json(i) for i in infos], indent=2, ensure_ascii=False))
            return 0
        _print_journals(folder, infos)
        return 0

    run_command(work)


def _print_journals(folder: Path, infos: list[JournalInfo]) -> None:
    """A block per journal: plain lines, so that long paths never squeeze a table."""
    if not infos:
        click.echo(f"no journals in {folder}")
        return
    click.echo(f"journals in {folder}:")
    for info in infos:
        click.echo(f"{info.path.name}{'  (running)' if info.running else ''}")
        if info.key is None:
            click.echo(f"  not readable: {info.error}")
            continue
        key = info.key
        folder_name = "\\" + key.remote_folder.strip("\\/").replace("/", "\\")
        click.echo(f"  job: {key.source} → {info.url} share {key.share or '-'} {folder_name}")
        done, failed = info.done, info.failed
        click.echo(
            f"  last run {_when(int(info.last_run))} UTC · {done} done, {failed} failed, "
            f"{info.total_files - done - failed} other ({format_bytes(info.total_bytes)}) · "
            f"{format_bytes(info.size_on_disk)} on disk"
        )


def _prune(folder: Path, age: float, now: float, dry_run: bool, as_json: bool) -> int:
    outcomes = list(prune_journals(folder, age, now=now, dry_run=dry_run))
    if as_json:
        click.echo(
            json.dumps(
                [
                    {**journal_json(o.info), "removed": o.removed, "kept": o.reason or None}
                    for o in outcomes
                ],
                indent=2,
                ensure_ascii=False,
            )
        )
        return 0
    freed = 0
    for outcome in outcomes:
        name = outcome.info.path.name
        if outcome.reason:
            click.echo(f"{name}: {outcome.reason}")
            continue
        freed += outcome.info.size_on_disk
        click.echo(f"{'would delete' if dry_run else 'deleted'} {name}")
    went = [o for o in outcomes if not o.reason]
    click.echo(
        f"{'would free' if dry_run else 'freed'} {format_bytes(freed)} in {len(went)} journals; "
        f"{len(outcomes) - len(went)} kept"
    )
    return 0
