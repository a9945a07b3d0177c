"""Alert rules over a stream of emotion predictions, and over a call's conversation dynamics:
pure Python, so they are unit-tested without Streamlit and behave the same live and when a
past session is reviewed.

Time is stream time (the windows' ``t_end``; a dynamics message's ``t_s``), not wall time, so
a replay at 10x speed raises the same alerts as the live call did. Unvoiced windows carry no
probabilities: they neither raise nor clear an alert, but a long silence breaks a "sustained"
run.

Two kinds of rule: emotion rules (``SustainedHigh``, ``SustainedFall``) see one stream's
windows (``AlertEngine.observe``); dynamics rules (``LoudnessRising``, ``TalkShareAbove``,
``DeadAir``) see a call's ``dynamics`` messages (``AlertEngine.observe_call``). A side rule's
alert is on that side's stream key, a call rule's on the call key, so ``active()`` pairs name
what a banner or a wallboard tile shows either way. A call's final message clears its alerts.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Alert",
    "AlertEngine",
    "CallObservation",
    "DeadAir",
    "LoudnessRising",
    "LouderThanUsual",
    "Observation",
    "SideObservation",
    "SustainedFall",
    "SustainedHigh",
    "TalkShareAbove",
]

#: Who a dynamics side rule watches: a call role, or either side.
ANY_SIDE = "any"
SIDE_CHOICES = ("caller", "agent", ANY_SIDE)
#: Dynamics messages come once a second; a longer hole breaks a "held for" run.
MAX_DYNAMICS_GAP_S = 5.0


@dataclass(frozen=True)
class Observation:
    """What a rule sees of one window: its end in stream time, voicing and probabilities."""

    t_end: float
    voiced: bool
    probs: Mapping[str, float]
    wall: float = 0.0


@dataclass(frozen=True)
class SideObservation:
    """One side of a call in a dynamics message: its stream key (as the Store names it), role
    and fields (``talk_s``, ``loudness_trend_db_per_min``, ...: docs/protocol.md)."""

    stream: str
    role: str | None
    values: Mapping[str, Any]


@dataclass(frozen=True)
class CallObservation:
    """What a dynamics rule sees of one ``dynamics`` message: call time, the call's fields
    (``silence_s``, ``overlaps``, ...), its sides, and whether it is the call's last."""

    t: float
    wall: float
    values: Mapping[str, Any]
    sides: tuple[SideObservation, ...]
    final: bool = False


@dataclass(frozen=True)
class Alert:
    """One raised alert: which rule, on which stream (or call), when (stream and wall time),
    and why. ``emotion`` is the emotion, or for a dynamics rule what it measures; ``call``
    is the call key for dynamics rules."""

    rule: str
    stream: str
    t: float
    wall: float
    emotion: str
    message: str
    severity: str = "warning"
    call: str | None = None


@dataclass(frozen=True)
class SustainedHigh:
    """Any of ``emotions`` at or above ``threshold`` for at least ``min_duration_s`` seconds.

    The run is measured from the first qualifying window's end to the latest one's, so with a
    0.5 s hop, 3 s means seven consecutive windows. A voiced window below the threshold ends
    the run and re-arms the rule; a silence longer than ``max_gap_s`` ends it too.
    """

    emotions: tuple[str, ...] = ("angry", "fear")
    threshold: float = 0.6
    min_duration_s: float = 3.0
    max_gap_s: float = 2.0
    severity: str = "critical"

    def __post_init__(self) -> None:
        if not self.emotions:
            raise ValueError("SustainedHigh needs at least one emotion")
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold}")
        if self.min_duration_s < 0 or self.max_gap_s <= 0:
            raise ValueError("min_duration_s must be >= 0 and max_gap_s > 0")

    @property
    def name(self) -> str:
        return (
            f"{' or '.join(self.emotions)} >= {self.threshold:.0%} "
            f"for {self.min_duration_s:g} s"
        )

    def new_state(self) -> dict[str, _HighRun]:
        return {e: _HighRun() for e in self.emotions}

    def update(self, state: dict[str, _HighRun], stream: str, obs: Observation) -> list[Alert]:
        out: list[Alert] = []
        for emotion, run in state.items():
            if run.last_t is not None and obs.t_end - run.last_t > self.max_gap_s:
                run.reset()
            if not obs.voiced:
                continue
            p = float(obs.probs.get(emotion, 0.0))
            if p < self.threshold:
                run.reset()
                continue
            if run.start_t is None:
                run.start_t = obs.t_end
            run.last_t = obs.t_end
            run.peak = max(run.peak, p)
            held = obs.t_end - run.start_t
            if not run.fired and held >= self.min_duration_s:
                run.fired = True
                out.append(Alert(
                    rule=self.name, stream=stream, t=obs.t_end, wall=obs.wall, emotion=emotion,
                    message=f"{emotion} at or above {self.threshold:.0%} for {held:.1f} s "
                            f"(peak {run.peak:.0%})",
                    severity=self.severity,
                ))
        return out

    def active(self, state: dict[str, _HighRun]) -> bool:
        return any(run.fired for run in state.values())


