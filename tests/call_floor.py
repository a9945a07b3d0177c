"""A fake call floor for the wallboard's tests and benchmark: N live two-sided calls spoken in
protocol v1, built with `streamer.protocol`'s builders (valid by construction), torch-free.

`FloorDaemon` is a small websockets server in a thread that behaves like a daemon holding N
pushed calls: a ``hello`` listing every stream (kind "call", ``info["call"]`` with id, track,
role, format, params), then in real time a prediction per stream every ``hop_s`` (0.5 s), a
``dynamics`` message per call and one ``status`` every second. It is not the real daemon:
no audio and no model; the emotions follow a script per call (`CallScript`):

- every ``ANGRY_EVERY``-th call has an angry caller who talks almost all the time (the default
  "angry or fear >= 60 % for 3 s" alert fires, critical);
- the others' caller negativity drifts on a slow sine with its own phase, so trends differ and
  the board's order changes slowly, as on a real floor;
- every ``DEAD_AIR_EVERY``-th call goes quiet for ``DEAD_AIR_QUIET_S`` each minute.
"""

from __future__ import annotations

import asyncio
import math
import random
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from websockets.exceptions import ConnectionClosed

from streamer import protocol
from tests.ws_thread import ThreadedServer

CLASSES = ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]
CARD = {"name": "fake-floor", "classes": CLASSES, "sample_rate": 16000, "window_s": 3.0}
HOP_S = 0.5
DYNAMICS_EVERY_S = 1.0
WINDOW_S = 3.0
DEAD_AIR_S = 10.0
ANGRY_EVERY = 10
DEAD_AIR_EVERY = 7
DEAD_AIR_QUIET_S = 20.0
DRIFT_PERIOD_S = 180.0
ANGRY_P = 0.85
# How negative mass splits over the negative classes, and the rest over the others.
NEG_SPLIT = {"angry": 0.45, "sad": 0.25, "fear": 0.15, "disgust": 0.15}
POS_SPLIT = {"neutral": 0.55, "happy": 0.35, "surprise": 0.10}
AGENTS = ["Ana", "Ben", "Chloé", "Dev", "Eli", "Femi", "Gus", "Hana", "Ivo", "Jun"]
QUEUES = ["billing", "support", "sales", "retention"]


def call_id(i: int) -> str:
    return f"CA{i:03d}"


def stream_ids(i: int) -> tuple[str, str]:
    """(caller stream, agent stream) of call ``i``."""
    return f"{call_id(i)}-caller", f"{call_id(i)}-agent"


def probabilities(negative: float) -> list[float]:
    """Class probabilities (in CLASSES order) with this negative mass."""
    neg = min(0.98, max(0.02, negative))
    out = {c: neg * w for c, w in NEG_SPLIT.items()}
    out.update({c: (1.0 - neg) * w for c, w in POS_SPLIT.items()})
    return [out[c] for c in CLASSES]


def angry_probabilities(p: float = ANGRY_P) -> list[float]:
    """Anger at ``p``, the rest spread evenly: what the default high-emotion alert catches."""
    rest = (1.0 - p) / (len(CLASSES) - 1)
    return [p if c == "angry" else rest for c in CLASSES]


def call_infos(i: int, started_wall: float) -> list[dict]:
    """The two stream infos of call ``i`` (caller = inbound track, agent = outbound)."""
    params = {"agent": AGENTS[i % len(AGENTS)], "queue": QUEUES[i % len(QUEUES)]}
    caller, agent = stream_ids(i)
    return [protocol.stream_info(
        sid, "call", f"call {call_id(i)} {track}", started_wall,
        call={"id": call_id(i), "track": track, "role": role,
              "format": "audio/x-mulaw;rate=8000", "params": params})
        for sid, track, role in ((caller, "inbound", "caller"), (agent, "outbound", "agent"))]


