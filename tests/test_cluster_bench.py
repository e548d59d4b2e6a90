"""The cluster benchmark's CPU seconds during the run (benchmarks/cluster.py): the window it
finds in its samples, and the processes it reads from /proc."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest

BENCHMARK = Path(__file__).parent.parent / "benchmarks" / "cluster.py"


def _benchmark() -> ModuleType:
    spec = importlib.util.spec_from_file_location("cluster_benchmark", BENCHMARK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _sampler_with(module: ModuleType, samples: list[tuple[float, dict[str, float]]]) -> object:
    sampler = module._CpuSampler(os.getpid(), os.getpid())
    sampler._samples = samples
    return sampler


def test_the_run_is_the_elapsed_seconds_that_end_where_the_server_was_last_busy() -> None:
    module = _benchmark()
    every = module.CPU_EVERY
    samples = []
    coordinator = workers = server = 0.0
    for i in range(200):  # 10 s: start-up to 3 s, the run 3-7 s, then the cluster's end
        at = i * every
        in_run = 3.0 < at <= 7.0
        coordinator += 0.02 if not in_run else 0.005  # the start and end cost it most
        workers += 0.04 if in_run else 0.03
        server += 0.02 if in_run else 0.0
        if i == 160:
            server += 0.015  # stray clock ticks charged to the idle server
        samples.append((at, {"coordinator": coordinator, "workers": workers, "server": server}))
    sampler = _sampler_with(module, samples)
    during = sampler.during_run(4.0)  # type: ignore[attr-defined]
    assert during["server"] == pytest.approx(80 * 0.02, abs=0.021)
    assert during["workers"] == pytest.approx(80 * 0.04, abs=0.05)
    assert during["coordinator"] == pytest.approx(80 * 0.005, abs=0.03)


def test_no_run_in_the_samples_gives_nothing() -> None:
    module = _benchmark()
    idle = [(i * 0.05, {"coordinator": 0.0, "workers": 0.0, "server": 0.0}) for i in range(40)]
    assert _sampler_with(module, idle).during_run(1.0) == {}  # type: ignore[attr-defined]
    # A busy server whose run would have begun before the first sample: not measured.
    busy = [(i * 0.05, {"coordinator": 0.0, "workers": 0.0, "server": i * 0.03}) for i in range(40)]
    assert _sampler_with(module, busy).during_run(5.0) == {}  # type: ignore[attr-defined]


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads Linux's /proc")
def test_a_process_tree_and_its_cpu_are_read_from_proc() -> None:
    module = _benchmark()
    # A child that starts a grandchild busy for a moment, then both wait to be ended.
    script = (
        "import subprocess, sys, time\n"
        "g = subprocess.Popen([sys.executable, '-c', "
        "'import time\\nt = time.process_time()\\n"
        "while time.process_time() - t < 0.2: pass\\ntime.sleep(30)'])\n"
        "print(g.pid, flush=True)\n"
        "time.sleep(30)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        grandchild = int(child.stdout.readline())
        assert module._descendants(child.pid) == [grandchild]
        deadline = time.monotonic() + 10
        while (module._cpu_of(grandchild) or 0.0) < 0.15 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert module._cpu_of(grandchild) >= 0.15
    finally:
        for pid in module._descendants(child.pid):
            os.kill(pid, 9)
        child.kill()
        child.wait(timeout=10)
    assert module._cpu_of(child.pid) is None  # reaped: gone from /proc
