"""`--transfers auto`: how many files to keep in flight, decided from what the run measures.

Pure: `observe(settings, state, measurement)` takes the run's cumulative counters at one moment
and gives the next state and, when the limit moves, a `Change` saying why. No clock, no I/O:
the scheduler feeds it (every quarter second), and tests feed it recorded and synthetic traces.

What it measures: each look at the counters gives a sample (files/s and bytes/s since the last
one), judged by files/s, or by bytes/s where the files are large. The samples taken while one
limit held form a `Window`, whose rate is compared with the window at the limit before, sample
spread included: on a busy 2-core machine a quarter second can finish half or twice the files
of the next one, so a step is judged as soon as the difference is clear beyond that noise (a
doubling 20 ms away: half a second), and after at most `max_trial` seconds when it never is.

How it decides:
- GROWING: the limit doubles (quadruples while the throughput rises almost as fast as the
  limit: far from the server, each extra transfer adds its full share; or while the client's
  event loop sat idle, waiting for the server, most of the time) while each step gains.
  A step that loses clearly goes back (after a quadrupling, halfway). A step that neither
  gains nor loses clearly within `max_trial` is a plateau (more files in flight only wait
  longer, typically for the CPU): the tuner keeps the higher limit unless it measured worse,
  and holds.
- HOLDING: every `probe_every` windows it tries a little more (PROBING); kept only on a clear
  gain (a plateau must not drift upwards by chance). A throughput that falls far at the same
  limit (or during a probe) means the conditions changed (a slower server, a longer path):
  it grows again.
- Large files (1 MiB or more on average in what finished): each transfer holds chunk
  buffers and churns the page cache, and a few in flight often keep the cores or the link
  busy. The run first tries fewer (EASING: `large_start`; kept unless clearly worse), a step up
  must gain at least `large_gain` and never jumps, and a plateau keeps the lower limit.
- Push-back (503/429 answers and timeouts) lowers the limit at once — back to the limit before
  the last step up, or by as many as the busy answers of the last second (each transfer
  beyond the server's limit is refused once per Retry-After), at most by half — and the
  limit at which it came is not tried again for `ceiling_seconds` (twice as long each time
  the same edge is met again). Refusals before anything finished count too (a start beyond
  the server's limit). A stray busy answer at a limit that has held (at most `tolerate` of
  the files finished, and none in the `stray_gap` seconds before) only stops the probes.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, replace

from bulkdrive.config import LARGE_FILE

#: The longest a limit that keeps meeting push-back is kept out of reach.
MAX_CEILING_SECONDS = 600.0


class Stage(enum.Enum):
    GROWING = "growing"
    #: Large files at the start: fewer in flight are tried first.
    EASING = "easing"
    HOLDING = "holding"
    PROBING = "probing"


class Verdict(enum.Enum):
    GAIN = "gain"
    LOSS = "loss"
    FLAT = "flat"  # no clear difference, after max_trial seconds
    UNSURE = "unsure"  # no clear difference yet: measure on


@dataclass(frozen=True)
class TunerSettings:
    #: Where the tuner starts (a run of `--transfers auto` starts at `AUTO_START`).
    start: int = 16
    #: Large files: the limit tried first, below `start` (see EASING).
    large_start: int = 8
    minimum: int = 1
    maximum: int = 256
    #: Seconds of samples behind a look at an unchanged limit (HOLDING).
    window: float = 1.0
    #: The longest a step is measured before it counts as neither gain nor loss.
    max_trial: float = 2.0
    #: The relative rise of bytes/s or files/s that counts as a gain.
    gain: float = 0.10
    #: How many standard errors a difference must span to be clear (the first sample of a
    #: step may decide alone when it spans `sure`).
    confidence: float = 2.0
    sure: float = 3.0
    #: The least relative spread assumed of one sample (a few samples can agree by chance).
    noise: float = 0.12
    #: A step up whose throughput rose by at least this share of the limit's rise jumps
    #: twice as far next (the run is far from the server's or the CPU's limit).
    linear: float = 0.75
    #: A fall at an unchanged limit that means the conditions changed (2 ms -> 20 ms away
    #: at 32 in flight on this machine is a fall of a third: it must be caught at once).
    drop: float = 0.3
    #: A climb from a window in which the client's event loop was busy (running, or waiting
    #: for a core) less than this share of the time quadruples: the client was waiting for
    #: the server, so more small files in flight only add to what finishes (20 ms away, 16
    #: in flight kept it busy a third of the time, 64 nine tenths). Busy time is measured
    #: exactly, unlike a quarter second's files/s on a shared machine, so no wait is needed.
    idle: float = 0.5
    #: Busy answers at an unchanged limit up to this share of the files finished in a sample
    #: do not lower it (they only stop the probes above it): a server at its limit may refuse
    #: a stray request (one more for a folder, a request arriving as another leaves), and a
    #: 30 % cut held for seconds costs far more than a file that waits its Retry-After.
    tolerate: float = 0.01
    #: A busy answer counts as a stray only when none came in this many seconds before it
    #: (since the last back-off's cooling): a server that refuses transfers beyond its limit
    #: refuses each of them again after every Retry-After, so its refusals keep coming, at
    #: a rate far below `tolerate` of the files (`serve --max-active 16` with 1 s Retry-After:
    #: 6 a second at 22 in flight, 0.3 % of ~2 300 files/s; that limit was held for good).
    stray_gap: float = 2.0
    #: The busy answers of the last this many seconds count the transfers beyond the
    #: server's limit: a back-off steps down by as many (each refused transfer is refused
    #: once per Retry-After), by at most `deepest` of the limit.
    excess_span: float = 1.0
    deepest: float = 0.5
    #: Windows held between two probes upwards.
    probe_every: int = 5
    #: How long a limit that met push-back stays out of reach.
    ceiling_seconds: float = 30.0
    #: Fewer files than this finished in a window say nothing about files/s.
    min_files: int = 20
    #: The bytes confirmed at once by one transfer of a large file (the chunk size): after a
    #: change, the samples until each transfer could have finished one file or chunk are
    #: left out (new transfers have confirmed nothing yet, the others slowed down).
    unit_bytes: int = 4 * 1024 * 1024
    #: Files at least this large on average (in what finished) are large: each transfer
    #: holds chunk buffers and churns the page cache, so more in flight must pay for itself.
    #: Where throughput is flat a plateau keeps the lower limit, a climb never jumps, and the
    #: run first tries `large_start`.
    large_file: int = LARGE_FILE
    #: With large files a step up counts as a gain only when it rose by this much (it
    #: doubles the memory held; their coarse samples make smaller rises a matter of chance).
    large_gain: float = 0.25

    def __post_init__(self) -> None:
        if not 1 <= self.minimum <= self.maximum:
            raise ValueError("the tuner needs 1 <= minimum <= maximum")
        if self.window <= 0 or self.max_trial <= 0:
            raise ValueError("the tuner's windows must be positive")


@dataclass(frozen=True)
class Reading:
    """The run's cumulative counters at one moment."""

    at: float
    bytes_done: int
    files_done: int
    #: 503 and 429 answers and timeouts seen so far.
    pushbacks: int
    #: Seconds the client's event loop was running or waiting for a core so far (None: not
    #: known on this system).
    busy: float | None = None
    #: Files handed to a transfer so far, and how many of them were `LARGE_FILE` or more.
    files_started: int = 0
    large_started: int = 0


