"""The limits of a run: TransferConfig checks itself; secrets never show."""

from __future__ import annotations

import pytest

from bulkdrive.config import (
    MAX_TRANSFERS,
    SMALL_FILE_BATCH,
    SMALL_FILE_READ_AHEAD,
    RetryPolicy,
    Secret,
    Timeouts,
    TransferConfig,
)
from bulkdrive.errors import ConfigError


def test_secret_never_shows_its_value() -> None:
    secret = Secret("hunter2")
    assert "hunter2" not in repr(secret)
    assert "hunter2" not in str(secret)
    assert "hunter2" not in f"{secret}"
    assert secret.reveal() == "hunter2"


# --- TransferConfig checks itself ---------------------------------------------------------

MiB = 1024 * 1024


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"transfers": 0}, "transfers"),
        ({"transfers": MAX_TRANSFERS + 1}, "transfers"),
        ({"chunk_size": 0, "verify": False}, "chunk_size"),
        ({"chunk_size": MiB}, "chunk_size"),  # integrity on needs 4 MiB chunks
        ({"bwlimit": 0}, "bwlimit"),
        ({"timeouts": Timeouts(connect=0)}, "timeouts.connect"),
        ({"timeouts": Timeouts(read=-1)}, "timeouts.read"),
        ({"timeouts": Timeouts(final_read=0)}, "timeouts.final_read"),
        ({"retry": RetryPolicy(attempts=0)}, "retry.attempts"),
        ({"retry": RetryPolicy(initial_wait=5, max_wait=1)}, "retry waits"),
    ],
)
def test_transfer_config_refuses_what_cannot_run(fields: dict[str, object], named: str) -> None:
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        TransferConfig(**fields)  # type: ignore[arg-type]


def test_transfer_config_accepts_its_bounds() -> None:
    assert TransferConfig(transfers=1).transfers == 1
    assert TransferConfig(transfers=MAX_TRANSFERS).transfers == MAX_TRANSFERS
    assert TransferConfig(verify=False, chunk_size=1).chunk_size == 1
    assert TransferConfig(bwlimit=1).bwlimit == 1


def test_the_memory_bound_counts_the_small_file_read_ahead() -> None:
    config = TransferConfig(transfers=8)
    read_ahead = 2 * SMALL_FILE_BATCH * SMALL_FILE_READ_AHEAD
    assert config.memory_bound == 8 * 2 * 4 * MiB + read_ahead
    assert read_ahead == 16 * MiB