@dataclass
class CallScript:
    """Who talks when and how negative they sound, for one call (deterministic per seed)."""

    index: int
    offset_s: float  # stream time at which the floor's clock starts (calls began earlier)
    rng: random.Random
    angry: bool = False
    dead_air: bool = False
    phase: float = 0.0
    turn_end: float = 0.0
    caller_turn: bool = True
    talk: dict[str, float] = field(default_factory=lambda: {"caller": 0.0, "agent": 0.0})
    interruptions: dict[str, int] = field(default_factory=lambda: {"caller": 0, "agent": 0})
    overlap_s: float = 0.0
    overlaps: int = 0
    silence_s: float = 0.0
    dead_airs: int = 0
    longest_silence_s: float = 0.0

    @classmethod
    def make(cls, index: int, seed: int = 0) -> CallScript:
        rng = random.Random(seed * 1000 + index)
        return cls(index=index, offset_s=20.0 + rng.uniform(0, 600), rng=rng,
                   angry=index % ANGRY_EVERY == 0, dead_air=index % DEAD_AIR_EVERY == 3,
                   phase=rng.uniform(0, 2 * math.pi))

    def quiet(self, t: float) -> bool:
        return self.dead_air and (t % 60.0) < DEAD_AIR_QUIET_S

    def voiced(self, t: float) -> tuple[bool, bool]:
        """(caller voiced, agent voiced) for the window ending at stream time ``t``."""
        if self.quiet(t):
            return False, False
        if self.angry:  # barely lets the agent in: the alert holds
            return int(t / HOP_S) % 10 != 0, int(t / HOP_S) % 10 == 0
        if t >= self.turn_end:
            self.caller_turn = not self.caller_turn
            self.turn_end = t + self.rng.uniform(3.0, 9.0)
        return self.caller_turn, not self.caller_turn

    def negative(self, role: str, t: float) -> float:
        if role == "agent":
            return 0.15 + 0.05 * math.sin(t / 7.0 + self.index)
        wobble = 0.01 * math.sin(t * 1.7 + self.index)
        return 0.45 + 0.35 * math.sin(2 * math.pi * t / DRIFT_PERIOD_S + self.phase) + wobble

    def dynamics(self, t: float, caller_on: bool, agent_on: bool, dt: float) -> dict:
        """One second's dynamics message (counters move with the script)."""
        for role, on in (("caller", caller_on), ("agent", agent_on)):
            if on:
                self.talk[role] += dt
        if caller_on and agent_on:
            self.overlap_s += dt
        if not caller_on and not agent_on:
            self.silence_s += dt
            self.longest_silence_s = max(self.longest_silence_s, self.silence_s)
            if self.silence_s >= DEAD_AIR_S and self.silence_s - dt < DEAD_AIR_S:
                self.dead_airs += 1
        else:
            self.silence_s = 0.0
        if self.rng.random() < 0.02:
            who = "caller" if self.rng.random() < (0.8 if self.angry else 0.4) else "agent"
            self.interruptions[who] += 1
            self.overlaps += 1
        total = self.talk["caller"] + self.talk["agent"]
        caller, agent = stream_ids(self.index)
        sides = [{
            "stream": sid, "role": role, "speaking": on, "talk_s": round(self.talk[role], 2),
            "talk_share": round(self.talk[role] / total, 3) if total else None,
            "interruptions": self.interruptions[role],
            "loudness_dbfs": (-18.0 if self.angry and role == "caller" else -26.0) if on
            else None,
        } for sid, role, on in ((caller, "caller", caller_on), (agent, "agent", agent_on))]
        return protocol.dynamics(call_id(self.index), t, sides, self.overlap_s, self.overlaps,
                                 self.silence_s, self.dead_airs, DEAD_AIR_S,
                                 self.longest_silence_s, interval_s=dt)


