"""Calls on a floor, as the wallboard shows them: one tile per live call, ordered by what a
supervisor should look at first. Pure Python (no Streamlit), so the definitions and the order
are unit-tested on their own.

A call is the set of streams whose ``info["call"]["id"]`` match (protocol v1: one stream per
side, ``role`` "caller" | "agent" | null); its conversation dynamics arrive once a second as
``dynamics`` messages, which the Store keeps per call (``Store.calls``). `CallBoard` turns the
Store's streams, their recent predictions, the calls' latest dynamics and the active alerts
(on a side's stream, or on the call itself for the dynamics rules) into `Tile` rows.

Definitions (also in docs/dashboard.md):

- **negative mass** of a voiced window: p(angry) + p(disgust) + p(fear) + p(sad).
- a side's **emotion**, confidence and current negative mass: of its probabilities averaged
  over ``tau_s`` seconds of speech (``dashboard.smoothing``; the sidebar's setting), the
  emotion marked uncertain below its daemon's model confidence floor; the sparkline and the
  trend use each window's own negative mass.
- **trend** of a side: the least-squares slope of its negative mass over its voiced windows
  whose end lies in the last ``TREND_WINDOW_S`` (30) seconds of that stream's time, in points
  per minute (+0.3/min: negative mass rising by 30 percentage points a minute); None with
  fewer than ``MIN_TREND_WINDOWS`` voiced windows spanning ``MIN_TREND_SPAN_S``.
- **order**: highest active alert severity first (critical > warning > info > none); then the
  caller's trend, most rising first (no trend last); then the caller's current negative mass;
  then the longer call; then the call key (a stable tie-break).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dashboard.smoothing import DEFAULT_TAU_S, shown
from dashboard.smoothing import latest as smoothed_latest
from dashboard.state import CallData, Prediction, Store, StreamData

NEGATIVE_EMOTIONS = ("angry", "disgust", "fear", "sad")
TREND_WINDOW_S = 30.0
MIN_TREND_WINDOWS = 3
MIN_TREND_SPAN_S = 2.0
TREND_DECIMALS = 4
#: How much of each side's history the tile's sparkline shows (stream time).
SPARK_WINDOW_S = 60.0
#: Rank of an alert's severity; anything unknown counts as a warning.
SEVERITY_RANK = {"critical": 3, "warning": 2, "info": 1}
DEFAULT_SEVERITY = "warning"
ROLES = ("caller", "agent")
_ZEROS = (0.0,) * len(NEGATIVE_EMOTIONS)


# ----------------------------------------------------------------------------- definitions

def negative_mass(probs: Mapping[str, float]) -> float:
    """The share of probability on the negative emotions (the classes the model has)."""
    return float(sum(map(probs.get, NEGATIVE_EMOTIONS, _ZEROS)))


def slope_per_min(points: Sequence[tuple[float, float]]) -> float | None:
    """Least-squares slope of (t seconds, value) points, per minute; None when too few points
    or too short a span to mean anything."""
    if len(points) < MIN_TREND_WINDOWS:
        return None
    ts = [t for t, _ in points]
    if max(ts) - min(ts) < MIN_TREND_SPAN_S:
        return None
    n = len(points)
    mt = sum(ts) / n
    mv = sum(v for _, v in points) / n
    sxx = sum((t - mt) ** 2 for t in ts)
    sxy = sum((t - mt) * (v - mv) for t, v in points)
    return 60.0 * sxy / sxx if sxx > 0 else None


def trend(predictions: Sequence[Prediction]) -> float | None:
    """A side's negative trend (see the module doc) from its predictions in time order."""
    if not predictions:
        return None
    horizon = predictions[-1].t_end - TREND_WINDOW_S
    return _trend([(p.t_end, negative_mass(p.probs)) for p in predictions
                   if p.voiced and p.t_end >= horizon])


def _trend(points: Sequence[tuple[float, float]]) -> float | None:
    slope = slope_per_min(points)
    # Rounded, so that flat lines tie (float noise would order them at random).
    return None if slope is None else round(slope, TREND_DECIMALS) + 0.0


def severity_rank(severity: str | None) -> int:
    return 0 if severity is None else SEVERITY_RANK.get(severity, SEVERITY_RANK["warning"])


# ----------------------------------------------------------------------------- rows

