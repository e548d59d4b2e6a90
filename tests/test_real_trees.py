"""Real trees: names that are not UTF-8, names Windows refuses, a folder that cannot be read
and one that vanishes mid-walk. Every good file is stored byte-identical, everything else is a
named failure with reason and hint, the run goes on and ends with exit 1; --dry-run, status and
a re-run work on the same tree. The runs drop the capabilities that let root read any folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from test_cli_upload import cli_env, run_cli, upload_args

from bulkdrive.emulator import Emulator
from bulkdrive.names import remote_name

from conftest import PASSWORD, SHARE_ID, USER, EmulatorFactory
from trees import without_read_override

pytestmark = pytest.mark.anyio

#: Good files: the local path relative to SRC (undecodable bytes as surrogates) → content.
GOOD: dict[str, bytes] = {
    "a.txt": b"ordinary\n",
    "sub/deep/b.bin": bytes(range(256)) * 300,
    os.fsdecode(b"m\xe9.txt"): b"latin-1 name",
    os.fsdecode(b"\x83e\x83X\x83g.txt"): b"shift-jis name",
    os.fsdecode(b"latin\xe9/inside.txt"): b"in a folder named in latin-1",
    "q\u201b41.txt": b"a name holding the escape quote itself",
    "\u00e9t\u00e9/ok.txt": b"valid non-ASCII",
}
#: Names a Windows file system refuses, and a file inside a folder it refuses.
WINDOWS = ("win/CON", "win/a?b.txt", "win/trail.", "bad:dir/x.txt")
LOCKED = "locked"
GONE = "zz-gone"

_FIRST_RUN = """
import json, shutil, sys
from pathlib import Path

import anyio
from rich.console import Console

from bulkdrive.client import EdgeDriveClient
from bulkdrive.config import Credentials, Secret, TransferConfig
from bulkdrive.journal import JobKey, Journal
from bulkdrive.progress import NullReporter
from bulkdrive.report import FileReportWriter, render_summary
from bulkdrive.report_json import summary_to_json
from bulkdrive.scheduler import RunPlan, TreeUpload

url, user, password, share, src, gone, journal, lines = sys.argv[1:]


class RemovesAFolderMidWalk(NullReporter):
    # The walk lists SRC (files, then folders), then sends its files; once the first one is
    # found, a folder it listed but has not opened yet goes away.
    removed = False

    def file_found(self, size):
        if not self.removed:
            self.removed = True
            shutil.rmtree(gone)


async def main():
    config = TransferConfig(transfers=4)
    key = JobKey(url, share, "\\\\", str(Path(src).resolve()))  # as `bulkdrive upload` keys it
    credentials = Credentials(user=user, password=Secret(password))
    async with Journal.open(Path(journal), key, exclusive=True) as j:
        async with EdgeDriveClient.connect(url, credentials, share_id=share, config=config) as c:
            with FileReportWriter(Path(lines)) as report:
                plan = RunPlan(Path(src), config=config)
                run = TreeUpload(
                    c, plan, reporter=RemovesAFolderMidWalk(), journal=j, file_report=report
                )
                summary = await run.run()
    render_summary(summary, Console(width=500, color_system=None))
    print(json.dumps(summary_to_json(summary)))
    return summary.exit_code

