"""What a benchmark shows: the printed table (medians, ratios, targets, profiles) and the plot
of throughput against --transfers."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from bulkdrive.bench.contenders import BULKDRIVE_CONTENDERS, CONTENDERS
from bulkdrive.bench.results import MiB, median_row, ratio_of


def format_table(doc: dict[str, Any]) -> str:
    """The printed result: medians per workload and contender, ratios, targets."""
    transfers = doc["config"]["transfers"]
    lines = [
        f"bulkdrive benchmark · {doc['machine']['cpus']} CPUs · Python "
        f"{doc['machine']['python']} · transfers {transfers} · chunk "
        f"{doc['config']['chunk_size'] // MiB} MiB · median of {doc['config']['repeat']} "
        f"· server: {doc['config']['server']}",
        "",
    ]
    header = (
        f"{'workload':<8} {'contender':<34} {'MB/s':>9} {'files/s':>9} {'RSS MiB':>8} "
        f"{'CPU s':>7} {'srv CPU':>7} {'wall s':>8}  {'×raw':>6} {'×curl':>6} {'×sdk':>6}"
    )
    lines += [header, "-" * len(header)]
    rs = doc["ratios"]
    for workload in doc["config"]["workloads"]:
        for contender in doc["config"]["contenders"]:
            row = median_row(doc["summary"], workload, contender, transfers)
            label = CONTENDERS[contender].label
            if row is None:
                lines.append(f"{workload:<8} {label:<34} {'failed':>9}")
                continue
            ratio_cells = ""
            if contender in BULKDRIVE_CONTENDERS:
                for base in ("raw", "curl", "sdk"):
                    r = ratio_of(rs, workload, contender, base)
                    ratio_cells += f" {r:6.2f}" if r is not None else f" {'-':>6}"
            lines.append(
                f"{workload:<8} {label:<34} {row['mb_per_s']:9.1f} {row['files_per_s']:9.1f} "
                f"{row['peak_rss_mib']:8.1f} {row['cpu_seconds']:7.2f} "
                f"{row['server_cpu_seconds']:7.2f} {row['wall_seconds']:8.2f} {ratio_cells}"
            )
        lines.append("")
    if doc["targets"]:
        lines.append("targets:")
        for t in doc["targets"]:
            mark = "PASS" if t["pass"] else "MISS"
            rel = "≥" if t["unit"] == "×" else "≤"
            lines.append(f"  {mark}  {t['target']:<48} {t['value']:>9} (goal {rel} {t['goal']:g})")
    failed = [r for r in doc["runs"] if not r["ok"]]
    for r in failed:
        lines.append(
            f"FAILED {r['workload']} {r['contender']} t{r['transfers']} "
            f"r{r['repetition']}: {r['error']}"
        )
    for workload, profile in doc.get("profiles", {}).items():
        for contender, p in profile.items():
            lines.append("")
            lines.append(
                f"profile {workload} {contender} ({p['samples']} samples holding the "
                f"GIL, py-spy --gil; collapsed stacks in {p['file']}):"
            )
            lines.append("  self%  incl%  function")
            for hot in p["hot"]:
                lines.append(f"  {hot['self_pct']:5.1f}  {hot['incl_pct']:5.1f}  {hot['frame']}")
    return "\n".join(lines)


def plot(doc: dict[str, Any], path: Path) -> None:
    """Throughput against --transfers, one panel per workload. Needs matplotlib."""
    try:  # an optional extra: imported by name so type checkers need no stubs for it
        matplotlib: Any = importlib.import_module("matplotlib")
    except ImportError:
        raise SystemExit("--plot needs matplotlib: pip install '.[plot]'") from None
    matplotlib.use("Agg")
    plt: Any = importlib.import_module("matplotlib.pyplot")

    names = doc["config"]["workloads"]
    fig, axes = plt.subplots(1, len(names), figsize=(5.5 * len(names), 4.2), squeeze=False)
    for ax, workload in zip(axes[0], names, strict=True):
        for contender in doc["config"]["contenders"]:
            rows = sorted(
                (
                    r
                    for r in doc["summary"]
                    if r["workload"] == workload and r["contender"] == contender and "mb_per_s" in r
                ),
                key=lambda r: r["transfers"],
            )
            if not rows:
                continue
            label = CONTENDERS[contender].label
            if not CONTENDERS[contender].concurrent:
                ax.axhline(rows[0]["mb_per_s"], linestyle="--", color="grey", label=label)
                continue
            ax.plot(
                [r["transfers"] for r in rows],
                [r["mb_per_s"] for r in rows],
                marker="o",
                label=label,
            )
        ax.set_xscale("log", base=2)
        ax.set_xticks(doc["config"]["sweep"], [str(t) for t in doc["config"]["sweep"]])
        ax.set_title(workload)
        ax.set_xlabel("--transfers")
        ax.set_ylabel("MB/s (median)")
        ax.grid(True, alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
