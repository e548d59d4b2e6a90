"""`--transfers auto`: how many files to keep in flight, decided from what the run measures.

Pure: `observe(settings, state, measurement)` takes the run's cumulative counters at one moment
and gives the next state and, when the limit moves, a `Change` saying why. No clock, no I/O:
the scheduler feeds it, and tests feed it recorded and synthetic traces.

How it decides, one window (a second; a quarter of one while growing, when it holds enough
work) at a time:
- GROWING: the limit doubles while the throughput (bytes/s or files/s) of a window rises by at
  least `gain` over the window before, at the lower limit. When doubling brings no gain, the
  extra files in flight only made each one wait longer (latency grew without throughput): the
  limit goes back to the one before, and the tuner holds.
- HOLDING: every `probe_every` windows it tries a little more (PROBING); kept on a gain,
  undone otherwise. A throughput that falls far at the same limit means the conditions changed
  (a slower server, a longer path): it grows again from there.
- Push-back (503/429 answers and timeouts) lowers the limit at once — back to the limit before a
  probe, or by `backoff` — and the limit at which it came is not tried again for
  `ceiling_seconds`.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, replace

#: The longest a limit that keeps meeting push-back is kept out of reach.
MAX_CEILING_SECONDS = 600.0


class Phase(enum.Enum):
    GROWING = "growing"
    HOLDING = "holding"
    PROBING = "probing"


@dataclass(frozen=True)
class TunerSettings:
    start: int = 4
    minimum: int = 1
    maximum: int = 256
    #: Seconds of measurements behind each decision.
    window: float = 1.0
    #: While growing or probing, a window may close this early when it holds enough work
    #: (`window_files` files or `window_bytes` bytes): a short run must not wait for seconds
    #: at a small limit.
    short_window: float = 0.25
    window_files: int = 100
    window_bytes: int = 64 * 1024 * 1024
    #: The relative rise of bytes/s or files/s that counts as a gain.
    gain: float = 0.10
    #: A fall at an unchanged limit that means the conditions changed.
    drop: float = 0.35
    #: The limit is multiplied by this on push-back (outside a probe).
    backoff: float = 0.7
    #: Windows held between two probes upwards.
    probe_every: int = 5
    #: How long a limit that met push-back stays out of reach.
    ceiling_seconds: float = 30.0
    #: Fewer files than this finished in a window say nothing about files/s.
    min_files: int = 20

    def __post_init__(self) -> None:
        if not 1 <= self.minimum <= self.maximum:
            raise ValueError("the tuner needs 1 <= minimum <= maximum")
        if self.window <= 0:
            raise ValueError("the tuner's window must be positive")


@dataclass(frozen=True)
class Measurement:
    """The run's cumulative counters at one moment."""

    at: float
    bytes_done: int
    files_done: int
    #: 503 and 429 answers and timeouts seen so far.
    pushbacks: int


@dataclass(frozen=True)
class Rates:
    bytes_per_second: float
    files_per_second: float
    files: int

    def gain_over(self, before: Rates, min_files: int) -> float:
        """The larger relative rise of bytes/s and files/s (files/s only when enough files
        finished in both windows to mean something)."""
        gains = [_relative(self.bytes_per_second, before.bytes_per_second)]
        if min(self.files, before.files) >= min_files:
            gains.append(_relative(self.files_per_second, before.files_per_second))
        return max(gains)


@dataclass(frozen=True)
class Change:
    at: float
    old: int
    new: int
    reason: str


@dataclass(frozen=True)
class TunerState:
    limit: int
    phase: Phase = Phase.GROWING
    #: Where the current window began.
    mark: Measurement | None = None
    #: The rates of the last window at `before_limit` (what the current limit must beat).
    before: Rates | None = None
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


def start(settings: TunerSettings) -> TunerState:
    return TunerState(limit=_clamp(settings, settings.start))


def observe(
    settings: TunerSettings, state: TunerState, now: Measurement
) -> tuple[TunerState, Change | None]:
    """The state after `now`, and the change of limit it calls for (None: keep it)."""
    if state.mark is None:
        return replace(state, mark=now), None
    seconds = now.at - state.mark.at
    if not _window_closed(settings, state, state.mark, now, seconds):
        return state, None
    rates = _rates(state.mark, now, seconds)
    pushbacks = now.pushbacks - state.mark.pushbacks
    state = replace(state, mark=now)
    if state.ceiling is not None and now.at >= state.ceiling_until:
        state = replace(state, ceiling=None)
    if state.cooling:
        # Files sent before the back-off may still meet busy answers (and retry after the
        # server's Retry-After): this window says little about the new limit.
        return replace(state, cooling=False), None
    if pushbacks > 0:
        return _back_off(settings, state, now.at, pushbacks, seconds)
    if rates.files == 0 and rates.bytes_per_second == 0:
        # Nothing finished at all (the server restarting, every transfer waiting to retry):
        # no limit can be judged on that, and no reference must be taken from it.
        return state, None
    if state.phase is Phase.GROWING:
        return _grow(settings, state, now.at, rates)
    if state.phase is Phase.PROBING:
        return _judge_probe(settings, state, now.at, rates)
    return _hold(settings, state, now.at, rates)


