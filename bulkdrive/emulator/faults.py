"""Seeded fault injection for upload requests (spec §9).

Every upload request (initiate, chunk, full file) draws exactly once, in arrival order, from one
`random.Random(seed)`: the same seed and the same request sequence give the same faults.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

FAULT_500 = "500"
FAULT_503 = "503"
#: The connection is closed before the body is read: nothing is stored.
FAULT_RESET = "reset"
#: The body is stored, then the connection is closed without a response.
FAULT_LOST_RESPONSE = "lost-response"
#: The request waits `delay_seconds`, then is answered normally.
FAULT_DELAY = "delay"

KINDS = (FAULT_500, FAULT_503, FAULT_RESET, FAULT_LOST_RESPONSE, FAULT_DELAY)


def parse_kinds(items: Iterable[str]) -> tuple[str, ...]:
    """Fault kinds from names or comma lists; ValueError names the unknown kind."""
    kinds: list[str] = []
    for item in items:
        for name in item.split(","):
            name = name.strip().lower()
            if not name:
                continue
            if name not in KINDS:
                raise ValueError(f"unknown fault kind {name!r} (known: {', '.join(KINDS)})")
            if name not in kinds:
                kinds.append(name)
    return tuple(kinds)


class FaultInjector:
    """Decides, per upload request, whether it gets a fault and which one."""

    def __init__(
        self, rate: float, seed: int, kinds: tuple[str, ...], delay_seconds: float
    ) -> None:
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"fault rate must be between 0 and 1, not {rate}")
        if delay_seconds < 0:
            raise ValueError("fault delay must not be negative")
        self.rate = rate
        # No kinds named means every kind: a rate alone should still inject faults.
        self.kinds = parse_kinds(kinds) or KINDS
        self.delay_seconds = delay_seconds
        self._random = random.Random(seed)

    def draw(self) -> str | None:
        """One draw per upload request: a fault kind, or None for a normal answer."""
        if self.rate <= 0.0:
            return None
        if self._random.random() >= self.rate:
            return None
        return self._random.choice(self.kinds)
