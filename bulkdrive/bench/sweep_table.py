"""The network sweep's results: each run's point, the medians, the table, the plot.

A point is one run (workload, latency, contender, setting); the summary holds the medians per
(workload, latency, contender, setting); the table one row per (workload, latency) with each
fixed setting's throughput, the best of them, auto, the SDK algorithm and the ratios the issue's
targets ask for. `--plot` draws throughput against transfers, one line per latency, auto marked
where its time-weighted mean number of transfers put it.
"""

from __future__ import annotations

import importlib
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bulkdrive.bench import harness, results

#: `auto` among the sweep's settings.
AUTO = 0


def setting_label(setting: int) -> str:
    return "auto" if setting == AUTO else str(setting)


def latency_label(seconds: float) -> str:
    return f"{seconds * 1000:g} ms"


@dataclass(frozen=True)
class SweepPoint:
    workload: str
    latency: float
    contender: str
    setting: int  # AUTO for --transfers auto
    measurement: results.Measurement
    auto_peak: int | None = None
    auto_mean: float | None = None
    #: Share of requests answered 503 after the first BUSY_GRACE_SECONDS (with --max-active).
    busy_share: float | None = None
    #: Under auto, how its limit moved (the report's steps: seconds into the run, from, to,
    #: why), so that a run that missed can be read afterwards.
    auto_steps: tuple[dict[str, Any], ...] = ()

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["measurement"] = self.measurement.to_json()
        data["setting"] = setting_label(self.setting)
        return data


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def summarize(points: Sequence[SweepPoint]) -> list[dict[str, Any]]:
    """Medians per (workload, latency, contender, setting)."""
    groups: dict[tuple[str, float, str, int], list[SweepPoint]] = {}
    for p in points:
        groups.setdefault((p.workload, p.latency, p.contender, p.setting), []).append(p)
    rows = []
    for (workload, latency, contender, setting), ps in groups.items():
        good = [p for p in ps if p.measurement.ok]
        rows.append(
            {
                "workload": workload,
                "latency": latency,
                "contender": contender,
                "setting": setting_label(setting),
                "runs": len(ps),
                "failed": len(ps) - len(good),
                "mb_per_s": _median([p.measurement.mb_per_s for p in good]),
                "files_per_s": _median([p.measurement.files_per_s for p in good]),
                "peak_rss_mib": _median([p.measurement.peak_rss_bytes / results.MiB for p in good]),
                "auto_peak": _median([p.auto_peak for p in good if p.auto_peak is not None]),
                "auto_mean": _median([p.auto_mean for p in good if p.auto_mean is not None]),
                "busy_share": _median([p.busy_share for p in good if p.busy_share is not None]),
                # CPU seconds of the contender and of the emulator: where both cores went.
                "cpu_s": _median([p.measurement.cpu_seconds for p in good]),
                "server_cpu_s": _median(
                    [
                        p.measurement.server_cpu_seconds
                        for p in good
                        if p.measurement.server_cpu_seconds is not None
                    ]
                ),
            }
        )
    return rows


def _throughput_key(workload_rows: Sequence[dict[str, Any]]) -> str:
    """files/s where files are small (most of a run is per-file work), else MB/s."""
    sample = workload_rows[0]
    per_file = sample["mb_per_s"] / sample["files_per_s"] if sample["files_per_s"] else 1.0
    return "files_per_s" if per_file < 1.0 else "mb_per_s"


def table_rows(
    summary: Sequence[dict[str, Any]], chunk_size: int = harness.CHUNK_SIZE
) -> list[dict[str, Any]]:
    """One row per (workload, latency): each setting's throughput, best fixed, auto, SDK."""
    out = []
    for workload in dict.fromkeys(r["workload"] for r in summary):
        rows = [r for r in summary if r["workload"] == workload and r["mb_per_s"] is not None]
        if not rows:
            continue
        key = _throughput_key(rows)
        for latency in sorted({r["latency"] for r in rows}):
            here = [r for r in rows if r["latency"] == latency]
            mine = {r["setting"]: r for r in here if r["contender"] == "bulkdrive"}
            fixed = {s: r[key] for s, r in mine.items() if s != "auto"}
            best = max(fixed, key=lambda s: fixed[s]) if fixed else None
            auto = mine.get("auto")
            sdk = next((r[key] for r in here if r["contender"] == "sdk"), None)
            out.append(
                {
                    "workload": workload,
                    "latency": latency,
                    "unit": "files/s" if key == "files_per_s" else "MB/s",
                    "fixed": fixed,
                    "best_setting": best,
                    "best": fixed[best] if best is not None else None,
                    "auto": auto[key] if auto else None,
                    "auto_peak": auto["auto_peak"] if auto else None,
                    "auto_mean": auto["auto_mean"] if auto else None,
                    "auto_rss_mib": auto["peak_rss_mib"] if auto else None,
                    # The memory bound at the highest limit auto reached (+80 MB of runtime).
                    "auto_rss_bound_mib": (
                        (auto["auto_peak"] * 2 * chunk_size + 80 * results.MB) / results.MiB
                        if auto and auto["auto_peak"] is not None
                        else None
                    ),
                    "busy_share": auto["busy_share"] if auto else None,
                    "auto_cpu_s": auto["cpu_s"] if auto else None,
                    "auto_server_cpu_s": auto["server_cpu_s"] if auto else None,
                    "sdk_cpu_s": next((r["cpu_s"] for r in here if r["contender"] == "sdk"), None),
                    "sdk": sdk,
                    "auto_vs_best": auto[key] / fixed[best] if auto and best else None,
                    "auto_vs_sdk": auto[key] / sdk if auto and sdk else None,
                    "best_vs_sdk": fixed[best] / sdk if best and sdk else None,
                }
            )
    return out


