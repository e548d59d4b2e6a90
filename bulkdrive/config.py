"""What a run may do, as frozen dataclasses: each knob says what it bounds.

Loading (flags > environment > TOML file > defaults) lives in `load_settings` below.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bulkdrive.protocol import BLOCK_SIZE


class Secret:
    """A password or token: never shown by repr, str or logging."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class Credentials:
    """Either a user name with a password, or a ready token (`QSDK …`)."""

    user: str = ""
    password: Secret | None = None
    token: Secret | None = None


@dataclass(frozen=True)
class Timeouts:
    """Seconds. The last chunk reads longer because the server commits the file then."""

    connect: float = 30.0
    read: float = 120.0
    final_read: float = 600.0


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter between §8 recoveries of one file.

    `attempts` bounds the recoveries per file; each wait is at most `max_wait` seconds.
    """

    attempts: int = 10
    initial_wait: float = 0.5
    max_wait: float = 30.0


@dataclass(frozen=True)
class TransferConfig:
    """Limits of one run. File data in memory ≤ transfers × 2 × chunk_size."""

    transfers: int = 8
    chunk_size: int = BLOCK_SIZE
    verify: bool = True
    bwlimit: int | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    timeouts: Timeouts = field(default_factory=Timeouts)
    verify_tls: bool = True
    ca_bundle: str | None = None
