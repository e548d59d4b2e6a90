"""The benchmark's numbers, pure: medians over repetitions, ratios against the baselines and
the targets they are checked against, from hand-made measurements (no process runs)."""

from __future__ import annotations

from bulkdrive.bench.results import MB, Measurement, MiB, median_row, ratios, summarize, targets


def run(contender: str, wall: float, *, repetition: int = 0, **extra: object) -> Measurement:
    fields: dict[str, object] = {
        "workload": "large",
        "contender": contender,
        "transfers": 8,
        "repetition": repetition,
        "files": 8,
        "bytes": 800 * MB,
        "wall_seconds": wall,
        "cpu_seconds": 1.0,
        "user_seconds": 0.8,
        "system_seconds": 0.2,
        "peak_rss_bytes": 50 * MiB,
        "exit_code": 0,
        "verified": True,
    }
    fields.update(extra)
    return Measurement(**fields)  # type: ignore[arg-type]


def test_a_measurement_says_its_throughput_and_whether_it_counts() -> None:
    m = run("raw", 4.0)
    assert m.ok and m.mb_per_s == 200.0 and m.files_per_s == 2.0
    assert not run("raw", 4.0, exit_code=1).ok
    assert not run("raw", 4.0, verified=False).ok
    assert run("raw", 0.0).mb_per_s == 0.0


def test_medians_leave_failed_runs_out_and_count_them() -> None:
    runs = [
        run("bulkdrive", 10.0, repetition=0),
        run("bulkdrive", 2.0, repetition=1),
        run("bulkdrive", 4.0, repetition=2),
        run("bulkdrive", 1.0, repetition=3, error="stored wrong bytes"),
    ]
    (row,) = summarize(runs)
    assert row["runs"] == 4 and row["failed"] == 1
    assert row["wall_seconds"] == 4.0  # median of 10, 2, 4; the failed 1.0 is not a number
    assert row["mb_per_s"] == 200.0


def test_a_contender_whose_every_run_failed_has_no_median() -> None:
    summary = summarize([run("raw", 1.0, exit_code=2)])
    assert summary[0]["failed"] == 1 and "mb_per_s" not in summary[0]
    assert median_row(summary, "large", "raw", 8) is None


def test_ratios_are_bulkdrive_over_each_baseline_measured_in_the_same_run() -> None:
    summary = summarize(
        [run("bulkdrive", 5.0), run("bulkdrive-noverify", 4.0), run("raw", 4.0), run("curl", 8.0)]
    )
    found = {(r["bulkdrive"], r["baseline"]): r["ratio"] for r in ratios(summary, ["large"], 8)}
    assert found == {
        ("bulkdrive", "raw"): 0.8,
        ("bulkdrive", "curl"): 1.6,
        ("bulkdrive-noverify", "raw"): 1.0,
        ("bulkdrive-noverify", "curl"): 2.0,
    }


def test_the_sequential_sdk_is_compared_at_its_one_transfer() -> None:
    summary = summarize([run("bulkdrive", 1.0), run("sdk", 10.0, transfers=1)])
    assert [r["ratio"] for r in ratios(summary, ["large"], 8)] == [10.0]


def test_targets_pass_and_miss_on_the_medians() -> None:
    summary = summarize(
        [
            run("bulkdrive", 10.0),  # 0.4 × raw: misses ≥ 0.7
            run("bulkdrive-noverify", 4.5, peak_rss_bytes=500 * MiB),  # 0.89 × raw: passes 0.85
            run("raw", 4.0),
        ]
    )
    checks = {
        t["target"]: t
        for t in targets(summary, ratios(summary, ["large"], 8), ["large"], 8, 4 * MiB)
    }
    assert checks["large: integrity on / raw"]["pass"] is False
    assert checks["large: --no-verify / raw"]["pass"] is True
    noverify_rss = next(t for name, t in checks.items() if "noverify peak RSS" in name)
    assert noverify_rss["pass"] is False  # 500 MiB > 8 × 2 × 4 MiB + 80 MB
    assert next(t for name, t in checks.items() if "bulkdrive peak RSS" in name)["pass"] is True
