"""The options of `bulkdrive upload` (and of the other commands) as one typed, frozen object.

`Settings` is the one table of options: each field carries its parser and help, the
defaults of the ones that set a TransferConfig come from `config`'s dataclasses, and
`load_settings` fills it from flags > environment (BULKDRIVE_*) > TOML file > defaults,
remembering where each value came from. `transfer_config` turns it into the run's limits.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, TypeVar

from bulkdrive.config import (
    CHUNKS_PER_TRANSFER,
    MAX_TRANSFERS,
    RetryPolicy,
    Timeouts,
    TransferConfig,
)
from bulkdrive.errors import ConfigError
from bulkdrive.protocol import BLOCK_SIZE

T = TypeVar("T")

ENV_PREFIX = "BULKDRIVE_"

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "ki": 1024,
    "kib": 1024,
    "mi": 1024**2,
    "mib": 1024**2,
    "gi": 1024**3,
    "gib": 1024**3,
    "ti": 1024**4,
    "tib": 1024**4,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*(?:/s)?\s*$")


def parse_size(value: object) -> int:
    """`4MiB`, `10M`, `512k`, `1.5GiB`, `4194304` → bytes (K/M/G are 1000-based, Ki/Mi/Gi 1024)."""
    if isinstance(value, bool):
        raise ValueError(f"not a size: {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"a size cannot be negative: {value}")
        return value
    match = _SIZE.match(str(value))
    if not match or match.group(2).lower() not in _UNITS:
        raise ValueError(f"not a size: {value!r} (examples: 4MiB, 10M, 65536)")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def _positive_int(value: object) -> int:
    if isinstance(value, bool):
        raise ValueError(f"not a whole number: {value!r}")
    try:
        number = int(str(value).strip())
    except ValueError:
        raise ValueError(f"not a whole number: {value!r}") from None
    if number < 1:
        raise ValueError(f"must be at least 1, not {number}")
    return number


#: `--transfers auto`.
AUTO: Literal["auto"] = "auto"


def _transfer_count(value: object) -> int:
    number = _positive_int(value)
    if number > MAX_TRANSFERS:
        raise ValueError(f"must be at most {MAX_TRANSFERS}, not {number}")
    return number


def _transfers(value: object) -> int | Literal["auto"]:
    if isinstance(value, str) and value.strip().lower() == AUTO:
        return AUTO
    return _transfer_count(value)


def _seconds(value: object) -> float:
    try:
        number = float(str(value).strip())
    except ValueError:
        raise ValueError(f"not a number of seconds: {value!r}") from None
    if number <= 0:
        raise ValueError(f"must be more than 0 seconds, not {number}")
    return number


def _bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not true or false: {value!r}")


def _text(value: object) -> str:
    if not isinstance(value, str | int) or isinstance(value, bool):
        raise ValueError(f"not a string: {value!r}")
    return str(value)


def _invalid_names(value: object) -> str:
    text = _text(value).strip().lower()
    if text not in ("escape", "fail"):
        raise ValueError(f"not escape or fail: {value!r}")
    return text


_SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


def _shard(value: object) -> str:
    """`K/N` (0 ≤ K < N), as "K/N"; `bulkdrive.shard` gives it its meaning."""
    match = _SHARD.match(_text(value))
    if match is None:
        raise ValueError(f"not K/N: {value!r} (e.g. 0/4 for the first of four)")
    index, count = int(match.group(1)), int(match.group(2))
    if not 0 <= index < count:
        raise ValueError(f"{index}/{count}: K must be 0 to N-1, and N at least 1")
    return f"{index}/{count}"


_CLUSTER = re.compile(r"^(local:[1-9]\d*|(tcp|tls)://\S+)$")


def _cluster(value: object) -> str:
    text = _text(value).strip()
    if not _CLUSTER.match(text):
        raise ValueError(f"not local:N or tcp://HOST:PORT (or tls://): {value!r}")
    return text


def _globs(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        # From the environment: a comma-separated list.
        return tuple(p.strip() for p in value.split(",") if p.strip())
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ValueError(f"not a list of patterns: {value!r}")


@dataclass(frozen=True)
class Setting:
    """One option of `bulkdrive upload`: its key (the flag, environment variable and TOML key
    are made from it), how a raw value is parsed, its default and its one-line help."""

    key: str
    parse: Callable[[object], Any]
    default: Any
    help: str


def _option(default: T, parse: Callable[[object], T], help: str) -> T:
    """A field of `Settings`: its default, parser and help ride in the field's metadata, so the
    dataclass is the one table of options (mypy checks the default and the parser against the
    field's type)."""
    return field(default=default, metadata={"parse": parse, "help": help})


#: The defaults of the options that set a TransferConfig come from the dataclasses themselves.
_DEFAULT = TransferConfig()


@dataclass(frozen=True)
class Settings:
    """Every option of `bulkdrive upload`, typed, in the order config.example.toml documents
    them; `load_settings` fills them from flags > environment > file > defaults."""

    url: str | None = _option(
        None, _text, "server root, https://HOST/webconsole/api; none: local emulator"
    )
    share: str | None = _option(
        None, _text, "share id (syncWebFolderId); none: the user's own drive"
    )
    to: str = _option("\\", _text, "remote folder to upload into, backslash path")
    user: str | None = _option(None, _text, "user name for Login")
    password_file: str | None = _option(None, _text, "file whose first line is the password")
    transfers: int | Literal["auto"] = _option(
        _DEFAULT.transfers,
        _transfers,
        'files in flight, or "auto"; memory <= transfers x 2 x chunk_size',
    )
    max_transfers: int = _option(
        256, _transfer_count, "the most files in flight under transfers auto"
    )
    max_memory: int = _option(1024**3, parse_size, "file data in memory under transfers auto")
    chunk_size: int = _option(
        _DEFAULT.chunk_size, parse_size, "bytes per request; 4MiB unless verify is off"
    )
    verify: bool = _option(
        _DEFAULT.verify, _bool, "block-level SHA-256 integrity check (off for V11 SP8 servers)"
    )
    retries: int = _option(
        _DEFAULT.retry.attempts, _positive_int, "attempts in a row without progress, per file"
    )
    give_up_after: float = _option(
        _DEFAULT.retry.give_up_after,
        _seconds,
        "stop the run when every request failed (no connection, 5xx) for this many seconds",
    )
    bwlimit: int = _option(0, parse_size, "bytes per second for the whole run, 0 = unlimited")
    include: tuple[str, ...] = _option(
        (), _globs, "only upload paths matching these globs (** spans folders)"
    )
    exclude: tuple[str, ...] = _option((), _globs, "skip paths matching these globs")
    exclude_from: str | None = _option(None, _text, "file with one exclude glob per line")
    min_size: int = _option(0, parse_size, "skip files smaller than this")
    max_size: int = _option(0, parse_size, "skip files larger than this, 0 = no limit")
    follow_symlinks: bool = _option(False, _bool, "follow symbolic links (loops are detected)")
    invalid_names: str = _option(
        "escape",
        _invalid_names,
        "names that are not valid UTF-8: escape (each bad byte as \u201bXX) or fail the file",
    )
    insecure: bool = _option(False, _bool, "turn TLS certificate verification off")
    ca_bundle: str | None = _option(None, _text, "PEM file of CA certificates to trust")
    journal: str | None = _option(
        None, _text, "resume journal; default: derived from url, share, to, SRC"
    )
    check_remote: bool = _option(
        False, _bool, "skip files the remote folder already has (size+mtime)"
    )
    create_empty_folders: bool = _option(
        False,
        _bool,
        "create remote folders that hold no files too (as rclone's --create-empty-src-dirs)",
    )
    connect_timeout: float = _option(_DEFAULT.timeouts.connect, _seconds, "seconds to connect")
    read_timeout: float = _option(
        _DEFAULT.timeouts.read, _seconds, "seconds to wait for a response"
    )
    stats_interval: float = _option(
        10.0, _seconds, "seconds between plain stat lines off a terminal"
    )
    data_dir: str = _option("bulkdrive-data", _text, "embedded emulator's storage folder")
    shard: str | None = _option(None, _shard, "K/N: only the files whose path hash modulo N is K")
    cluster: str | None = _option(
        None, _cluster, "local:N worker processes, or a Dask scheduler's address"
    )
    worker_path: str | None = _option(
        None, _text, "where the cluster's workers see SRC, if not at its path"
    )
    #: Where each option's value came from: key → "flag" | "environment" | "<file>" | "default".
    origin: Mapping[str, str] = field(default_factory=dict, compare=False)
    config_file: Path | None = None


#: The options, read off `Settings`' fields (not a second table of names and defaults).
SETTINGS: tuple[Setting, ...] = tuple(
    Setting(f.name, f.metadata["parse"], f.default, f.metadata["help"])
    for f in fields(Settings)
    if "parse" in f.metadata
)
_BY_KEY = {s.key: s for s in SETTINGS}


def user_config_dir() -> Path:
    if sys.platform == "win32":
        return Path(os.environ.get("APPDATA", Path.home())) / "bulkdrive"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "bulkdrive"
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "bulkdrive"


def find_config_file(explicit: str | None) -> Path | None:
    """`--config FILE`, else `./bulkdrive.toml`, else the user's config folder."""
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        return path
    for candidate in (Path("bulkdrive.toml"), user_config_dir() / "config.toml"):
        if candidate.is_file():
            return candidate
    return None


def read_config_file(path: Path) -> dict[str, Any]:
    import tomllib  # only when there is a file to read: ~2 ms of every start otherwise

    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    # Accept keys at the top level or under [upload]; dashes or underscores.
    table = data.get("upload", data) if isinstance(data.get("upload"), dict) else data
    return {str(k).replace("-", "_"): v for k, v in table.items() if not isinstance(v, dict)}


def load_settings(
    flags: Mapping[str, Any],
    *,
    config_option: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Merge the sources; `flags` holds only the flags given (None means not given)."""
    environ = os.environ if environ is None else environ
    config_file = find_config_file(config_option or environ.get(ENV_PREFIX + "CONFIG"))
    from_file = read_config_file(config_file) if config_file else {}
    unknown = sorted(set(from_file) - set(_BY_KEY))
    if unknown:
        raise ConfigError(f"{config_file}: unknown key {unknown[0]!r} (see config.example.toml)")
    values: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for setting in SETTINGS:
        env_name = ENV_PREFIX + setting.key.upper()
        sources = (
            ("flag", f"--{setting.key.replace('_', '-')}", flags.get(setting.key)),
            ("environment", env_name, environ.get(env_name)),
            (str(config_file), f"key {setting.key!r} in {config_file}", from_file.get(setting.key)),
        )
        for where, name, raw in sources:
            if raw is None or (where == "flag" and raw == ()):
                continue
            try:
                values[setting.key] = setting.parse(raw)
            except ValueError as exc:
                raise ConfigError(f"{name}: {exc}") from None
            origin[setting.key] = where
            break
        else:
            values[setting.key] = setting.default
            origin[setting.key] = "default"
    settings = Settings(**values, origin=origin, config_file=config_file)
    transfer_config(settings)  # validates the combination
    return settings


def transfer_config(settings: Settings) -> TransferConfig:
    chunk = settings.chunk_size
    if settings.verify and chunk != BLOCK_SIZE:
        raise ConfigError(
            "--chunk-size: the integrity check needs chunks of exactly 4MiB; "
            "use --no-verify to choose another size"
        )
    if chunk < 1:
        raise ConfigError("--chunk-size: must be at least 1 byte")
    auto = settings.transfers == AUTO
    if settings.transfers == AUTO:
        # The memory bound holds at any limit the tuner reaches.
        by_memory = settings.max_memory // (CHUNKS_PER_TRANSFER * chunk)
        if by_memory < 1:
            raise ConfigError(
                f"--max-memory: {settings.max_memory} bytes cannot hold one transfer "
                f"(2 x chunk size = {CHUNKS_PER_TRANSFER * chunk} bytes)"
            )
        transfers = min(settings.max_transfers, by_memory)
    else:
        transfers = settings.transfers
    return TransferConfig(
        transfers=transfers,
        auto_transfers=auto,
        chunk_size=chunk,
        verify=settings.verify,
        bwlimit=settings.bwlimit or None,
        retry=RetryPolicy(attempts=settings.retries, give_up_after=settings.give_up_after),
        timeouts=Timeouts(connect=settings.connect_timeout, read=settings.read_timeout),
        verify_tls=not settings.insecure,
        ca_bundle=settings.ca_bundle,
    )
