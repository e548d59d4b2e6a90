"""The contenders of a benchmark: what each is, and the command and environment that make it
upload a tree as a user would run it, and what it reports of its own time."""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from bulkdrive.bench import baselines
from bulkdrive.bench.processes import Server


@dataclass(frozen=True)
class ContenderInfo:
    name: str
    label: str
    remote_ok: bool  # can run against a real server (--url)
    concurrent: bool  # honours --transfers


CONTENDERS: dict[str, ContenderInfo] = {
    c.name: c
    for c in (
        ContenderInfo("bulkdrive", "bulkdrive (integrity on)", True, True),
        ContenderInfo("bulkdrive-noverify", "bulkdrive --no-verify", True, True),
        ContenderInfo("raw", "raw aiohttp sender", True, True),
        ContenderInfo("curl", "parallel curl (xargs -P)", False, True),
        ContenderInfo("sdk", "sequential SDK algorithm (2 MiB)", False, False),
    )
}


BULKDRIVE_CONTENDERS = ("bulkdrive", "bulkdrive-noverify")


def _base_env() -> dict[str, str]:
    # A user's own BULKDRIVE_* settings must not change what is measured.
    return {k: v for k, v in os.environ.items() if not k.startswith("BULKDRIVE_")}


def contender_command(
    contender: str,
    source: Path,
    server: Server,
    folder: str,
    transfers: int,
    chunk_size: int,
    run_dir: Path,
    python: str,
) -> tuple[list[str], dict[str, str]]:
    """argv and environment that upload `source` into `folder` as `contender` does."""
    env = _base_env()
    env["BULKDRIVE_PASSWORD"] = server.password
    job = baselines.Job(
        source,
        server.url,
        server.user,
        server.password,
        server.share,
        folder,
        transfers,
        chunk_size,
    )
    if contender in BULKDRIVE_CONTENDERS:
        env["BULKDRIVE_STATE_DIR"] = str(run_dir / "state")
        argv = [
            python,
            "-m",
            "bulkdrive",
            "upload",
            str(source),
            "--url",
            server.url,
            "--user",
            server.user,
            "--share",
            server.share,
            "--to",
            folder,
            "--no-progress",
            "--transfers",
            str(transfers) if transfers else "auto",  # 0: --transfers auto (network sweep)
            "--chunk-size",
            str(chunk_size),
            "--journal",
            str(run_dir / "journal.sqlite"),
            "--report",
            str(run_dir / "report.json"),
        ]
        if contender == "bulkdrive-noverify":
            argv.append("--no-verify")
        return argv, env
    if contender == "raw":
        return baselines.baseline_command("raw", job, python), env
    if contender == "sdk":
        return baselines.baseline_command("sdk", job, python), env
    if contender == "curl":
        argv, extra = baselines.curl_command(job)
        env.update(extra)
        return argv, env
    raise ValueError(f"unknown contender {contender!r}")


def inner_seconds(contender: str, run_dir: Path, stdout: Path) -> float | None:
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError, IndexError):
        if contender in BULKDRIVE_CONTENDERS:
            report = json.loads((run_dir / "report.json").read_text())
            return float(report["elapsed_seconds"])
        if contender in ("raw", "sdk"):
            line = stdout.read_text().strip().splitlines()[-1]
            return float(json.loads(line)["seconds"])
    return None


def total_known_seconds(contender: str, run_dir: Path) -> float | None:
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        if contender in BULKDRIVE_CONTENDERS:
            report = json.loads((run_dir / "report.json").read_text())
            value = report["total_known_seconds"]
            return None if value is None else float(value)
    return None
