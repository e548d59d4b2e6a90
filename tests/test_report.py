"""The run's tally and summary, the JSON and NDJSON reports, and the end-of-run table."""

from __future__ import annotations

import io
import json
import re
import tracemalloc
from pathlib import Path

import pytest
from outcomes import failed_outcome, mixed_run, outcome
from rich.console import Console

from bulkdrive.errors import LoginFailed, QuotaExceeded, SourceChanged
from bulkdrive.report import (
    FileReportWriter,
    Outcome,
    RunSummary,
    RunTally,
    format_bytes,
    format_duration,
    format_rate,
    one_line,
    printable,
    render_summary,
)

CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # anything but \t and \n


# --- units --------------------------------------------------------------------------------------


def test_human_units_are_1024_based() -> None:
    assert format_bytes(0) == "0 B"
    assert format_bytes(1023) == "1023 B"
    assert format_bytes(1536) == "1.5 KiB"
    assert format_bytes(3 * 1024**2) == "3.0 MiB"
    assert format_bytes(int(1.5 * 1024**3)) == "1.5 GiB"
    assert format_bytes(2 * 1024**5) == "2.0 PiB"
    assert format_rate(45.5 * 1024**2) == "45.5 MiB/s"


def test_durations() -> None:
    assert format_duration(0.42) == "0.4s"
    assert format_duration(45.9) == "45s"
    assert format_duration(123) == "2m03s"
    assert format_duration(3723) == "1h02m03s"
    assert format_duration(26 * 3600 + 5) == "26h00m05s"


def test_hostile_names_are_escaped_to_one_printable_line() -> None:
    assert printable("evil\x1b[2J\r.txt") == "evil\\x1b[2J\\x0d.txt"
    assert printable("bad\udcffname") == "bad\\xffname"  # the byte that is not UTF-8
    assert printable("gnp.\u202eexe") == "gnp.\\u202eexe"
    assert printable("plain/ünïcode name.txt") == "plain/ünïcode name.txt"
    assert one_line("first\n  second\tthird") == "first second third"


# --- the tally ----------------------------------------------------------------------------------


def test_summary_figures_for_a_mixed_run() -> None:
    summary = mixed_run().summary(elapsed=2.0)
    files, sizes = summary.files, summary.bytes
    assert (files.uploaded, files.resumed, files.skipped, files.failed, files.total) == (
        2,
        1,
        1,
        1,
        5,
    )
    assert (sizes.uploaded, sizes.resumed, sizes.skipped, sizes.failed, sizes.total) == (
        400,
        1000,
        50,
        7,
        1457,
    )
    assert sizes.sent == 800
    assert summary.throughput == 400.0  # bytes sent / elapsed, not file sizes
    assert (summary.retries, summary.resumes) == (3, 1)
    assert summary.exit_code == 1
    assert not summary.interrupted and summary.walk_complete
    assert summary.run_error is None
    [failure] = summary.failures
    assert failure.relative == "hot.log"
    assert failure.reason == "size changed while sent"
    assert failure.exit_class == "SourceChanged"
    assert failure.hint == SourceChanged.hint


def test_exit_codes() -> None:
    clean = RunTally()
    clean.found(1)
    clean.finished(outcome("a", 1, Outcome.UPLOADED))
    assert clean.summary(1.0).exit_code == 0
    assert clean.summary(1.0, interrupted=True).exit_code == 130
    assert mixed_run().summary(1.0).exit_code == 1
    assert mixed_run().summary(1.0, interrupted=True).exit_code == 130
    stopped = mixed_run().summary(1.0, run_error=LoginFailed("login refused for alice"))
    assert stopped.exit_code == 3
    assert stopped.run_error is not None
    assert stopped.run_error.exit_class == "LoginFailed"
    assert stopped.run_error.reason == "login refused for alice"
    assert mixed_run().summary(1.0, run_error=QuotaExceeded("quota")).exit_code == 4


def test_failures_are_capped_and_the_rest_counted() -> None:
    tally = RunTally(max_failures=5)
    for i in range(12):
        tally.found(10)
        tally.finished(outcome(f"f{i}", 10, Outcome.FAILED, reason="nope"))
    summary = tally.summary(1.0)
    assert summary.files.failed == 12
    assert [f.relative for f in summary.failures] == [f"f{i}" for i in range(5)]
    assert summary.failures_omitted == 7
    assert summary.bytes.failed == 120


def test_zero_elapsed_and_nothing_found() -> None:
    summary = RunTally().summary(0.0)
    assert summary.throughput == 0.0
    assert summary.files.total == 0
    assert summary.exit_code == 0
    assert not summary.walk_complete


# --- --report-files FILE.ndjson ---------------------------------------------------------------


