"""Alert rules over a stream of emotion predictions: pure Python, so they are unit-tested
without Streamlit and behave the same live and when a past session is reviewed.

Time is stream time (the windows' ``t_end``), not wall time, so a replay at 10x speed raises
the same alerts as the live call did. Unvoiced windows carry no probabilities: they neither
raise nor clear an alert, but a long silence breaks a "sustained" run.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

__all__ = [
    "Alert",
    "AlertEngine",
    "Observation",
    "SustainedFall",
    "SustainedHigh",
]


@dataclass(frozen=True)
class Observation:
    """What a rule sees of one window: its end in stream time, voicing and probabilities."""

    t_end: float
    voiced: bool
    probs: Mapping[str, float]
    wall: float = 0.0


@dataclass(frozen=True)
class Alert:
    """One raised alert: which rule, on which stream, when (stream and wall time), and why."""

    rule: str
    stream: str
    t: float
    wall: float
    emotion: str
    message: str
    severity: str = "warning"


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


Rule = SustainedHigh | SustainedFall


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
            key = (i, stream)
            if key not in self._state:
                self._state[key] = rule.new_state()
            raised.extend(rule.update(self._state[key], stream, obs))  # type: ignore[arg-type]
        self.log.extend(raised)
        return raised

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