@dataclass(frozen=True)
class Side:
    """One side of a call as its tile shows it."""

    stream: str  # the Store's stream key
    role: str | None
    # emotion, its probability and the negative mass of the average at the latest voiced
    # window (dashboard.smoothing); label and confidence are None while the latest is unvoiced
    label: str | None
    confidence: float | None
    last_label: str | None  # shown dimmed in a pause
    negative: float | None
    trend_per_min: float | None
    spark: tuple[tuple[float, float | None], ...]  # (t_end, negative mass | None unvoiced)
    ended: bool
    uncertain: bool = False  # the average's confidence is below the model's floor
    speaking: bool | None = None  # from dynamics
    talk_share: float | None = None
    interruptions: int | None = None  # times this side cut in on the other
    loudness_dbfs: float | None = None
    loudness_trend_db_per_min: float | None = None


@dataclass(frozen=True)
class TileAlert:
    rule: str
    severity: str
    stream: str
    message: str


@dataclass(frozen=True)
class Tile:
    """One live call: both sides, the call's dynamics, its active alerts."""

    key: str  # unique across daemons; what ``?call=`` names
    call_id: str
    source: str
    streams: tuple[str, ...]  # the call's stream keys (the detail view shows these)
    caller: Side | None
    agent: Side | None
    duration_s: float
    alerts: tuple[TileAlert, ...]
    overlap_s: float | None = None
    overlaps: int | None = None
    silence_s: float | None = None
    dead_air: int | None = None
    dead_air_s: float | None = None
    longest_silence_s: float | None = None

    @property
    def severity(self) -> str | None:
        """The most severe active alert's severity (None: no alert)."""
        if not self.alerts:
            return None
        return max((a.severity for a in self.alerts), key=severity_rank)

    @property
    def caller_trend(self) -> float | None:
        return self.caller.trend_per_min if self.caller else None

    @property
    def dead_air_now(self) -> bool:
        """Nobody has talked for longer than the daemon's dead-air threshold."""
        return (self.silence_s is not None and self.dead_air_s is not None
                and self.silence_s >= self.dead_air_s)


def order_key(tile: Tile) -> tuple:
    """Sort key for `sorted`: most urgent first (see the module doc)."""
    tr = tile.caller_trend
    neg = tile.caller.negative if tile.caller and tile.caller.negative is not None else -1.0
    return (-severity_rank(tile.severity), tr is None, -(tr or 0.0), -neg, -tile.duration_s,
            tile.key)


def order(tiles: Iterable[Tile]) -> list[Tile]:
    return sorted(tiles, key=order_key)


# ----------------------------------------------------------------------------- the board

#: How much of each side's recent history the board keeps: the sparkline's and the trend's.
HISTORY_S = max(SPARK_WINDOW_S, TREND_WINDOW_S)


class CallBoard:
    """Builds the wallboard's tiles from a `Store` (one board per browser session).

    Between redraws it keeps each side's recent (t_end, negative mass) points, so a redraw
    works out the negative mass of the new windows only (two per stream a second) rather than
    of a minute of them: at 100 calls that was most of a redraw's cost.
    """

    def __init__(self) -> None:
        self._series: dict[str, _Series] = {}

    def tiles(self, store: Store, live_only: bool = True,
              tau_s: float = DEFAULT_TAU_S, floors: bool = True) -> list[Tile]:
        """Every live call's tile (every call's, with ``live_only=False``), in board order;
        each side's emotion averaged over ``tau_s`` seconds and, with ``floors``, uncertain
        below its model's confidence floor (``dashboard.smoothing``)."""
        with store.lock:
            active = _active_alerts(store)
            out = [_tile(key, source, call_id, members, store.calls.get(key), active,
                         self.points, tau_s, _floor(store, source) if floors else 0.0)
                   for key, (source, call_id, members) in calls_of(store).items()
                   if not (live_only and _ended(store.calls.get(key), members))]
            for gone in [k for k in self._series if k not in store.streams]:
                del self._series[gone]
        return order(out)

    def tile(self, store: Store, key: str, tau_s: float = DEFAULT_TAU_S,
             floors: bool = True) -> Tile | None:
        """The tile of the call ``key`` names (live or not), built alone; None if unknown."""
        with store.lock:
            found = calls_of(store).get(key)
            if found is None:
                return None
            source, call_id, members = found
            return _tile(key, source, call_id, members, store.calls.get(key),
                         _active_alerts(store), self.points, tau_s,
                         _floor(store, source) if floors else 0.0)

    def points(self, d: StreamData) -> list[tuple[float, float | None]]:
        """(t_end, negative mass | None when unvoiced) of the stream's windows over the last
        ``HISTORY_S`` seconds, oldest first; updated from the windows that came since."""
        series = self._series.get(d.key)
        if series is None or series.owner is not d:  # new, or the daemon started over
            series = self._series[d.key] = _Series(d)
        if not d.predictions:
            series.reset()
            return []
        newest = d.predictions[-1]
        if newest is not series.last:
            if series.last is not None and newest.seq <= series.last.seq:
                series.reset()  # the stream started over under the same id
            new = []
            for p in reversed(d.predictions):
                if p is series.last or p.t_end < newest.t_end - HISTORY_S:
                    break
                new.append(p)
            series.points.extend((p.t_end, negative_mass(p.probs) if p.voiced else None)
                                 for p in reversed(new))
            series.last = newest
        while series.points and series.points[0][0] < newest.t_end - HISTORY_S:
            series.points.popleft()
        return list(series.points)


