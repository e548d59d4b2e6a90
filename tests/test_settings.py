"""Settings: one typed object; flag > environment > file > default, with errors that name the key;
the flags' --help as it was."""

from __future__ import annotations

import dataclasses
import itertools
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bulkdrive.errors import ConfigError
from bulkdrive.settings import SETTINGS, Settings, load_settings, parse_size, transfer_config


def _write(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_defaults_without_any_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "nothing"))
    settings = load_settings({}, environ={})
    assert settings.transfers == 8
    assert settings.chunk_size == 4 * 1024 * 1024
    assert settings.verify is True
    assert settings.url is None
    assert settings.config_file is None
    assert set(settings.origin.values()) == {"default"}


def test_precedence_flag_over_env_over_file(tmp_path: Path) -> None:
    config = _write(tmp_path / "c.toml", 'transfers = 3\nretries = 4\nshare = "7"\n')
    environ = {"BULKDRIVE_TRANSFERS": "5", "BULKDRIVE_RETRIES": "6"}
    settings = load_settings({"transfers": "9"}, config_option=config, environ=environ)
    assert settings.transfers == 9  # flag
    assert settings.retries == 6  # environment beats file
    assert settings.share == "7"  # file beats default
    assert settings.origin["transfers"] == "flag"
    assert settings.origin["retries"] == "environment"
    assert settings.origin["share"] == config


#: Per option, a raw value as a flag, as an environment variable and in a TOML file, each
#: different from the next one down (and the file's from the default).
SOURCES: dict[str, tuple[Any, str, Any]] = {
    "url": ("https://a.example/webconsole/api", "https://b.example/api", "https://c.example/api"),
    "share": ("1", "2", "3"),
    "to": ("\\a", "\\b", "\\c"),
    "user": ("ann", "bob", "cy"),
    "password_file": ("p1", "p2", "p3"),
    "transfers": ("9", "auto", 3),
    "max_transfers": ("5", "6", 7),
    "max_memory": ("2GiB", "3GiB", "512MiB"),
    "chunk_size": ("2MiB", "1MiB", "3MiB"),
    "verify": (False, "true", False),
    "retries": ("2", "3", 4),
    "give_up_after": ("1.5", "2", 3),
    "bwlimit": ("1M", "2M", "3MiB"),
    "include": (("a/**",), "b/**,c", ["d"]),
    "exclude": (("*.tmp",), "*.bak", ["*.o"]),
    "exclude_from": ("x1", "x2", "x3"),
    "min_size": ("1k", "2k", 3),
    "max_size": ("1M", "2M", 3),
    "follow_symlinks": (True, "0", True),
    "invalid_names": ("fail", "escape", "fail"),
    "insecure": (True, "no", True),
    "ca_bundle": ("c1.pem", "c2.pem", "c3.pem"),
    "journal": ("j1", "j2", "j3"),
    "check_remote": (True, "off", True),
    "create_empty_folders": (True, "false", True),
    "connect_timeout": ("1", "2", 3.5),
    "read_timeout": ("4", "5", 6),
    "stats_interval": ("1", "2", 3),
    "data_dir": ("d1", "d2", "d3"),
    "shard": ("0/2", "1/2", "2/4"),
    "cluster": ("local:2", "tcp://h:8786", "local:3"),
    "worker_path": ("/w1", "/w2", "/w3"),
}


def test_every_option_is_a_typed_field() -> None:
    """`Settings` is the one table: SETTINGS is read off its fields, in the same order."""
    options = [f.name for f in dataclasses.fields(Settings) if "parse" in f.metadata]
    assert options == [s.key for s in SETTINGS]
    assert sorted(SOURCES) == sorted(options), "give the new option sources in SOURCES"
    defaults = Settings()
    for setting in SETTINGS:
        assert getattr(defaults, setting.key) == setting.default
    with pytest.raises(dataclasses.FrozenInstanceError):
        defaults.transfers = 3  # type: ignore[misc]


@pytest.mark.parametrize("key", [s.key for s in SETTINGS])
def test_every_option_keeps_flag_over_env_over_file_over_default(key: str, tmp_path: Path) -> None:
    flag, env, in_file = SOURCES[key]
    setting = next(s for s in SETTINGS if s.key == key)
    expected = [setting.parse(flag), setting.parse(env), setting.parse(in_file), setting.default]
    assert all(a != b for a, b in itertools.pairwise(expected)), expected
    toml_value = f'"{in_file}"' if isinstance(in_file, str) else repr(in_file).lower()
    if isinstance(in_file, list):
        toml_value = "[" + ", ".join(f'"{v}"' for v in in_file) + "]"
    config = _write(tmp_path / "c.toml", f"{key} = {toml_value.replace(chr(92), chr(92) * 2)}\n")
    # the rest as the example file says, so that the combination stays valid (4 MiB chunks
    # with verify on)
    unverified = {"verify": False} if key == "chunk_size" else {}
    environ = {"BULKDRIVE_" + key.upper(): env}
    sources: list[tuple[dict[str, Any], dict[str, str], str | None, str]] = [
        ({key: flag, **unverified}, environ, config, "flag"),
        (unverified, environ, config, "environment"),
        (unverified, {}, config, config),
        (unverified, {}, None, "default"),
    ]
    for (flags, env_vars, file, origin), value in zip(sources, expected, strict=True):
        settings = load_settings(flags, config_option=file, environ=env_vars)
        assert getattr(settings, key) == value, origin
        assert settings.origin[key] == origin


