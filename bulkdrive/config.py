"""What a run may do, as frozen dataclasses: each knob says what it bounds.

The command line's options, and how they become a TransferConfig, are `settings`'.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bulkdrive.errors import ConfigError
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
    """Either a user name with a password, or a ready token (`QSDK …`); a token with the
    `device_id` of its Login can also be renewed (what `--cluster` hands its workers)."""

    user: str = ""
    password: Secret | None = None
    token: Secret | None = None
    device_id: Secret | None = None


@dataclass(frozen=True)
class Timeouts:
    """Seconds. The last chunk reads longer because the server commits the file then."""

    connect: float = 30.0
    read: float = 120.0
    final_read: float = 600.0


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter between §8 recoveries of one file.

    `attempts` bounds the attempts in a row that bring no progress (no new bytes confirmed by
    the server): a large file may meet many passing faults and still finish, a stuck one
    fails. Each wait is at most `max_wait` seconds.
    """

    attempts: int = 10
    initial_wait: float = 0.5
    max_wait: float = 30.0
    #: The run stops (ServerFailing) once every request of the run, for this many seconds,
    #: failed to connect, timed out or got a 5xx: the server is gone, not flaky.
    give_up_after: float = 60.0


#: More files in flight than this buys nothing (one server, one link) and costs memory
#: (transfers × 2 × chunk size) and sockets.
MAX_TRANSFERS = 1024
#: Files up to this size are read ahead of their upload, a batch of SMALL_FILE_BATCH at a time
#: (one thread hop for the batch instead of one per file); at most two batches are held.
SMALL_FILE_READ_AHEAD = 128 * 1024
SMALL_FILE_BATCH = 64
#: Files at least this large are large, for `--transfers auto` (`tuner`) and the counters the
#: run keeps for it (`file_events`); here so that a run with a fixed limit imports no tuner.
LARGE_FILE = 1024 * 1024


#: Chunks one transfer holds at most: the one being sent and the one read ahead of it.
CHUNKS_PER_TRANSFER = 2


@dataclass(frozen=True)
class TransferConfig:
    """Limits of one run, checked when the object is made (ConfigError names the knob).

    What each knob bounds:

    - `transfers` (1 … MAX_TRANSFERS): files in flight, each with its own upload session and
      connection; under `auto_transfers` the most the tuner may reach.
    - `chunk_size` (bytes, ≥ 1): the body of one upload request. With `verify` on it must be
      exactly 4 MiB (the block of the integrity hash; spec §6).
    - `verify`: the block-level SHA-256 check of every file by the server.
    - `bwlimit` (bytes per second, ≥ 1, or None): the whole run's upload rate.
    - `retry`: attempts in a row without progress per file, the waits between them, and
      `give_up_after`: seconds of failing uploads (no connection, 5xx) that stop the run.
    - `timeouts` (seconds, > 0): to connect, to read a reply, to read the last chunk's reply.
    - `verify_tls`, `ca_bundle`: whose certificates are trusted.

    Memory for file data stays below transfers × 2 × chunk_size (the chunk being sent and the
    next one read) plus the small-file read-ahead: 2 × SMALL_FILE_BATCH × SMALL_FILE_READ_AHEAD
    (16 MiB); none of it grows with the number or size of the files.
    """

    #: Files in flight; under `auto_transfers`, the most the tuner may reach.
    transfers: int = 8
    #: `--transfers auto`: start small and let the tuner choose, up to `transfers`.
    auto_transfers: bool = False
    chunk_size: int = BLOCK_SIZE
    verify: bool = True
    bwlimit: int | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    timeouts: Timeouts = field(default_factory=Timeouts)
    verify_tls: bool = True
    ca_bundle: str | None = None

    def __post_init__(self) -> None:
        for problem in _transfer_problems(self):
            raise ConfigError(problem)

    @property
    def memory_bound(self) -> int:
        """Bytes of file data a run holds at most (see the class's docstring)."""
        read_ahead = 2 * SMALL_FILE_BATCH * SMALL_FILE_READ_AHEAD
        return self.chunks_held * self.chunk_size + read_ahead

    @property
    def chunks_held(self) -> int:
        """Chunk buffers the run's transfers hold at most (`source.ChunkBuffers`)."""
        return self.transfers * CHUNKS_PER_TRANSFER


def _transfer_problems(config: TransferConfig) -> list[str]:
    problems = []
    if not 1 <= config.transfers <= MAX_TRANSFERS:
        problems.append(f"transfers must be 1 to {MAX_TRANSFERS}, not {config.transfers}")
    if config.chunk_size < 1:
        problems.append(f"chunk_size must be at least 1 byte, not {config.chunk_size}")
    elif config.verify and config.chunk_size != BLOCK_SIZE:
        problems.append(
            f"chunk_size must be {BLOCK_SIZE} (4 MiB) while integrity checks are on; "
            "turn verification off (verify=False, --no-verify) to use another chunk size"
        )
    if config.bwlimit is not None and config.bwlimit < 1:
        problems.append(f"bwlimit must be at least 1 byte per second or None, not {config.bwlimit}")
    for name in ("connect", "read", "final_read"):
        seconds = getattr(config.timeouts, name)
        if not seconds > 0:
            problems.append(f"timeouts.{name} must be more than 0 seconds, not {seconds}")
    retry = config.retry
    if retry.attempts < 1:
        problems.append(f"retry.attempts must be at least 1, not {retry.attempts}")
    if not retry.give_up_after > 0:
        problems.append(
            f"retry.give_up_after must be more than 0 seconds, not {retry.give_up_after}"
        )
    if not 0 <= retry.initial_wait <= retry.max_wait:
        problems.append(
            f"retry waits must satisfy 0 <= initial_wait <= max_wait, not "
            f"{retry.initial_wait} and {retry.max_wait}"
        )
    return problems
