"""The dashboard's data model: what it knows of each stream, fed one protocol message at a time.

`Store.apply(source, message)` is the only way data gets in, both for the live feed and for a
past session read back from its JSONL log, so live view and review cannot disagree. Every
per-stream history is a ``deque`` with a ``maxlen``: memory stays bounded however long a
session runs (the session counters are plain integers).
"""

from __future__ import annotations

import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dashboard.alerts import Alert, AlertEngine, CallObservation, Observation, SideObservation
from dashboard.smoothing import min_confidence

# About 10 minutes of history per stream at the default 0.5 s hop.
DEFAULT_MAX_PREDICTIONS = 1200
DEFAULT_MAX_EXPLANATIONS = 20
DEFAULT_MAX_EVENTS = 200
# Ended streams beyond this many are forgotten, oldest first (a day of replays stays bounded).
MAX_ENDED_STREAMS = 16
# A call's dynamics history: 10 minutes at one message a second. Ended calls beyond
# MAX_ENDED_CALLS are forgotten, oldest first.
DEFAULT_MAX_DYNAMICS = 600
MAX_ENDED_CALLS = 16


@dataclass(frozen=True)
class Prediction:
    """One window's result. ``probs`` is empty and ``label`` None when the window was unvoiced."""

    stream: str
    seq: int
    t_start: float
    t_end: float
    wall: float
    probs: Mapping[str, float]
    label: str | None
    confidence: float | None
    voiced: bool
    latency_ms: float | None = None


@dataclass
class StreamData:
    """Everything shown for one stream. ``key`` is unique across daemons; ``stream_id`` is the
    daemon's own id (what `subscribe`, `stop_stream` and the session log use)."""

    key: str
    source: str
    stream_id: str
    info: dict[str, Any] = field(default_factory=dict)
    predictions: deque[Prediction] = field(default_factory=deque)
    explanations: deque[dict[str, Any]] = field(default_factory=deque)
    counts: Counter[str] = field(default_factory=Counter)
    n_windows: int = 0
    n_voiced: int = 0
    gaps: int = 0  # windows missing from seq (lost on the way or dropped by the daemon)
    last_seq: int | None = None
    health: dict[str, Any] = field(default_factory=dict)
    ended: str | None = None
    last_seen: float = 0.0

    @property
    def label(self) -> str:
        """A human name: id, source file or device, and the channel's role when split."""
        parts = [self.key]
        source = str(self.info.get("source") or "").replace("\\", "/").rstrip("/")
        name = source.rsplit("/", 1)[-1][:40]
        if name and name.rsplit(".", 1)[0] != self.stream_id:
            parts.append(name)
        channel = self.info.get("channel")
        if channel is not None:
            role = CHANNEL_ROLES.get(int(channel), f"channel {channel}")
            parts.append(f"ch {channel} ({role})")
        return " · ".join(parts)

    @property
    def voiced_share(self) -> float | None:
        return self.n_voiced / self.n_windows if self.n_windows else None

    def latest_voiced(self) -> Prediction | None:
        for p in reversed(self.predictions):
            if p.voiced:
                return p
        return None


@dataclass
class CallData:
    """A call's conversation dynamics (``dynamics`` messages; docs/protocol.md). ``key`` is
    unique across daemons, like a stream's; ``streams`` are its sides' stream keys (in
    ``Store.streams``), in the messages' side order."""

    key: str
    source: str
    call_id: str
    latest: dict[str, Any] = field(default_factory=dict)  # the last dynamics message
    history: deque[dict[str, Any]] = field(default_factory=deque)  # bounded, oldest first
    streams: list[str] = field(default_factory=list)
    ended: bool = False  # its final message came
    last_seen: float = 0.0