@dataclass(frozen=True)
class Window:
    """What finished while one limit held: totals, and the spread of the samples' rates."""

    samples: int = 0
    seconds: float = 0.0
    files: int = 0
    bytes: int = 0
    files_rates: float = 0.0  # the sum of the samples' files/s
    files_squares: float = 0.0  # ... and of their squares
    bytes_rates: float = 0.0
    bytes_squares: float = 0.0
    #: The event loop's busy seconds, over the `timed` seconds of samples that measured it.
    busy: float = 0.0
    timed: float = 0.0

    def add(self, seconds: float, files: int, nbytes: int, busy: float | None = None) -> Window:
        f, b = files / seconds, nbytes / seconds
        return Window(
            self.samples + 1,
            self.seconds + seconds,
            self.files + files,
            self.bytes + nbytes,
            self.files_rates + f,
            self.files_squares + f * f,
            self.bytes_rates + b,
            self.bytes_squares + b * b,
            self.busy + (busy or 0.0),
            self.timed + (seconds if busy is not None else 0.0),
        )

    def merged(self, other: Window, keep_seconds: float) -> Window:
        """Both windows' samples, the older ones (self) weighed down to about `keep_seconds`
        in all (a reference that follows slow drifts but is not thrown by one window)."""
        f = 1.0
        if self.seconds + other.seconds > keep_seconds and self.seconds > 0:
            f = max(0.0, keep_seconds - other.seconds) / self.seconds
        return Window(
            round(self.samples * f) + other.samples,
            self.seconds * f + other.seconds,
            round(self.files * f) + other.files,
            round(self.bytes * f) + other.bytes,
            self.files_rates * f + other.files_rates,
            self.files_squares * f + other.files_squares,
            self.bytes_rates * f + other.bytes_rates,
            self.bytes_squares * f + other.bytes_squares,
            self.busy * f + other.busy,
            self.timed * f + other.timed,
        )

    @property
    def busy_share(self) -> float | None:
        """The share of the time the client's event loop was busy (None: not measured)."""
        # Most of the window must be measured: a sample or two alone say little.
        if self.timed < 0.5 * self.seconds or self.timed <= 0:
            return None
        return self.busy / self.timed

    @property
    def files_per_second(self) -> float:
        return self.files / self.seconds if self.seconds > 0 else 0.0

    @property
    def bytes_per_second(self) -> float:
        return self.bytes / self.seconds if self.seconds > 0 else 0.0

    def spread(self, by_files: bool) -> float | None:
        """The relative standard deviation of one sample's rate (None below two samples)."""
        if self.samples < 2:
            return None
        total, squares = (
            (self.files_rates, self.files_squares)
            if by_files
            else (self.bytes_rates, self.bytes_squares)
        )
        mean = total / self.samples
        if mean <= 0:
            return None
        variance = max(0.0, squares / self.samples - mean * mean) * self.samples
        return math.sqrt(variance / (self.samples - 1)) / mean


