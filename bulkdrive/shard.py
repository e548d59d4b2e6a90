"""`--shard K/N`: which files of SRC this process uploads, decided by the path alone.

A file belongs to shard `shard_of(relative, N)`: the first 8 bytes of the SHA-256 of its path
relative to SRC (names joined with "/", the name's own bytes: UTF-8, or on POSIX the raw bytes
of a name that is not UTF-8), read as a big-endian unsigned integer, modulo N. Nothing else goes
in (no size, time, host or Python's `hash`), so every platform and Python version, and every
run of every shard, agree on it: N processes with K = 0 … N-1 cover the tree exactly once.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

_SPEC = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


@dataclass(frozen=True, slots=True)
class Shard:
    """Shard `index` of `count` (0 ≤ index < count)."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(f"{self}: K must be 0 to N-1, and N at least 1")

    def owns(self, relative: str) -> bool:
        return self.count == 1 or shard_of(relative, self.count) == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def shard_of(relative: str, count: int) -> int:
    """The shard (0 … count-1) of a "/"-separated path relative to SRC."""
    raw = relative.encode("utf-8", "surrogateescape")
    return int.from_bytes(hashlib.sha256(raw).digest()[:8], "big") % count


def parse_shard(text: str) -> Shard:
    """`"2/8"` → Shard(2, 8); anything else is a ValueError that says what is wrong."""
    match = _SPEC.match(text)
    if match is None:
        raise ValueError(f"not K/N: {text!r} (e.g. 0/4 for the first of four)")
    return Shard(int(match.group(1)), int(match.group(2)))


def shard_journal_path(path: Path, shard: Shard) -> Path:
    """Each shard's own journal beside the job's default one: several shards may run at once,
    and a journal has one writer."""
    return path.with_name(f"{path.stem}.shard-{shard.index}-of-{shard.count}{path.suffix}")
