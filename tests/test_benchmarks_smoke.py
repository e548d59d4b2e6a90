"""The benchmark harness cannot rot: a tiny run of every contender, and its byte checker.

Never asserts times: only that each contender uploaded the workload correctly and that the
measurements the harness reports are there and sane.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bulkdrive.bench import harness, processes, verify

CONTENDERS = ("bulkdrive", "bulkdrive-noverify", "raw", "curl", "sdk")


@pytest.mark.slow
def test_quick_run_measures_every_contender(tmp_path: Path) -> None:
    result_file = tmp_path / "results.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bulkdrive",
            "bench",
            "--quick",
            "--data-dir",
            str(tmp_path / "data"),
            "--json",
            str(result_file),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads(result_file.read_text())
    runs = {r["contender"]: r for r in doc["runs"]}
    assert set(runs) == set(CONTENDERS)
    for name, run in runs.items():
        assert run["ok"] and run["verified"], (name, run["error"])
        assert run["files"] == 204 and run["bytes"] == 4 * 8 * 2**20 + 200 * 4096
        assert run["mb_per_s"] > 0 and run["files_per_s"] > 0, name
        assert run["peak_rss_bytes"] > 0 and run["cpu_seconds"] > 0, name
    # Ratios bulkdrive / each baseline, for both bulkdrive variants.
    pairs = {(r["bulkdrive"], r["baseline"]) for r in doc["ratios"]}
    assert pairs == {(b, base) for b in CONTENDERS[:2] for base in ("raw", "curl", "sdk")}
    for label in ("bulkdrive --no-verify", "raw aiohttp sender", "parallel curl"):
        assert label in proc.stdout
    # Fresh folders per run, removed at the end: nothing left but the cached workload.
    assert not any((tmp_path / "data" / "runs").iterdir())


def test_checker_catches_corrupt_missing_and_extra_files(tmp_path: Path) -> None:
    source, stored = tmp_path / "src", tmp_path / "stored"
    for root in (source, stored):
        (root / "d").mkdir(parents=True)
        (root / "d" / "small.bin").write_bytes(b"abc" * 1000)
        (root / "big.bin").write_bytes(bytes(range(256)) * 40_000)  # more than one block
    assert verify.verify_local(source, stored) == ""

    big = bytearray((stored / "big.bin").read_bytes())
    big[9_000_001] ^= 0xFF
    (stored / "big.bin").write_bytes(bytes(big))
    assert "differ" in verify.verify_local(source, stored)
    (stored / "big.bin").write_bytes((source / "big.bin").read_bytes())

    (stored / "d" / "extra.bin").write_bytes(b"x")
    assert "expected 2" in verify.verify_local(source, stored)
    (stored / "d" / "extra.bin").unlink()
    (stored / "d" / "small.bin").unlink()
    assert "not stored" in verify.verify_local(source, stored)


def test_launcher_reports_the_childs_own_memory(tmp_path: Path) -> None:
    # A child allocating 64 MiB shows it; the harness's own memory is not counted in.
    hog = "b = bytearray(64 * 2**20); b[::4096] = b'x' * (len(b) // 4096)"
    big = processes.run_measured(
        [sys.executable, "-c", hog], {}, tmp_path, tmp_path / "o", tmp_path / "e", 60
    )
    small = processes.run_measured(
        [sys.executable, "-c", "pass"], {}, tmp_path, tmp_path / "o", tmp_path / "e", 60
    )
    assert big.exit_code == 0 and small.exit_code == 0
    assert big.peak_rss_bytes - small.peak_rss_bytes >= 60 * 2**20
    assert small.peak_rss_bytes < 40 * 2**20


def test_schedule_interleaves_the_workloads_repetition_by_repetition() -> None:
    # tree, tree-flat, tree, tree-flat, …: a change of load between the first and the last
    # runs lands on both workloads, not on the ratio between them. Contenders rotate.
    steps = harness.schedule(2, 3, (8,), ("bulkdrive-noverify", "raw"), 8)
    assert [(s.repetition, s.workload, s.contender) for s in steps] == [
        (0, 0, "bulkdrive-noverify"),
        (0, 0, "raw"),
        (0, 1, "bulkdrive-noverify"),
        (0, 1, "raw"),
        (1, 0, "raw"),
        (1, 0, "bulkdrive-noverify"),
        (1, 1, "raw"),
        (1, 1, "bulkdrive-noverify"),
        (2, 0, "bulkdrive-noverify"),
        (2, 0, "raw"),
        (2, 1, "bulkdrive-noverify"),
        (2, 1, "raw"),
    ]
    # A sweep: the sequential SDK once per repetition and workload, at 1 transfer.
    swept = harness.schedule(2, 1, (1, 8), ("raw", "sdk"), 8)
    assert [(s.workload, s.transfers, s.contender) for s in swept] == [
        (0, 1, "raw"),
        (0, 8, "raw"),
        (0, 1, "sdk"),
        (1, 1, "raw"),
        (1, 8, "raw"),
        (1, 1, "sdk"),
    ]


def test_prefault_writes_where_the_emulators_store_and_leaves_nothing(tmp_path: Path) -> None:
    storage = tmp_path / "not-yet" / "there"
    harness.prefault_storage(storage, 3 * 2**20)
    assert storage.is_dir() and not any(storage.iterdir())


def test_precompile_leaves_bytecode_for_every_module(tmp_path: Path) -> None:
    package = tmp_path / "pkg" / "bulkdrive"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "mod.py").write_text("X = 1\n")
    # A stand-in interpreter whose `bulkdrive` is the package above.
    python = tmp_path / "python"
    python.write_text(f'#!/bin/sh\nPYTHONPATH={package.parent} exec {sys.executable} "$@"\n')
    python.chmod(0o755)
    processes.precompile(str(python))
    compiled = {p.name.split(".")[0] for p in (package / "__pycache__").glob("*.pyc")}
    assert compiled == {"__init__", "mod"}


@pytest.mark.slow
def test_plot_sweeps_transfers_and_draws_a_chart(tmp_path: Path) -> None:
    chart, result_file = tmp_path / "sweep.png", tmp_path / "sweep.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bulkdrive",
            "bench",
            "--quick",
            "--contenders",
            "bulkdrive-noverify,raw",
            "--sweep",
            "1,2",
            "--data-dir",
            str(tmp_path / "data"),
            "--json",
            str(result_file),
            "--plot",
            str(chart),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads(result_file.read_text())
    measured = {(r["contender"], r["transfers"]) for r in doc["runs"] if r["ok"]}
    # The sweep values and the run's own --transfers (8), for each concurrent contender.
    assert measured == {(c, t) for c in ("bulkdrive-noverify", "raw") for t in (1, 2, 8)}
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and chart.stat().st_size > 10_000