@dataclass(frozen=True)
class Comparison:
    verdict: Verdict
    #: The relative change of throughput (files/s; bytes/s for large files).
    gain: float


@dataclass(frozen=True)
class Change:
    at: float
    old: int
    new: int
    reason: str


@dataclass(frozen=True)
class TunerState:
    limit: int
    stage: Stage = Stage.GROWING
    #: The last look at the counters that closed a sample.
    mark: Reading | None = None
    #: The samples since the limit last changed (or since the last HOLDING look).
    window: Window = Window()
    #: The window at `before_limit`: what the current limit is measured against.
    before: Window | None = None
    before_limit: int = 0
    #: Limits at or above this met push-back, until `ceiling_until`.
    ceiling: int | None = None
    ceiling_until: float = 0.0
    #: The last limit that met push-back, and how long it was kept out of reach.
    edge: int | None = None
    hold: float = 0.0
    windows_held: int = 0
    #: The window after a back-off is not judged.
    cooling: bool = False
    #: Why the tuner started measuring afresh, said with the next change.
    note: str = ""
    #: Files and chunks finished per second in the last sample; samples that end before
    #: `settle_until` (one round of the transfers after a change) are left out.
    pace: float = 0.0
    settle_until: float = 0.0
    #: Fewer in flight were tried (large files, once per run).
    eased: bool = False
    #: (time, busy answers so far) of the readings of the last `excess_span` seconds; when
    #: a busy answer was last seen (since the last cooling).
    busy_seen: tuple[tuple[float, int], ...] = ()
    last_busy: float = -math.inf


def start(settings: TunerSettings) -> TunerState:
    return TunerState(limit=_clamp(settings, settings.start))


