"""Call audio pushed to the daemon: the ``/ingest`` websocket, one connection per call.

A phone platform (Twilio, Telnyx, SignalWire: Media Streams) or a script (the raw variant) opens
``ws://HOST:PORT/ingest``; after a ``start`` the call becomes a :class:`CallSource` with one
stream per track (inbound = caller, outbound = agent), run by the daemon like any other source.
The wire formats are parsed in ``streamer/media_streams.py``; this module owns the connection:
the token, the limits, and how a call ends.

- **Token, always** (call audio is personal data), even on loopback: ``Authorization: Bearer``,
  ``?token=``, or, because Twilio's ``<Stream url>`` cannot carry headers, the ``start``'s
  ``customParameters.token``; then nothing is accepted until a start with the right token
  arrives within ``start_timeout_s``. No token configured: handshakes are refused (HTTP 403).
- **Limits**: ``max_calls`` concurrent calls (close 1013), ``waiting_limit`` connections not
  yet started (HTTP 503; max(16, ``max_calls``) unless set), messages over
  ``max_message_bytes`` (1009), a sender more than ``max_ahead_s`` of audio ahead of the wall
  clock since its handshake (1008), no media for ``idle_s`` (1008). A bounded queue of
  chunks per call; backpressure stops reading the socket.
- **Nothing received is lost**: whatever ends a call (its stop, a bad message, a limit, a
  dropped connection, the daemon stopping the stream), the audio received so far is resampled,
  windowed and inferred, and each stream ends with ``stream_ended`` (``eof``, ``error`` with an
  ``error`` message saying why, ``stopped`` or ``shutdown``).

The source is fed from the event loop (``CallSource.chunks``): no thread per call or track.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hmac
import logging
import secrets
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import soxr
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from streamer import media_streams as ms
from streamer.replay import RequestError
from streamer.server import given_token, reject
from streamer.sources import Chunk, SampleRepair, Source, SourceError

log = logging.getLogger("streamer.ingest")

MAX_CALLS = 32
IDLE_S = 10.0  # no media this long: the sender is gone
# How far a sender may run ahead of the wall clock, in seconds of audio, counted from its
# handshake (before which it cannot have sent anything, so a daemon that reads late, busy
# starting 50 calls at once, never makes a real-time sender look early). A platform forwards a
# live call in real time (jitter and a reconnect burst stay well under it); a sender beyond it
# would fill the daemon's queues faster than a call can. What a sender can save up by waiting
# before its first media is bounded by start_timeout_s + idle_s.
MAX_AHEAD_S = 2.0
START_TIMEOUT_S = 5.0  # from the handshake to a start (with the token, when none came before)
# The largest message: a raw binary frame of 0.5 s of 48-kHz stereo f32 (384 KB/s) fits; a
# Media Streams message is ~250 bytes per 20 ms.
MAX_MESSAGE_BYTES = 256 * 1024
# Connections that have not sent their start yet (Twilio's carry their token in the start, so
# every call passes through here): at least this many, and at least max_calls, so a floor whose
# calls all connect at once (a shift starting) is not turned away; an unauthenticated flood
# still holds at most that many sockets, each for start_timeout_s.
MAX_WAITING = 16
# Decoded audio goes to the daemon in chunks of this much per track: per-chunk work (windowing,
# VAD feed, observers) runs 10 times a second per track, not 50 (one per 20-ms media message).
# Window hops (0.5 s) fall on chunk boundaries, so no window waits for it.
COALESCE_S = 0.1
QUEUE_CHUNKS = 64  # chunks per call waiting for the daemon (6.4 s of two tracks)
STOP_POLL_S = 0.25  # how often a call looks at the daemon's stop event (stop_stream, shutdown)


@dataclass
class IngestConfig:
    """The ingest endpoint's settings (``emotion-monitor stream --ingest-*``)."""

    token: str | None = None  # a separate ingest token; None: the daemon's --token
    max_calls: int = MAX_CALLS
    idle_s: float = IDLE_S
    max_ahead_s: float = MAX_AHEAD_S
    start_timeout_s: float = START_TIMEOUT_S
    max_message_bytes: int = MAX_MESSAGE_BYTES
    max_waiting: int | None = None  # None: max(MAX_WAITING, max_calls)
    queue_chunks: int = QUEUE_CHUNKS
    coalesce_s: float = COALESCE_S

    @property
    def waiting_limit(self) -> int:
        """Connections that may wait for their start at once."""
        return self.max_waiting if self.max_waiting is not None else max(MAX_WAITING,
                                                                          self.max_calls)