sys.exit(anyio.run(main))
"""


def make_odd_tree(src: Path) -> None:
    base = os.fsencode(src)
    for relative, data in GOOD.items():
        path = os.path.join(base, os.fsencode(relative))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
    for relative in (*WINDOWS, f"{LOCKED}/secret.txt", f"{GONE}/lost.txt"):
        path = src / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"not uploaded: " + relative.encode())
    (src / LOCKED).chmod(0)


def assert_good_stored(stored: Path) -> None:
    for relative, data in GOOD.items():
        # The server holds the escaped name, in valid UTF-8.
        remote = remote_name(relative)
        remote.encode("utf-8")
        assert (stored / remote).read_bytes() == data, relative


def expected_failures() -> dict[str, str]:
    return {
        LOCKED: "UnreadableFolder",
        GONE: "Vanished",
        "win/CON": "NameRefused",
        "win/a?b.txt": "NameRefused",
        "win/trail.": "NameRefused",
        "bad:dir/x.txt": "FolderNotCreated",
    }


def failures_of(report: dict[str, Any]) -> dict[str, str]:
    for failure in report["failures"]:
        assert failure["reason"] and failure["hint"], failure
    return {f["path"]: f["exit_class"] for f in report["failures"]}


async def test_odd_tree_everything_stored_or_named(
    make_emulator: EmulatorFactory, tmp_path: Path
) -> None:
    emulator: Emulator = await make_emulator(windows_names=True, strict_parents=True)
    src = tmp_path / "src"
    make_odd_tree(src)
    journal = tmp_path / "job.sqlite"
    lines = tmp_path / "files.ndjson"
    stored = emulator.config.root / SHARE_ID
    env = cli_env(home=tmp_path)
    try:
        # 1. The first run (library, so that a folder can vanish at a known point of the walk).
        argv = [sys.executable, "-c", _FIRST_RUN, emulator.base_url, USER, PASSWORD, SHARE_ID]
        argv += [str(src), str(src / GONE), str(journal), str(lines)]
        done = await run_cli_argv(without_read_override(argv), tmp_path, env)
        out = done.stdout.decode()
        assert done.returncode == 1, done.stderr.decode()
        assert b"Traceback" not in done.stderr
        report = json.loads(out.splitlines()[-1])
        assert failures_of(report) == expected_failures()
        assert report["files"]["uploaded"] == len(GOOD)
        # bytes sent are exactly the good files' bytes: nothing of the others was accepted
        assert report["bytes"]["sent"] == sum(map(len, GOOD.values()))
        # The summary names each failure with its reason and what to do, as the report does.
        for failure in report["failures"]:
            line = next(x for x in out.splitlines() if x.startswith(f"FAILED {failure['path']}:"))
            assert failure["exit_class"] in line and failure["hint"] in line, line
        assert_good_stored(stored)
        assert not (stored / LOCKED).exists() and not (stored / "win" / "CON").exists()
        per_file = [json.loads(line) for line in lines.read_text().splitlines()]
        failed_lines = {r["path"]: r for r in per_file if r["outcome"] == "failed"}
        assert set(failed_lines) == set(expected_failures())
        assert all(r["reason"] and r["hint"] for r in failed_lines.values())
        # the local name losslessly (surrogate escapes), the remote one in valid UTF-8
        latin = next(r for r in per_file if r["path"] == os.fsdecode(b"m\xe9.txt"))
        assert os.fsencode(latin["path"]) == b"m\xe9.txt"
        assert latin["remote_path"] == "\\m\u201bE9.txt"

        # 2. --dry-run, through the CLI, on the same tree and journal, no capabilities.
        common = ["--journal", str(journal)]
        dry = await run_cli_argv(
            without_read_override(
                [
                    sys.executable,
                    "-m",
                    "bulkdrive",
                    *upload_args(emulator, src, *common, "--dry-run"),
                ]
            ),
            tmp_path,
            env,
        )
        assert dry.returncode == 1, dry.stderr.decode()
        assert b"Traceback" not in dry.stderr + dry.stdout
        assert b"FAILED locked:" in dry.stdout
        assert b"would upload 4 files" in dry.stdout  # the four Windows names, not yet done

        # 3. The re-run: the good files are unchanged (journal keys hold undecodable names),
        # the others fail again, named; with an ASCII-only terminal and a line per file.
        rerun_report = tmp_path / "rerun.json"
        rerun = await run_cli_argv(
            without_read_override(
                [
                    sys.executable,
                    "-m",
                    "bulkdrive",
                    *upload_args(emulator, src, *common, "-v", "--report", str(rerun_report)),
                    "--log-file",
                    str(tmp_path / "run.log"),
                ]
            ),
            tmp_path,
            {**env, "PYTHONIOENCODING": "ascii"},
        )
        assert rerun.returncode == 1, rerun.stderr.decode()
        assert b"Traceback" not in rerun.stderr + rerun.stdout
        again = json.loads(rerun_report.read_text())
        expected = expected_failures()
        del expected[GONE]  # removed in the first run: not there any more
        assert failures_of(again) == expected
        assert again["files"]["skipped"] == len(GOOD)
        assert again["skipped_by_kind"] == {"unchanged since the last run": len(GOOD)}
        assert again["bytes"]["sent"] == 0
        assert_good_stored(stored)
        log_text = (tmp_path / "run.log").read_text(encoding="utf-8")
        assert "win/a?b.txt" in log_text and "m\\xe9.txt" in log_text
        assert b"Logging error" not in rerun.stderr

        # 4. status reads the journal, names not UTF-8 included.
        status = await run_cli(
            "status", "--journal", str(journal), cwd=tmp_path, env={**env, "LANG": "C"}
        )
        assert status.returncode == 0, status.stderr.decode()
        assert b"Traceback" not in status.stderr
        assert b"win/a?b.txt" in status.stdout
    finally:
        (src / LOCKED).chmod(0o755)


async def test_invalid_names_fail_fails_only_those_files(
    emulator: Emulator, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    (src / "ok").mkdir(parents=True)
    (src / "ok" / "good.txt").write_bytes(b"good")
    bad_folder = os.path.join(os.fsencode(src), b"dir\xff")
    os.mkdir(bad_folder)
    with open(os.path.join(bad_folder, b"in.txt"), "wb") as f:
        f.write(b"x")
    with open(os.path.join(os.fsencode(src), b"n\xe9.txt"), "wb") as f:
        f.write(b"y")
    report = tmp_path / "r.json"
    done = await run_cli(
        *upload_args(emulator, src, "--invalid-names", "fail", "--report", str(report)),
        cwd=tmp_path,
    )
    assert done.returncode == 1, done.stderr.decode()
    data = json.loads(report.read_text())
    assert data["files"]["uploaded"] == 1
    assert failures_of(data) == {
        os.fsdecode(b"n\xe9.txt"): "InvalidName",
        os.fsdecode(b"dir\xff/in.txt"): "InvalidName",
    }
    assert (emulator.config.root / SHARE_ID / "ok" / "good.txt").read_bytes() == b"good"
    assert b"n\\xe9.txt" in done.stdout  # named, shown escaped


async def run_cli_argv(
    argv: list[str], cwd: Path, env: dict[str, str]
) -> subprocess.CompletedProcess[bytes]:
    with anyio.fail_after(120):
        return await anyio.run_process(argv, cwd=cwd, env=env, check=False)