def observe(
    settings: TunerSettings, state: TunerState, now: Reading
) -> tuple[TunerState, Change | None]:
    """The state after `now`, and the change of limit it calls for (None: keep it)."""
    if _large_from_the_start(settings, state, now):
        # Known before anything finished: no second of large files at the start limit (each
        # transfer reading chunks) to learn what their sizes already say.
        eased = replace(
            state, eased=True, mark=now if now.files_done or now.bytes_done else state.mark
        )
        reason = (
            f"large files: starting with fewer in flight than {state.limit} "
            f"({now.large_started} of the first {now.files_started} are 1 MiB or more)"
        )
        return _moved(eased, now.at, _clamp(settings, settings.large_start), reason)
    mark = state.mark
    state = _seen(settings, state, now)
    if mark is None or mark.files_done == mark.bytes_done == 0:
        if mark is not None and now.pushbacks > mark.pushbacks:
            # Refused before anything finished: the start is beyond the server's limit (the
            # refused transfers wait out Retry-After, and would be refused again).
            state = replace(state, mark=now)
            refused = now.pushbacks - mark.pushbacks
            return _back_off(settings, state, now.at, refused, now.at - mark.at)
        # The first sample starts once something has finished: before, the run was logging
        # in and walking, which says nothing about the limit.
        return replace(state, mark=now), None
    seconds = now.at - mark.at
    if seconds <= 0:
        return state, None
    if state.ceiling is not None and now.at >= state.ceiling_until:
        state = replace(state, ceiling=None)
    pushbacks = now.pushbacks - mark.pushbacks
    files, nbytes = now.files_done - mark.files_done, now.bytes_done - mark.bytes_done
    busy = None if now.busy is None or mark.busy is None else now.busy - mark.busy
    if pushbacks > 0 and not state.cooling:
        stray = now.at - state.last_busy > settings.stray_gap
        state = replace(state, last_busy=now.at)
        if stray and state.stage is Stage.HOLDING and pushbacks <= settings.tolerate * files:
            # A stray busy answer at a limit that has held: the edge is here, go no higher.
            state = replace(
                state,
                ceiling=state.limit + 1,
                ceiling_until=max(state.ceiling_until, now.at + settings.ceiling_seconds),
                edge=state.limit + 1,
                hold=max(state.hold, settings.ceiling_seconds),
            )
        else:
            state = replace(state, mark=now)
            return _back_off(settings, state, now.at, pushbacks, seconds)
    if files <= 0 and nbytes <= 0:
        if seconds < settings.max_trial:
            return state, None  # a sample closes when something finished
        # Nothing finished for seconds (the server restarting, every transfer waiting to
        # retry): no limit can be judged on that, and no reference taken from it.
        return replace(state, mark=now, window=Window()), None
    pace = max(files, nbytes / settings.unit_bytes) / seconds
    if now.at <= state.settle_until:
        return replace(state, mark=now, pace=pace), None
    window = state.window.add(seconds, files, nbytes, busy)
    state = replace(state, mark=now, pace=pace, window=window)
    state, change = _decide(settings, state, now.at)
    if change is not None and state.pace > 0:
        settle = min(settings.max_trial, state.limit / state.pace)
        state = replace(state, settle_until=now.at + settle)
    return state, change


def _decide(
    settings: TunerSettings, state: TunerState, at: float
) -> tuple[TunerState, Change | None]:
    if state.cooling:
        # Files sent before the back-off may still meet busy answers (and retry after the
        # server's Retry-After): this window says little about the new limit.
        if state.window.seconds < settings.window:
            return state, None
        # The refusals of the transfers above the new limit (each retried once more after
        # Retry-After) are behind: what comes now is judged afresh.
        return replace(
            state,
            cooling=False,
            window=Window(),
            busy_seen=state.busy_seen[-1:],
            last_busy=-math.inf,
        ), None
    if state.stage is Stage.GROWING:
        return _grow(settings, state, at)
    if state.stage is Stage.PROBING:
        return _judge_probe(settings, state, at)
    if state.stage is Stage.EASING:
        return _judge_easing(settings, state, at)
    return _hold(settings, state, at)


def compare(settings: TunerSettings, new: Window, old: Window) -> Comparison:
    """Whether `new` finished clearly more or less than `old`, beyond the samples' noise."""
    # One measure decides. Large files are judged by their bytes: a second finishes a score
    # of them, so files/s swings by a fifth (a fall of a third read as "conditions changed"
    # at 8 in flight sent netlarge 2 ms away to 16 for seconds), while their 4 MiB chunks
    # come by the hundred. Small files are judged by their count: in a real tree a few
    # large files hold much of the bytes (nettree: half of them in 3 of its 10 000 files),
    # and their chunks, confirmed in bursts, made bytes/s leap fivefold in a quarter second
    # at an unchanged pace of files (read as a clear gain: at 0 ms, where the cores are the
    # limit, it sent the tree from 64 to 128 in flight).
    large = _large(settings, new) and _large(settings, old)
    if min(new.files, old.files) >= settings.min_files and not large:
        gain, errors = _difference(settings, new, old, by_files=True)
    elif new.bytes > 0 and old.bytes > 0:
        gain, errors = _difference(settings, new, old, by_files=False)
    else:
        gain, errors = _relative(new.files_per_second, old.files_per_second), 0.0
    if gain >= settings.gain and errors >= _needed(settings, new):
        return Comparison(Verdict.GAIN, gain)
    # A loss needs two samples: one alone may still be the change's own wake.
    if gain <= -settings.gain / 2 and errors <= -settings.confidence and new.samples >= 2:
        return Comparison(Verdict.LOSS, gain)
    if new.seconds >= settings.max_trial:
        return Comparison(Verdict.FLAT, gain)
    return Comparison(Verdict.UNSURE, gain)


