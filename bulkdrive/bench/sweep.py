"""`bulkdrive bench --latency 0,2ms,20ms --sweep 4,8,16,32,64,128,auto`: real networks.

For each workload and server latency (`serve --latency`, optionally `--max-active`), bulkdrive
runs at each fixed `--transfers` of the sweep and at `--transfers auto`, and the sequential
SDK algorithm runs against the same latency. Every run is a separate process against a fresh
emulator, as in the main benchmark (harness.py), and its stored bytes are checked.

This module runs the sweep and gives its document (what `--json` writes); sweep_table.py
reads it into the table and the plot, midrun.py is `--midrun`.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import re
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bulkdrive.bench import harness, processes, results, sweep_table
from bulkdrive.bench.sweep_table import AUTO, SweepPoint, latency_label, setting_label

LATENCIES = (0.0, 0.002, 0.020)
SETTINGS = (4, 8, 16, 32, 64, 128, AUTO)
#: The busy answers are counted after this many seconds of a run.
BUSY_GRACE_SECONDS = 5.0


def parse_settings(text: str) -> tuple[int, ...]:
    """`4,8,auto` → (4, 8, AUTO)."""
    values: list[int] = []
    for part in (p.strip().lower() for p in text.split(",")):
        if not part:
            continue
        if part == "auto":
            values.append(AUTO)
            continue
        try:
            number = int(part)
        except ValueError:
            raise ValueError(f"--sweep: not a whole number or auto: {part!r}") from None
        if number < 1:
            raise ValueError(f"--sweep: need whole numbers >= 1, not {number}")
        values.append(number)
    if not values:
        raise ValueError("--sweep: give at least one setting")
    return tuple(dict.fromkeys(values))


_LATENCY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s)?\s*$")


def parse_latencies(text: str) -> tuple[float, ...]:
    """`0,2ms,20ms` → seconds (what `serve --latency` is then given, in seconds)."""
    values: list[float] = []
    for part in (p for p in text.split(",") if p.strip()):
        match = _LATENCY.match(part)
        if not match:
            raise ValueError(f"--latency: not a duration: {part!r} (examples: 0, 2ms, 20ms)")
        values.append(float(match.group(1)) * (0.001 if match.group(2) == "ms" else 1.0))
    if not values:
        raise ValueError("--latency: give at least one latency")
    return tuple(dict.fromkeys(values))


@dataclass(frozen=True)
class SweepConfig:
    bench: harness.BenchConfig
    latencies: tuple[float, ...] = LATENCIES
    settings: tuple[int, ...] = SETTINGS
    max_active: int | None = None
    baseline: bool = True  # the sequential SDK algorithm at each latency


def run_sweep(config: SweepConfig, log: harness.Log = harness._stderr_log) -> dict[str, Any]:
    bench = replace(config.bench, data_dir=config.bench.data_dir.resolve())
    bench.data_dir.mkdir(parents=True, exist_ok=True)
    run_root = harness._unique(bench.data_dir / "runs" / time.strftime("sweep-%Y%m%d-%H%M%S"))
    prepared = [harness.prepare_workload(n, bench.data_dir, log) for n in bench.workloads]
    processes.precompile(bench.python)
    if bench.server_dir is None:
        bench = replace(
            bench, server_dir=harness.default_server_dir(max(w.bytes for w in prepared))
        )
    points: list[SweepPoint] = []
    started = time.time()
    try:
        for workload in prepared:
            storage = harness._server_root(bench, run_root, "x").parent
            if harness._in_ram(storage):
                harness.prefault_storage(storage, workload.bytes)
            harness.warm_page_cache(workload.source)
            for latency in config.latencies:
                log(
                    f"workload {workload.name} at {latency_label(latency)}: "
                    f"{workload.files} files, {workload.bytes / results.MB:.1f} MB; "
                    f"settings {', '.join(setting_label(s) for s in config.settings)}"
                )
                for repetition in range(bench.repeat):
                    runs = [("bulkdrive", s) for s in config.settings]
                    if config.baseline:
                        runs.append(("sdk", 1))
                    k = repetition % len(runs)  # no run always follows the same one
                    for contender, setting in runs[k:] + runs[:k]:
                        points.append(
                            _measure(
                                config,
                                bench,
                                workload,
                                latency,
                                contender,
                                setting,
                                repetition,
                                run_root,
                                log,
                            )
                        )
    finally:
        if not bench.keep:
            shutil.rmtree(run_root, ignore_errors=True)
            if bench.server_dir is not None:
                # The pre-faulted folder of the whole sweep, and each latency's storage.
                roots = [run_root, *(_latency_root(run_root, lat) for lat in config.latencies)]
                for root in roots:
                    where = harness._server_root(bench, root, "x")
                    shutil.rmtree(where.parent, ignore_errors=True)
    return document(config, points, time.time() - started)


def _measure(
    config: SweepConfig,
    bench: harness.BenchConfig,
    workload: harness.Workload,
    latency: float,
    contender: str,
    setting: int,
    repetition: int,
    run_root: Path,
    log: harness.Log,
) -> SweepPoint:
    root = _latency_root(run_root, latency)
    root.mkdir(parents=True, exist_ok=True)
    tag = f"{workload.name}-{contender}-t{setting}-r{repetition}"  # as measure_one names it
    requests = root / f"{tag}.requests.ndjson"
    args = ["--latency", f"{latency}s"]
    if config.max_active is not None:
        args += ["--max-active", str(config.max_active), "--log-requests", str(requests)]
    measured = harness.measure_one(
        replace(bench, emulator_args=tuple(args)),
        workload,
        contender,
        setting,
        repetition,
        root,
        log,
    )
    peak = mean = None
    steps: tuple[dict[str, Any], ...] = ()
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        used = json.loads((root / tag / "report.json").read_text())["transfers_auto"]
        if used is not None:
            peak, mean = int(used["peak"]), float(used["mean"])
            steps = tuple(used.get("steps", ()))
    busy = busy_share(requests) if config.max_active is not None else None
    return SweepPoint(workload.name, latency, contender, setting, measured, peak, mean, busy, steps)


def _latency_root(run_root: Path, latency: float) -> Path:
    return run_root / f"lat{latency * 1000:g}ms"


def busy_share(log_path: Path) -> float | None:
    """The share of 503 answers among the requests after the first BUSY_GRACE_SECONDS."""
    times: list[tuple[float, int]] = []
    with contextlib.suppress(OSError):
        for line in log_path.read_text().splitlines():
            with contextlib.suppress(ValueError, KeyError, TypeError):
                entry = json.loads(line)
                moment = datetime.datetime.fromisoformat(entry["time"]).timestamp()
                times.append((moment, int(entry["status"])))
    if not times:
        return None
    start = min(t for t, _ in times)
    late = [status for t, status in times if t >= start + BUSY_GRACE_SECONDS]
    return sum(s == 503 for s in late) / len(late) if late else 0.0


def document(config: SweepConfig, points: Sequence[SweepPoint], seconds: float) -> dict[str, Any]:
    summary = sweep_table.summarize(points)
    return {
        "kind": "bulkdrive-network-sweep",
        "config": {
            "workloads": list(config.bench.workloads),
            "latencies": list(config.latencies),
            "settings": [setting_label(s) for s in config.settings],
            "max_active": config.max_active,
            "repeat": config.bench.repeat,
            "chunk_size": config.bench.chunk_size,
        },
        "machine": harness.machine(),
        "seconds": round(seconds, 1),
        "points": [p.to_json() for p in points],
        "summary": summary,
        "table": sweep_table.table_rows(summary, config.bench.chunk_size),
    }
