"""What people see while a run goes: a Reporter protocol and its four faces.

- `RichReporter`: a terminal. A live display redrawn by a timer (a few times a second), never
  by events: every event is an O(1) counter update, so 10 000 files per second cost little.
  Lines for people (failures, warnings, `-v` per-file lines) are queued and printed above the
  display at the next redraw, so a burst of lines costs one redraw, not one per line.
- `PlainReporter`: not a terminal (CI). One plain line of the same figures every
  `stats_interval` seconds and at the end; no control characters. `NoProgressReporter`
  (--no-progress) is the same without those lines, and counts nothing.
- `QuietReporter`: `-q`, failed files only, one line each.
- `NullReporter`: nothing (library use).

The clock and the console are injected; `make_reporter` holds the selection rule.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from bulkdrive.report import (
    FileOutcome,
    Outcome,
    RunSummary,
    failure_line,
    format_bytes,
    format_duration,
    format_rate,
    one_line,
    printable,
    render_summary,
    utc_stamp,
)

Clock = Callable[[], float]

log = logging.getLogger(__name__)

DEFAULT_STATS_INTERVAL = 10.0
DEFAULT_REFRESH_PER_SECOND = 5.0
DEFAULT_TRANSFERS_SHOWN = 8
NAME_WIDTH = 36

# Enum members on each small file's path, read as module names (why: `bulkdrive.session`).
_FAILED = Outcome.FAILED


class Reporter(Protocol):
    def start(self, source: str, target: str) -> None: ...

    def file_found(self, size: int) -> None:
        """The walk added a file; the total grows, shown as still counting until walk_finished."""

    def walk_finished(self) -> None: ...

    def totals_counted(self, files: int, size: int) -> None:
        """The count-only pass is done: SRC holds `files` files of `size` bytes to consider
        (filters applied), known long before the upload's own walk gets there."""

    def file_started(self, relative: str, size: int) -> None: ...

    def bytes_done(self, relative: str, n: int) -> None:
        """`n` is the file's server-confirmed offset (cumulative, not an increment). It may go
        back (a file restarted from 0); the progress follows it."""

    def file_retrying(self, relative: str, reason: str, attempt: int, wait: float) -> None: ...

    def file_resumed(self, relative: str, offset: int) -> None:
        """The file continues an earlier upload at `offset`; those bytes count as done but
        not as sent (they do not inflate the rate)."""

    def file_finished(self, outcome: FileOutcome) -> None: ...

    def transfers_changed(self, limit: int) -> None:
        """`--transfers auto` set the limit of files in flight (the live display shows it)."""

    def message(self, text: str, *, level: int = logging.INFO) -> None:
        """A line for people. Shown from WARNING up by default, INFO up with -v, DEBUG up
        with -vv, ERROR up with -q."""

    def close(self, summary: RunSummary) -> None:
        """Stop any live display, print the summary (unless quiet). Idempotent."""


def threshold(*, quiet: bool, verbosity: int) -> int:
    """The lowest message level shown."""
    if quiet:
        return logging.ERROR
    if verbosity >= 2:
        return logging.DEBUG
    if verbosity == 1:
        return logging.INFO
    return logging.WARNING


def message_line(text: str, level: int) -> Text:
    line = Text()
    if level >= logging.ERROR:
        line.append("error: ", style="bold red")
    elif level >= logging.WARNING:
        line.append("warning: ", style="yellow")
    line.append(one_line(text))
    return line


def finished_line(outcome: FileOutcome) -> Text:
    """The `-v` line for one finished file."""
    if outcome.outcome is Outcome.FAILED:
        return failure_line(outcome)
    style = "dim" if outcome.outcome is Outcome.SKIPPED else ""
    return Text(finished_text(outcome), style=style)


def finished_text(outcome: FileOutcome) -> str:
    """`finished_line` without styles: a plain string (no rich objects: a line per file)."""
    if outcome.outcome is Outcome.FAILED:
        return failure_line(outcome).plain
    name = printable(outcome.relative)
    if outcome.outcome is Outcome.SKIPPED:
        reason = f": {one_line(outcome.reason)}" if outcome.reason else ""
        return f"skipped {name}{reason}"
    extra = f", {outcome.attempts} attempts" if outcome.attempts > 1 else ""
    return (
        f"{outcome.outcome.value} {name} "
        f"({format_bytes(outcome.size)} in {format_duration(outcome.seconds)}{extra})"
    )