@dataclass
class _HighRun:
    start_t: float | None = None
    last_t: float | None = None
    peak: float = 0.0
    fired: bool = False

    def reset(self) -> None:
        self.start_t = self.last_t = None
        self.peak = 0.0
        self.fired = False


@dataclass(frozen=True)
class SustainedFall:
    """``emotion``'s mean probability over the last ``span_s`` seconds is at least ``drop``
    below its mean over the ``span_s`` seconds before (a baseline that moves with the call).

    Both halves need ``min_windows`` voiced windows, so one odd window cannot raise it. It
    re-arms once the fall has shrunk below half of ``drop``.
    """

    emotion: str = "happy"
    drop: float = 0.3
    span_s: float = 10.0
    min_windows: int = 3
    severity: str = "warning"

    def __post_init__(self) -> None:
        if not 0.0 < self.drop <= 1.0:
            raise ValueError(f"drop must be in (0, 1], got {self.drop}")
        if self.span_s <= 0 or self.min_windows < 1:
            raise ValueError("span_s must be > 0 and min_windows >= 1")

    @property
    def name(self) -> str:
        return f"{self.emotion} falls by {self.drop:.0%} within {self.span_s:g} s"

    def new_state(self) -> _FallState:
        return _FallState()

    def update(self, state: _FallState, stream: str, obs: Observation) -> list[Alert]:
        if not obs.voiced:
            return []
        p = float(obs.probs.get(self.emotion, 0.0))
        state.points.append((obs.t_end, p))
        while state.points and state.points[0][0] < obs.t_end - 2 * self.span_s:
            state.points.popleft()
        recent = [v for t, v in state.points if t > obs.t_end - self.span_s]
        before = [v for t, v in state.points if t <= obs.t_end - self.span_s]
        if len(recent) < self.min_windows or len(before) < self.min_windows:
            return []
        base, now = sum(before) / len(before), sum(recent) / len(recent)
        fall = base - now
        if state.fired and fall < self.drop / 2:
            state.fired = False
        if state.fired or fall < self.drop:
            return []
        state.fired = True
        return [Alert(
            rule=self.name, stream=stream, t=obs.t_end, wall=obs.wall, emotion=self.emotion,
            message=f"{self.emotion} fell from {base:.0%} to {now:.0%} "
                    f"(mean of {self.span_s:g} s before vs the last {self.span_s:g} s)",
            severity=self.severity,
        )]

    def active(self, state: _FallState) -> bool:
        return state.fired


@dataclass
class _FallState:
    # Bounded by time (2 * span_s of windows), not by a maxlen.
    points: deque[tuple[float, float]] = field(default_factory=deque)
    fired: bool = False


def _side_matches(role: str, side: SideObservation) -> bool:
    return role == ANY_SIDE or side.role == role


def _check_role(role: str) -> None:
    if role not in SIDE_CHOICES:
        raise ValueError(f"role must be one of {SIDE_CHOICES}, got {role!r}")


@dataclass
class _Held:
    """A condition's run: since when it holds, when last seen, whether it has fired."""

    start_t: float | None = None
    last_t: float | None = None
    fired: bool = False

    def reset(self) -> None:
        self.start_t = self.last_t = None
        self.fired = False

    def expire(self, t: float) -> None:
        """Forget a run not seen for over ``MAX_DYNAMICS_GAP_S`` (the messages stopped)."""
        if self.last_t is not None and t - self.last_t > MAX_DYNAMICS_GAP_S:
            self.reset()

    def hold(self, t: float, for_s: float) -> float | None:
        """The condition holds at ``t``: the seconds it has held, the first time that reaches
        ``for_s`` (the run fires once); else None."""
        if self.start_t is None:
            self.start_t = t
        self.last_t = t
        held = t - self.start_t
        if self.fired or held < for_s:
            return None
        self.fired = True
        return held


