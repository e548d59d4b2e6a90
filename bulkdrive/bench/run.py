"""Throughput of bulkdrive against three baselines, measured in one run.

    bulkdrive bench                                  # large, small, mixed; 3 repetitions
    bulkdrive bench --workload small,large --repeat 3 --json bench-results/r.json
    bulkdrive bench --quick                          # a few seconds: the smoke run
    bulkdrive bench --workload mixed --plot bench-results/sweep.png   # transfers 1..32
    bulkdrive bench --profile bench-results/profiles # + py-spy hot spots of bulkdrive
    bulkdrive bench --latency 0,2ms,20ms --sweep 4,8,16,32,64,128,auto \\
        --plot bench-results/network.png             # real networks: see sweep.py, midrun.py
    BULKDRIVE_PASSWORD=… bulkdrive bench --url https://HOST/webconsole/api \\
        --user alice --share 42                                # a real server: bulkdrive and raw

Prints the median MB/s, files/s, peak RSS and CPU seconds of each contender, the ratios
bulkdrive / baseline and the issue's targets. Exit status: 0, or 1 when a run failed.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import click

from bulkdrive.bench import harness, midrun, output, processes, sweep, sweep_table, workloads
from bulkdrive.bench.contenders import CONTENDERS


def _csv(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _sweep_settings(ctx: click.Context, param: click.Parameter, text: str) -> tuple[int, ...]:
    try:
        return sweep.parse_settings(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc).removeprefix("--sweep: ")) from None


def _latencies(
    ctx: click.Context, param: click.Parameter, text: str | None
) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return sweep.parse_latencies(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc).removeprefix("--latency: ")) from None


@dataclass(frozen=True)
class BenchArgs:
    """What `bulkdrive bench` was asked for (see the options' help)."""

    workload: str
    repeat: int
    transfers: int
    contenders: str
    json: Path | None
    plot: Path | None
    sweep: tuple[int, ...]
    latency: tuple[float, ...] | None
    midrun: tuple[float, ...] | None
    max_active: int | None
    quick: bool
    data_dir: Path
    server_dir: Path | None
    keep: bool
    profile: Path | None
    timeout: float
    url: str | None
    user: str | None
    share: str | None


_POSITIVE = click.IntRange(min=1)
_FILE = click.Path(path_type=Path)


@click.command(
    "bench",
    context_settings={"help_option_names": ["-h", "--help"]},
    help="Measure bulkdrive against a raw aiohttp sender, parallel curl and the "
    "sequential SDK algorithm, on the same workloads in one run.",
)
@click.option(
    "--workload",
    default="large,small,mixed",
    show_default=True,
    metavar="W,W,…",
    help="Comma list of workloads: large, small, mixed, quick, sample, tree, tree-flat; "
    "netsmall, netlarge, nettree (network sweep); netmidrun (--midrun).",
)
@click.option(
    "--repeat",
    type=_POSITIVE,
    default=3,
    show_default=True,
    help="Repetitions; medians are quoted.",
)
@click.option(
    "--transfers",
    type=_POSITIVE,
    default=8,
    show_default=True,
    help="Files in flight for every concurrent contender.",
)
@click.option(
    "--contenders",
    default=",".join(CONTENDERS),
    show_default=True,
    metavar="C,C,…",
    help=f"Comma list of {', '.join(CONTENDERS)}.",
)
@click.option("--json", "json_file", type=_FILE, metavar="FILE", help="Write every result to FILE.")
@click.option(
    "--plot",
    type=_FILE,
    metavar="FILE.png",
    help="Also sweep --transfers and draw MB/s against it (needs matplotlib).",
)
@click.option(
    "--sweep",
    "sweep_settings",
    callback=_sweep_settings,
    metavar="N,N,…",
    default=",".join(str(n) for n in harness.SWEEP),
    show_default=True,
    help="--transfers values of the --plot sweep; with --latency, may include auto.",
)
@click.option(
    "--latency",
    callback=_latencies,
    metavar="D,D,…",
    help="The network sweep: server latencies (e.g. 0,2ms,20ms); bulkdrive at each "
    "--sweep setting and the sequential SDK algorithm, per latency "
    "(default workloads netsmall,netlarge).",
)
@click.option(
    "--midrun",
    callback=_latencies,
    metavar="D,D",
    help="Restart the emulator mid-run from the first latency to the second (e.g. "
    "2ms,20ms): how soon --transfers auto is back to 0.8x the best of --sweep's fixed "
    "settings (default 32,64,128) at the second (default workload netmidrun).",
)
@click.option(
    "--max-active",
    type=_POSITIVE,
    metavar="N",
    help="Network sweep: the emulator answers 503 beyond N requests at once.",
)
@click.option(
    "--quick",
    is_flag=True,
    help="The tiny 'quick' workload (4 x 8 MiB + 200 x 4 KiB), one repetition.",
)
@click.option(
    "--data-dir",
    type=_FILE,
    default=Path("bench-data"),
    show_default=True,
    help="Cache of generated workloads and scratch of the runs.",
)
@click.option(
    "--server-dir",
    type=_FILE,
    metavar="DIR",
    help="Where the local emulators store uploads (default: /dev/shm when it "
    "has room, so the disk's write-back is not measured; else DATA_DIR).",
)
@click.option("--keep", is_flag=True, help="Keep what the emulators stored (under DATA_DIR/runs).")
@click.option(
    "--profile",
    type=_FILE,
    metavar="DIR",
    help="One extra run of bulkdrive per workload under py-spy; hot spots printed.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=3600,
    show_default=True,
    metavar="SECONDS",
    help="Seconds allowed per contender run.",
)
@click.option(
    "--url",
    metavar="URL",
    help="A real server's root (https://HOST/webconsole/api) instead of "
    "local emulators; password from BULKDRIVE_PASSWORD.",
)
@click.option("--user", metavar="NAME", help="User name on the real server.")
@click.option("--share", metavar="ID", help="Share id on the real server.")
def command(json_file: Path | None, sweep_settings: tuple[int, ...], **options: Any) -> int:
    return run(BenchArgs(json=json_file, sweep=sweep_settings, **options))


def config_from(args: BenchArgs) -> harness.BenchConfig:
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
    """`bulkdrive bench ARGS` (and benchmarks/run.py): the exit status, never a traceback."""
    try:
        status = command.main(args=argv, prog_name="bulkdrive bench", standalone_mode=False)
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.Abort:
        print("bulkdrive bench: interrupted", file=sys.stderr)
        return 130
    return status if isinstance(status, int) else 0


def run(args: BenchArgs) -> int:
    if args.latency is None and sweep_table.AUTO in args.sweep:
        print("bulkdrive bench: error: --sweep auto needs --latency", file=sys.stderr)
        return 2
    if args.latency is not None and args.workload == "large,small,mixed" and not args.quick:
        args = replace(args, workload="netsmall,netlarge")
    if args.midrun is not None and args.workload == "large,small,mixed" and not args.quick:
        args = replace(args, workload="netmidrun")
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
        return _midrun(args, config, args.midrun)
    if args.latency is not None:
        return _network_sweep(args, config, args.latency)
    return _measure(
        args,
        lambda: harness.run_benchmark(config),
        render=output.format_table,
        plot=output.plot,
        ok=lambda doc: all(r["ok"] for r in doc["runs"]),
    )


def _midrun(args: BenchArgs, config: harness.BenchConfig, latencies: tuple[float, ...]) -> int:
    if len(latencies) != 2:
        print("bulkdrive bench: error: --midrun takes two latencies: BEFORE,AFTER", file=sys.stderr)
        return 2
    fixed = tuple(s for s in args.sweep if s != sweep_table.AUTO)
    settings = midrun.MidrunConfig(
        bench=config,
        before=latencies[0],
        after=latencies[1],
        reference=fixed if args.sweep != harness.SWEEP else (32, 64, 128),
    )
    return _measure(
        args,
        lambda: midrun.run_midrun(settings),
        render=lambda doc: json.dumps(doc, indent=2),
        plot=None,
        ok=lambda doc: bool(doc["ok"]),
    )


def _network_sweep(
    args: BenchArgs, config: harness.BenchConfig, latencies: tuple[float, ...]
) -> int:
    settings = sweep.SweepConfig(
        bench=config,
        latencies=latencies,
        settings=args.sweep if args.sweep != harness.SWEEP else sweep.SETTINGS,
        max_active=args.max_active,
        baseline="sdk" in config.contenders,
    )
    return _measure(
        args,
        lambda: sweep.run_sweep(settings),
        render=sweep_table.render,
        plot=sweep_table.plot,
        ok=lambda doc: all(p["measurement"]["ok"] for p in doc["points"]),
    )


def _measure(
    args: BenchArgs,
    measure: Callable[[], dict[str, Any]],
    *,
    render: Callable[[dict[str, Any]], str],
    plot: Callable[[dict[str, Any], Path], None] | None,
    ok: Callable[[dict[str, Any]], bool],
) -> int:
    """Run one kind of measurement, print it, write --json and --plot: the exit status."""
    try:
        doc = measure()
    except (OSError, RuntimeError, ValueError, subprocess.SubprocessError) as exc:
        print(f"bulkdrive bench: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bulkdrive bench: interrupted", file=sys.stderr)
        return 130
    print(render(doc))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"\nresults written to {args.json}")
    if args.plot and plot is not None:
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        plot(doc, args.plot)
        print(f"plot written to {args.plot}")
    return 0 if ok(doc) else 1


if __name__ == "__main__":
    sys.exit(main())