def retry_line(relative: str, reason: str, attempt: int, wait: float) -> Text:
    return Text(
        f"retrying {printable(relative)} (attempt {attempt}) in {format_duration(wait)}: "
        f"{one_line(reason)}",
        style="yellow",
    )


# --- the figures both live faces show ---------------------------------------------------------


class _Transfer:
    __slots__ = ("done", "sent", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self.done = 0  # server-confirmed offset
        self.sent = 0  # of which sent in this run


@dataclass(frozen=True)
class Figures:
    """A snapshot of the live counters, in the units people read."""

    elapsed: float
    #: stored or skipped files' sizes + confirmed bytes of files in flight; never the bytes of
    #: failed files, so that a run that stores nothing never reads 100 %
    bytes_processed: int
    bytes_total: int
    bytes_sent: int
    rate: float | None  # bytes/s over the recent window; None before two samples
    walk_complete: bool
    files_total: int
    uploaded: int
    resumed: int
    skipped: int
    failed: int
    in_flight: int
    retries: int
    resumes: int
    bytes_failed: int = 0  # sizes of the failed files: not processed, and not to wait for
    #: The tuner's current limit under --transfers auto, else None.
    transfers_limit: int | None = None

    @property
    def in_flight_text(self) -> str:
        if self.transfers_limit is None:
            return f"{self.in_flight:,}"
        return f"{self.in_flight:,} (auto limit {self.transfers_limit:,})"

    @property
    def files_finished(self) -> int:
        return self.uploaded + self.resumed + self.skipped + self.failed

    @property
    def eta(self) -> float | None:
        remaining = self.bytes_total - self.bytes_processed - self.bytes_failed
        if remaining <= 0:
            return 0.0 if self.walk_complete else None
        if not self.rate:
            return None
        return remaining / self.rate


class _Counters:
    """The live state: plain integers and the (bounded) map of files in flight.

    Events arrive on the event loop's thread; a timer thread reads. Only the map needs the
    lock: integer reads are atomic and a figure one event stale is fine on a display."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.files_found = 0
        self.bytes_found = 0
        self.files_counted = 0  # by the count-only pass
        self.bytes_counted = 0
        self.walk_complete = False
        self.uploaded = 0
        self.resumed = 0
        self.skipped = 0
        self.failed = 0
        self.finished_bytes = 0
        self.failed_bytes = 0
        self.in_flight_done = 0
        self.sent = 0
        self.retries = 0
        self.resumes = 0
        self.transfers: dict[str, _Transfer] = {}
        self.transfers_limit: int | None = None

    def found(self, size: int) -> None:
        self.files_found += 1
        self.bytes_found += size

    def counted(self, files: int, size: int) -> None:
        self.files_counted, self.bytes_counted = files, size
        self.walk_complete = True  # the total is final: no "+", no "still counting"

    def started(self, relative: str, size: int) -> None:
        with self.lock:
            old = self.transfers.pop(relative, None)
            if old is not None:
                self.in_flight_done -= old.done
            self.transfers[relative] = _Transfer(size)

    def confirmed(self, relative: str, offset: int) -> None:
        transfer = self.transfers.get(relative)
        if transfer is None:
            self.started(relative, offset)
            transfer = self.transfers[relative]
        delta = offset - transfer.done
        transfer.done = offset
        self.in_flight_done += delta
        if delta > 0:
            transfer.sent += delta
            self.sent += delta

    def resumed_at(self, relative: str, offset: int) -> None:
        self.resumes += 1
        transfer = self.transfers.get(relative)
        if transfer is None:
            self.started(relative, offset)
            transfer = self.transfers[relative]
        self.in_flight_done += offset - transfer.done
        transfer.done = offset

    def finished(self, outcome: FileOutcome) -> None:
        with self.lock:
            transfer = self.transfers.pop(outcome.relative, None)
        already_sent = 0
        if transfer is not None:
            self.in_flight_done -= transfer.done
            already_sent = transfer.sent
        # small files may finish without a single bytes_done: count what the outcome says
        if outcome.bytes_sent > already_sent:
            self.sent += outcome.bytes_sent - already_sent
        kind = outcome.outcome
        if kind is Outcome.FAILED:
            self.failed_bytes += outcome.size
        else:
            self.finished_bytes += outcome.size
        if kind is Outcome.UPLOADED:
            self.uploaded += 1
        elif kind is Outcome.RESUMED:
            self.resumed += 1
        elif kind is Outcome.SKIPPED:
            self.skipped += 1
        else:
            self.failed += 1

    def in_flight(self, limit: int) -> tuple[list[tuple[str, int, int]], int]:
        """Up to `limit` transfers (name, size, done), oldest first, and how many there are."""
        with self.lock:
            count = len(self.transfers)
            shown: list[tuple[str, int, int]] = []
            for name, transfer in self.transfers.items():
                if len(shown) >= limit:
                    break
                shown.append((name, transfer.size, transfer.done))
        return shown, count

    def figures(self, elapsed: float, rate: float | None) -> Figures:
        finished = self.uploaded + self.resumed + self.skipped + self.failed
        processed = self.finished_bytes + self.in_flight_done
        return Figures(
            elapsed=elapsed,
            bytes_processed=processed,
            bytes_total=max(self.bytes_found, self.bytes_counted, processed + self.failed_bytes),
            bytes_sent=self.sent,
            rate=rate,
            walk_complete=self.walk_complete,
            files_total=max(self.files_found, self.files_counted, finished + len(self.transfers)),
            uploaded=self.uploaded,
            resumed=self.resumed,
            skipped=self.skipped,
            failed=self.failed,
            in_flight=len(self.transfers),
            retries=self.retries,
            resumes=self.resumes,
            bytes_failed=self.failed_bytes,
            transfers_limit=self.transfers_limit,
        )


class RateMeter:
    """Bytes per second over the last `window` seconds, from samples taken at display time."""

    def __init__(self, window: float) -> None:
        self.window = window
        self._samples: collections.deque[tuple[float, int]] = collections.deque()

    def observe(self, now: float, total: int) -> float | None:
        samples = self._samples
        samples.append((now, total))
        # keep one sample at least `window` old as the anchor, drop the older ones
        while len(samples) > 2 and now - samples[1][0] >= self.window:
            samples.popleft()
        then, before = samples[0]
        if now <= then:
            return None
        return (total - before) / (now - then)


def percent(part: int, whole: int) -> int:
    """Rounded down: 100 only when every byte is processed, never for 99.6 %."""
    return 100 * part // whole if whole else 0


def stat_line(fig: Figures) -> str:
    """The plain line: same figures as the live display, ASCII only."""
    counting = not fig.walk_complete
    parts = [f"{format_bytes(fig.bytes_processed)} of {format_bytes(fig.bytes_total)}"]
    if fig.bytes_total:
        parts[0] += f" ({percent(fig.bytes_processed, fig.bytes_total)}%)"
    if counting:
        parts[0] += ", total still counting"
    parts.append(format_rate(fig.rate) if fig.rate is not None else "rate -")
    eta = fig.eta
    parts.append("ETA -" if eta is None else f"ETA {format_duration(eta)}{'+' if counting else ''}")
    parts.append(
        f"files {fig.files_finished:,} of {fig.files_total:,}{'+' if counting else ''} "
        f"({fig.uploaded:,} uploaded, {fig.resumed:,} resumed, {fig.skipped:,} skipped, "
        f"{fig.failed:,} failed)"
    )
    parts.append(f"{fig.in_flight_text} in flight")
    parts.append(f"retries {fig.retries:,}")
    parts.append(f"resumes {fig.resumes:,}")
    parts.append(f"elapsed {format_duration(fig.elapsed)}")
    return "; ".join(parts)


class _Ticker:
    """Calls `tick` every `interval` real seconds on a daemon thread until stopped."""

    def __init__(self, interval: float, tick: Callable[[], None]) -> None:
        self._interval = interval
        self._tick = tick
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bulkdrive-progress", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._done.wait(self._interval):
            try:
                self._tick()
            except Exception:  # a display bug must never stop an upload
                log.exception("progress display failed")

    def stop(self) -> None:
        self._done.set()
        if self._thread is not threading.current_thread():
            self._thread.join()


# --- the four faces ---------------------------------------------------------------------------


class NullReporter:
    """Shows nothing."""

    def start(self, source: str, target: str) -> None:
        pass

    def file_found(self, size: int) -> None:
        pass

    def walk_finished(self) -> None:
        pass

    def totals_counted(self, files: int, size: int) -> None:
        pass

    def file_started(self, relative: str, size: int) -> None:
        pass

    def bytes_done(self, relative: str, n: int) -> None:
        pass

    def file_retrying(self, relative: str, reason: str, attempt: int, wait: float) -> None:
        pass

    def file_resumed(self, relative: str, offset: int) -> None:
        pass

    def file_finished(self, outcome: FileOutcome) -> None:
        pass

    def transfers_changed(self, limit: int) -> None:
        pass

    def message(self, text: str, *, level: int = logging.INFO) -> None:
        pass

    def close(self, summary: RunSummary) -> None:
        pass


class QuietReporter(NullReporter):
    """`-q`: failed files (one line each) and errors; no progress, no summary."""

    def __init__(self, console: Console) -> None:
        self.console = console

    def file_finished(self, outcome: FileOutcome) -> None:
        if outcome.outcome is _FAILED and not outcome.stopped_run:
            self.console.print(failure_line(outcome), soft_wrap=True)

    def message(self, text: str, *, level: int = logging.INFO) -> None:
        if level >= logging.ERROR:
            self.console.print(message_line(text, level), soft_wrap=True)


class _CountingReporter:
    """The event half shared by the rich and plain faces: counters plus per-file lines."""

    def __init__(self, console: Console, *, verbosity: int, clock: Clock) -> None:
        self.console = console
        self.verbosity = verbosity
        self._clock = clock
        self._threshold = threshold(quiet=False, verbosity=verbosity)
        self._counters = _Counters()
        self._started_at = clock()
        self._source = ""
        self._target = ""
        self._closed = False

    def _emit(self, line: Text | str) -> None:
        raise NotImplementedError

    def _finished_line(self, outcome: FileOutcome) -> Text | str:
        return finished_line(outcome)

    def start(self, source: str, target: str) -> None:
        self._source = printable(source)
        self._target = printable(target)
        self._started_at = self._clock()

    def file_found(self, size: int) -> None:
        self._counters.found(size)

    def walk_finished(self) -> None:
        self._counters.walk_complete = True

    def totals_counted(self, files: int, size: int) -> None:
        self._counters.counted(files, size)

    def file_started(self, relative: str, size: int) -> None:
        self._counters.started(relative, size)

    def bytes_done(self, relative: str, n: int) -> None:
        self._counters.confirmed(relative, n)

    def file_retrying(self, relative: str, reason: str, attempt: int, wait: float) -> None:
        self._counters.retries += 1
        if self.verbosity >= 1:
            self._emit(retry_line(relative, reason, attempt, wait))

    def file_resumed(self, relative: str, offset: int) -> None:
        self._counters.resumed_at(relative, offset)
        if self.verbosity >= 1:
            self._emit(Text(f"resuming {printable(relative)} at {format_bytes(offset)}"))

    def file_finished(self, outcome: FileOutcome) -> None:
        self._counters.finished(outcome)
        self._tell_finished(outcome)

    def _tell_finished(self, outcome: FileOutcome) -> None:
        """The file's line: failures are shown as they happen at every verbosity; the rest
        only with -v; the error that stopped the run is told once, at the end, on stderr."""
        if outcome.stopped_run:
            return
        if self.verbosity >= 1 or outcome.outcome is _FAILED:
            self._emit(self._finished_line(outcome))

    def transfers_changed(self, limit: int) -> None:
        self._counters.transfers_limit = limit

    def message(self, text: str, *, level: int = logging.INFO) -> None:
        if level >= self._threshold:
            self._emit(message_line(text, level))


class PlainReporter(_CountingReporter):
    """Not a terminal: a stat line every `stats_interval` seconds of `clock`, and at the end.

    Lines are checked for on every event and, so that a stalled run still reports, by a
    heartbeat thread every `heartbeat` real seconds (None: events only, for tests).
    `stats_interval=None` prints no stat lines at all (--no-progress).

    Event lines (`-v`: one per file) are plain strings written to the console's file, which
    is flushed at most every `FLUSH_EVERY` seconds (and by the heartbeat, and at the end), with
    no rich Text per line and the stamp's date made once a second: a write system call and rich
    objects per line were two thirds of what -v still cost (20 -> 9 µs per file). The same file
    object carries everything else printed, so the order of lines is kept."""

    FLUSH_EVERY = 0.2

    def __init__(
        self,
        console: Console,
        *,
        stats_interval: float | None = DEFAULT_STATS_INTERVAL,
        verbosity: int = 0,
        clock: Clock = time.monotonic,
        heartbeat: float | None = 1.0,
        timestamps: bool = False,
        summary: bool = True,
    ) -> None:
        super().__init__(console, verbosity=verbosity, clock=clock)
        self.stats_interval = stats_interval
        # off a terminal with -v: each event line starts with its ISO-8601 UTC time
        self.timestamps = timestamps
        self.summary = summary
        self.lines_printed = 0
        self._heartbeat = heartbeat
        self._out = threading.Lock()
        self._next_due = math.inf
        self._rate = RateMeter(stats_interval or DEFAULT_STATS_INTERVAL)
        self._ticker: _Ticker | None = None
        self._flush_due = 0.0
        self._unflushed = False
        self._second = -1  # the whole second whose text `_stamp_prefix` holds
        self._stamp_prefix = ""

    def _print(self, line: Text | str) -> None:
        """A line that must reach the file now (the start, stat lines)."""
        self._write(line.plain if isinstance(line, Text) else line, flush=True)

    def _emit(self, line: Text | str) -> None:
        text = line.plain if isinstance(line, Text) else line
        if self.timestamps:
            text = f"{self._stamp()} {text}"
        self._write(text, flush=False)
        self._maybe_stat()

    def _write(self, text: str, *, flush: bool) -> None:
        # Styles dropped: a CI log gets no escape codes even from a console that forces colour.
        # Written to the file as it is, not through console.print: rich renders every call
        # (~80 µs), which with -v on small files cost as much CPU as the upload itself, and it
        # would turn a `:smile:` in a file name into an emoji.
        with self._out:
            file = self.console.file
            file.write(text + "\n")
            self.lines_printed += 1
            now = time.monotonic()
            if flush or now >= self._flush_due:
                file.flush()
                self._flush_due, self._unflushed = now + self.FLUSH_EVERY, False
            else:
                self._unflushed = True

    def _finished_line(self, outcome: FileOutcome) -> Text | str:
        return finished_text(outcome)

    def _stamp(self) -> str:
        """`utc_stamp` of now, its date and time of day made once per second."""
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp_prefix = utc_stamp(second)[:-4]  # "…T02:30:00." (utc_stamp ends ".000Z")
        return f"{self._stamp_prefix}{int((now - second) * 1000):03d}Z"

    def _flush(self) -> None:
        """Lines written since the last flush reach the file now (a stalled run, the end)."""
        with self._out:
            if self._unflushed:
                self._unflushed = False
                self.console.file.flush()

    def _heartbeat_tick(self) -> None:
        self._flush()
        self._maybe_stat()

    def _stat(self) -> None:
        now = self._clock()
        fig = self._counters.figures(now - self._started_at, None)
        fig = _with_rate(fig, self._rate.observe(now, fig.bytes_sent))
        self._print(stat_line(fig))

    def _maybe_stat(self) -> None:
        if self._clock() < self._next_due:  # the cheap check on every event
            return
        with self._out:
            now = self._clock()
            if now < self._next_due or self.stats_interval is None:
                return
            self._next_due += self.stats_interval
            if self._next_due <= now:  # after a stall: one line, then back on the beat
                self._next_due = now + self.stats_interval
        self._stat()

    def start(self, source: str, target: str) -> None:
        super().start(source, target)
        self._print(f"uploading {self._source} to {self._target}")
        self._rate.observe(self._started_at, 0)
        if self.stats_interval is not None:
            self._next_due = self._started_at + self.stats_interval
        if self._heartbeat is not None and (self.stats_interval is not None or self.verbosity):
            self._ticker = _Ticker(self._heartbeat, self._heartbeat_tick)

    # The counters' events, each followed by the cheap check for a stat line: several calls
    # per file, so the counters are called directly rather than through `super()`.

    def file_found(self, size: int) -> None:
        self._counters.found(size)
        if self._clock() >= self._next_due:
            self._maybe_stat()

    def file_started(self, relative: str, size: int) -> None:
        self._counters.started(relative, size)
        if self._clock() >= self._next_due:
            self._maybe_stat()

    def bytes_done(self, relative: str, n: int) -> None:
        self._counters.confirmed(relative, n)
        if self._clock() >= self._next_due:
            self._maybe_stat()

    def file_finished(self, outcome: FileOutcome) -> None:
        super().file_finished(outcome)
        if self._clock() >= self._next_due:
            self._maybe_stat()

    def close(self, summary: RunSummary) -> None:
        if self._closed:
            return
        self._closed = True
        if self._ticker is not None:
            self._ticker.stop()
        self._next_due = math.inf
        if self.stats_interval is not None:
            self._stat()
        if self.summary:
            with self._out:
                render_summary(summary, self.console)
        self._flush()


class NoProgressReporter(PlainReporter):
    """`--no-progress`: the plain face without its stat lines (per-file lines with -v,
    failures, messages, the summary).

    The live counters feed only the stat lines, so nothing here counts the events that only
    count: a file found, started, its bytes confirmed and its end cost a call each that does
    nothing, not a counter update with a clock read each and two lock acquisitions per file
    (the benchmark's runs use --no-progress: 531 k -> 511 k instructions of our code per
    small file). Retries and resumes still count: they print lines, and are rare.
    """

    def __init__(self, console: Console, **options: Any) -> None:
        """`PlainReporter`'s options, but never a stat line."""
        super().__init__(console, stats_interval=None, **options)

    def file_found(self, size: int) -> None:
        pass

    def file_started(self, relative: str, size: int) -> None:
        pass

    def bytes_done(self, relative: str, n: int) -> None:
        pass

    def file_finished(self, outcome: FileOutcome) -> None:
        self._tell_finished(outcome)  # its line, without the counters


def _with_rate(fig: Figures, rate: float | None) -> Figures:
    return dataclasses.replace(fig, rate=rate)


class RichReporter(_CountingReporter):
    """A terminal: overall bytes bar with rate and ETA, file counts, retries and resumes,
    and up to `transfers_shown` files in flight, each with its own bar.

    Redrawn `refresh_per_second` times a second by a timer thread (`auto_refresh=False`
    leaves redraws to `refresh()`, for tests); events only touch counters."""

    LINE_BACKLOG = 10_000  # queued lines; past this the event thread prints them itself

    def __init__(
        self,
        console: Console,
        *,
        verbosity: int = 0,
        clock: Clock = time.monotonic,
        refresh_per_second: float = DEFAULT_REFRESH_PER_SECOND,
        transfers_shown: int = DEFAULT_TRANSFERS_SHOWN,
        auto_refresh: bool = True,
        rate_window: float = 10.0,
        summary: bool = True,
    ) -> None:
        super().__init__(console, verbosity=verbosity, clock=clock)
        self.summary = summary
        self.renders = 0
        self.transfers_shown = transfers_shown
        self._refresh_per_second = refresh_per_second
        self._auto_refresh = auto_refresh
        self._rate = RateMeter(rate_window)
        self._lines: collections.deque[Text] = collections.deque()
        self._out = threading.Lock()
        self._ticker: _Ticker | None = None
        # The live display's parts are imported by a terminal's run only (~2 ms of every other
        # run's start).
        from rich.live import Live

        # redirect: stray prints to stdout/stderr appear above the display instead of tearing it
        self._live = Live(
            console=console,
            auto_refresh=False,
            transient=True,
            get_renderable=self._render,
        )

    @property
    def is_live(self) -> bool:
        return self._live.is_started

    def start(self, source: str, target: str) -> None:
        super().start(source, target)
        self._rate.observe(self._started_at, 0)
        self._live.start(refresh=True)
        if self._auto_refresh:
            self._ticker = _Ticker(1 / self._refresh_per_second, self.refresh)

    def refresh(self) -> None:
        """Print the queued lines above the display, then redraw it."""
        with self._out:
            self._flush_lines()
            if self._live.is_started:
                self._live.refresh()

    def _flush_lines(self) -> None:
        if not self._lines:
            return
        batch: list[Text] = []
        while self._lines:
            batch.append(self._lines.popleft())
        # one print, one redraw of the live display under it, for the whole batch
        self.console.print(Text("\n").join(batch), soft_wrap=True)

    def _emit(self, line: Text | str) -> None:
        self._lines.append(Text(line) if isinstance(line, str) else line)
        if len(self._lines) >= self.LINE_BACKLOG or not self._live.is_started:
            with self._out:
                self._flush_lines()

    def _render(self) -> RenderableType:
        self.renders += 1
        now = self._clock()
        fig = self._counters.figures(now - self._started_at, None)
        fig = _with_rate(fig, self._rate.observe(now, fig.bytes_sent))
        shown, count = self._counters.in_flight(self.transfers_shown)
        return render_figures(fig, shown, count, source=self._source, target=self._target)

    def close(self, summary: RunSummary) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if self._ticker is not None:
                self._ticker.stop()
            with self._out:
                self._flush_lines()
        finally:
            self._live.stop()
        if self.summary:
            render_summary(summary, self.console)


def render_figures(
    fig: Figures,
    in_flight: list[tuple[str, int, int]],
    in_flight_count: int,
    *,
    source: str,
    target: str,
) -> RenderableType:
    """The live display (a pure function of the figures, so it is cheap to test). Each line
    fits 80 columns with realistic figures; long names are cut with an ellipsis."""
    from rich.progress_bar import ProgressBar  # a terminal's run only, as `Live`

    counting = not fig.walk_complete
    header = Text.assemble(("uploading ", "bold"), source, " to ", target, overflow="ellipsis")

    total = Text(f" {format_bytes(fig.bytes_processed)} / {format_bytes(fig.bytes_total)}")
    if counting:
        total.append(" (still counting)", style="yellow")
    overall = Table.grid()
    overall.add_column(no_wrap=True)
    overall.add_column(no_wrap=True, overflow="ellipsis")
    bar = ProgressBar(total=max(fig.bytes_total, 1), completed=fig.bytes_processed, width=30)
    overall.add_row(bar, total)

    eta = fig.eta
    eta_text = "ETA -" if eta is None else f"ETA {format_duration(eta)}{'+' if counting else ''}"
    rate_text = format_rate(fig.rate) if fig.rate is not None else "- B/s"
    speed = Text(f"{rate_text}  {eta_text}  elapsed {format_duration(fig.elapsed)}")

    files = Text(
        f"files {fig.files_finished:,}/{fig.files_total:,}{'+' if counting else ''}: "
        f"{fig.uploaded:,} uploaded, {fig.resumed:,} resumed, {fig.skipped:,} skipped, "
    )
    files.append(f"{fig.failed:,} failed", style="bold red" if fig.failed else "")
    counters = Text(
        f"retries {fig.retries:,}  resumes {fig.resumes:,}  in flight {fig.in_flight_text}"
    )

    transfers = Table.grid(padding=(0, 1))
    transfers.add_column(no_wrap=True, overflow="ellipsis", max_width=NAME_WIDTH)
    transfers.add_column(no_wrap=True)
    transfers.add_column(no_wrap=True, justify="right")
    for name, size, done in in_flight:
        transfers.add_row(
            Text(_tail(printable(name), NAME_WIDTH), overflow="ellipsis", no_wrap=True),
            ProgressBar(total=max(size, 1), completed=min(done, size) if size else 1, width=15),
            f"{format_bytes(done)} / {format_bytes(size)}",
        )
    parts: list[RenderableType] = [header, overall, speed, files, counters, transfers]
    if in_flight_count > len(in_flight):
        parts.append(Text(f"... and {in_flight_count - len(in_flight)} more in flight"))
    return Group(*parts)


def _tail(name: str, width: int) -> str:
    """The end of a long path: the file name matters more than the top folders."""
    return name if len(name) <= width else "…" + name[-(width - 1) :]


def make_reporter(
    *,
    console: Console,
    is_terminal: bool,
    quiet: bool,
    no_progress: bool,
    verbosity: int,
    stats_interval: float,
    clock: Clock = time.monotonic,
    summary: bool = True,
) -> Reporter:
    """-q wins (failures only); --no-progress keeps the per-file lines and the summary but
    shows no progress; otherwise a live display on a terminal, stat lines elsewhere. Off a
    terminal, -v lines carry their ISO-8601 UTC time. `summary=False` (a dry run) leaves the
    end-of-run table out."""
    if quiet:
        return QuietReporter(console)
    stamped = not is_terminal and verbosity >= 1
    if no_progress:
        return NoProgressReporter(
            console,
            verbosity=verbosity,
            clock=clock,
            timestamps=stamped,
            summary=summary,
        )
    if is_terminal:
        return RichReporter(console, verbosity=verbosity, clock=clock, summary=summary)
    return PlainReporter(
        console,
        stats_interval=stats_interval,
        verbosity=verbosity,
        clock=clock,
        timestamps=stamped,
        summary=summary,
    )
