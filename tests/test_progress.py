"""The reporters, fed events directly: plain CI lines on an injected clock, the live display
into a string console, quiet mode, and the selection rule."""

from __future__ import annotations

import io
import logging
import re
import threading
import time
from pathlib import Path

import pytest
from outcomes import failed_outcome
from rich.console import Console

from bulkdrive.errors import SourceChanged
from bulkdrive.progress import (
    NoProgressReporter,
    NullReporter,
    PlainReporter,
    QuietReporter,
    Reporter,
    RichReporter,
    make_reporter,
)
from bulkdrive.report import FileOutcome, Outcome, RunSummary, RunTally

CONTROL = re.compile(r"[\x1b\r]")
STAT = re.compile(
    r"^.* of .*; .*ETA .*; files .*; \d+ in flight; retries \d+; resumes \d+; "
    r"elapsed \S+$"
)
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
MiB = 1024 * 1024


def strip_ansi(text: str) -> str:
    return ANSI.sub("", text)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class CountingIO(io.StringIO):
    """A terminal stand-in that counts how often it is written to."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, s: str) -> int:
        self.writes += 1
        return super().write(s)


def plain_console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=False, width=100), out


def terminal_console() -> tuple[Console, CountingIO]:
    out = CountingIO()
    return Console(file=out, force_terminal=True, width=120, height=40), out


def uploaded(name: str, size: int, **extra: object) -> FileOutcome:
    return FileOutcome(
        relative=name,
        remote_path="\\r\\" + name,
        size=size,
        outcome=Outcome.UPLOADED,
        bytes_sent=size,
        attempts=1,
        **extra,  # type: ignore[arg-type]
    )


def run_files(reporter: Reporter, tally: RunTally, names: list[str], size: int) -> None:
    for name in names:
        reporter.file_started(name, size)
        reporter.bytes_done(name, size // 2)
        reporter.bytes_done(name, size)
        done = uploaded(name, size)
        reporter.file_finished(done)
        tally.finished(done)


def no_threads_left() -> bool:
    return not any(t.name == "bulkdrive-progress" for t in threading.enumerate())


# --- plain lines (CI) --------------------------------------------------------------------------


def test_plain_prints_one_stat_line_per_interval_and_a_final_one() -> None:
    console, out = plain_console()
    clock = FakeClock()
    reporter = PlainReporter(console, stats_interval=10, clock=clock, heartbeat=None)
    tally = RunTally()
    reporter.start("/data/src", "\\backup")
    for _ in range(40):
        reporter.file_found(MiB)
        tally.found(MiB)
    for second in range(35):  # one file a second, 1 MiB each
        clock.now += 1
        run_files(reporter, tally, [f"f{second}"], MiB)
        if second == 15:
            reporter.walk_finished()
            tally.walk_finished()
    reporter.close(tally.summary(35.0))

    text = out.getvalue()
    assert not CONTROL.search(text), "no ANSI, no carriage returns in CI logs"
    lines = text.splitlines()
    assert lines[0] == "uploading /data/src to \\backup"
    stats = [line for line in lines if STAT.match(line)]
    assert len(stats) == 4  # at 10 s, 20 s, 30 s and the end
    # 9 MiB in the first 10 s
    assert stats[0].startswith("9.0 MiB of 40.0 MiB (22%), total still counting; 921.6 KiB/s; ")
    assert "files 9 of 40+ (9 uploaded, 0 resumed, 0 skipped, 0 failed)" in stats[0]
    assert "elapsed 10s" in stats[0]
    # the walk finished at 16 s: no more "still counting" and an ETA from the recent rate
    assert "still counting" not in stats[1]
    assert "files 19 of 40 " in stats[1]
    assert "; 1.0 MiB/s; ETA 21s;" in stats[1]
    assert stats[3].startswith("35.0 MiB of 40.0 MiB (87%); ")  # 87.5 %, rounded down
    assert "files 35 of 40 (35 uploaded" in stats[3]
    # then the summary table
    assert "upload finished" in text
    assert text.index("upload finished") > text.index(stats[3])


def test_plain_after_a_stall_prints_one_line_not_a_backlog() -> None:
    console, out = plain_console()
    clock = FakeClock()
    reporter = PlainReporter(console, stats_interval=10, clock=clock, heartbeat=None)
    reporter.start("src", "dst")
    clock.now += 95
    reporter.file_found(1)
    clock.now += 9
    reporter.file_found(1)  # 104 s: the next line is due at 105 s, not at 20 s
    clock.now += 1
    reporter.file_found(1)
    stats = [line for line in out.getvalue().splitlines() if STAT.match(line)]
    assert len(stats) == 2
    assert "elapsed 1m35s" in stats[0] and "elapsed 1m45s" in stats[1]
    reporter.close(RunTally().summary(105.0))


def test_plain_heartbeat_reports_a_stalled_run() -> None:
    """No events at all (a long retry wait): the heartbeat thread still prints the line."""
    console, out = plain_console()
    clock = FakeClock()
    reporter = PlainReporter(console, stats_interval=10, clock=clock, heartbeat=0.01)
    reporter.start("src", "dst")
    reporter.file_started("slow", 100)
    clock.now += 10
    deadline = time.monotonic() + 5
    while not any(STAT.match(line) for line in out.getvalue().splitlines()):
        assert time.monotonic() < deadline, "no stat line from the heartbeat"
        time.sleep(0.01)
    reporter.close(RunTally().summary(10.0))
    assert no_threads_left()
    stats = [line for line in out.getvalue().splitlines() if STAT.match(line)]
    assert len(stats) == 2  # the heartbeat's, then the final one
    assert "1 in flight" in stats[0]


@pytest.mark.parametrize("no_progress", [False, True])
def test_plain_failures_always_and_per_file_lines_with_v(no_progress: bool) -> None:
    """Also under --no-progress, whose reporter counts nothing: the same lines."""
    for verbosity in (0, 1):
        console, out = plain_console()
        reporter = (
            NoProgressReporter(console, clock=FakeClock(), heartbeat=None, verbosity=verbosity)
            if no_progress
            else PlainReporter(
                console, stats_interval=10, clock=FakeClock(), heartbeat=None, verbosity=verbosity
            )
        )
        reporter.start("src", "dst")
        reporter.file_started("ok.bin", 3 * MiB)
        reporter.file_retrying("ok.bin", "503 busy", 2, 1.5)
        reporter.file_resumed("ok.bin", MiB)
        reporter.file_finished(
            FileOutcome(
                "ok.bin",
                "\\ok.bin",
                3 * MiB,
                Outcome.RESUMED,
                attempts=2,
                seconds=2.0,
                bytes_sent=2 * MiB,
            )
        )
        reporter.file_finished(
            FileOutcome("same", "\\same", 5, Outcome.SKIPPED, reason="already on the server")
        )
        reporter.file_finished(failed_outcome("hot", "\\hot", 9, SourceChanged("it changed")))
        reporter.message("skipped symlink link -> target", level=logging.INFO)
        reporter.message("--insecure: TLS verification is off", level=logging.WARNING)
        lines = out.getvalue().splitlines()
        failure = f"FAILED hot: it changed (SourceChanged); {SourceChanged.hint}"
        assert failure in lines
        assert "warning: --insecure: TLS verification is off" in lines
        verbose = [
            "retrying ok.bin (attempt 2) in 1.5s: 503 busy",
            "resuming ok.bin at 1.0 MiB",
            "resumed ok.bin (3.0 MiB in 2.0s, 2 attempts)",
            "skipped same: already on the server",
            "skipped symlink link -> target",
        ]
        for line in verbose:
            assert (line in lines) == (verbosity == 1), (verbosity, line)
        reporter.close(RunTally().summary(1.0))
        assert not CONTROL.search(out.getvalue())


def test_plain_prints_names_as_they_are_even_ones_that_look_like_markup() -> None:
    console, out = plain_console()
    reporter = PlainReporter(
        console, stats_interval=None, clock=FakeClock(), heartbeat=None, verbosity=1
    )
    reporter.start("src", "dst")
    names = ["a :smile: b.txt", "[bold]x[/bold].txt", "é\udce9.txt"]
    for name in names:
        reporter.file_finished(FileOutcome(name, "\\" + name, 1, Outcome.UPLOADED, seconds=1.0))
    lines = out.getvalue().splitlines()
    assert "uploaded a :smile: b.txt (1 B in 1.0s)" in lines  # not an emoji
    assert "uploaded [bold]x[/bold].txt (1 B in 1.0s)" in lines
    assert "uploaded é\\xe9.txt (1 B in 1.0s)" in lines  # the undecodable byte, escaped
    assert reporter.lines_printed == 1 + len(names)


def test_plain_per_file_lines_are_plain_stamped_in_order_and_reach_the_file(
    tmp_path: Path,
) -> None:
    """-v off a terminal: a line per file, each written as it is (no markup, no emoji codes),
    stamped, in order; written without a flush each, yet in the file within a heartbeat."""
    log_path = tmp_path / "out.log"
    with log_path.open("w", encoding="utf-8") as stream:
        console = Console(file=stream, force_terminal=False, width=100)
        reporter = PlainReporter(
            console, stats_interval=None, heartbeat=0.02, verbosity=1, timestamps=True
        )
        reporter.start("src", "dst")
        names = [f"d/[bold]f{i}:smile:.bin" for i in range(300)]
        for name in names:
            reporter.file_started(name, 4096)
            reporter.file_finished(uploaded(name, 4096))
        # Not closed (a stalled run): the heartbeat gets the last lines out.
        deadline = time.monotonic() + 5
        while f"{names[-1]} (" not in log_path.read_text(encoding="utf-8"):
            assert time.monotonic() < deadline, "the last lines never reached the file"
            time.sleep(0.01)
        reporter.close(RunTally().summary(1.0))
    assert no_threads_left()
    lines = [
        line for line in log_path.read_text(encoding="utf-8").splitlines() if " uploaded " in line
    ]
    assert [line.split(" ", 2)[2] for line in lines] == [
        f"{name} (4.0 KiB in 0.0s)" for name in names
    ]
    stamp = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
    assert all(stamp.match(line.split(" ", 1)[0]) for line in lines)
    assert reporter.lines_printed >= len(names)


def test_no_progress_prints_no_stat_lines_but_failures_and_summary() -> None:
    console, out = plain_console()
    clock = FakeClock()
    reporter = make_reporter(
        console=console,
        is_terminal=True,
        quiet=False,
        no_progress=True,
        verbosity=0,
        stats_interval=10,
        clock=clock,
    )
    assert isinstance(reporter, PlainReporter)
    reporter.start("src", "dst")
    tally = RunTally()
    for second in range(30):
        clock.now += 1
        run_files(reporter, tally, [f"f{second}"], 10)
    reporter.file_finished(failed_outcome("bad", "\\bad", 1, SourceChanged("changed")))
    reporter.close(tally.summary(30.0))
    text = out.getvalue()
    assert not any(STAT.match(line) for line in text.splitlines())
    assert "FAILED bad: changed" in text
    assert "upload finished" in text


# --- quiet -------------------------------------------------------------------------------------


def test_quiet_prints_only_failures_and_errors() -> None:
    console, out = plain_console()
    reporter = make_reporter(
        console=console,
        is_terminal=True,
        quiet=True,
        no_progress=False,
        verbosity=2,
        stats_interval=10,
    )
    assert isinstance(reporter, QuietReporter)
    tally = RunTally()
    reporter.start("src", "dst")
    reporter.file_found(10)
    run_files(reporter, tally, ["a", "b"], 10)
    reporter.file_retrying("c", "timeout", 2, 1.0)
    reporter.message("a warning", level=logging.WARNING)
    reporter.message("the server is gone", level=logging.ERROR)
    reporter.file_finished(failed_outcome("c", "\\c", 10, SourceChanged("changed")))
    reporter.close(tally.summary(1.0))
    assert out.getvalue().splitlines() == [
        "error: the server is gone",
        f"FAILED c: changed (SourceChanged); {SourceChanged.hint}",
    ]


# --- the live display --------------------------------------------------------------------------


def test_rich_renders_the_figures_and_ends_cleanly() -> None:
    console, out = terminal_console()
    clock = FakeClock()
    reporter = RichReporter(console, clock=clock, auto_refresh=False, transfers_shown=2)
    tally = RunTally()
    reporter.start("/data/src", "\\backup")
    assert reporter.is_live
    for _ in range(10):
        reporter.file_found(4 * MiB)
        tally.found(4 * MiB)
    run_files(reporter, tally, ["done1", "done2"], 4 * MiB)
    reporter.file_started("big/one.bin", 4 * MiB)
    reporter.bytes_done("big/one.bin", MiB)
    reporter.file_started("two.bin", 4 * MiB)
    reporter.file_started("three.bin", 4 * MiB)
    reporter.file_retrying("two.bin", "timeout", 2, 1.0)
    reporter.file_resumed("two.bin", 2 * MiB)
    clock.now += 2
    reporter.refresh()
    frame = strip_ansi(out.getvalue())
    assert "uploading /data/src to \\backup" in frame
    assert "11.0 MiB / 40.0 MiB (still counting)" in frame
    assert "files 2/10+: 2 uploaded, 0 resumed, 0 skipped, 0 failed" in frame
    assert "retries 1  resumes 1  in flight 3" in frame
    assert "big/one.bin" in frame and "1.0 MiB / 4.0 MiB" in frame
    assert "two.bin" in frame and "2.0 MiB / 4.0 MiB" in frame
    assert "... and 1 more in flight" in frame  # three.bin, beyond transfers_shown
    assert "4.5 MiB/s" in frame  # 9 MiB sent in 2 s; the resumed 2 MiB were not sent

    reporter.walk_finished()
    tally.walk_finished()
    mark = len(out.getvalue())
    reporter.refresh()
    assert "(still counting)" not in out.getvalue()[mark:]

    failure = failed_outcome("two.bin", "\\two.bin", 4 * MiB, SourceChanged("it changed"))
    reporter.file_finished(failure)
    tally.finished(failure)
    reporter.close(tally.summary(2.0))
    raw = out.getvalue()
    assert not reporter.is_live
    assert "\x1b[?25h" in raw  # the cursor is shown again
    text = strip_ansi(raw)
    expected = f"FAILED two.bin: it changed (SourceChanged); {SourceChanged.hint}"
    assert text.splitlines()[-1] == expected
    last_frame = text.rindex("retries 1  resumes 1")  # the live frame's wording
    assert text.index("upload finished") > last_frame
    assert text.count("FAILED two.bin: it changed") == 2  # as it happened, and in the summary
    assert no_threads_left()


def test_rich_never_lets_a_file_name_drive_the_terminal() -> None:
    console, out = terminal_console()
    reporter = RichReporter(console, clock=FakeClock(), auto_refresh=False, verbosity=1)
    reporter.start("src\x1b[2J", "dst")
    reporter.file_started("evil\x1b[2J\x1b[H.bin", 10)
    reporter.refresh()
    reporter.file_finished(uploaded("evil\x1b[2J\x1b[H.bin", 10))
    reporter.close(RunTally().summary(1.0))
    text = out.getvalue()
    assert "\x1b[2J" not in text and "\x1b[H" not in text
    assert "evil\\x1b[2J\\x1b[H.bin" in text


def test_rich_cost_per_event_is_a_counter_not_a_render() -> None:
    """100 000 files through the live reporter with its real timer running: the renders and
    the writes to the terminal stay a handful, whatever the event count."""
    console, out = terminal_console()
    reporter = RichReporter(console, refresh_per_second=10)
    tally = RunTally()
    files = 100_000
    reporter.start("src", "dst")
    for _ in range(files):
        reporter.file_found(100)
        tally.found(100)
    reporter.walk_finished()
    tally.walk_finished()
    for i in range(files):
        name = f"d{i % 100}/f{i}"
        reporter.file_started(name, 100)
        reporter.bytes_done(name, 100)
        done = uploaded(name, 100)
        reporter.file_finished(done)
        tally.finished(done)
    summary = tally.summary(1.0)
    reporter.close(summary)
    events = files * 4
    assert reporter.renders < 1000, reporter.renders  # would be ~400 000 if events rendered
    assert out.writes < 2000, out.writes
    assert summary.files.uploaded == files
    assert "100,000" in out.getvalue()
    assert no_threads_left()
    assert events > 100 * reporter.renders


def test_rich_verbose_lines_are_batched_above_the_display() -> None:
    console, out = terminal_console()
    reporter = RichReporter(console, verbosity=1, clock=FakeClock(), auto_refresh=False)
    tally = RunTally()
    reporter.start("src", "dst")
    names = [f"f{i}" for i in range(12_000)]  # past the queue's bound once
    run_files(reporter, tally, names, 1)
    writes_before_refresh = out.writes
    reporter.refresh()
    reporter.close(tally.summary(1.0))
    text = out.getvalue()
    assert sum(f"uploaded {name} (1 B in 0.0s)" in text for name in ("f0", "f10000", "f11999")) == 3
    assert text.count("uploaded f") == 12_000
    assert writes_before_refresh <= 10  # one forced flush of 10 000, not 12 000 prints
    assert reporter.renders <= 10


# --- selection ---------------------------------------------------------------------------------


def test_make_reporter_selection_rule() -> None:
    console, _ = plain_console()

    def pick(**flags: object) -> Reporter:
        options: dict[str, object] = {
            "is_terminal": False,
            "quiet": False,
            "no_progress": False,
            "verbosity": 0,
        }
        options.update(flags)
        return make_reporter(console=console, stats_interval=7, **options)  # type: ignore[arg-type]

    assert isinstance(pick(is_terminal=True), RichReporter)
    plain = pick()
    assert isinstance(plain, PlainReporter) and plain.stats_interval == 7
    assert isinstance(pick(is_terminal=True, quiet=True, verbosity=2), QuietReporter)
    no_progress = pick(is_terminal=True, no_progress=True, verbosity=1)
    assert isinstance(no_progress, NoProgressReporter) and no_progress.stats_interval is None
    assert no_progress.verbosity == 1
    verbose = pick(is_terminal=True, verbosity=1)
    assert isinstance(verbose, RichReporter) and verbose.verbosity == 1


def test_reporters_satisfy_the_protocol_and_null_is_silent() -> None:
    console, out = plain_console()
    reporters: list[Reporter] = [
        NullReporter(),
        QuietReporter(console),
        PlainReporter(console, heartbeat=None),
        RichReporter(console, auto_refresh=False),
    ]
    summary: RunSummary = RunTally().summary(1.0)
    NullReporter().file_finished(failed_outcome("x", "\\x", 1, SourceChanged("c")))
    NullReporter().close(summary)
    assert out.getvalue() == ""
    for reporter in reporters:
        reporter.close(summary)
        reporter.close(summary)  # idempotent


def test_rich_shows_the_end_of_a_long_path() -> None:
    console, out = terminal_console()
    reporter = RichReporter(console, clock=FakeClock(), auto_refresh=False)
    reporter.start("src", "dst")
    reporter.file_started("deep/" * 20 + "the-file-name.bin", 10)
    reporter.refresh()
    reporter.close(RunTally().summary(1.0))
    frame = strip_ansi(out.getvalue())
    assert re.search(r"…[a-z/]{18}the-file-name\.bin", frame)
    assert "deep/" * 20 not in frame
