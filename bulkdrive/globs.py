"""Include and exclude globs over paths relative to SRC: compiled once, matched per path, and
read from an `--exclude-from` file. Pure (no I/O but reading that file)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from bulkdrive.errors import ConfigError


def glob_to_regex(pattern: str) -> str:
    """One glob as a regular expression over a "/"-separated relative path.

    `*` and `?` stay within one folder name, `[...]` is a character class (`[!...]` negates),
    `**/` spans zero or more folders, `**` elsewhere spans anything, `\\x` is a literal x.
    """
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            j = i
            while j < n and pattern[j] == "*":
                j += 1
            if j - i == 1:
                out.append("[^/]*")
            elif (i == 0 or pattern[i - 1] == "/") and j < n and pattern[j] == "/":
                out.append("(?:[^/]*/)*")
                j += 1
            else:
                out.append(".*")
            i = j
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[":
            j = i + 1
            if j < n and pattern[j] in "!^":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1
            while j < n and pattern[j] != "]":
                j += 1
            if j >= n:  # no closing bracket: a literal "["
                out.append(re.escape(c))
                i += 1
                continue
            body = pattern[i + 1 : j]
            negate = body[:1] in ("!", "^")
            if negate:
                body = body[1:]
            body = "".join("\\" + ch if ch in "\\[]^" else ch for ch in body)
            out.append(f"[^/{body}]" if negate else f"(?!/)[{body}]")
            i = j + 1
        elif c == "\\" and i + 1 < n:
            out.append(re.escape(pattern[i + 1]))
            i += 2
        else:
            out.append(re.escape(c))
            i += 1
    return "".join(out)


@dataclass(frozen=True)
class GlobSet:
    """Compiled globs. A pattern without "/" matches the base name at any depth; one with "/"
    is anchored at SRC (a leading "/" is allowed); a trailing "/" matches folders only."""

    patterns: tuple[str, ...]
    any_kind: re.Pattern[str] | None
    folders_only: re.Pattern[str] | None

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def matches(self, relative: str, *, is_folder: bool) -> bool:
        if self.any_kind is not None and self.any_kind.fullmatch(relative):
            return True
        return (
            is_folder
            and self.folders_only is not None
            and self.folders_only.fullmatch(relative) is not None
        )


def compile_globs(patterns: Iterable[str]) -> GlobSet:
    """Compile include or exclude globs; a pattern that is not valid raises ConfigError."""
    kept: list[str] = []
    any_kind: list[str] = []
    folders_only: list[str] = []
    for raw in patterns:
        anchored = raw.startswith("./")
        pattern = raw.removeprefix("./")
        folder_only = pattern.endswith("/") and not pattern.endswith("\\/")
        pattern = pattern.rstrip("/") if folder_only else pattern
        anchored = anchored or "/" in pattern
        pattern = pattern.lstrip("/")
        if not pattern:
            continue
        regex = glob_to_regex(pattern)
        if not anchored:
            regex = "(?:.*/)?" + regex
        try:
            re.compile(regex)
        except re.error as exc:
            raise ConfigError(f"bad glob pattern {raw!r}: {exc}") from None
        kept.append(raw)
        (folders_only if folder_only else any_kind).append(regex)

    def joined(regexes: list[str]) -> re.Pattern[str] | None:
        if not regexes:
            return None
        return re.compile("|".join(f"(?:{r})" for r in regexes), re.DOTALL)

    return GlobSet(tuple(kept), joined(any_kind), joined(folders_only))


def read_exclude_from(path: Path) -> tuple[str, ...]:
    """The globs of an `--exclude-from` file: one a line, blank lines and `#` lines ignored.

    Surrounding whitespace is trimmed; write `\\#` for a pattern that starts with "#".
    """
    try:
        text = Path(path).read_text(encoding="utf-8", errors="surrogateescape")
    except OSError as exc:
        raise ConfigError(
            f"cannot read exclude file {path}: {exc.strerror or exc.__class__.__name__}"
        ) from None
    patterns = (line.strip() for line in text.splitlines())
    return tuple(p for p in patterns if p and not p.startswith("#"))