@dataclass
class SourceState:
    """One daemon connection as the user sees it."""

    url: str
    state: str = "idle"  # idle | connecting | connected | retrying | closed
    detail: str = ""
    hello: dict[str, Any] | None = None
    connected_since: float | None = None
    attempts: int = 0
    next_retry_at: float | None = None
    clients: int | None = None
    last_message_at: float | None = None

    @property
    def min_confidence(self) -> float:
        """The confidence floor of the model this daemon serves (its card; 0: none)."""
        return min_confidence((self.hello or {}).get("model"))


class Store:
    """Thread-safe container of sources, streams, alerts and recent events.

    The feed thread calls `apply`; the app reads under `lock` (or copies with `snapshot`).
    """

    def __init__(
        self,
        max_predictions: int = DEFAULT_MAX_PREDICTIONS,
        max_explanations: int = DEFAULT_MAX_EXPLANATIONS,
        alerts: AlertEngine | None = None,
    ) -> None:
        self.max_predictions = max_predictions
        self.max_explanations = max_explanations
        self.alerts = alerts if alerts is not None else AlertEngine()
        self.lock = threading.RLock()
        self.sources: dict[str, SourceState] = {}
        self.streams: dict[str, StreamData] = {}
        self.events: deque[tuple[float, str, str]] = deque(maxlen=DEFAULT_MAX_EVENTS)
        self.messages = 0
        self.rejected = 0
        # Replies to this dashboard's own requests, by request id (bounded).
        self.replies: OrderedDict[str, dict[str, Any]] = OrderedDict()
        # Calls' conversation dynamics, by call key (see CallData and `call_of`).
        self.calls: dict[str, CallData] = {}

    # -- keys --------------------------------------------------------------------------------
    def stream_key(self, source: str, stream_id: str) -> str:
        """The stream id alone while one daemon is watched; prefixed by the daemon otherwise."""
        others = [s for s in self.sources if s != source]
        return f"{_short(source)} / {stream_id}" if others else str(stream_id)

    def _stream(self, source: str, stream_id: str) -> StreamData:
        for data in self.streams.values():
            if data.source == source and data.stream_id == stream_id:
                return data
        ended = sorted((d for d in self.streams.values() if d.ended), key=lambda d: d.last_seen)
        for old in ended[:max(0, len(ended) - MAX_ENDED_STREAMS + 1)]:
            del self.streams[old.key]
            self.alerts.reset_stream(old.key)
        key = self.stream_key(source, stream_id)
        data = StreamData(
            key=key, source=source, stream_id=stream_id,
            predictions=deque(maxlen=self.max_predictions),
            explanations=deque(maxlen=self.max_explanations),
        )
        self.streams[key] = data
        return data

    def source(self, url: str) -> SourceState:
        with self.lock:
            if url not in self.sources:
                self.sources[url] = SourceState(url)
            return self.sources[url]

    def event(self, level: str, text: str) -> None:
        with self.lock:
            self.events.append((time.time(), level, text))

    # -- ingest ------------------------------------------------------------------------------
    def apply(self, source: str, msg: Mapping[str, Any]) -> list[Alert]:
        """Fold one (validated) protocol v1 message into the state; returns alerts it raised.

        Message types this dashboard has no use for (``ack``, ``pong``) are counted only.
        """
        kind = msg.get("type")
        with self.lock:
            self.messages += 1
            src = self.source(source)
            src.last_message_at = time.time()
            if kind == "prediction":
                return self._prediction(source, msg)
            if kind == "dynamics":
                return self._dynamics(source, msg)
            if kind == "explanation":
                self._stream(source, str(msg["stream"])).explanations.append(dict(msg))
            elif kind == "hello":
                old = (src.hello or {}).get("session_id")
                if old is not None and old != msg.get("session_id"):
                    self._new_session(source, str(msg.get("session_id")))
                src.hello = dict(msg)
                for info in msg.get("streams") or []:
                    self._stream_info(source, info)
            elif kind == "status":
                self._status(source, msg)
            if kind == "stream_started":
                data = self._stream_info(source, msg["stream"])
                self.events.append((time.time(), "info", f"{data.label}: stream started"))
            elif kind == "stream_ended":
                data = self._stream(source, str(msg["stream"]))
                data.ended = str(msg.get("reason") or "ended")
                data.info["state"] = "ended"
                self.events.append((time.time(), "warning" if data.ended == "error" else "info",
                                    f"{data.label}: stream ended ({data.ended})"))
            if kind in ("ack", "error", "stream_started") and msg.get("ref") is not None:
                # An `ack` and a `stream_started` may answer the same request; keep the first
                # answer unless an error follows it.
                ref = str(msg["ref"])
                if ref not in self.replies or kind == "error":
                    self.replies[ref] = dict(msg)
                while len(self.replies) > 100:
                    self.replies.popitem(last=False)
            if kind == "error":
                where = f" / {msg['stream']}" if msg.get("stream") else ""
                self.events.append((time.time(), "error", f"{_short(source)}{where}: "
                                    f"{msg.get('code', 'error')}: {msg.get('message', '')}"))
            return []

    def _new_session(self, source: str, session_id: str) -> None:
        """The daemon restarted: its streams start over (history, counts, alert runs)."""
        for key, data in list(self.streams.items()):
            if data.source != source:
                continue
            self.streams[key] = StreamData(
                key=key, source=source, stream_id=data.stream_id, info=data.info,
                predictions=deque(maxlen=self.max_predictions),
                explanations=deque(maxlen=self.max_explanations),
            )
            self.alerts.reset_stream(key)
        for key in [k for k, c in self.calls.items() if c.source == source]:
            self.alerts.reset_stream(key)
            del self.calls[key]
        self.events.append((time.time(), "warning",
                            f"{_short(source)}: daemon restarted (session {session_id})"))

    def _dynamics(self, source: str, msg: Mapping[str, Any]) -> list[Alert]:
        """A call's dynamics: kept per call (latest, bounded history, member streams) and
        run through the dynamics alert rules."""
        key = self.stream_key(source, str(msg["call"]))
        data = self.calls.get(key)
        if data is None:
            ended = sorted((c for c in self.calls.values() if c.ended),
                           key=lambda c: c.last_seen)
            for old in ended[:max(0, len(ended) - MAX_ENDED_CALLS + 1)]:
                del self.calls[old.key]
                self.alerts.reset_stream(old.key)
            data = self.calls[key] = CallData(key, source, str(msg["call"]),
                                              history=deque(maxlen=DEFAULT_MAX_DYNAMICS))
        sides = [(self._stream(source, str(s["stream"])).key, s) for s in msg["sides"]]
        data.latest = dict(msg)
        data.history.append(data.latest)
        data.streams = [k for k, _ in sides]
        data.ended = bool(msg.get("final"))
        data.last_seen = time.time()
        obs = CallObservation(
            t=float(msg["t_s"]), wall=float(msg["wall_time"]), final=data.ended,
            values={k: v for k, v in msg.items() if k != "sides"},
            sides=tuple(SideObservation(k, s.get("role"), dict(s)) for k, s in sides))
        return self.alerts.observe_call(key, obs)

    def call_of(self, key: str) -> str | None:
        """The call key of a call key or of one of its sides' stream keys; else None."""
        with self.lock:
            if key in self.calls:
                return key
            return next((c.key for c in self.calls.values() if key in c.streams), None)

    def _stream_info(self, source: str, info: Mapping[str, Any]) -> StreamData:
        data = self._stream(source, str(info["stream"]))
        data.info = dict(info)
        data.ended = None if info.get("state", "running") == "running" else "ended"
        return data

    def _prediction(self, source: str, msg: Mapping[str, Any]) -> list[Alert]:
        data = self._stream(source, str(msg["stream"]))
        voiced = bool(msg["voiced"])
        probs = dict(msg.get("probabilities") or {}) if voiced else {}
        seq = int(msg["seq"])
        pred = Prediction(
            stream=data.stream_id, seq=seq,
            t_start=float(msg["t_start"]), t_end=float(msg["t_end"]),
            wall=float(msg["wall_time"]), probs=probs,
            label=msg.get("label") if voiced else None,
            confidence=float(msg["confidence"]) if voiced else None,
            voiced=voiced,
            latency_ms=float(msg["latency_ms"]) if msg.get("latency_ms") is not None else None,
        )
        if data.last_seq is not None:
            if seq > data.last_seq + 1:
                data.gaps += seq - data.last_seq - 1
            elif seq <= data.last_seq:
                # The stream started over (daemon restarted under the same id).
                data.predictions.clear()
                data.explanations.clear()
        data.last_seq = seq
        data.predictions.append(pred)
        data.n_windows += 1
        data.last_seen = time.time()
        data.ended = None
        if voiced:
            data.n_voiced += 1
            if pred.label:
                data.counts[pred.label] += 1
        return self.alerts.observe(
            data.key, Observation(t_end=pred.t_end, voiced=voiced, probs=probs, wall=pred.wall)
        )

    def _status(self, source: str, msg: Mapping[str, Any]) -> None:
        src = self.source(source)
        src.clients = len(msg.get("clients") or [])
        for health in msg.get("streams") or []:
            data = self._stream(source, str(health["stream"]))
            data.health = dict(health)

    # -- reading -----------------------------------------------------------------------------
    def classes(self) -> list[str]:
        """The model's classes from the first `hello` (canonical order if none yet)."""
        with self.lock:
            for src in self.sources.values():
                card = (src.hello or {}).get("model") or {}
                if card.get("classes"):
                    return list(card["classes"])
        return list(CANONICAL_CLASSES)


