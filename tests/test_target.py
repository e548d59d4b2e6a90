"""What a job is aimed at, from its settings: the remote folder's one spelling, the target
check, the journal path."""

from __future__ import annotations

from pathlib import Path

import pytest

from bulkdrive.errors import ConfigError
from bulkdrive.journal import JobKey
from bulkdrive.settings import load_settings
from bulkdrive.target import check_target, journal_path_of, remote_folder_of


@pytest.mark.parametrize(
    ("typed", "folder"),
    [("\\", "\\"), ("a\\b", "\\a\\b"), ("\\a\\b\\", "\\a\\b"), ("/a/b", "\\a\\b")],
)
def test_a_remote_folder_has_one_spelling(typed: str, folder: str) -> None:
    assert remote_folder_of(typed) == folder


def test_a_bad_remote_folder_names_the_flag_it_came_from() -> None:
    with pytest.raises(ConfigError, match=r"^--to: .*'\.\.'"):
        remote_folder_of("a\\..\\b")
    with pytest.raises(ConfigError, match=r"^REMOTE_FOLDER: "):
        remote_folder_of("a\\..\\b", "REMOTE_FOLDER")


def test_a_user_without_a_url_is_a_mistake_that_names_where_it_came_from() -> None:
    settings = load_settings({}, environ={"BULKDRIVE_USER": "ann"})
    with pytest.raises(ConfigError, match=r"--url is missing: --user \(environment\)"):
        check_target(settings, environ={})
    check_target(load_settings({}, environ={}), environ={})  # nothing given: the emulator


def test_journal_flag_wins_over_the_jobs_own_journal(tmp_path: Path) -> None:
    key = JobKey(url="https://h/api", share="1", remote_folder="\\", source=str(tmp_path))
    given = load_settings({"journal": str(tmp_path / "j.sqlite")}, environ={})
    assert journal_path_of(given, key) == tmp_path / "j.sqlite"
    sharded = load_settings({"shard": "1/4"}, environ={})
    assert journal_path_of(sharded, key) != journal_path_of(load_settings({}, environ={}), key)
