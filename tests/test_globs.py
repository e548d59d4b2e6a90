"""Include and exclude globs: their meaning on "/"-separated paths, and --exclude-from files."""

from __future__ import annotations

import fnmatch
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bulkdrive.errors import ConfigError
from bulkdrive.globs import compile_globs, read_exclude_from


def test_exclude_from_file(tmp_path: Path) -> None:
    listing = tmp_path / "exclude.txt"
    listing.write_text("# build output\n\n*.o\n  cache/  \n\\#notes#\n# *.txt\n", "utf-8")
    patterns = read_exclude_from(listing)
    assert patterns == ("*.o", "cache/", "\\#notes#")
    globs = compile_globs(patterns)
    assert globs.matches("src/main.o", is_folder=False)
    assert globs.matches("a/cache", is_folder=True)
    assert not globs.matches("a/cache", is_folder=False)
    assert globs.matches("#notes#", is_folder=False)
    assert not globs.matches("x.txt", is_folder=False)


def test_unreadable_exclude_file_is_a_one_line_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read exclude file") as err:
        read_exclude_from(tmp_path / "missing")
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="cannot read exclude file"):
        read_exclude_from(tmp_path)  # a folder


@pytest.mark.parametrize(
    ("pattern", "path", "is_folder", "matches"),
    [
        ("**/x", "x", False, True),
        ("**/x", "a/b/x", False, True),
        ("a/**/b", "a/b", True, True),
        ("a/**/b", "a/1/2/b", True, True),
        ("a/**", "a/1/2", False, True),
        ("a/**", "ab/1", False, False),
        ("a*", "b/a/c", False, False),
        ("a*", "b/ac", False, True),
        ("a?c", "a/c", False, False),
        ("[/]x", "/x", False, False),
        ("\\*", "*", False, True),
        ("\\*", "a", False, False),
        ("[ab", "[ab", False, True),
        ("dir/", "dir", False, False),
        ("dir/", "x/dir", True, True),
        ("./top", "top", False, True),
        ("./top", "a/top", False, False),
    ],
)
def test_glob_semantics(pattern: str, path: str, is_folder: bool, matches: bool) -> None:
    assert compile_globs([pattern]).matches(path, is_folder=is_folder) is matches


@given(
    st.text(alphabet="ab.*?", min_size=1, max_size=8),
    st.text(alphabet="ab.", min_size=1, max_size=8),
)
def test_glob_agrees_with_fnmatch_on_one_name(pattern: str, name: str) -> None:
    assert compile_globs([pattern]).matches(name, is_folder=False) is fnmatch.fnmatchcase(
        name, pattern
    )