#: Who is on which side of a call split by channel (``--split-channels``): the usual
#: call-centre recording puts the agent on the left channel.
CHANNEL_ROLES = {0: "agent", 1: "caller"}
CANONICAL_CLASSES = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")


def _short(url: str) -> str:
    return url.split("://", 1)[-1].rstrip("/")


@dataclass(frozen=True)
class StreamView:
    """A copy of one stream's state for drawing, taken under the lock in one go."""

    key: str
    label: str
    stream_id: str
    source: str
    info: dict[str, Any]
    predictions: list[Prediction]
    explanation: dict[str, Any] | None
    counts: dict[str, int]
    health: dict[str, Any]
    n_windows: int
    n_voiced: int
    gaps: int
    ended: str | None


@dataclass(frozen=True)
class View:
    """What one redraw shows. Pausing the dashboard keeps one of these while data flows on."""

    taken_at: float
    sources: list[SourceState]
    streams: dict[str, StreamView]
    classes: list[str]
    active_alerts: list[tuple[str, str]]
    alert_log: list[Alert]
    events: list[tuple[float, str, str]]
    calls: dict[str, CallView] = field(default_factory=dict)


@dataclass(frozen=True)
class CallView:
    """A copy of one call's dynamics for drawing: the latest message, its member streams'
    keys, and whether it has ended."""

    key: str
    call_id: str
    latest: dict[str, Any]
    streams: list[str]
    ended: bool


def snapshot(store: Store) -> View:
    """Copy what the app draws, so drawing happens outside the lock."""
    from copy import copy

    classes = store.classes()
    with store.lock:
        streams = {
            key: StreamView(
                key=key, label=d.label, stream_id=d.stream_id, source=d.source,
                info=dict(d.info), predictions=list(d.predictions),
                explanation=d.explanations[-1] if d.explanations else None,
                counts=dict(d.counts), health=dict(d.health), n_windows=d.n_windows,
                n_voiced=d.n_voiced, gaps=d.gaps, ended=d.ended,
            )
            for key, d in store.streams.items()
        }
        return View(
            taken_at=time.time(), sources=[copy(s) for s in store.sources.values()],
            streams=streams, classes=classes, active_alerts=store.alerts.active(),
            alert_log=list(store.alerts.log), events=list(store.events),
            calls={k: CallView(k, c.call_id, dict(c.latest), list(c.streams), c.ended)
                   for k, c in store.calls.items()},
        )