def _fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def render(doc: dict[str, Any]) -> str:
    settings = [s for s in doc["config"]["settings"] if s != "auto"]
    lines = [
        f"network sweep: medians of {doc['config']['repeat']} · "
        + (f"max-active {doc['config']['max_active']} · " if doc["config"]["max_active"] else "")
        + f"{doc['seconds']:.0f} s"
    ]
    for workload in doc["config"]["workloads"]:
        rows = [r for r in doc["table"] if r["workload"] == workload]
        if not rows:
            continue
        lines.append("")
        lines.append(f"{workload} ({rows[0]['unit']})")
        head = ["latency", *settings, "auto", "mean/peak", "best", "auto/best", "sdk", "auto/sdk"]
        head += ["auto rss/bound MiB", "auto cpu s (server)"]
        if doc["config"]["max_active"]:
            head.append("503 after 5s")
        table = [head]
        for r in rows:
            cells = [latency_label(r["latency"])]
            cells += [_fmt(r["fixed"].get(s)) for s in settings]
            cells.append(_fmt(r["auto"]))
            cells.append(
                "-" if r["auto_mean"] is None else f"{r['auto_mean']:.0f}/{r['auto_peak']:.0f}"
            )
            cells.append(f"{_fmt(r['best'])} @{r['best_setting']}")
            cells.append(_fmt(r["auto_vs_best"], 2))
            cells.append(_fmt(r["sdk"], 1))
            cells.append(_fmt(r["auto_vs_sdk"], 1))
            cells.append(f"{_fmt(r['auto_rss_mib'])}/{_fmt(r['auto_rss_bound_mib'])}")
            cells.append(f"{_fmt(r['auto_cpu_s'], 1)} ({_fmt(r['auto_server_cpu_s'], 1)})")
            if doc["config"]["max_active"]:
                share = r["busy_share"]
                cells.append("-" if share is None else f"{share:.2%}")
            table.append(cells)
        widths = [max(len(row[i]) for row in table) for i in range(len(head))]
        for row in table:
            lines.append("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))
    failed = [p for p in doc["points"] if not p["measurement"]["ok"]]
    for p in failed:
        m = p["measurement"]
        lines.append(
            f"FAILED {p['workload']} {latency_label(p['latency'])} {p['contender']} "
            f"t{p['setting']} r{m['repetition']}: {m['error']}"
        )
    return "\n".join(lines)


def plot(doc: dict[str, Any], path: Path) -> None:
    """Throughput against transfers, one line per latency, auto marked. Needs matplotlib."""
    try:
        matplotlib: Any = importlib.import_module("matplotlib")
    except ImportError:
        raise SystemExit("--plot needs matplotlib: pip install '.[plot]'") from None
    matplotlib.use("Agg")
    plt: Any = importlib.import_module("matplotlib.pyplot")
    names = [w for w in doc["config"]["workloads"] if any(r["workload"] == w for r in doc["table"])]
    fig, axes = plt.subplots(
        1, max(1, len(names)), figsize=(6 * max(1, len(names)), 4.5), squeeze=False
    )
    settings = [int(s) for s in doc["config"]["settings"] if s != "auto"]
    for ax, workload in zip(axes[0], names, strict=False):
        rows = [r for r in doc["table"] if r["workload"] == workload]
        for r in rows:
            xs = [s for s in settings if str(s) in r["fixed"]]
            (line,) = ax.plot(
                xs,
                [r["fixed"][str(s)] for s in xs],
                marker="o",
                label=f"{latency_label(r['latency'])}",
            )
            if r["auto"] is not None:
                x = r["auto_mean"] or (xs[0] if xs else 1)
                ax.plot(
                    [x],
                    [r["auto"]],
                    marker="*",
                    markersize=16,
                    color=line.get_color(),
                    linestyle="none",
                    label=f"auto at {latency_label(r['latency'])}",
                )
            if r["sdk"] is not None:
                ax.axhline(r["sdk"], linestyle=":", color=line.get_color(), alpha=0.6)
        ax.set_xscale("log", base=2)
        if settings:
            ax.set_xticks(settings, [str(s) for s in settings])
        ax.set_title(f"{workload} (dotted: sequential SDK; ★ auto at its mean transfers)")
        ax.set_xlabel("--transfers")
        ax.set_ylabel(f"{rows[0]['unit']} (median)" if rows else "")
        ax.set_ylim(bottom=0)  # from zero: a 10 % difference must look like one
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
