"""`bulkdrive bench --latency 0,2ms,20ms --sweep 4,8,16,32,64,128,auto`: real networks.

For each workload and server latency (`serve --latency`, optionally `--max-active`), bulkdrive
runs at each fixed `--transfers` of the sweep and at `--transfers auto`, and the sequential
SDK algorithm runs against the same latency. Every run is a separate process against a fresh
emulator, as in the main benchmark (harness.py), and its stored bytes are checked.

Printed: a table per workload (one row per latency, throughput per setting, the best fixed
setting, auto and the ratios the issue's targets ask for); `--json` writes everything;
`--plot` draws throughput against transfers, one line per latency, auto marked where its
time-weighted mean number of transfers put it.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib
import json
import re
import shutil
import socket
import statistics
import subprocess
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from bulkdrive.bench import contenders, harness, processes, results, verify

#: `auto` among the sweep's settings.
AUTO = 0
LATENCIES = (0.0, 0.002, 0.020)
SETTINGS = (4, 8, 16, 32, 64, 128, AUTO)
#: What auto must reach of the best fixed setting, and bulkdrive of the SDK algorithm.
AUTO_TARGET = 0.9
SDK_TARGET = 10.0
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


def setting_label(setting: int) -> str:
    return "auto" if setting == AUTO else str(setting)


def latency_label(seconds: float) -> str:
    return f"{seconds * 1000:g} ms"


@dataclass(frozen=True)
class SweepConfig:
    bench: harness.BenchConfig
    latencies: tuple[float, ...] = LATENCIES
    settings: tuple[int, ...] = SETTINGS
    max_active: int | None = None
    baseline: bool = True  # the sequential SDK algorithm at each latency


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

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["measurement"] = self.measurement.to_json()
        data["setting"] = setting_label(self.setting)
        return data


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
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        used = json.loads((root / tag / "report.json").read_text())["transfers_auto"]
        if used is not None:
            peak, mean = int(used["peak"]), float(used["mean"])
    busy = busy_share(requests) if config.max_active is not None else None
    return SweepPoint(workload.name, latency, contender, setting, measured, peak, mean, busy)


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


# --- summary, table, plot --------------------------------------------------------------------


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
                    "sdk": sdk,
                    "auto_vs_best": auto[key] / fixed[best] if auto and best else None,
                    "auto_vs_sdk": auto[key] / sdk if auto and sdk else None,
                    "best_vs_sdk": fixed[best] / sdk if best and sdk else None,
                }
            )
    return out


def document(config: SweepConfig, points: Sequence[SweepPoint], seconds: float) -> dict[str, Any]:
    summary = summarize(points)
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
        "table": table_rows(summary, config.bench.chunk_size),
    }


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
        head.append("auto rss/bound MiB")
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
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- a mid-run change: the server gets slower while bulkdrive runs ------------------------------


@dataclass(frozen=True)
class MidrunConfig:
    bench: harness.BenchConfig
    before: float = 0.002
    after: float = 0.020
    #: Seconds of the run at `before`, then the emulator restarts at `after` (same port, root).
    switch_after: float = 5.0
    #: Fixed settings measured at `after` alone, for the best to recover to.
    reference: tuple[int, ...] = (32, 64, 128)
    recover_share: float = 0.8


def run_midrun(config: MidrunConfig, log: harness.Log = harness._stderr_log) -> dict[str, Any]:
    """bulkdrive --transfers auto against an emulator restarted from `before` to `after`
    latency mid-run; how long until its rate is back to `recover_share` of the best fixed
    setting at `after` (each measured from the emulator's request log, completed uploads per
    second)."""
    bench = replace(config.bench, data_dir=config.bench.data_dir.resolve())
    (name,) = bench.workloads[:1] or ("small",)
    workload = harness.prepare_workload(name, bench.data_dir, log)
    processes.precompile(bench.python)
    harness.warm_page_cache(workload.source)
    run_root = harness._unique(bench.data_dir / "runs" / time.strftime("midrun-%Y%m%d-%H%M%S"))
    run_root.mkdir(parents=True)
    try:
        best = 0.0
        for setting in config.reference:
            log_path = run_root / f"fixed-{setting}.requests.ndjson"
            args = ("--latency", f"{config.after}s", "--log-requests", str(log_path))
            m = harness.measure_one(
                replace(bench, emulator_args=args),
                workload,
                "bulkdrive",
                setting,
                0,
                run_root,
                log,
            )
            if m.ok:
                best = max(best, steady_rate(completions(log_path)))
        auto = _switching_run(config, bench, workload, run_root, log)
    finally:
        if not bench.keep:
            shutil.rmtree(run_root, ignore_errors=True)
            if bench.server_dir is not None:
                where = harness._server_root(bench, run_root, "x").parent
                shutil.rmtree(where, ignore_errors=True)
    per_second = auto["rates_after_switch"]
    target = config.recover_share * best
    recovered = next((i + 1 for i, r in enumerate(per_second) if r >= target), None)
    return {
        "kind": "bulkdrive-midrun",
        "workload": name,
        "before": config.before,
        "after": config.after,
        "switch_after": config.switch_after,
        "best_fixed_files_per_s": round(best, 1),
        "target_files_per_s": round(target, 1),
        "recovered_after_seconds": recovered,
        **auto,
    }


def _switching_run(
    config: MidrunConfig,
    bench: harness.BenchConfig,
    workload: harness.Workload,
    run_root: Path,
    log: harness.Log,
) -> dict[str, Any]:
    with socket.socket() as probe:  # a free port both emulators take in turn
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server_root = run_root / "switch-server"
    run_dir = run_root / "switch"
    run_dir.mkdir()
    after_log = run_root / "after.requests.ndjson"

    def emulator(
        latency: float, *extra: str
    ) -> contextlib.AbstractContextManager[processes.Server]:
        args = ("--port", str(port), "--latency", f"{latency}s", *extra)
        return processes.local_emulator(
            server_root, bench.python, run_dir / f"emulator-{latency}.log", extra_args=args
        )

    upload: subprocess.Popen[bytes] | None = None
    with (run_dir / "stdout.txt").open("wb") as out, (run_dir / "stderr.txt").open("wb") as err:
        try:
            with emulator(config.before) as server:
                argv, env = contenders.contender_command(
                    "bulkdrive",
                    workload.source,
                    server,
                    "\\midrun",
                    0,
                    bench.chunk_size,
                    run_dir,
                    bench.python,
                )
                upload = subprocess.Popen(
                    [*argv, "-v"], env=env, stdout=out, stderr=err, cwd=run_dir
                )
                time.sleep(config.switch_after)
            log(f"  midrun: emulator restarted at {config.after * 1000:g} ms latency")
            with emulator(config.after, "--log-requests", str(after_log)):
                code = upload.wait(bench.timeout)
        finally:
            if upload is not None and upload.poll() is None:
                upload.kill()
                upload.wait()
    stored = (server.storage or server_root / processes.BENCH_SHARE) / "midrun"
    error = verify.verify_local(workload.source, stored) if code == 0 else f"exit {code}"
    changes = [
        line.strip()
        for line in (run_dir / "stderr.txt").read_text(errors="replace").splitlines()
        + (run_dir / "stdout.txt").read_text(errors="replace").splitlines()
        if "transfers " in line and "→" in line
    ]
    return {
        "ok": not error,
        "error": error,
        "rates_after_switch": [round(r, 1) for r in per_second(completions(after_log))],
        "changes": changes,
    }


def completions(log_path: Path) -> list[float]:
    """Arrival times (seconds) of the upload requests that completed a file, from a request
    log: the 200s of fullFile requests and of chunk requests with FileEOF (every small file
    of the workloads is one fullFile or one initiate with its whole body)."""
    times: list[float] = []
    with contextlib.suppress(OSError):
        for line in log_path.read_text().splitlines():
            with contextlib.suppress(ValueError, KeyError, TypeError):
                entry = json.loads(line)
                if entry["status"] == 200 and "upload" in entry["path"]:
                    times.append(datetime.datetime.fromisoformat(entry["time"]).timestamp())
    return sorted(times)


def per_second(times: Sequence[float]) -> list[float]:
    if not times:
        return []
    start = times[0]
    counts = [0] * (int(times[-1] - start) + 1)
    for t in times:
        counts[int(t - start)] += 1
    return [float(c) for c in counts]


def steady_rate(times: Sequence[float]) -> float:
    """Uploads per second over the middle 60 % of a run (its start and end are ramps)."""
    if len(times) < 10:
        return 0.0
    a, b = times[len(times) // 5], times[4 * len(times) // 5]
    return (4 * len(times) // 5 - len(times) // 5) / (b - a) if b > a else 0.0
