"""py-spy's collapsed stacks → the functions with the most samples (self and inclusive %)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any


def hot_spots(raw_file: Path, top: int = 15) -> dict[str, Any]:
    """Self and inclusive sample shares per function from py-spy's collapsed stacks."""
    self_counts: dict[str, int] = {}
    incl_counts: dict[str, int] = {}
    total = 0
    for line in raw_file.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [_short(f) for f in stack.split(";")]
        self_counts[frames[-1]] = self_counts.get(frames[-1], 0) + count
        for frame in set(frames):
            incl_counts[frame] = incl_counts.get(frame, 0) + count
    ranked = sorted(self_counts.items(), key=lambda kv: kv[1], reverse=True)[:top]
    hot = [
        {
            "frame": frame,
            "self_pct": round(100 * n / total, 1),
            "incl_pct": round(100 * incl_counts[frame] / total, 1),
        }
        for frame, n in ranked
    ]
    return {"file": str(raw_file), "samples": total, "hot": hot}


_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>.*?)(?::(?P<line>\d+))?\)$")


def _short(frame: str) -> str:
    """`send (/x/site-packages/aiohttp/client.py:123)` → `send (aiohttp/client.py)`."""
    match = _FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    path = match.group("file")
    for marker in ("site-packages/", "lib/python3", "/work/main/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            if marker == "lib/python3":
                path = "stdlib:" + path.split("/", 1)[-1]
            break
    return f"{match.group('func')} ({path})"
