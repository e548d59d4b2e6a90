"""`bulkdrive bench --midrun 2ms,20ms`: the server gets slower while bulkdrive runs.

bulkdrive `--transfers auto` uploads to an emulator that is restarted mid-run (same port and
root) at another latency; from the emulator's request log, how many seconds until its rate of
completed uploads is back to a share of the best fixed setting measured at the new latency.
Each of `--repeat` repetitions runs the fixed settings and one switching run; the best fixed
setting is the best of the settings' medians, and the verdict the median recovery time.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import shutil
import socket
import statistics
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bulkdrive.bench import contenders, harness, processes, verify


@dataclass(frozen=True)
class MidrunConfig:
    bench: harness.BenchConfig
    before: float = 0.002
    after: float = 0.020
    #: Seconds of the run at `before`, then the emulator restarts at `after` (same port, root);
    #: the recovery is counted from that moment.
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
    steady: dict[int, list[float]] = {setting: [] for setting in config.reference}
    runs: list[dict[str, Any]] = []
    try:
        # Repetitions interleave the fixed runs (in a rotating order) with the switching run,
        # so that a machine that gets busier or quieter weighs on both sides alike.
        for repetition in range(bench.repeat):
            shift = repetition % len(config.reference)
            for setting in config.reference[shift:] + config.reference[:shift]:
                log_path = run_root / f"fixed-{setting}-r{repetition}.requests.ndjson"
                args = ("--latency", f"{config.after}s", "--log-requests", str(log_path))
                m = harness.measure_one(
                    replace(bench, emulator_args=args),
                    workload,
                    "bulkdrive",
                    setting,
                    repetition,
                    run_root,
                    log,
                )
                if m.ok:
                    steady[setting].append(steady_rate(completions(log_path)))
            runs.append(_switching_run(config, bench, workload, run_root, repetition, log))
    finally:
        if not bench.keep:
            shutil.rmtree(run_root, ignore_errors=True)
            if bench.server_dir is not None:
                where = harness._server_root(bench, run_root, "x").parent
                shutil.rmtree(where, ignore_errors=True)
    best = max((statistics.median(rates) for rates in steady.values() if rates), default=0.0)
    target = config.recover_share * best
    for run in runs:
        run["recovered_after_seconds"] = recovered_after(run["rates_after_switch"], target)
    return {
        "kind": "bulkdrive-midrun",
        "workload": name,
        "before": config.before,
        "after": config.after,
        "switch_after": config.switch_after,
        "fixed_files_per_s": {str(k): [round(r, 1) for r in v] for k, v in steady.items()},
        "best_fixed_files_per_s": round(best, 1),
        "target_files_per_s": round(target, 1),
        "recovered_after_seconds": median_seconds([r["recovered_after_seconds"] for r in runs]),
        "ok": all(r["ok"] for r in runs),
        "runs": runs,
    }


def _switching_run(
    config: MidrunConfig,
    bench: harness.BenchConfig,
    workload: harness.Workload,
    run_root: Path,
    repetition: int,
    log: harness.Log,
) -> dict[str, Any]:
    with socket.socket() as probe:  # a free port both emulators take in turn
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server_root = run_root / f"switch-server-r{repetition}"
    run_dir = run_root / f"switch-r{repetition}"
    run_dir.mkdir()
    after_log = run_root / f"after-r{repetition}.requests.ndjson"

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
                # No -v: a line per file doubled the CPU of a small-file run (20 000 files at
                # 20 ms: 22 s against 10 s), which the fixed reference runs do not pay.
                upload = subprocess.Popen(argv, env=env, stdout=out, stderr=err, cwd=run_dir)
                time.sleep(config.switch_after)
                # The change starts as the first emulator stops: the seconds of the restart,
                # with no server to answer, count against the recovery.
                switched = time.time()
            log(f"  midrun: emulator restarted at {config.after * 1000:g} ms latency")
            with emulator(config.after, "--log-requests", str(after_log)):
                code = upload.wait(bench.timeout)
        finally:
            if upload is not None and upload.poll() is None:
                upload.kill()
                upload.wait()
    stored = (server.storage or server_root / processes.BENCH_SHARE) / "midrun"
    error = verify.verify_local(workload.source, stored) if code == 0 else f"exit {code}"
    used: Any = None
    with contextlib.suppress(OSError, ValueError, KeyError):
        used = json.loads((run_dir / "report.json").read_text())["transfers_auto"]
    return {
        "ok": not error,
        "error": error,
        "rates_after_switch": [
            round(r, 1) for r in per_second(completions(after_log), start=switched)
        ],
        "transfers_auto": used,  # peak, time-weighted mean and number of changes
    }


def recovered_after(per_second: Sequence[float], target: float) -> int | None:
    """Seconds from the change until the first second at `target` or above (None: never)."""
    return next((i + 1 for i, rate in enumerate(per_second) if rate >= target), None)


def median_seconds(seconds: Sequence[int | None]) -> float | None:
    """The median of the runs' recovery times, a run that never recovered counting as the
    longest (None when that is the median)."""
    ordered = sorted(seconds, key=lambda s: math.inf if s is None else s)
    if not ordered:
        return None
    middle = ordered[(len(ordered) - 1) // 2 : len(ordered) // 2 + 1]
    if any(s is None for s in middle):
        return None
    return statistics.median(s for s in middle if s is not None)


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


def per_second(times: Sequence[float], start: float | None = None) -> list[float]:
    """Completions in each second from `start` (the first completion when not given)."""
    if not times:
        return []
    start = times[0] if start is None else min(start, times[0])
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
