"""The commands of a migration besides `upload`: find the share (`shares`), look at the remote
side (`ls`), prove the result (`check`) and tidy the state folder (`journals`).

Thin click commands: the work is done in `listing`, `check` and `journals`; this module turns
settings into a logged-in client and errors into one line and the documented exit code.
Loaded only when one of these commands runs (see `cli._Commands`).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, NoReturn, TextIO

import anyio
import click
from rich.console import Console
from rich.table import Table

from bulkdrive import cli, errors
from bulkdrive.client import EdgeDriveClient
from bulkdrive.config import Settings, load_settings, transfer_config
from bulkdrive.job import open_target
from bulkdrive.listing import DEFAULT_CONCURRENCY, RemoteEntry, TreeListing
from bulkdrive.protocol import ShareInfo, join_remote_path, split_remote_path

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
) -> AsyncIterator[EdgeDriveClient]:
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
            yield client


def remote_folder_of(text: str, flag: str) -> str:
    try:
        return join_remote_path(split_remote_path(text))
    except ValueError as exc:
        raise errors.ConfigError(f"{flag}: {exc}") from None


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
        async with connected(settings, with_share=False) as client:
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
        Console(highlight=False).print(table)
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
        async with connected(settings, concurrency=concurrency) as client:
            listing = TreeListing(client, folder, recursive=recursive, concurrency=concurrency)
            await print_listing(listing, as_json, sys.stdout)
        for failure in listing.failures:
            message = f"bulkdrive: error: cannot list {failure.folder}: {failure.reason}"
            click.echo(message, err=True)
        return 1 if listing.statistics().failures else 0

    run_command(work, verbose)
