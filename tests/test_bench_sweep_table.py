"""The network sweep's table and plot read from its points (no runs: points made up here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bulkdrive.bench import sweep, sweep_table
from bulkdrive.bench.harness import BenchConfig
from bulkdrive.bench.results import Measurement
from bulkdrive.bench.sweep_table import AUTO, SweepPoint


def _point(
    latency: float, contender: str, setting: int, seconds: float, **auto: float
) -> SweepPoint:
    measured = Measurement(
        workload="netsmall",
        contender=contender,
        transfers=setting,
        repetition=0,
        files=1000,
        bytes=4_096_000,
        wall_seconds=seconds,
        cpu_seconds=1.0,
        user_seconds=0.8,
        system_seconds=0.2,
        peak_rss_bytes=50 * 2**20,
        exit_code=0,
        verified=True,
    )
    peak = int(auto["peak"]) if "peak" in auto else None
    return SweepPoint("netsmall", latency, contender, setting, measured, peak, auto.get("mean"))


def test_the_table_gives_the_best_fixed_setting_auto_and_the_ratios() -> None:
    points = [
        _point(0.02, "bulkdrive", 8, 4.0),  # 250 files/s
        _point(0.02, "bulkdrive", 32, 2.0),  # 500 files/s: the best
        *(_point(0.02, "bulkdrive", AUTO, s, peak=64, mean=40) for s in (2.5, 2.4, 9.0)),
        _point(0.02, "sdk", 1, 25.0),  # 40 files/s
    ]
    (row,) = sweep_table.table_rows(sweep_table.summarize(points))
    assert row["unit"] == "files/s"
    assert row["best_setting"] == "32" and row["best"] == pytest.approx(500)
    assert row["auto"] == pytest.approx(1000 / 2.5)  # the median of three, not the mean
    assert row["auto_vs_best"] == pytest.approx(0.8)
    assert row["auto_vs_sdk"] == pytest.approx(10.0)
    assert (row["auto_mean"], row["auto_peak"]) == (40, 64)
    assert row["auto_cpu_s"] == 1.0 and row["sdk_cpu_s"] == 1.0
    # The memory bound at auto's peak: 64 transfers of two 4 MiB chunks, plus the runtime.
    assert row["auto_rss_bound_mib"] == pytest.approx(64 * 8 + 80 * 1e6 / 2**20)


def test_the_rendered_table_and_the_plot(tmp_path: Path) -> None:
    points = [
        _point(latency, "bulkdrive", setting, seconds, peak=16, mean=12)
        for latency in (0.0, 0.002)
        for setting, seconds in ((8, 2.0), (16, 1.6), (AUTO, 1.7))
    ]
    doc = sweep.document(
        sweep.SweepConfig(BenchConfig(workloads=("netsmall",), repeat=1), settings=(8, 16, AUTO)),
        points,
        12.0,
    )
    text = sweep_table.render(doc)
    assert "auto/best" in text and "625 @16" in text and "0.94" in text
    picture = tmp_path / "sweep.png"
    pytest.importorskip("matplotlib")
    sweep_table.plot(doc, picture)
    assert picture.read_bytes().startswith(b"\x89PNG")
