"""`--report FILE.json`: the run's summary as a JSON document (schema in the README), and any
other command's JSON report, each written atomically (readers see the old file or the whole
new one), with the path checked before the run so that a bad one fails early."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bulkdrive.report import RunSummary


def summary_to_json(summary: RunSummary) -> dict[str, Any]:
    """The `--report` document (schema in the README)."""
    error = summary.run_error
    return {
        "files": {
            "uploaded": summary.files.uploaded,
            "resumed": summary.files.resumed,
            "skipped": summary.files.skipped,
            "failed": summary.files.failed,
            "total": summary.files.total,
        },
        "bytes": {
            "uploaded": summary.bytes.uploaded,
            "resumed": summary.bytes.resumed,
            "skipped": summary.bytes.skipped,
            "failed": summary.bytes.failed,
            "total": summary.bytes.total,
            "sent": summary.bytes.sent,
        },
        "elapsed_seconds": round(summary.elapsed_seconds, 3),
        "throughput_bytes_per_second": round(summary.throughput, 1),
        "retries": summary.retries,
        "resumes": summary.resumes,
        "exit_code": summary.exit_code,
        "interrupted": summary.interrupted,
        "walk_complete": summary.walk_complete,
        "skipped_by_kind": dict(summary.skipped_by_kind),
        "filtered": summary.filtered,
        "total_known_seconds": None
        if summary.total_known_seconds is None
        else round(summary.total_known_seconds, 3),
        "transfers_auto": None
        if summary.transfers is None
        else {
            "peak": summary.transfers.peak,
            "mean": round(summary.transfers.mean, 2),
            "changes": summary.transfers.changes,
            "steps": [
                {"at": round(step.seconds, 2), "old": step.old, "new": step.new, "why": step.reason}
                for step in summary.transfers.steps
            ],
        },
        "run_error": None
        if error is None
        else {"reason": error.reason, "exit_class": error.exit_class, "hint": error.hint},
        "failures": [
            {
                "path": failure.relative,
                "remote_path": failure.remote_path,
                "size": failure.size,
                "reason": failure.reason,
                "exit_class": failure.exit_class,
                "hint": failure.hint,
            }
            for failure in summary.failures
        ],
        "failures_omitted": summary.failures_omitted,
        "workers": [
            {
                "address": w.address,
                "files": w.files,
                "bytes": w.bytes,
                "seconds": round(w.seconds, 3),
                "batches": w.batches,
            }
            for w in summary.workers
        ],
    }


def check_writable(path: Path) -> None:
    """Raise OSError now if a report cannot be written at `path` (a folder, a missing or
    read-only parent), so that a bad path fails before the run rather than after hours of it."""
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    if path.exists() and not os.access(path, os.W_OK):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
    fd, tmp_name = _temporary_beside(path)
    os.close(fd)
    os.unlink(tmp_name)


def _temporary_beside(path: Path) -> tuple[int, str]:
    # not mkstemp: its 0600 would become the report's mode; a report is as readable as any
    # file the user creates (the umask decides), like the --report-files one
    for _ in range(100):
        name = os.path.join(path.parent, f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), name
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(path.parent))


def write_json_report(path: Path, summary: RunSummary) -> None:
    """Write the report atomically: readers see the old file or the whole new one, never half.

    Raises OSError if the folder cannot be written."""
    _write_atomically(path, json.dumps(summary_to_json(summary), indent=2) + "\n")


def write_json_document(path: Path, document: Mapping[str, Any]) -> None:
    """Any JSON report (`check`, `ls`, `shares`), written atomically as the run's."""
    _write_atomically(path, json.dumps(document, indent=2, ensure_ascii=False) + "\n")


def _write_atomically(path: Path, data: str) -> None:
    fd, tmp_name = _temporary_beside(path)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as tmp:
            tmp.write(data)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
