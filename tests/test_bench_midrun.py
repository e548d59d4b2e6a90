"""`bench --midrun`'s arithmetic on a request log: completed uploads per second, the steady
rate of a fixed setting (no runs: logs written here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bulkdrive.bench import midrun


def _log(path: Path, entries: list[tuple[float, int, str]]) -> Path:
    lines = []
    for seconds, status, where in entries:
        minute, second = divmod(seconds, 60)
        stamp = f"2026-01-01T00:{int(minute):02d}:{second:06.3f}+00:00"
        lines.append(json.dumps({"time": stamp, "status": status, "path": where}))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_completions_are_the_uploads_answered_200(tmp_path: Path) -> None:
    log = _log(
        tmp_path / "requests.ndjson",
        [
            (0.5, 200, "/webconsole/api/login"),
            (1.0, 200, "/webconsole/api/contentstore/share/1/file/action/upload"),
            (1.2, 503, "/webconsole/api/contentstore/share/1/file/action/upload"),
            (2.7, 200, "/webconsole/api/contentstore/share/1/file/action/upload"),
        ],
    )
    times = midrun.completions(log)
    assert len(times) == 2 and times[1] - times[0] == pytest.approx(1.7)
    assert midrun.per_second(times) == [1.0, 1.0]


def test_the_steady_rate_leaves_out_the_ramps() -> None:
    # 1 s of ramp at 10/s, 10 s at 100/s, 1 s of tail at 10/s: the middle 60 % is the 100/s.
    times = [i / 10 for i in range(10)]
    times += [1 + i / 100 for i in range(1000)]
    times += [11 + i / 10 for i in range(10)]
    assert midrun.steady_rate(times) == pytest.approx(100, rel=0.02)
    assert midrun.steady_rate(times[:5]) == 0.0
    assert midrun.per_second([]) == []


def test_the_seconds_after_a_switch_count_from_the_switch() -> None:
    # The restart left 2.5 s without a server: those seconds count against the recovery.
    times = [12.5, 12.6, 13.6, 13.7, 13.8]
    assert midrun.per_second(times, start=10.0) == [0.0, 0.0, 2.0, 3.0]
    assert midrun.per_second(times) == [2.0, 3.0]  # from the first completion


def test_the_recovery_is_the_first_second_at_the_target() -> None:
    assert midrun.recovered_after([100.0, 700.0, 900.0, 600.0], 800.0) == 3
    assert midrun.recovered_after([100.0, 700.0], 800.0) is None


def test_the_verdict_is_the_median_run_a_run_that_never_recovered_the_longest() -> None:
    assert midrun.median_seconds([3, 1, 2]) == 2
    assert midrun.median_seconds([None, 4, 2]) == 4
    assert midrun.median_seconds([None, None, 2]) is None
    assert midrun.median_seconds([2, 5]) == 3.5
    assert midrun.median_seconds([]) is None
