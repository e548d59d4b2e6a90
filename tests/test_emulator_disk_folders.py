"""disk.make_folder_in_place (createfolder without realpath, when the parents exist) answers
exactly as the careful disk.make_folder does, on real folders, files and symbolic links."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bulkdrive.emulator.disk import make_folder, make_folder_in_place
from bulkdrive.emulator.refusals import StoreError


def _share(base: Path) -> Path:
    share = base / "share"
    (share / "a" / "b").mkdir(parents=True)
    (share / "a" / "exists").mkdir()
    (share / "a" / "f").write_bytes(b"file")
    (share / "a" / "link").symlink_to(share / "a" / "b")
    (share / "a" / "flink").symlink_to(share / "a" / "f")
    return share


def _outcome(make: object) -> tuple[str, object]:
    try:
        st = make()  # type: ignore[operator]
    except StoreError as exc:
        return "refused", (exc.why, exc.status, exc.message)
    return "made", None if st is None else "directory"


CASES = [
    (("a",), "new"),
    (("a", "b"), "deeper"),
    (("a",), "exists"),
    (("a",), "f"),
    (("a",), "flink"),
    (("a",), "link"),
    (("a", "f"), "x"),
    (("a", "f", "g"), "x"),
    (("a", "link"), "x"),
    (("a", "flink"), "x"),
]


@pytest.mark.parametrize(("parent", "name"), CASES)
@pytest.mark.parametrize("strict", [True, False])
def test_in_place_answers_as_make_folder(
    tmp_path: Path, parent: tuple[str, ...], name: str, strict: bool
) -> None:
    careful = _share(tmp_path / "careful")
    quick = _share(tmp_path / "quick")
    expected = _outcome(lambda: make_folder(careful, parent, name, strict))
    got = _outcome(lambda: make_folder_in_place(os.fspath(quick), parent, name))
    assert got == expected
    made = careful.joinpath(*parent, name)
    if expected == ("made", "directory"):
        assert (
            quick.joinpath(*parent, name).is_dir()
            and not quick.joinpath(*parent, name).is_symlink()
        )
        assert made.is_dir()


@pytest.mark.parametrize(
    ("parent", "name"), [((), "top"), (("missing",), "x"), (("a", "missing"), "x")]
)
def test_in_place_leaves_the_root_and_missing_parents_to_make_folder(
    tmp_path: Path, parent: tuple[str, ...], name: str
) -> None:
    quick = _share(tmp_path)
    assert make_folder_in_place(os.fspath(quick), parent, name) is None
    assert not quick.joinpath(*parent, name).exists()
