"""Local file names as the server gets them.

A POSIX file name is bytes. Python hands it over decoded as UTF-8 with `surrogateescape`: each
byte that is not part of valid UTF-8 (a Latin-1 `é`, half of a Shift-JIS character) becomes a
lone surrogate U+DC80..U+DCFF, so the name is a `str` that holds every byte losslessly but
cannot be encoded as UTF-8. Edge Drive names are UTF-8 text, so such a name cannot be sent as
it is. `--invalid-names` says what to do:

- `escape` (the default), the approach of rclone's encoder for invalid UTF-8: each invalid
  byte becomes the quote character `‛` (U+201B) followed by the byte's two upper-case hex
  digits, so `b"m\\xe9.txt"` is stored as `m‛E9.txt`. A `‛` already in the name is doubled
  when it would otherwise read as the start of an escape (when it is followed by two
  upper-case hex digits or by another `‛`, or stands before an escaped byte). The mapping is
  deterministic and reversible (`local_name` undoes it), and leaves every valid name without
  such a `‛` unchanged.
- `fail`: a file whose path holds such a name is one failed file (`InvalidName`), never a
  stopped run.
"""

from __future__ import annotations

import enum
import re

from bulkdrive.errors import InvalidName

QUOTE = "\u201b"
_HEX = frozenset("0123456789ABCDEF")
_NEEDS_WORK = re.compile("[\udc80-\udcff\u201b]")
_ESCAPED = re.compile("\u201b(\u201b|[0-9A-F]{2})")


class InvalidNames(enum.StrEnum):
    ESCAPE = "escape"
    FAIL = "fail"


def is_utf8(name: str) -> bool:
    """Whether `name` came from valid UTF-8 bytes (holds no escaped byte)."""
    return name.isascii() or not any("\udc80" <= c <= "\udcff" for c in name)


def remote_name(name: str) -> str:
    """The `escape` mapping of one name (or a "/"-separated path: "/" is left alone)."""
    if name.isascii() or _NEEDS_WORK.search(name) is None:
        return name
    out: list[str] = []
    n = len(name)
    for i, c in enumerate(name):
        if "\udc80" <= c <= "\udcff":
            out.append(f"{QUOTE}{ord(c) - 0xDC00:02X}")
        elif c == QUOTE:
            after = name[i + 1 : i + 3]
            if (i + 1 < n and (after[0] == QUOTE or "\udc80" <= after[0] <= "\udcff")) or (
                len(after) == 2 and after[0] in _HEX and after[1] in _HEX
            ):
                out.append(QUOTE)
            out.append(QUOTE)
        else:
            out.append(c)
    return "".join(out)


def local_name(remote: str) -> str:
    """The inverse of `remote_name`: the local name, invalid bytes as lone surrogates."""

    def undo(match: re.Match[str]) -> str:
        code = match.group(1)
        if code == QUOTE:
            return QUOTE
        byte = int(code, 16)
        # A byte below 0x80 is valid UTF-8 on its own and never escaped; take it as it is.
        return chr(0xDC00 + byte) if byte >= 0x80 else chr(byte)

    return _ESCAPED.sub(undo, remote)


def check_name(relative: str, policy: InvalidNames) -> None:
    """Raise InvalidName when `policy` is `fail` and `relative` is not valid UTF-8."""
    if policy is InvalidNames.FAIL and not is_utf8(relative):
        shown = relative.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        raise InvalidName(f"the name is not valid UTF-8: {shown}")