@dataclass(frozen=True)
class LoudnessRising:
    """A side's talk is getting louder: its loudness trend (the daemon's slope over the last
    ``trend_s``, 20 s) at or above ``min_slope_db_per_min`` in every message for ``for_s``
    seconds. Clears when the trend falls below it or has no value (the side went quiet)."""

    role: str = "caller"
    min_slope_db_per_min: float = 6.0
    for_s: float = 5.0
    severity: str = "warning"
    scope = "side"

    def __post_init__(self) -> None:
        _check_role(self.role)
        if self.min_slope_db_per_min <= 0 or self.for_s < 0:
            raise ValueError("min_slope_db_per_min must be > 0 and for_s >= 0")

    @property
    def name(self) -> str:
        return (f"{self.role} loudness rising >= {self.min_slope_db_per_min:g} dB/min "
                f"for {self.for_s:g} s")

    def new_state(self) -> _Held:
        return _Held()

    def update(self, state: _Held, call: str, side: SideObservation,
               obs: CallObservation) -> list[Alert]:
        slope = side.values.get("loudness_trend_db_per_min")
        state.expire(obs.t)
        if slope is None or slope < self.min_slope_db_per_min:
            state.reset()
            return []
        held = state.hold(obs.t, self.for_s)
        if held is None:
            return []
        level = side.values.get("loudness_dbfs")
        now = f", now {level:.0f} dBFS" if level is not None else ""
        return [Alert(rule=self.name, stream=side.stream, t=obs.t, wall=obs.wall,
                      emotion="loudness", severity=self.severity, call=call,
                      message=f"{side.role or 'side'} getting louder: {slope:+.0f} dB/min "
                              f"for {held:.0f} s{now}")]

    def active(self, state: _Held) -> bool:
        return state.fired


@dataclass
class _LevelState:
    recent: deque[tuple[float, float]] = field(default_factory=deque)  # (t, dBFS) talk seconds
    base: list[float] = field(default_factory=list)  # older talk seconds' dBFS, sorted
    run: _Held = field(default_factory=_Held)