def _back_off(
    settings: TunerSettings, state: TunerState, at: float, pushbacks: int, seconds: float
) -> tuple[TunerState, Change | None]:
    if state.phase in (Phase.PROBING, Phase.GROWING) and 0 < state.before_limit < state.limit:
        new = state.before_limit  # the last step up found the edge: undo it
    else:
        new = min(state.limit - 1, math.floor(state.limit * settings.backoff))
    new = _clamp(settings, new)
    ceiling = state.limit if state.ceiling is None else min(state.ceiling, state.limit)
    # The same edge met again: it is likely to stay, so it is tried again less often.
    same_edge = state.edge is not None and ceiling <= state.edge + 1
    hold = min(state.hold * 2, MAX_CEILING_SECONDS) if same_edge else settings.ceiling_seconds
    state = replace(
        state,
        phase=Phase.HOLDING,
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


def _grow(
    settings: TunerSettings, state: TunerState, at: float, rates: Rates
) -> tuple[TunerState, Change | None]:
    before = state.before
    if before is not None and state.before_limit < state.limit:
        gain = rates.gain_over(before, settings.min_files)
        if gain < settings.gain:
            # More in flight, no more done: each file only waited longer.
            state = replace(state, phase=Phase.HOLDING, before=None, windows_held=0)
            reason = (
                f"{state.limit} in flight gave no gain over {state.before_limit} "
                f"({gain:+.0%}): latency grew, throughput did not"
            )
            return _moved(state, at, state.before_limit, reason)
    new = _within(settings, state, state.limit * 2)
    if new <= state.limit:
        state = replace(state, phase=Phase.HOLDING, before=rates, windows_held=0)
        return state, None
    reason = (
        f"{state.note}starting to measure"
        if before is None
        else f"throughput rose {rates.gain_over(before, settings.min_files):+.0%}"
    )
    state = replace(state, before=rates, before_limit=state.limit, note="")
    return _moved(state, at, new, f"{reason} at {state.limit} in flight")


def _judge_probe(
    settings: TunerSettings, state: TunerState, at: float, rates: Rates
) -> tuple[TunerState, Change | None]:
    assert state.before is not None
    gain = rates.gain_over(state.before, settings.min_files)
    if gain >= settings.gain:
        # Room above: keep climbing as from the start.
        state = replace(state, phase=Phase.GROWING, before=rates, before_limit=state.limit)
        new = _within(settings, state, state.limit * 2)
        reason = f"probe to {state.limit} gained {gain:+.0%}"
        return _moved(state, at, new, reason) if new > state.limit else (state, None)
    if gain >= settings.gain / 2:
        state = replace(state, phase=Phase.HOLDING, before=rates, windows_held=0)
        return state, None
    state = replace(state, phase=Phase.HOLDING, before=state.before, windows_held=0)
    reason = f"probe to {state.limit} gained nothing ({gain:+.0%})"
    return _moved(state, at, state.before_limit, reason)


def _hold(
    settings: TunerSettings, state: TunerState, at: float, rates: Rates
) -> tuple[TunerState, Change | None]:
    reference = state.before
    if reference is None:
        return replace(state, before=rates, before_limit=state.limit, windows_held=1), None
    if rates.gain_over(reference, settings.min_files) <= -settings.drop:
        # Same limit, far less done: the server or the path changed. The window that saw the
        # fall may straddle the change: the next one, at this limit, is the new reference.
        fall = rates.gain_over(reference, settings.min_files)
        note = f"throughput fell {fall:+.0%} at {state.limit} in flight: conditions changed; "
        return replace(state, phase=Phase.GROWING, before=None, note=note), None
    held = state.windows_held + 1
    # Follow slow drifts of the reference, so that a fall is measured against the recent past.
    blended = Rates(
        (reference.bytes_per_second + rates.bytes_per_second) / 2,
        (reference.files_per_second + rates.files_per_second) / 2,
        min(reference.files, rates.files),
    )
    state = replace(state, before=blended, before_limit=state.limit, windows_held=held)
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
    state = replace(state, phase=Phase.PROBING, before=rates)
    return _moved(state, at, new, f"probing above {state.limit}")


def _moved(state: TunerState, at: float, new: int, reason: str) -> tuple[TunerState, Change | None]:
    if new == state.limit:
        return state, None
    return replace(state, limit=new), Change(at, state.limit, new, reason)


def _window_closed(
    settings: TunerSettings,
    state: TunerState,
    since: Measurement,
    now: Measurement,
    seconds: float,
) -> bool:
    if seconds >= settings.window:
        return True
    if state.phase is Phase.HOLDING or state.cooling or seconds < settings.short_window:
        return False
    return (
        now.files_done - since.files_done >= settings.window_files
        or now.bytes_done - since.bytes_done >= settings.window_bytes
    )


def _within(settings: TunerSettings, state: TunerState, limit: int) -> int:
    """`limit`, kept below a recent push-back and within the settings, never below now."""
    if state.ceiling is not None:
        limit = min(limit, state.ceiling - 1)
    return max(state.limit, _clamp(settings, limit))


def _clamp(settings: TunerSettings, limit: int) -> int:
    return max(settings.minimum, min(settings.maximum, limit))


def _rates(since: Measurement, now: Measurement, seconds: float) -> Rates:
    files = now.files_done - since.files_done
    return Rates(
        (now.bytes_done - since.bytes_done) / seconds,
        files / seconds,
        files,
    )


def _relative(now: float, before: float) -> float:
    if before <= 0:
        return 1.0 if now > 0 else 0.0
    return now / before - 1.0