class CallHost(Protocol):
    """What ingest needs from the daemon (``streamer.daemon.Daemon``)."""

    model: Any  # .sample_rate

    def _stream_name(self, base: str) -> str: ...

    async def _start_source(self, src: Any, kind: str | None = None, ref: Any = None,
                            timeout: float | None = -1.0) -> list[str]: ...


class _End:
    def __init__(self, error: SourceError | None) -> None:
        self.error = error


class CallSource(Source):
    """One call's tracks as streams, fed from the event loop by its connection's handler.

    ``push`` decodes nothing itself: it takes float samples at the sender's rate, holds them
    until ``coalesce_s`` of a track is there, resamples them (``soxr.ResampleStream``, one per
    track) and queues a :class:`Chunk`. ``finish`` flushes every track and ends the source;
    the daemon iterates ``chunks(stop)`` instead of running a thread (``sources.source_chunks``).
    """

    kind = "call"
    pushed = True  # nothing to open in a thread; chunks come from chunks(stop)

    def __init__(self, start: ms.CallStart, call_id: str, names: list[str], sample_rate: int,
                 config: IngestConfig, label: str) -> None:
        self.start, self.call_id, self.names = start, call_id, names
        self.name, self.sample_rate, self.label = names[0], sample_rate, label
        rate = start.format.rate
        self.tracks = [t for t, _ in start.tracks]
        self._rs = [soxr.ResampleStream(rate, sample_rate, 1, dtype="float32")
                    if rate != sample_rate else None for _ in names]
        self._held: list[list[np.ndarray]] = [[] for _ in names]
        self._held_n = [0] * len(names)
        self._block = max(1, int(config.coalesce_s * rate))
        self._queue: asyncio.Queue[Chunk | _End] = asyncio.Queue(config.queue_chunks)
        self.repair = SampleRepair()
        self.received = [0] * len(names)  # frames at the sender's rate
        self.counts: collections.Counter[str] = collections.Counter()
        self.finished = False
        self.consumer_done = False
        self.on_stop: Callable[[], None] | None = None  # the daemon stopped the stream

    @property
    def stream_ids(self) -> list[str]:
        return list(self.names)

    def describe(self) -> list[dict[str, Any]]:
        raw = self.start.layout == "raw"
        return [{"id": sid, "kind": "call", "source": self.label,
                 "channel": i if raw and len(self.names) > 1 else None,
                 "call": {"id": self.call_id, "track": track, "role": role,
                          "format": self.start.format.describe(),
                          "params": dict(self.start.params)}}
                for i, (sid, (track, role)) in enumerate(zip(self.names, self.start.tracks,
                                                              strict=True))]

    def stats(self) -> dict[str, Any]:
        return {**self.counts, **self.repair.stats()}

    def run(self, emit: Any, stop: threading.Event) -> None:
        raise TypeError("a call is pushed from the event loop: iterate chunks(stop)")

    def track_index(self, track: str) -> int | None:
        return self.tracks.index(track) if track in self.tracks else None

    async def push(self, index: int, samples: np.ndarray) -> None:
        """Float32 mono samples of track ``index`` at the sender's rate, as received."""
        if samples.size == 0:
            return
        if self.start.format.name == "f32le":
            samples = self.repair(samples)
        self._held[index].append(samples)
        self._held_n[index] += samples.size
        self.received[index] += samples.size
        if self._held_n[index] >= self._block:
            await self._emit(index, last=False)

    async def _emit(self, index: int, last: bool) -> None:
        held = self._held[index]
        x = held[0] if len(held) == 1 else np.concatenate(held) if held \
            else np.zeros(0, np.float32)
        self._held[index], self._held_n[index] = [], 0
        rs = self._rs[index]
        out = rs.resample_chunk(x.reshape(-1, 1), last=last).reshape(-1) if rs is not None \
            else x
        if out.size and not self.consumer_done:
            chunk = Chunk(self.names[index], np.ascontiguousarray(out, dtype=np.float32),
                          time.time(), time.perf_counter())
            await self._queue.put(chunk)  # backpressure: the handler stops reading

    async def finish(self, error: SourceError | None) -> None:
        """Flush every track (held samples, the resampler's tail) and end the source; once."""
        if self.finished:
            return
        self.finished = True
        try:
            for i in range(len(self.names)):
                if self._held_n[i] or self._rs[i] is not None:
                    await self._emit(i, last=True)
        except Exception as exc:  # a bug in the flush must not leave the streams running
            log.exception("call %s: flush failed", self.call_id)
            error = error or SourceError(f"call {self.call_id}: flush failed ({exc})")
        if not self.consumer_done:
            await self._queue.put(_End(error))

    async def chunks(self, stop: threading.Event) -> AsyncIterator[Chunk]:
        """The daemon's side: chunks until ``finish``; a ``SourceError`` given to ``finish``
        is raised after the chunks before it. The daemon's ``stop`` asks the handler to end
        the call (it finishes the source, so nothing queued is lost)."""
        watcher = asyncio.create_task(self._watch(stop), name=f"stop-{self.name}")
        try:
            while True:
                item = await self._queue.get()
                if isinstance(item, _End):
                    if item.error is not None:
                        raise item.error
                    return
                yield item
        finally:
            self.consumer_done = True
            watcher.cancel()
            while not self._queue.empty():  # wake a producer blocked on a full queue
                self._queue.get_nowait()

    async def _watch(self, stop: threading.Event) -> None:
        while not stop.is_set():
            await asyncio.sleep(STOP_POLL_S)
        if self.on_stop is not None:
            self.on_stop()