@dataclass
class _Series:
    owner: StreamData
    last: Prediction | None = None
    points: deque[tuple[float, float | None]] = field(default_factory=deque)

    def reset(self) -> None:
        self.last = None
        self.points.clear()


def tiles(store: Store, live_only: bool = True, tau_s: float = DEFAULT_TAU_S,
          floors: bool = True) -> list[Tile]:
    """`CallBoard.tiles` of a board used once (tests, one-off reads)."""
    return CallBoard().tiles(store, live_only, tau_s, floors)


def tile(store: Store, key: str, tau_s: float = DEFAULT_TAU_S,
         floors: bool = True) -> Tile | None:
    """`CallBoard.tile` of a board used once."""
    return CallBoard().tile(store, key, tau_s, floors)


def _floor(store: Store, source: str) -> float:
    """The confidence floor of the model on ``source`` (its card in ``hello``; 0: none)."""
    state = store.sources.get(source)
    return state.min_confidence if state else 0.0


def calls_of(store: Store) -> dict[str, tuple[str, str, list[StreamData]]]:
    """Calls by key (the Store's call key: the call id, prefixed by the daemon when several):
    (daemon, call id, side streams). A stream is a side by its ``info["call"]``, or by being
    named in the call's dynamics. Call under the store's lock."""
    out: dict[str, tuple[str, str, list[StreamData]]] = {}
    for d in store.streams.values():
        call = d.info.get("call")
        if isinstance(call, Mapping) and call.get("id"):
            call_id = str(call["id"])
            out.setdefault(store.stream_key(d.source, call_id), (d.source, call_id, []))[2] \
                .append(d)
    for key, c in store.calls.items():
        members = out.setdefault(key, (c.source, c.call_id, []))[2]
        for stream_key in c.streams:
            d = store.streams.get(stream_key)
            if d is not None and all(d is not m for m in members):
                members.append(d)
    return out


def _ended(call: CallData | None, members: list[StreamData]) -> bool:
    """Over: its last dynamics said so, or every side's stream has ended."""
    return (call is not None and call.ended) or all(d.ended for d in members)


def _active_alerts(store: Store) -> dict[str, list[TileAlert]]:
    """Active alerts by the stream (or call) they were raised on, with their severity."""
    latest = {(a.rule, a.stream): a for a in store.alerts.log}
    severity = {r.name: getattr(r, "severity", DEFAULT_SEVERITY) for r in store.alerts.rules}
    out: dict[str, list[TileAlert]] = {}
    for rule, stream in store.alerts.active():
        a = latest.get((rule, stream))
        sev = a.severity if a is not None else severity.get(rule, DEFAULT_SEVERITY)
        out.setdefault(stream, []).append(
            TileAlert(rule, sev, stream, a.message if a is not None else rule))
    return out