def test_file_found_in_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    _write(tmp_path / "bulkdrive.toml", "[upload]\ntransfers = 2\n")
    settings = load_settings({}, environ={})
    assert settings.transfers == 2
    assert settings.config_file == Path("bulkdrive.toml")


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("transfers = 0\n", "transfers"),
        ('transfers = "many"\n', "transfers"),
        ('chunk_size = "4 parsecs"\n', "chunk_size"),
        ("verify = 3\n", "verify"),
        ("colour = 1\n", "colour"),
        ('include = "a,b"\nexclude = 5\n', "exclude"),
    ],
)
def test_bad_value_names_the_key(tmp_path: Path, text: str, key: str) -> None:
    config = _write(tmp_path / "bad.toml", text)
    with pytest.raises(ConfigError) as info:
        load_settings({}, config_option=config, environ={})
    message = str(info.value)
    assert key in message
    assert "\n" not in message
    assert info.value.exit_code == 2


def test_bad_env_value_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="BULKDRIVE_BWLIMIT"):
        load_settings({}, environ={"BULKDRIVE_BWLIMIT": "fast"})


def test_invalid_toml_is_one_line(tmp_path: Path) -> None:
    config = _write(tmp_path / "broken.toml", "transfers = = 3\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings({}, config_option=config, environ={})


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_settings({}, config_option=str(tmp_path / "nope.toml"), environ={})


def test_chunk_size_needs_no_verify() -> None:
    with pytest.raises(ConfigError, match="--no-verify"):
        load_settings({"chunk_size": "1MiB"}, environ={})
    settings = load_settings({"chunk_size": "1MiB", "verify": False}, environ={})
    assert transfer_config(settings).chunk_size == 1024 * 1024


def test_globs_from_environment_are_comma_separated() -> None:
    settings = load_settings({}, environ={"BULKDRIVE_EXCLUDE": "*.tmp, build/**"})
    assert settings.exclude == ("*.tmp", "build/**")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("4MiB", 4194304),
        ("10M", 10_000_000),
        ("512k", 512_000),
        ("1.5GiB", 1610612736),
        ("65536", 65536),
        ("50MiB/s", 52428800),
        (0, 0),
    ],
)
def test_parse_size(text: str | int, expected: int) -> None:
    assert parse_size(text) == expected


@given(st.integers(min_value=0, max_value=2**50), st.sampled_from(["", "B", "KiB", "MiB", "GiB"]))
def test_parse_size_round_trips_binary_units(number: int, unit: str) -> None:
    factor = {"": 1, "B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}[unit]
    assert parse_size(f"{number}{unit}") == number * factor


def test_example_config_documents_every_key() -> None:
    path = Path(__file__).parent.parent / "config.example.toml"
    text = path.read_text(encoding="utf-8")
    tomllib.loads(text)  # valid TOML
    keys = re.findall(r"^(?:# )?([a-z_]+) = ", text, re.MULTILINE)
    assert keys == [setting.key for setting in SETTINGS]  # each once, in the same order
    assert "password" not in {line.split(" = ")[0] for line in text.splitlines()}


def test_example_config_loads_as_defaults(tmp_path: Path) -> None:
    path = Path(__file__).parent.parent / "config.example.toml"
    settings = load_settings({}, config_option=str(path), environ={})
    for setting in SETTINGS:
        if setting.key in settings.origin and settings.origin[setting.key] != "default":
            assert getattr(settings, setting.key) == setting.default or setting.key == "include"


# --- the flags: --help as it was before settings became typed -----------------------------

GOLDEN = Path(__file__).parent / "golden"


@pytest.mark.parametrize("command", ["upload", "shares", "ls", "check"])
def test_help_of_the_setting_flags_stays_as_it_is(command: str) -> None:
    """Each setting's flag, metavar, help and default (read off `Settings`) in --help, pinned.
    On purpose changed? Write the new text to tests/golden/COMMAND-help.txt (width 100)."""
    from click.testing import CliRunner

    from bulkdrive.cli import main

    result = CliRunner().invoke(
        main, [command, "--help"], prog_name="bulkdrive", terminal_width=100
    )
    assert result.exit_code == 0, result.output
    assert result.output == (GOLDEN / f"{command}-help.txt").read_text(encoding="utf-8")