class RateGuard:
    """Refuses a sender more than ``max_ahead_s`` of audio ahead of the wall clock, per track,
    counted from ``t0``: the connection's handshake (see ``MAX_AHEAD_S``)."""

    def __init__(self, rate: int, max_ahead_s: float, t0: float) -> None:
        self.rate, self.max_ahead_s, self.t0 = rate, max_ahead_s, t0
        self.frames: collections.Counter[int] = collections.Counter()

    def add(self, track: int, frames: int, now: float) -> None:
        self.frames[track] += frames
        ahead = self.frames[track] / self.rate - (now - self.t0)
        if ahead > self.max_ahead_s:
            raise ms.IngestError(ms.CLOSE_POLICY, f"faster than real time: {ahead:.1f} s of "
                                 f"audio ahead of the clock (max {self.max_ahead_s:g} s)")


class _Stop(Exception):
    """The connection ends without error (the sender's stop, or the daemon's)."""


class _Call:
    """One ingest connection, from its handshake to its close."""

    def __init__(self, hub: IngestHub, ws: ServerConnection, authed: bool) -> None:
        self.hub, self.ws, self.authed = hub, ws, authed
        self.cfg = hub.config
        loop = asyncio.get_running_loop()
        # when the handshake was checked (before the 101 went out); now, for a connection the
        # hub's check did not see (tests that call serve directly)
        self.connected_at = hub.handshakes.pop(ws, None) or loop.time()
        self.start_deadline = loop.time() + self.cfg.start_timeout_s
        self.last_media = 0.0
        self.source: CallSource | None = None
        self.guard: RateGuard | None = None
        self.stop_requested = False
        self._timeout: asyncio.Timeout | None = None
        self.ignored = 0

    async def serve(self) -> None:
        code, reason, error = ms.CLOSE_NORMAL, "stop received", None
        try:
            while True:
                raw = await self._recv()
                if self.source is None:
                    await self._before_start(raw)
                else:
                    await self._on_message(raw)
        except _Stop:
            if self.stop_requested:  # the daemon's reason: "stopped" (stop_stream), "shutdown"
                why = getattr(self.hub.host, "_stop_reason", {}).get(id(self.source))
                code, reason = ms.CLOSE_GOING_AWAY, ("daemon shutting down" if why == "shutdown"
                                                     else "stream stopped by the daemon")
        except ms.IngestError as exc:
            code, reason, error = exc.code, exc.reason, exc.reason
        except ConnectionClosed as exc:  # the sender closed, or the connection dropped
            if self.source is not None:
                clean = exc.rcvd is not None and exc.rcvd.code in (ms.CLOSE_NORMAL,
                                                                   ms.CLOSE_GOING_AWAY)
                await self.source.finish(None if clean else SourceError(
                    f"call {self.source.call_id}: connection closed before stop "
                    f"({_closed_how(exc)})"))
            return
        except Exception as exc:  # a bug: this call ends, the daemon and other calls go on
            log.exception("ingest connection failed")
            code, reason = ms.CLOSE_INTERNAL, f"internal error ({type(exc).__name__})"
            error = reason
        if self.source is not None:
            await self.source.finish(SourceError(
                f"call {self.source.call_id}: closed by the daemon ({code}): {error}")
                if error else None)
        with contextlib.suppress(ConnectionClosed):
            await self.ws.close(code, ms.close_reason(reason))

    def wake(self) -> None:
        """The daemon stopped this call's streams (stop_stream, shutdown): end it now."""
        self.stop_requested = True
        if self._timeout is not None:
            self._timeout.reschedule(asyncio.get_running_loop().time())

    async def _recv(self) -> str | bytes:
        if self.stop_requested:
            raise _Stop
        deadline = self.start_deadline if self.source is None \
            else self.last_media + self.cfg.idle_s
        try:
            async with asyncio.timeout_at(deadline) as self._timeout:
                raw = await self.ws.recv()
        except TimeoutError:
            if self.stop_requested:
                raise _Stop from None
            if self.source is None:
                raise ms.IngestError(ms.CLOSE_POLICY, f"no start within "
                                     f"{self.cfg.start_timeout_s:g} s" + (
                                         "" if self.authed else " (with the token)")) from None
            raise ms.IngestError(ms.CLOSE_POLICY,
                                 f"idle: no media for {self.cfg.idle_s:g} s") from None
        finally:
            self._timeout = None
        if len(raw) > self.cfg.max_message_bytes:  # the websocket layer's own check comes first
            raise ms.IngestError(ms.CLOSE_TOO_BIG, f"message of {len(raw)} bytes (max "
                                 f"{self.cfg.max_message_bytes})")
        return raw

    async def _before_start(self, raw: str | bytes) -> None:
        if isinstance(raw, bytes):
            raise ms.IngestError(ms.CLOSE_UNSUPPORTED, "binary frame before start (send the "
                                 "JSON start first)")
        msg = ms.load(raw)
        layout, event = ms.kind_of(msg)
        if event == "start":
            start = ms.parse_start(msg) if layout == "media-streams" else ms.parse_raw_start(msg)
        elif event == "media":
            raise ms.IngestError(ms.CLOSE_POLICY, "media before start")
        elif event == "stop":
            raise _Stop
        else:  # connected, mark, dtmf, anything new: nothing to do yet
            self.ignored += 1
            return
        self._authorise(start.token)
        self.source = await self.hub.open_call(self, start)
        self.guard = RateGuard(start.format.rate, self.cfg.max_ahead_s, self.connected_at)
        self.last_media = asyncio.get_running_loop().time()
        self.source.counts["ignored_events"] = self.ignored

    def _authorise(self, given: str | None) -> None:
        if self.authed:
            return
        if given is None:
            self.hub.refused["token"] += 1
            raise ms.IngestError(ms.CLOSE_POLICY, "missing token (Authorization: Bearer, "
                                 "?token=, or the start's customParameters.token)")
        if not self.hub.token_ok(given):
            self.hub.refused["token"] += 1
            raise ms.IngestError(ms.CLOSE_POLICY, "wrong token")
        self.authed = True

    async def _on_message(self, raw: str | bytes) -> None:
        src = self.source
        assert src is not None and self.guard is not None
        fmt = src.start.format
        if isinstance(raw, bytes):
            if src.start.layout != "raw":
                raise ms.IngestError(ms.CLOSE_UNSUPPORTED, "binary frame on a Media Streams "
                                     "connection (media goes in JSON media events)")
            x = fmt.decode(raw)
            await self._accept(x, range(fmt.channels))
            return
        msg = ms.load(raw)
        _, event = ms.kind_of(msg)
        if event == "media" and src.start.layout == "media-streams":
            track, data = ms.parse_media(msg)
            index = src.track_index(track)
            if index is None:
                raise ms.IngestError(ms.CLOSE_POLICY, f"media for track {track!r}, which the "
                                     "start did not announce")
            await self._accept(fmt.decode(data), [index])
        elif event == "stop":
            raise _Stop
        elif event == "start":
            raise ms.IngestError(ms.CLOSE_POLICY, "a second start on one connection")
        else:  # mark, dtmf, anything new
            src.counts["ignored_events"] += 1

    async def _accept(self, x: np.ndarray, indices: Any) -> None:
        """Received audio goes to its track(s) first, then the rate bound is checked: what
        was received before the sender is refused is kept."""
        src, guard = self.source, self.guard
        assert src is not None and guard is not None
        now = asyncio.get_running_loop().time()
        self.last_media = now
        src.counts["media_messages"] += 1
        for column, index in enumerate(indices):
            await src.push(index, x[:, column])
        for index in indices:
            guard.add(index, x.shape[0], now)