def _roles(members: list[StreamData], dyn_roles: Mapping[str, Any]) -> dict[str, StreamData]:
    """caller/agent -> stream, by the stream's ``info["call"]["role"]`` or else its role in
    the dynamics; a side without a role fills the free slot (caller first); of two streams
    with one role (a call forked again), the running, most recent one."""
    ranked = sorted(members, key=lambda d: (d.ended is None, d.last_seen,
                                            d.info.get("started_wall", 0.0)))

    def role_of(d: StreamData) -> Any:
        return (d.info.get("call") or {}).get("role") or dyn_roles.get(d.stream_id)

    out: dict[str, StreamData] = {}
    for d in reversed(ranked):
        role = role_of(d)
        if role in ROLES and role not in out:
            out[role] = d
    for d in reversed(ranked):
        role = role_of(d)
        if role not in ROLES and all(d is not v for v in out.values()):
            free = next((r for r in ROLES if r not in out), None)
            if free is not None:
                out[free] = d
    return out


def _tile(key: str, source: str, call_id: str, members: list[StreamData],
          call: CallData | None, active: Mapping[str, list[TileAlert]],
          points: Callable[[StreamData], list[tuple[float, float | None]]],
          tau_s: float = DEFAULT_TAU_S, floor: float = 0.0) -> Tile:
    dyn = call.latest if call is not None and call.latest else None
    sides_dyn = {str(s.get("stream")): s for s in (dyn or {}).get("sides") or []}
    roles = _roles(members, {k: s.get("role") for k, s in sides_dyn.items()})
    summary = {role: _side(d, role, sides_dyn.get(d.stream_id), points(d), tau_s, floor)
               for role, d in roles.items()}
    ordered = [roles[r] for r in ROLES if r in roles]
    ordered += [d for d in members if all(d is not o for o in ordered)]
    alerts: list[TileAlert] = []
    for d in ordered:
        alerts.extend(active.get(d.key, ()))
    for name in {call_id, key}:  # rules on the call itself (dynamics)
        alerts.extend(active.get(name, ()))
    alerts.sort(key=lambda a: -severity_rank(a.severity))
    return Tile(
        key=key, call_id=call_id, source=source, streams=tuple(d.key for d in ordered),
        caller=summary.get("caller"), agent=summary.get("agent"),
        duration_s=_duration(members, dyn), alerts=tuple(alerts),
        overlap_s=_num(dyn, "overlap_s"), overlaps=_int(dyn, "overlaps"),
        silence_s=_num(dyn, "silence_s"), dead_air=_int(dyn, "dead_air"),
        dead_air_s=_num(dyn, "dead_air_s"), longest_silence_s=_num(dyn, "longest_silence_s"),
    )


def _side(d: StreamData, role: str, dyn: Mapping[str, Any] | None,
          points: list[tuple[float, float | None]], tau_s: float = DEFAULT_TAU_S,
          floor: float = 0.0) -> Side:
    latest = d.predictions[-1] if d.predictions else None
    avg = smoothed_latest(d.predictions, tau_s)
    now = shown(avg, floor)
    speaking = latest is not None and latest.voiced and now is not None
    horizon = latest.t_end - TREND_WINDOW_S if latest else 0.0
    return Side(
        stream=d.key, role=role,
        label=now.label if speaking else None,
        confidence=now.confidence if speaking else None,
        last_label=now.label if now else None,
        negative=negative_mass(avg) if avg else None,
        uncertain=bool(now and now.uncertain),
        trend_per_min=_trend([(t, v) for t, v in points if v is not None and t >= horizon]),
        spark=tuple(points), ended=d.ended is not None,
        speaking=dyn.get("speaking") if dyn else None,
        talk_share=_num(dyn, "talk_share"), interruptions=_int(dyn, "interruptions"),
        loudness_dbfs=_num(dyn, "loudness_dbfs"),
        loudness_trend_db_per_min=_num(dyn, "loudness_trend_db_per_min"),
    )


def _duration(members: list[StreamData], dyn: Mapping[str, Any] | None) -> float:
    """Stream time of the call so far (dynamics' t_s, or the latest window's end); wall time
    since the first side started while neither has arrived yet."""
    seen = [d.predictions[-1].t_end for d in members if d.predictions]
    if dyn is not None:
        seen.append(float(dyn.get("t_s") or 0.0))
    if seen:
        return max(seen)
    starts = [float(d.info.get("started_wall") or 0.0) for d in members]
    first = min((s for s in starts if s > 0), default=None)
    return max(0.0, time.time() - first) if first else 0.0


def _num(m: Mapping[str, Any] | None, name: str) -> float | None:
    v = (m or {}).get(name)
    return None if v is None else float(v)


def _int(m: Mapping[str, Any] | None, name: str) -> int | None:
    v = (m or {}).get(name)
    return None if v is None else int(v)
