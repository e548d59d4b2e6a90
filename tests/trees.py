"""Source trees for end-to-end tests, and the check that the server stored them exactly."""

from __future__ import annotations

import os
from collections.abc import Collection, Sequence
from pathlib import Path

ODD_NAMES = (
    "with space.txt",
    "ünïcødé-名前.txt",
    "hash#tag.txt",
    "per%cent.txt",
    ".leading-dot",
    "x" * 200 + ".txt",
    "emoji-🙂.txt",
)


def make_tree(root: Path, *, small_files: int = 100, large: tuple[int, ...] = ()) -> Path:
    """Nested folders, empty files, odd names, `small_files` small files, and `large` sizes."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "empty.txt").write_bytes(b"")
    (root / "a" / "b" / "c").mkdir(parents=True)
    (root / "a" / "b" / "c" / "deep.txt").write_bytes(b"deep")
    (root / "a" / "empty-in-folder").write_bytes(b"")
    odd = root / "odd names"
    odd.mkdir()
    for i, name in enumerate(ODD_NAMES):
        (odd / name).write_bytes(name.encode() * (i + 1))
    for i in range(small_files):
        folder = root / "many" / f"d{i // 100:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"f{i:04d}.bin").write_bytes(os.urandom(i % 3000))
    for i, size in enumerate(large):
        (root / f"large-{i}.bin").write_bytes(os.urandom(size))
    return root


def assert_stored(source: Path, stored: Path, *, ignore: Collection[str] = ()) -> int:
    """Every regular file under `source` is byte-identical under `stored`; returns the count."""
    count = 0
    for dirpath, _dirs, files in os.walk(source):
        for name in files:
            local = Path(dirpath) / name
            relative = local.relative_to(source)
            if relative.as_posix() in ignore or local.is_symlink():
                continue
            remote = stored / relative
            assert remote.is_file(), f"missing on the server: {relative}"
            assert remote.read_bytes() == local.read_bytes(), f"bytes differ: {relative}"
            count += 1
    return count


#: Drops the capabilities that let root read any folder (CI runs the tests as root).
NO_READ_OVERRIDE = (
    "setpriv",
    "--bounding-set",
    "-dac_override,-dac_read_search",
    "--inh-caps",
    "-dac_override,-dac_read_search",
)


def without_read_override(argv: Sequence[str]) -> list[str]:
    """`argv` run so that a folder of mode 000 cannot be read, even by root."""
    return [*NO_READ_OVERRIDE, *argv] if os.geteuid() == 0 else list(argv)