def test_ndjson_lines_parse_and_match(tmp_path: Path) -> None:
    path = tmp_path / "files.ndjson"
    outcomes = [
        outcome(
            "a.txt", 100, Outcome.UPLOADED, file_guid="g1", attempts=1, seconds=0.25, bytes_sent=100
        ),
        outcome(
            "d/e/big",
            1000,
            Outcome.RESUMED,
            file_guid="g3",
            attempts=2,
            seconds=1.5,
            bytes_sent=400,
        ),
        outcome("same", 50, Outcome.SKIPPED, reason="already on the server"),
        failed_outcome("odd\nname\udcff", "\\dest\\odd", 7, SourceChanged("changed"), attempts=3),
    ]
    with FileReportWriter(path) as writer:
        for item in outcomes:
            writer.write(item)
    assert writer.lines == 4
    raw = path.read_bytes()
    raw.decode("ascii")  # undecodable and non-ASCII names are \u-escaped, never unwritable
    lines = raw.decode().splitlines()
    assert len(lines) == 4
    records = [json.loads(line) for line in lines]
    for record, item in zip(records, outcomes, strict=True):
        assert set(record) == {
            "path",
            "remote_path",
            "size",
            "outcome",
            "file_guid",
            "attempts",
            "seconds",
            "bytes_sent",
            "reason",
            "exit_class",
            "hint",
            "skip_kind",
        }
        assert record["path"] == item.relative
        assert record["hint"] == item.hint
        assert record["remote_path"] == item.remote_path
        assert record["size"] == item.size
        assert record["outcome"] == item.outcome.value
        assert record["file_guid"] == item.file_guid
        assert record["attempts"] == item.attempts
        assert record["seconds"] == item.seconds
        assert record["reason"] == item.reason
    assert records[3]["exit_class"] == "SourceChanged"
    assert records[0]["exit_class"] is None


def test_ndjson_writer_fails_early_and_refuses_after_close(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        FileReportWriter(tmp_path / "missing" / "files.ndjson")
    writer = FileReportWriter(tmp_path / "files.ndjson")
    writer.close()
    writer.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        writer.write(outcome("a", 1, Outcome.UPLOADED))


def test_ndjson_writer_memory_does_not_grow_with_files(tmp_path: Path) -> None:
    path = tmp_path / "files.ndjson"
    sample = outcome("some/folder/file-name.bin", 4096, Outcome.UPLOADED, file_guid="G" * 32)
    count = 15_000
    tracemalloc.start()
    try:
        with FileReportWriter(path) as writer:
            for _ in range(count):
                writer.write(sample)
            _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # the lines themselves are > 2 MiB; the writer holds one buffer
    assert path.stat().st_size > 2 * 1024 * 1024
    assert peak < 1024 * 1024
    with path.open(encoding="utf-8") as lines:
        assert sum(1 for _ in lines) == count


# --- the table at the end ----------------------------------------------------------------------


def render(summary: RunSummary, *, terminal: bool = False) -> str:
    out = io.StringIO()
    render_summary(summary, Console(file=out, force_terminal=terminal, width=100))
    return out.getvalue()


def test_summary_table_lists_figures_then_each_failure_with_what_to_do() -> None:
    text = render(mixed_run().summary(65.0))
    assert not CONTROL.search(text)  # not a terminal: no ANSI, no \r
    assert "upload finished" in text
    row = {
        m.group(1): (m.group(2), m.group(3))
        for m in re.finditer(
            r"^(uploaded|resumed|skipped|failed|total)\s.*?([\d,]+)\s.*?"
            r"(\d[\d.]* [KMG]?i?B)\s*$",
            text,
            re.MULTILINE,
        )
    }
    assert row == {
        "uploaded": ("2", "400 B"),
        "resumed": ("1", "1000 B"),
        "skipped": ("1", "50 B"),
        "failed": ("1", "7 B"),
        "total": ("5", "1.4 KiB"),
    }
    assert "elapsed 1m05s" in text
    assert "mean throughput 12 B/s" in text
    assert "retries 3" in text
    failure = f"FAILED hot.log: size changed while sent (SourceChanged); {SourceChanged.hint}"
    assert failure in text.splitlines()


def test_summary_mentions_omitted_failures_interruption_and_run_error() -> None:
    tally = RunTally(max_failures=2)
    for i in range(5):
        tally.finished(outcome(f"f{i}", 1, Outcome.FAILED, reason="nope"))
    text = render(tally.summary(1.0, interrupted=True))
    assert "upload interrupted" in text
    assert "total (walk incomplete)" in text
    assert sum(line.startswith("FAILED ") for line in text.splitlines()) == 2
    assert "and 3 more failed files" in text
    summary = mixed_run().summary(1.0, run_error=LoginFailed("login refused"))
    assert summary.exit_code == 3
    text = render(summary)
    # the error itself is told once, on stderr, by the CLI: not as a class name here
    assert "upload stopped" in text.splitlines()
    assert "LoginFailed" not in text and "login refused" not in text


def test_summary_never_lets_a_file_name_drive_the_terminal() -> None:
    tally = RunTally()
    tally.finished(outcome("evil\x1b[2J\x1b[H.txt", 1, Outcome.FAILED, reason="bad\rline"))
    text = render(tally.summary(1.0), terminal=True)
    assert "\x1b[2J" not in text and "\r" not in text
    assert "evil\\x1b[2J\\x1b[H.txt" in text