class IngestHub:
    """The ``/ingest`` endpoint of one daemon: handshake checks, calls in progress."""

    def __init__(self, config: IngestConfig, host: CallHost,
                 fallback_token: str | None) -> None:
        self.config = config
        self.host = host
        self.token = config.token or fallback_token or None
        self.calls: set[_Call] = set()
        self.waiting = 0
        self.refused: collections.Counter[str] = collections.Counter()
        # connection -> when its handshake was accepted (RateGuard's t0); weak: a connection
        # that fails after the check leaves nothing behind
        self.handshakes: weakref.WeakKeyDictionary[ServerConnection, float] = \
            weakref.WeakKeyDictionary()

    def token_ok(self, given: str) -> bool:
        """Constant-time; a token from JSON may hold lone surrogates, so they are encodable."""
        return self.token is not None and hmac.compare_digest(
            given.encode("utf-8", "surrogatepass"), self.token.encode("utf-8", "surrogatepass"))

    def check_handshake(self, connection: ServerConnection, request: Request) -> Response | None:
        """HTTP refusals: ingest off (no token, 403), wrong token (401), too many waiting
        (503). A missing token is let through: it may come in the start."""
        if not self.token:
            self.refused["off"] += 1
            return reject(connection, 403, "ingest is off: the daemon has no token (start it "
                          "with --token, --ingest-token or EMOTION_MONITOR_TOKEN)\n")
        given = given_token(request)
        if given is not None and not self.token_ok(given):
            self.refused["token"] += 1
            return reject(connection, 401, "wrong token\n",
                          {"WWW-Authenticate": 'Bearer realm="emotion-monitor ingest"'})
        if self.waiting >= self.config.waiting_limit:
            self.refused["waiting"] += 1
            return reject(connection, 503, f"too many connections waiting to start (max "
                          f"{self.config.waiting_limit})\n")
        self.handshakes[connection] = asyncio.get_running_loop().time()
        return None

    async def handle(self, ws: ServerConnection) -> None:
        """One connection, start to close; never raises."""
        # Calls' messages are small: a lower limit than protocol v1's upload-sized frames,
        # enforced by the websocket layer (close 1009) before a frame is buffered whole.
        ws.protocol.max_message_size = self.config.max_message_bytes
        given = given_token(ws.request) if ws.request is not None else None
        call = _Call(self, ws, authed=given is not None and self.token_ok(given))
        self.waiting += 1
        try:
            if self.waiting > self.config.waiting_limit:  # many handshakes passed at once
                raise ms.IngestError(ms.CLOSE_TRY_LATER, "too many connections waiting")
            await call.serve()
        except ms.IngestError as exc:
            with contextlib.suppress(ConnectionClosed):
                await ws.close(exc.code, exc.reason)
        finally:
            if call.source is None:
                self.waiting -= 1
            self.calls.discard(call)

    async def open_call(self, call: _Call, start: ms.CallStart) -> CallSource:
        """The call's streams, announced and running; IngestError when over a limit."""
        if len(self.calls) >= self.config.max_calls:
            self.refused["max_calls"] += 1
            raise ms.IngestError(ms.CLOSE_TRY_LATER, f"too many concurrent calls (max "
                                 f"{self.config.max_calls})")
        call_id = start.call_id or f"call-{secrets.token_hex(4)}"
        names = [self.host._stream_name(f"{call_id}-{role or track}")
                 for track, role in start.tracks]
        label = "media-streams" + (f" {start.stream_sid}" if start.stream_sid else "") \
            if start.layout == "media-streams" else "ingest raw"
        src = CallSource(start, call_id, names, self.host.model.sample_rate, self.config,
                         label[:1024])
        src.on_stop = call.wake
        self.calls.add(call)  # no await since the check: the limit holds
        self.waiting -= 1
        call.source = src  # counted as started even if the daemon refuses it below
        try:
            await self.host._start_source(src, kind="call", timeout=None)
        except RequestError as exc:
            call.source = None
            self.calls.discard(call)
            self.waiting += 1
            code = ms.CLOSE_TRY_LATER if exc.code in ("limit_reached", "busy") \
                else ms.CLOSE_INTERNAL
            raise ms.IngestError(code, exc.message) from None
        log.info("call %s: streams %s (%s)", call_id, ", ".join(names),
                 start.format.describe())
        return src


def _closed_how(exc: ConnectionClosed) -> str:
    frame = exc.rcvd or exc.sent
    if frame is None:
        return "no close frame"
    return f"{frame.code}" + (f" {frame.reason}" if frame.reason else "")
