"""`bulkdrive bench --latency … --sweep …,auto`: the flags, the table, the plot and the 503
count work (a one-run smoke; the full sweep is a benchmark, never part of the tests)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bulkdrive.bench import sweep, sweep_table


def test_sweep_flags_are_read() -> None:
    assert sweep.parse_settings("4,8,auto,8") == (4, 8, sweep_table.AUTO)
    assert sweep.parse_latencies("0,2ms,20ms,0.5s") == (0.0, 0.002, 0.02, 0.5)
    for bad in ("4,fast", "0", ""):
        with pytest.raises(ValueError, match="--sweep"):
            sweep.parse_settings(bad)
    with pytest.raises(ValueError, match="--latency"):
        sweep.parse_latencies("soon")


def test_busy_share_counts_503s_after_the_first_seconds(tmp_path: Path) -> None:
    log = tmp_path / "requests.ndjson"
    lines = [("2026-01-01T00:00:00.000Z", 200), ("2026-01-01T00:00:01.000Z", 503)]
    lines += [("2026-01-01T00:00:06.000Z", 200)] * 9 + [("2026-01-01T00:00:07.000Z", 503)]
    log.write_text("".join(json.dumps({"time": t, "status": s}) + "\n" for t, s in lines))
    assert sweep.busy_share(log) == pytest.approx(0.1)


@pytest.mark.slow
def test_one_auto_run_at_a_latency_lands_in_table_json_and_plot(tmp_path: Path) -> None:
    result, picture = tmp_path / "sweep.json", tmp_path / "sweep.png"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bulkdrive",
            "bench",
            "--quick",
            "--latency",
            "1ms",
            "--sweep",
            "2,auto",
            "--max-active",
            "64",
            "--contenders",
            "bulkdrive",
            "--data-dir",
            str(tmp_path / "data"),
            "--json",
            str(result),
            "--plot",
            str(picture),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(result.read_text())
    assert all(p["measurement"]["ok"] for p in doc["points"])  # stored bytes were checked
    (row,) = doc["table"]
    assert row["latency"] == 0.001 and set(row["fixed"]) == {"2"}
    assert row["auto"] > 0 and row["auto_peak"] >= 1 and row["busy_share"] is not None
    # Each auto run keeps how its limit moved (the report's steps), for reading a miss later.
    (auto,) = [p for p in doc["points"] if p["setting"] == "auto"]
    assert all(set(step) == {"at", "old", "new", "why"} for step in auto["auto_steps"])
    assert all(step["new"] <= auto["auto_peak"] for step in auto["auto_steps"])
    assert "auto/best" in proc.stdout
    assert picture.read_bytes().startswith(b"\x89PNG")