def _needed(settings: TunerSettings, new: Window) -> float:
    """Standard errors a difference must span: one sample alone must be very clear."""
    return settings.sure if new.samples < 2 else settings.confidence


def _difference(
    settings: TunerSettings, new: Window, old: Window, by_files: bool
) -> tuple[float, float]:
    if by_files:
        now, before = new.files_per_second, old.files_per_second
    else:
        now, before = new.bytes_per_second, old.bytes_per_second
    gain = _relative(now, before)
    spreads = [s for s in (new.spread(by_files), old.spread(by_files)) if s is not None]
    common = max([settings.noise, *spreads])
    new_spread = max(settings.noise, new.spread(by_files) or common)
    old_spread = max(settings.noise, old.spread(by_files) or common)
    error = math.sqrt(
        ((1 + max(gain, 0.0)) * new_spread) ** 2 / new.samples + old_spread**2 / old.samples
    )
    return gain, gain / error


def _back_off(
    settings: TunerSettings, state: TunerState, at: float, pushbacks: int, seconds: float
) -> tuple[TunerState, Change | None]:
    if state.stage in (Stage.PROBING, Stage.GROWING) and 0 < state.before_limit < state.limit:
        new = state.before_limit  # the last step up found the edge: undo it
    else:
        # As many fewer as the busy answers of the last second say were beyond the server's
        # limit (a 30 % cut for one transfer too many held 16 at 11 for 30 s and more).
        excess = max(pushbacks, _recent_pushbacks(settings, state))
        new = min(
            state.limit - 1,
            max(state.limit - excess, math.ceil(state.limit * settings.deepest)),
        )
    new = _clamp(settings, new)
    ceiling = state.limit if state.ceiling is None else min(state.ceiling, state.limit)
    # The same edge met again: it is likely to stay, so it is tried again less often.
    same_edge = state.edge is not None and ceiling <= state.edge + 1
    hold = min(state.hold * 2, MAX_CEILING_SECONDS) if same_edge else settings.ceiling_seconds
    state = replace(
        state,
        stage=Stage.HOLDING,
        window=Window(),
        before=None,
        before_limit=new,
        ceiling=ceiling,
        ceiling_until=at + hold,
        edge=ceiling,
        hold=hold,
        windows_held=0,
        cooling=True,
    )
    reason = f"the server pushed back ({pushbacks} busy answers or timeouts in {seconds:.1f}s)"
    return _moved(state, at, new, reason)


def _seen(settings: TunerSettings, state: TunerState, now: Reading) -> TunerState:
    """`state` with `now`'s busy answers remembered for `excess_span` seconds."""
    kept = [(at, n) for at, n in state.busy_seen if now.at - at <= settings.excess_span]
    return replace(state, busy_seen=(*kept, (now.at, now.pushbacks)))


def _recent_pushbacks(settings: TunerSettings, state: TunerState) -> int:
    """Busy answers in the last `excess_span` seconds (at most)."""
    seen = state.busy_seen
    return seen[-1][1] - seen[0][1] if len(seen) >= 2 else 0


