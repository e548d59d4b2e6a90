"""`--report FILE.json`: the run's document, and every command's, written atomically."""

from __future__ import annotations

import errno
import json
import os
from dataclasses import replace
from pathlib import Path

import pytest
from outcomes import mixed_run

from bulkdrive.errors import LoginFailed, SourceChanged
from bulkdrive.report import LimitChange, RunTally, TransfersUsed
from bulkdrive.report_json import check_writable, write_json_document, write_json_report


def test_json_report_schema_and_values(tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    write_json_report(path, mixed_run().summary(2.0))
    data = json.loads(path.read_text(encoding="utf-8"))
    assert set(data) == {
        "files",
        "bytes",
        "elapsed_seconds",
        "throughput_bytes_per_second",
        "retries",
        "resumes",
        "exit_code",
        "interrupted",
        "walk_complete",
        "skipped_by_kind",
        "filtered",
        "total_known_seconds",
        "transfers_auto",
        "run_error",
        "failures",
        "failures_omitted",
        "workers",
    }
    assert data["workers"] == []
    assert data["files"] == {"uploaded": 2, "resumed": 1, "skipped": 1, "failed": 1, "total": 5}
    assert data["bytes"] == {
        "uploaded": 400,
        "resumed": 1000,
        "skipped": 50,
        "failed": 7,
        "total": 1457,
        "sent": 800,
    }
    assert data["elapsed_seconds"] == 2.0
    assert data["throughput_bytes_per_second"] == 400.0
    assert (data["retries"], data["resumes"], data["exit_code"]) == (3, 1, 1)
    assert data["interrupted"] is False and data["walk_complete"] is True
    assert data["run_error"] is None
    assert data["failures"] == [
        {
            "path": "hot.log",
            "remote_path": "\\dest\\hot.log",
            "size": 7,
            "reason": "size changed while sent",
            "exit_class": "SourceChanged",
            "hint": SourceChanged.hint,
        }
    ]
    assert data["failures_omitted"] == 0
    assert data["skipped_by_kind"] == {"already on the server": 1}
    assert data["filtered"] == 3
    assert data["total_known_seconds"] is None  # the tally was never told


def test_json_report_lists_the_limits_of_transfers_auto(tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    steps = (
        LimitChange(0.254, 32, 16, "the server pushed back (16 busy answers)"),
        LimitChange(6.3, 16, 20, "probing above 16"),
    )
    used = TransfersUsed(peak=32, mean=16.456, changes=2, steps=steps)
    write_json_report(path, replace(mixed_run().summary(7.0), transfers=used))
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["transfers_auto"] == {
        "peak": 32,
        "mean": 16.46,
        "changes": 2,
        "steps": [
            {"at": 0.25, "old": 32, "new": 16, "why": "the server pushed back (16 busy answers)"},
            {"at": 6.3, "old": 16, "new": 20, "why": "probing above 16"},
        ],
    }


def test_json_report_carries_the_run_error(tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    write_json_report(path, mixed_run().summary(1.0, run_error=LoginFailed("bad password")))
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["exit_code"] == 3
    assert data["run_error"] == {
        "reason": "bad password",
        "exit_class": "LoginFailed",
        "hint": LoginFailed.hint,
    }


def test_json_report_replaces_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "report.json"
    write_json_report(path, mixed_run().summary(1.0))
    before = path.read_bytes()
    assert os.listdir(tmp_path) == ["report.json"]  # no temporary left behind

    # a disk that fills up while the new report is written leaves the old one whole
    def disk_full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space"):
        write_json_report(path, RunTally().summary(5.0))
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["report.json"]


def test_json_report_into_a_missing_folder_raises_oserror(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        write_json_report(tmp_path / "missing" / "r.json", RunTally().summary(1.0))


# --- --report-files FILE.ndjson ----------------------------------------------------------------


def test_any_document_is_written_atomically_and_keeps_names_readable(tmp_path: Path) -> None:
    path = tmp_path / "check.json"
    write_json_document(path, {"path": "café/naïve.txt", "n": 1})
    assert "café/naïve.txt" in path.read_text(encoding="utf-8")  # not \u-escaped
    assert json.loads(path.read_text(encoding="utf-8")) == {"path": "café/naïve.txt", "n": 1}
    write_json_document(path, {"n": 2})
    assert json.loads(path.read_text(encoding="utf-8")) == {"n": 2}
    assert os.listdir(tmp_path) == ["check.json"]  # no temporary left behind


def test_a_report_path_that_cannot_be_written_fails_before_the_run(tmp_path: Path) -> None:
    with pytest.raises(IsADirectoryError):
        check_writable(tmp_path)
    with pytest.raises(FileNotFoundError):
        check_writable(tmp_path / "missing" / "r.json")
    check_writable(tmp_path / "r.json")
    assert os.listdir(tmp_path) == []  # the probe leaves nothing behind
