"""Throughput of bulkdrive against three baselines, measured in one run (issue 7).

    bulkdrive bench                                  # large, small, mixed; 3 repetitions
    bulkdrive bench --workload small,large --repeat 3 --json bench-results/r.json
    bulkdrive bench --quick                          # a few seconds: the smoke run
    bulkdrive bench --workload mixed --plot bench-results/sweep.png   # transfers 1..32
    bulkdrive bench --profile bench-results/profiles # + py-spy hot spots of bulkdrive
    bulkdrive bench --latency 0,2ms,20ms --sweep 4,8,16,32,64,128,auto \\
        --plot bench-results/network.png             # real networks: see sweep.py
    BULKDRIVE_PASSWORD=… bulkdrive bench --url https://HOST/webconsole/api \\
        --user alice --share 42                                # a real server: bulkdrive and raw

Prints the median MB/s, files/s, peak RSS and CPU seconds of each contender, the ratios
bulkdrive / baseline and the issue's targets. Exit status: 0, or 1 when a run failed.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

from bulkdrive.bench import harness, output, processes, sweep, workloads
from bulkdrive.bench.contenders import CONTENDERS


def _csv(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in _csv(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of whole numbers: {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"need whole numbers >= 1: {text!r}")
    return values


def _positive(text: str) -> int:
    value = _ints(text)
    if len(value) != 1:
        raise argparse.ArgumentTypeError(f"one whole number, not {text!r}")
    return value[0]


def _sweep(text: str) -> tuple[int, ...]:
    try:
        return sweep.parse_settings(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _latencies(text: str) -> tuple[float, ...]:
    try:
        return sweep.parse_latencies(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bulkdrive bench",
        description="Measure bulkdrive against a raw aiohttp sender, parallel curl and the "
        "sequential SDK algorithm, on the same workloads in one run.",
    )
    p.add_argument(
        "--workload",
        default="large,small,mixed",
        help="comma list of workloads: large, small, mixed, quick, sample "
        "(default: large,small,mixed)",
    )
    p.add_argument(
        "--repeat", type=_positive, default=3, help="repetitions; medians are quoted (default 3)"
    )
    p.add_argument(
        "--transfers",
        type=_positive,
        default=8,
        help="files in flight for every concurrent contender (default 8)",
    )
    p.add_argument(
        "--contenders",
        default=",".join(CONTENDERS),
        help=f"comma list of {', '.join(CONTENDERS)} (default: all)",
    )
    p.add_argument("--json", type=Path, metavar="FILE", help="write every result to FILE")
    p.add_argument(
        "--plot",
        type=Path,
        metavar="FILE.png",
        help="also sweep --transfers and draw MB/s against it (needs matplotlib)",
    )
    p.add_argument(
        "--sweep",
        type=_sweep,
        default=harness.SWEEP,
        metavar="N,N,…",
        help="--transfers values of the --plot sweep (default 1,2,4,8,16,32); with "
        "--latency, may include auto",
    )
    p.add_argument(
        "--latency",
        type=_latencies,
        metavar="D,D,…",
        help="the network sweep: server latencies (e.g. 0,2ms,20ms); bulkdrive at each "
        "--sweep setting and the sequential SDK algorithm, per latency "
        "(default workloads netsmall,netlarge)",
    )
    p.add_argument(
        "--midrun",
        type=_latencies,
        metavar="D,D",
        help="restart the emulator mid-run from the first latency to the second (e.g. "
        "2ms,20ms): how soon --transfers auto is back to 0.8x the best of --sweep's fixed "
        "settings (default 32,64,128) at the second (default workload small)",
    )
    p.add_argument(
        "--max-active",
        type=_positive,
        metavar="N",
        help="network sweep: the emulator answers 503 beyond N requests at once",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="the tiny 'quick' workload (4 x 8 MiB + 200 x 4 KiB), one repetition",
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        default=Path("bench-data"),
        help="cache of generated workloads and scratch of the runs (default ./bench-data)",
    )
    p.add_argument(
        "--server-dir",
        type=Path,
        metavar="DIR",
        help="where the local emulators store uploads (default: /dev/shm when it "
        "has room, so the disk's write-back is not measured; else DATA_DIR)",
    )
    p.add_argument(
        "--keep", action="store_true", help="keep what the emulators stored (under DATA_DIR/runs)"
    )
    p.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="one extra run of bulkdrive per workload under py-spy; hot spots printed",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=3600.0,
        help="seconds allowed per contender run (default 3600)",
    )
    p.add_argument(
        "--url",
        help="a real server's root (https://HOST/webconsole/api) instead of "
        "local emulators; password from BULKDRIVE_PASSWORD",
    )
    p.add_argument("--user", help="user name on the real server")
    p.add_argument("--share", help="share id on the real server")
    return p


def config_from(args: argparse.Namespace) -> harness.BenchConfig:
    names = ("quick",) if args.quick else _csv(args.workload)
    unknown = [w for w in names if w not in workloads.WORKLOADS]
    if unknown or not names:
        raise ValueError(
            f"--workload: unknown {', '.join(unknown) or '(none)'}; known: "
            f"{', '.join(workloads.WORKLOADS)}"
        )
    contenders = _csv(args.contenders)
    bad = [c for c in contenders if c not in CONTENDERS]
    if bad or not contenders:
        raise ValueError(
            f"--contenders: unknown {', '.join(bad) or '(none)'}; known: {', '.join(CONTENDERS)}"
        )
    remote = None
    if args.url:
        password = os.environ.get("BULKDRIVE_PASSWORD")
        if not args.user or not args.share or password is None:
            raise ValueError("--url needs --user, --share and the password in BULKDRIVE_PASSWORD")
        remote = processes.Server(args.url.rstrip("/"), args.user, args.share, password)
        dropped = [c for c in contenders if not CONTENDERS[c].remote_ok]
        if dropped:
            print(
                f"against a real server only bulkdrive and raw run; leaving out "
                f"{', '.join(dropped)}",
                file=sys.stderr,
            )
    return harness.BenchConfig(
        workloads=names,
        repeat=1 if args.quick else args.repeat,
        transfers=args.transfers,
        sweep=tuple(args.sweep) if args.plot and args.latency is None else (),
        contenders=contenders,
        data_dir=args.data_dir,
        remote=remote,
        timeout=args.timeout,
        keep=args.keep,
        profile_dir=args.profile,
        server_dir=args.server_dir.resolve() if args.server_dir else None,
    )


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.latency is None and sweep.AUTO in args.sweep:
        print("bulkdrive bench: error: --sweep auto needs --latency", file=sys.stderr)
        return 2
    if args.latency is not None and args.workload == "large,small,mixed" and not args.quick:
        args.workload = "netsmall,netlarge"
    if args.midrun is not None and args.workload == "large,small,mixed" and not args.quick:
        args.workload = "small"
    try:
        config = config_from(args)
    except ValueError as exc:
        print(f"bulkdrive bench: error: {exc}", file=sys.stderr)
        return 2
    if args.plot:
        try:  # checked before hours of measuring, not after
            importlib.import_module("matplotlib")
        except ImportError:
            print(
                "bulkdrive bench: error: --plot needs matplotlib: pip install '.[plot]'",
                file=sys.stderr,
            )
            return 2
    if args.midrun is not None:
        return _midrun(args, config)
    if args.latency is not None:
        return _network_sweep(args, config)
    try:
        doc = harness.run_benchmark(config)
    except (OSError, RuntimeError, ValueError) as exc:
        print(f"bulkdrive bench: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bulkdrive bench: interrupted", file=sys.stderr)
        return 130
    print(output.format_table(doc))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"\nresults written to {args.json}")
    if args.plot:
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        output.plot(doc, args.plot)
        print(f"plot written to {args.plot}")
    return 0 if all(r["ok"] for r in doc["runs"]) else 1


def _midrun(args: argparse.Namespace, config: harness.BenchConfig) -> int:
    if len(args.midrun) != 2:
        print("bulkdrive bench: error: --midrun takes two latencies: BEFORE,AFTER", file=sys.stderr)
        return 2
    fixed = tuple(s for s in args.sweep if s != sweep.AUTO)
    settings = sweep.MidrunConfig(
        bench=config,
        before=args.midrun[0],
        after=args.midrun[1],
        reference=fixed if args.sweep != harness.SWEEP else (32, 64, 128),
    )
    try:
        doc = sweep.run_midrun(settings)
    except (OSError, RuntimeError, ValueError, subprocess.SubprocessError) as exc:
        print(f"bulkdrive bench: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bulkdrive bench: interrupted", file=sys.stderr)
        return 130
    print(json.dumps(doc, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    return 0 if doc["ok"] else 1


def _network_sweep(args: argparse.Namespace, config: harness.BenchConfig) -> int:
    settings = sweep.SweepConfig(
        bench=config,
        latencies=args.latency,
        settings=args.sweep if args.sweep != harness.SWEEP else sweep.SETTINGS,
        max_active=args.max_active,
        baseline="sdk" in config.contenders,
    )
    try:
        doc = sweep.run_sweep(settings)
    except (OSError, RuntimeError, ValueError) as exc:
        print(f"bulkdrive bench: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bulkdrive bench: interrupted", file=sys.stderr)
        return 130
    print(sweep.render(doc))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"\nresults written to {args.json}")
    if args.plot:
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        sweep.plot(doc, args.plot)
        print(f"plot written to {args.plot}")
    return 0 if all(p["measurement"]["ok"] for p in doc["points"]) else 1


if __name__ == "__main__":
    sys.exit(main())
