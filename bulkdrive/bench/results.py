"""The numbers of a benchmark, pure: one run's measurement, medians over repetitions,
bulkdrive / baseline ratios and the targets they are checked against. No I/O."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from bulkdrive.bench.contenders import BULKDRIVE_CONTENDERS, CONTENDERS

MB = 1_000_000  # MB/s are decimal megabytes per second
MiB = 1024 * 1024


@dataclass(frozen=True)
class Measurement:
    workload: str
    contender: str
    transfers: int
    repetition: int
    files: int
    bytes: int
    wall_seconds: float
    cpu_seconds: float
    user_seconds: float
    system_seconds: float
    peak_rss_bytes: int
    exit_code: int
    verified: bool
    inner_seconds: float | None = None  # what the contender itself reports, when it does
    #: bulkdrive only: seconds until its count-only pass made the total final (its report)
    total_known_seconds: float | None = None
    server_cpu_seconds: float | None = None  # the local emulator's CPU during the run
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and self.verified and not self.error

    @property
    def mb_per_s(self) -> float:
        return self.bytes / MB / self.wall_seconds if self.wall_seconds > 0 else 0.0

    @property
    def files_per_s(self) -> float:
        return self.files / self.wall_seconds if self.wall_seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(
            ok=self.ok,
            mb_per_s=round(self.mb_per_s, 3),
            files_per_s=round(self.files_per_s, 3),
            peak_rss_mib=round(self.peak_rss_bytes / MiB, 2),
        )
        return data


def summarize(measurements: Sequence[Measurement]) -> list[dict[str, Any]]:
    """Medians over the repetitions of each (workload, contender, transfers)."""
    groups: dict[tuple[str, str, int], list[Measurement]] = {}
    for m in measurements:
        groups.setdefault((m.workload, m.contender, m.transfers), []).append(m)
    rows = []
    for (workload, contender, transfers), ms in groups.items():
        good = [m for m in ms if m.ok]
        row: dict[str, Any] = {
            "workload": workload,
            "contender": contender,
            "transfers": transfers,
            "runs": len(ms),
            "failed": len(ms) - len(good),
        }
        if good:
            row.update(
                wall_seconds=statistics.median(m.wall_seconds for m in good),
                mb_per_s=statistics.median(m.mb_per_s for m in good),
                files_per_s=statistics.median(m.files_per_s for m in good),
                peak_rss_mib=statistics.median(m.peak_rss_bytes for m in good) / MiB,
                max_rss_mib=max(m.peak_rss_bytes for m in good) / MiB,
                cpu_seconds=statistics.median(m.cpu_seconds for m in good),
                server_cpu_seconds=statistics.median(m.server_cpu_seconds or 0.0 for m in good),
            )
            known = [
                m.total_known_seconds / m.inner_seconds
                for m in good
                if m.total_known_seconds is not None and m.inner_seconds
            ]
            if known:  # when bulkdrive's total was final, as a fraction of its run
                row["total_known_fraction"] = statistics.median(known)
        rows.append(row)
    return rows


def median_row(
    summary: Sequence[dict[str, Any]], workload: str, contender: str, transfers: int
) -> dict[str, Any] | None:
    want = transfers if CONTENDERS[contender].concurrent else 1
    for row in summary:
        if (row["workload"], row["contender"], row["transfers"]) == (workload, contender, want):
            return row if "mb_per_s" in row else None
    return None


def ratios(
    summary: Sequence[dict[str, Any]], workloads_: Sequence[str], transfers: int
) -> list[dict[str, Any]]:
    """bulkdrive / baseline throughput, per workload (same bytes and files: one ratio each)."""
    out = []
    for workload in workloads_:
        for ours in BULKDRIVE_CONTENDERS:
            mine = median_row(summary, workload, ours, transfers)
            for base in ("raw", "curl", "sdk"):
                theirs = median_row(summary, workload, base, transfers)
                if mine and theirs and theirs["mb_per_s"] > 0:
                    out.append(
                        {
                            "workload": workload,
                            "bulkdrive": ours,
                            "baseline": base,
                            "ratio": mine["mb_per_s"] / theirs["mb_per_s"],
                        }
                    )
    return out


def ratio_of(rs: Sequence[dict[str, Any]], workload: str, ours: str, base: str) -> float | None:
    for r in rs:
        if (r["workload"], r["bulkdrive"], r["baseline"]) == (workload, ours, base):
            return float(r["ratio"])
    return None


def targets(
    summary: Sequence[dict[str, Any]],
    rs: Sequence[dict[str, Any]],
    workloads_: Sequence[str],
    transfers: int,
    chunk_size: int,
) -> list[dict[str, Any]]:
    """The issue's targets, checked on this run's medians (only those it measured)."""
    checks: list[dict[str, Any]] = []

    def add(
        what: str, value: float | None, goal: float, unit: str = "×", at_most: bool = False
    ) -> None:
        if value is None:
            return
        passed = value <= goal if at_most else value >= goal
        checks.append(
            {"target": what, "value": round(value, 3), "goal": goal, "unit": unit, "pass": passed}
        )

    nv = "bulkdrive-noverify"
    for w in workloads_:
        if w == "large":
            add("large: --no-verify / raw", ratio_of(rs, w, nv, "raw"), 0.85)
        if w == "small":
            add("small: --no-verify / raw (files/s)", ratio_of(rs, w, nv, "raw"), 0.8)
        if w == "tree":
            add("tree: --no-verify / raw (files/s)", ratio_of(rs, w, nv, "raw"), 0.8)
            mine, flat = (
                median_row(summary, w, nv, transfers),
                median_row(summary, "tree-flat", nv, transfers),
            )
            if mine and flat and flat["files_per_s"] > 0:
                add(
                    "tree: --no-verify / its tree-flat (files/s)",
                    mine["files_per_s"] / flat["files_per_s"],
                    0.8,
                )
            for ours in BULKDRIVE_CONTENDERS:
                row = median_row(summary, w, ours, transfers)
                if row and "total_known_fraction" in row:
                    add(
                        f"tree: {ours} total final at (share of run)",
                        row["total_known_fraction"],
                        0.25,
                        unit="",
                        at_most=True,
                    )
        add(f"{w}: integrity on / raw", ratio_of(rs, w, "bulkdrive", "raw"), 0.7)
        if w in ("small", "mixed"):
            add(f"{w}: --no-verify / curl", ratio_of(rs, w, nv, "curl"), 3.0)
            add(f"{w}: --no-verify / sdk", ratio_of(rs, w, nv, "sdk"), 10.0)
        limit = (transfers * 2 * chunk_size + 80 * MB) / MiB
        for ours in BULKDRIVE_CONTENDERS:
            row = median_row(summary, w, ours, transfers)
            if row:
                add(
                    f"{w}: {ours} peak RSS (MiB) ≤ {limit:.0f}",
                    row["max_rss_mib"],
                    limit,
                    unit="MiB",
                    at_most=True,
                )
    return checks