class Floor:
    """The messages of N calls over time, without any network (tests call `tick`)."""

    def __init__(self, n_calls: int, seed: int = 0, wall0: float | None = None) -> None:
        self.wall0 = time.time() if wall0 is None else wall0
        self.calls = [CallScript.make(i, seed) for i in range(n_calls)]
        self.seq = 0
        self.elapsed = 0.0

    def hello(self, session_id: str = "floor-1") -> dict:
        infos = [info for c in self.calls
                 for info in call_infos(c.index, self.wall0 - c.offset_s)]
        return protocol.hello(session_id, CARD, infos, HOP_S, 0,
                              {"max_message_bytes": 65536, "max_upload_bytes": 2**20,
                               "queue_size": 1024}, client_id="c1")

    def tick(self) -> list[dict]:
        """The messages of the next ``HOP_S`` of time: every stream's window; every second,
        each call's dynamics and one status."""
        self.elapsed += HOP_S
        wall = self.wall0 + self.elapsed
        out: list[dict] = []
        second = self.seq % round(DYNAMICS_EVERY_S / HOP_S) == 1
        for c in self.calls:
            t = c.offset_s + self.elapsed
            on = c.voiced(t)
            for sid, role, voiced in zip(stream_ids(c.index), ("caller", "agent"), on,
                                         strict=True):
                if voiced:
                    probs = (angry_probabilities() if c.angry and role == "caller"
                             else probabilities(c.negative(role, t)))
                    out.append(protocol.prediction(sid, self.seq, t - WINDOW_S, t, wall,
                                                   probs, 8.0, CLASSES))
                else:
                    out.append(protocol.prediction(sid, self.seq, t - WINDOW_S, t, wall, None,
                                                   2.0, voiced=False))
            if second:
                out.append(c.dynamics(t, *on, dt=DYNAMICS_EVERY_S))
        if second:
            out.append(self.status())
        self.seq += 1
        return out

    def status(self) -> dict:
        windows = self.seq + 1
        streams = [protocol.stream_status(sid, "running", 0.05, c.offset_s + self.elapsed,
                                          windows, windows // 2, 0)
                   for c in self.calls for sid in stream_ids(c.index)]
        return protocol.status(streams, [{"client_id": "c1", "queued": 0,
                                          "dropped_messages": 0}], self.elapsed)


class FloorDaemon(ThreadedServer):
    """`Floor` served over a websocket in real time (one tick every ``HOP_S``) to every client
    that connects. A new client first gets the last ``history_ticks`` ticks, then every tick
    after them with no gap (its own queue, filled in the same loop step as the snapshot), as a
    daemon's clients see a continuous stream. Each message is encoded once."""

    thread_name = "floor-daemon"

    def __init__(self, n_calls: int, port: int = 0, seed: int = 0,
                 history_ticks: int = 0) -> None:
        self.floor = Floor(n_calls, seed, wall0=time.time() - history_ticks * HOP_S)
        super().__init__(port)
        self.history: deque[list[str]] = deque(maxlen=max(1, history_ticks))
        for _ in range(history_ticks):
            self.history.append([protocol.encode(m) for m in self.floor.tick()])
        self.sent = 0
        self._queues: set[asyncio.Queue[str]] = set()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def _serving(self, ready: threading.Event) -> None:
        ticker = asyncio.ensure_future(self._tick())
        try:
            await super()._serving(ready)
        finally:
            ticker.cancel()

    async def _handler(self, ws) -> None:  # noqa: ANN001 - websockets' connection
        queue: asyncio.Queue[str] = asyncio.Queue()
        queue.put_nowait(protocol.encode(self.floor.hello()))
        for texts in self.history:
            for text in texts:
                queue.put_nowait(text)
        self._queues.add(queue)
        sender = asyncio.ensure_future(self._send(ws, queue))
        try:
            async for _ in ws:  # subscribe, pings: nothing to answer for a wallboard
                pass
        except ConnectionClosed:
            pass
        finally:
            self._queues.discard(queue)
            sender.cancel()

    @staticmethod
    async def _send(ws, queue: asyncio.Queue[str]) -> None:  # noqa: ANN001
        try:
            while True:
                await ws.send(await queue.get())
        except ConnectionClosed:
            pass

    async def _tick(self) -> None:
        start = time.monotonic()
        n = 0
        while True:
            n += 1
            await asyncio.sleep(max(0.0, start + n * HOP_S - time.monotonic()))
            texts = [protocol.encode(m) for m in self.floor.tick()]
            self.history.append(texts)
            for queue in self._queues:
                for text in texts:
                    queue.put_nowait(text)
            self.sent += len(texts)
