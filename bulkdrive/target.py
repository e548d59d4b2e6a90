"""What a job is aimed at, from its settings: the server (or an embedded emulator on
127.0.0.1 when no target is given), the job's key and resume journal, and what the walk keeps.

`upload`, `check` and `status` all reach their job through here, so they mean the same one.
"""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from bulkdrive import errors
from bulkdrive.config import Credentials, Secret
from bulkdrive.globs import read_exclude_from
from bulkdrive.journal import JobKey, default_journal_path
from bulkdrive.protocol import join_remote_path, split_remote_path
from bulkdrive.settings import Settings
from bulkdrive.shard import Shard, parse_shard, shard_journal_path
from bulkdrive.walk import WalkFilters

EMBEDDED_USER = "bulkdrive"
EMBEDDED_SHARE = "1"


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


def remote_folder_of(text: str, flag: str = "--to") -> str:
    """A remote folder as typed (`--to`, `ls`'s REMOTE_FOLDER) in its one spelling, or a
    ConfigError that names the flag."""
    try:
        return join_remote_path(split_remote_path(text))
    except ValueError as exc:
        raise errors.ConfigError(f"{flag}: {exc}") from None