def _grow(
    settings: TunerSettings, state: TunerState, at: float
) -> tuple[TunerState, Change | None]:
    window, before = state.window, state.before
    large = _large(settings, window)
    if before is None and large and not state.eased and state.limit > settings.minimum:
        # Large files: every limit from a few up is often alike (the cores or the link are
        # the limit), and each transfer holds memory: try fewer first, against a second of
        # samples at the start limit (one large-file sample is too coarse to judge on).
        if window.seconds < settings.window or window.samples < 2:
            return state, None
        state = replace(
            state,
            stage=Stage.EASING,
            before=window,
            before_limit=state.limit,
            window=Window(),
            eased=True,
        )
        new = _clamp(settings, min(settings.large_start, state.limit // 2))
        reason = f"large files: trying fewer in flight than {state.limit}"
        return _moved(state, at, new, reason)
    waiting = "" if large else _waiting(settings, window)
    if before is None:
        # The first sample at this limit is what the next step must beat (at the start of a
        # run it is low, which only makes the first step up look better).
        state = replace(state, before=window, before_limit=state.limit, window=Window())
        new = _within(settings, state, state.limit * (4 if waiting else 2))
        if new <= state.limit:
            return replace(state, stage=Stage.HOLDING, windows_held=0), None
        reason = f"{state.note}starting to measure at {state.limit}{waiting}"
        return _moved(replace(state, note=""), at, new, reason)
    result = _worth(settings, compare(settings, window, before), large)
    if result.verdict is Verdict.UNSURE:
        return state, None
    lower = state.before_limit
    if result.verdict is Verdict.FLAT and result.gain >= settings.gain and not large:
        # A gain as large as a clear one, only not clear beyond the noise after max_trial:
        # likelier a rise than a plateau; one more step will tell (no jump, though). Not for
        # large files, whose coarse samples make such rises common and steps costly.
        result = Comparison(Verdict.GAIN, 0.0)
    if result.verdict is Verdict.GAIN:
        # Throughput rising about as fast as the limit: far from any plateau, jump further
        # (not from the run's first sample, still in the wake of its start).
        share = result.gain / (state.limit / lower - 1) if state.limit > lower else 0.0
        linear = share >= settings.linear and before.samples > 1
        step = 4 if (linear or waiting) and not large else 2
        new = _within(settings, state, state.limit * step)
        state = replace(state, before=window, before_limit=state.limit, window=Window())
        if new <= state.limit:
            return replace(state, stage=Stage.HOLDING, windows_held=0), None
        rose = f"rose {result.gain:+.0%}" if result.gain else "seems to rise"
        reason = f"throughput {rose} at {state.limit} in flight{waiting}"
        return _moved(state, at, new, reason)
    held = replace(state, stage=Stage.HOLDING, windows_held=0, window=Window())
    if result.verdict is Verdict.FLAT and result.gain >= 0 and state.limit <= 2 * lower:
        if large:
            # Large files on a plateau: the higher limit only holds more memory.
            reason = (
                f"{state.limit} in flight was not clearly better than {lower} "
                f"({result.gain:+.0%}): large files, fewer in flight hold less memory"
            )
            return _moved(held, at, lower, reason)
        # A plateau (more files in flight only wait, typically for the CPU): keep the limit
        # that measured no worse, and hold, measured against what it did.
        return replace(held, before=window, before_limit=state.limit), None
    # Worse, or a plateau met by a jump of more than a doubling: back down, after such a jump
    # to the limit halfway (in doublings), which was never measured; the probes find any
    # room above it.
    back = lower if state.limit <= 2 * lower else math.isqrt(lower * state.limit)
    what = "did worse than" if result.verdict is Verdict.LOSS else "was not clearly better than"
    reason = (
        f"{state.limit} in flight {what} {lower} ({result.gain:+.0%}): "
        "latency grew, throughput did not"
    )
    if back != lower:
        held = replace(held, before=None)
    return _moved(held, at, back, reason)


def _judge_easing(
    settings: TunerSettings, state: TunerState, at: float
) -> tuple[TunerState, Change | None]:
    """Half the start limit, tried for large files: kept unless it did clearly worse."""
    assert state.before is not None
    result = compare(settings, state.window, state.before)
    if result.verdict is Verdict.UNSURE:
        return state, None
    upper = state.before_limit
    if result.verdict is Verdict.LOSS:
        # Fewer do worse: the start limit is measured afresh, then the climb goes on above it.
        grow = replace(state, stage=Stage.GROWING, before=None, window=Window())
        reason = f"{state.limit} in flight did worse than {upper} ({result.gain:+.0%})"
        return _moved(grow, at, upper, reason)
    held = replace(
        state,
        stage=Stage.HOLDING,
        before=state.window,
        before_limit=state.limit,
        window=Window(),
        windows_held=0,
    )
    return held, None


def _judge_probe(
    settings: TunerSettings, state: TunerState, at: float
) -> tuple[TunerState, Change | None]:
    assert state.before is not None
    large = _large(settings, state.window)
    result = _worth(settings, compare(settings, state.window, state.before), large)
    if result.verdict is Verdict.UNSURE:
        return state, None
    if result.verdict is Verdict.LOSS and result.gain <= -settings.drop:
        # A quarter more in flight cannot cost a third of the throughput: the conditions
        # changed during the probe (a slower server); climb again from here.
        note = f"throughput fell {result.gain:+.0%} while probing: conditions changed; "
        return replace(state, stage=Stage.GROWING, before=None, window=Window(), note=note), None
    if result.verdict is Verdict.GAIN:
        # Room above: keep climbing as from the start.
        state = replace(
            state,
            stage=Stage.GROWING,
            before=state.window,
            before_limit=state.limit,
            window=Window(),
        )
        new = _within(settings, state, state.limit * 2)
        reason = f"probe to {state.limit} gained {result.gain:+.0%}"
        return _moved(state, at, new, reason) if new > state.limit else (state, None)
    state = replace(state, stage=Stage.HOLDING, windows_held=0, window=Window())
    reason = f"probe to {state.limit} gained nothing clear ({result.gain:+.0%})"
    return _moved(state, at, state.before_limit, reason)


def _hold(
    settings: TunerSettings, state: TunerState, at: float
) -> tuple[TunerState, Change | None]:
    window = state.window
    if window.seconds < settings.window or window.samples < 2:
        return state, None
    state = replace(state, window=Window())
    reference = state.before
    if reference is None:
        return replace(state, before=window, before_limit=state.limit, windows_held=1), None
    result = compare(settings, window, reference)
    if result.verdict is Verdict.LOSS and result.gain <= -settings.drop:
        # Same limit, far less done: the server or the path changed. The window that saw the
        # fall may straddle the change: the next one, at this limit, is the new reference.
        note = (
            f"throughput fell {result.gain:+.0%} at {state.limit} in flight: conditions changed; "
        )
        return replace(state, stage=Stage.GROWING, before=None, note=note), None
    held = state.windows_held + 1
    # The reference gathers the windows at this limit, the last few seconds' worth.
    merged = reference.merged(window, settings.window * settings.probe_every)
    state = replace(state, before=merged, before_limit=state.limit, windows_held=held)
    if held < settings.probe_every:
        return state, None
    step = max(state.limit + 1, math.ceil(state.limit * 1.25))
    if state.edge is not None and state.edge <= 2 * step - state.limit:
        # Near a known edge a busy answer is likely: probe by one, so few of them come.
        step = state.limit + 1
    new = _within(settings, state, step)
    state = replace(state, windows_held=0)
    if new <= state.limit:
        return state, None
    state = replace(state, stage=Stage.PROBING)
    return _moved(state, at, new, f"probing above {state.limit}")


def _moved(state: TunerState, at: float, new: int, reason: str) -> tuple[TunerState, Change | None]:
    if new == state.limit:
        return state, None
    return replace(state, limit=new), Change(at, state.limit, new, reason)


def _within(settings: TunerSettings, state: TunerState, limit: int) -> int:
    """`limit`, kept below a recent push-back and within the settings, never below now."""
    if state.ceiling is not None:
        limit = min(limit, state.ceiling - 1)
    return max(state.limit, _clamp(settings, limit))


def _worth(settings: TunerSettings, result: Comparison, large: bool) -> Comparison:
    """A clear gain of a step up, unless it is too small for large files to pay for it."""
    if large and result.verdict is Verdict.GAIN and result.gain < settings.large_gain:
        return Comparison(Verdict.FLAT, result.gain)
    return result


def _waiting(settings: TunerSettings, window: Window) -> str:
    """Why a climb from `window` may jump (the client mostly waited for the server), or ""."""
    share = window.busy_share
    if share is None or share >= settings.idle:
        return ""
    return f" (the client waited for the server {1 - share:.0%} of the time)"


def _large_from_the_start(settings: TunerSettings, state: TunerState, now: Reading) -> bool:
    """Whether the first files handed out were mostly large: at least `large_start` of them
    (a run holds the others back until as many have been, `auto_transfers`)."""
    return (
        state.stage is Stage.GROWING
        and state.before is None
        and not state.eased
        and state.limit > settings.large_start
        and now.files_started >= settings.large_start
        and 2 * now.large_started >= now.files_started
    )


def _large(settings: TunerSettings, window: Window) -> bool:
    """Whether what finished in `window` was large files (or parts of them only)."""
    return window.bytes >= settings.large_file * max(window.files, 1)


def _clamp(settings: TunerSettings, limit: int) -> int:
    return max(settings.minimum, min(settings.maximum, limit))


def _relative(now: float, before: float) -> float:
    if before <= 0:
        return 1.0 if now > 0 else 0.0
    return now / before - 1.0