@dataclass(frozen=True)
class LouderThanUsual:
    """A side is talking louder than it usually does on this call: the power mean of its talk
    loudness (``loudness_dbfs``) over the last ``recent_s`` seconds is at least ``min_rise_db``
    above the median of its own talk seconds before them, held for ``for_s`` seconds.

    Why not the slope (``LoudnessRising``): with turn-taking speech the 20-s slope swings by
    tens of dB/min on calmly spoken calls, so a slope rule fires on calm calls and misses real
    escalation. Measured (``benchmarks/loudness_rule.py``, 8 two-minute TESS/RAVDESS
    conversations, then the same with the caller's gain ramping +15 dB/min from 40 s): this
    rule alerted 0/8 calm calls and 8/8 rising ones (66-107 s into the call); the slope rule
    at its defaults 3/8 and 4/8. Needs ``min_baseline_s`` talk seconds of baseline and talk in
    the recent span; silence neither raises nor clears it."""

    role: str = "caller"
    min_rise_db: float = 8.0
    recent_s: float = 20.0
    for_s: float = 10.0
    min_baseline_s: float = 10.0
    min_recent_s: float = 3.0
    severity: str = "warning"
    scope = "side"

    def __post_init__(self) -> None:
        _check_role(self.role)
        if self.min_rise_db <= 0 or self.recent_s <= 0 or self.for_s < 0 \
                or self.min_baseline_s < 1:
            raise ValueError("min_rise_db and recent_s must be > 0, for_s >= 0, "
                             "min_baseline_s >= 1")

    @property
    def name(self) -> str:
        return f"{self.role} louder than usual by >= {self.min_rise_db:g} dB for {self.for_s:g} s"

    def new_state(self) -> _LevelState:
        return _LevelState()

    def rise_db(self, state: _LevelState, t: float) -> float | None:
        """Recent talk loudness minus the side's earlier median (None: too little talk).
        The baseline is kept sorted as seconds age out of the recent span, so an hour-long
        call costs a bisect a second, not a scan."""
        while state.recent and state.recent[0][0] <= t - self.recent_s:
            bisect.insort(state.base, state.recent.popleft()[1])
        base, recent = state.base, state.recent
        if len(base) < self.min_baseline_s or len(recent) < self.min_recent_s:
            return None
        power = sum(10.0 ** (v / 10.0) for _, v in recent) / len(recent)
        n = len(base)
        median = base[n // 2] if n % 2 else 0.5 * (base[n // 2 - 1] + base[n // 2])
        return 10.0 * math.log10(power) - median

    def update(self, state: _LevelState, call: str, side: SideObservation,
               obs: CallObservation) -> list[Alert]:
        level = side.values.get("loudness_dbfs")
        if isinstance(level, (int, float)) and math.isfinite(level):
            state.recent.append((obs.t, float(level)))
        state.run.expire(obs.t)
        rise = self.rise_db(state, obs.t)
        if rise is None:
            return []
        if rise < self.min_rise_db:
            state.run.reset()
            return []
        held = state.run.hold(obs.t, self.for_s)
        if held is None:
            return []
        return [Alert(rule=self.name, stream=side.stream, t=obs.t, wall=obs.wall,
                      emotion="loudness", severity=self.severity, call=call,
                      message=f"{side.role or 'side'} louder than usual: {rise:+.0f} dB over "
                              f"the last {self.recent_s:g} s, for {held:.0f} s")]

    def active(self, state: _LevelState) -> bool:
        return state.run.fired


@dataclass
class _ShareState:
    points: deque[tuple[float, float, float]] = field(default_factory=deque)  # t, side, all
    fired: bool = False


@dataclass(frozen=True)
class TalkShareAbove:
    """A side did more than ``share`` of the talking over the last ``over_s`` seconds of the
    call (from the messages' cumulative ``talk_s``, so any span works, not only the
    daemon's ``recent_s``). Needs the whole span and ``min_talk_s`` of talk in it; clears
    when the share is back at or below ``share``."""

    role: str = "agent"
    share: float = 0.8
    over_s: float = 120.0
    min_talk_s: float = 10.0
    severity: str = "warning"
    scope = "side"

    def __post_init__(self) -> None:
        _check_role(self.role)
        if not 0.0 < self.share < 1.0 or self.over_s <= 0 or self.min_talk_s < 0:
            raise ValueError("share must be in (0, 1), over_s > 0 and min_talk_s >= 0")

    @property
    def name(self) -> str:
        return f"{self.role} talk share > {self.share:.0%} over {self.over_s:g} s"

    def new_state(self) -> _ShareState:
        return _ShareState()

    def update(self, state: _ShareState, call: str, side: SideObservation,
               obs: CallObservation) -> list[Alert]:
        total = sum(float(s.values.get("talk_s") or 0.0) for s in obs.sides)
        state.points.append((obs.t, float(side.values.get("talk_s") or 0.0), total))
        start = obs.t - self.over_s
        while len(state.points) > 1 and state.points[1][0] <= start:
            state.points.popleft()
        t0, mine0, all0 = state.points[0]
        talked = total - all0
        holds = False
        if t0 <= start + 0.5 and talked >= self.min_talk_s:  # the whole span, enough talk
            part = (state.points[-1][1] - mine0) / talked
            holds = part > self.share
        if not holds:
            state.fired = False
            return []
        if state.fired:
            return []
        state.fired = True
        return [Alert(rule=self.name, stream=side.stream, t=obs.t, wall=obs.wall,
                      emotion="talk share", severity=self.severity, call=call,
                      message=f"{side.role or 'side'} did {part:.0%} of the talking over the "
                              f"last {self.over_s:g} s")]

    def active(self, state: _ShareState) -> bool:
        return state.fired


@dataclass(frozen=True)
class DeadAir:
    """Nobody on the call has talked for ``min_s`` seconds (the call's ``silence_s``).
    Raised once per silence; clears when someone talks."""

    min_s: float = 15.0
    severity: str = "warning"
    scope = "call"

    def __post_init__(self) -> None:
        if self.min_s <= 0:
            raise ValueError("min_s must be > 0")

    @property
    def name(self) -> str:
        return f"dead air > {self.min_s:g} s"

    def new_state(self) -> _Held:
        return _Held()

    def update(self, state: _Held, call: str, obs: CallObservation) -> list[Alert]:
        silence = float(obs.values.get("silence_s") or 0.0)
        if silence < self.min_s:
            state.fired = False
            return []
        if state.fired:
            return []
        state.fired = True
        return [Alert(rule=self.name, stream=call, t=obs.t, wall=obs.wall, emotion="dead air",
                      severity=self.severity, call=call,
                      message=f"dead air: nobody has talked for {silence:.0f} s")]

    def active(self, state: _Held) -> bool:
        return state.fired


Rule = (SustainedHigh | SustainedFall | LoudnessRising | LouderThanUsual | TalkShareAbove
        | DeadAir)


class AlertEngine:
    """Runs every rule on every stream and keeps a bounded log of the alerts raised.

    Stream time going backwards (a daemon restart, a new replay on the same id) starts that
    stream's rule state afresh, so an old run never joins a new one.
    """

    def __init__(self, rules: Iterable[Rule] = (), log_size: int = 500) -> None:
        self.rules: list[Rule] = list(rules)
        self.log: deque[Alert] = deque(maxlen=log_size)
        self._state: dict[tuple[int, str], object] = {}
        self._last_t: dict[str, float] = {}

    def set_rules(self, rules: Iterable[Rule]) -> None:
        """Replace the rules; their state starts afresh (the log is kept)."""
        self.rules = list(rules)
        self._state.clear()

    def observe(self, stream: str, obs: Observation) -> list[Alert]:
        """Feed one window; returns the alerts it raised (also appended to the log)."""
        last = self._last_t.get(stream)
        if last is not None and obs.t_end < last - 1e-6:
            self.reset_stream(stream)
        self._last_t[stream] = obs.t_end
        raised: list[Alert] = []
        for i, rule in enumerate(self.rules):
            if getattr(rule, "scope", "stream") != "stream":
                continue  # a dynamics rule: observe_call
            key = (i, stream)
            if key not in self._state:
                self._state[key] = rule.new_state()
            raised.extend(rule.update(self._state[key], stream, obs))  # type: ignore[arg-type]
        self.log.extend(raised)
        return raised

    def observe_call(self, call: str, obs: CallObservation) -> list[Alert]:
        """Feed one dynamics message of the call keyed ``call``; returns the alerts it raised.
        Side rules keep state per side (by stream key), call rules per call. Call time going
        backwards starts the call's rule state afresh; its final message clears it."""
        keys = [call, *(s.stream for s in obs.sides)]
        last = self._last_t.get(call)
        if last is not None and obs.t < last - 1e-6:
            for key in keys:
                self._forget(key)
        self._last_t[call] = obs.t
        raised: list[Alert] = []
        for i, rule in enumerate(self.rules):
            scope = getattr(rule, "scope", "stream")
            if scope == "call":
                state = self._state.setdefault((i, call), rule.new_state())
                raised.extend(rule.update(state, call, obs))  # type: ignore[call-arg,arg-type]
            elif scope == "side":
                for side in obs.sides:
                    if _side_matches(rule.role, side):  # type: ignore[union-attr]
                        state = self._state.setdefault((i, side.stream), rule.new_state())
                        raised.extend(rule.update(state, call, side, obs))  # type: ignore
        self.log.extend(raised)
        if obs.final:
            for key in keys:
                self._forget(key, dynamics_only=True)
            self._last_t.pop(call, None)
        return raised

    def _forget(self, key: str, dynamics_only: bool = False) -> None:
        for k in [k for k in self._state if k[1] == key]:
            if not dynamics_only or getattr(self.rules[k[0]], "scope", "stream") != "stream":
                del self._state[k]

    def reset_stream(self, stream: str) -> None:
        for key in [k for k in self._state if k[1] == stream]:
            del self._state[key]
        self._last_t.pop(stream, None)

    def active(self) -> list[tuple[str, str]]:
        """(rule name, stream) pairs whose condition still holds: what the banner shows."""
        out = []
        for (i, stream), state in self._state.items():
            if i < len(self.rules) and self.rules[i].active(state):  # type: ignore[arg-type]
                out.append((self.rules[i].name, stream))
        return out
