"""The capture daemon: sources -> windows -> batched inference (worker thread) -> messages ->
session log + websocket clients.

One asyncio loop owns everything except the blocking work: each source runs in its own thread
(``sources.iter_chunks``), inference and Grad-CAM run in one worker thread
(``Engine.process``), fsync runs in a thread. Messages are published in the loop: appended to
the session log, then queued to each client without waiting (``server.Server.broadcast``).

Windows wait for inference in one bounded queue. A paced source (microphone, real-time replay)
never waits: when the queue is full the oldest window is dropped and counted in its stream's
``dropped_windows``. An unpaced replay (speed 0) waits instead, so a fast replay loses nothing.

A failing source (unreadable file, unplugged microphone) ends its own streams with ``error``
and ``stream_ended``; the others go on. SIGINT/SIGTERM: sources stop, queued windows are
inferred (up to ``shutdown_grace_s``), every stream ends with reason ``shutdown``, the log is
fsynced and closed, clients are closed with 1001, and ``run`` returns 0.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import logging
import os
import re
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emotion_monitor.cliutil import default_model_path
from streamer import protocol
from streamer.backends import RemoteOptions
from streamer.dynamics import CallDynamics, split_channel_call
from streamer.guards import Busy, Detached, Redactor, StreamSlots
from streamer.ingest import IngestConfig, IngestHub
from streamer.observers import Observers
from streamer.pending import End, Pending
from streamer.replay import RequestError as _RequestError
from streamer.replay import start_replay
from streamer.retention import LogKeeper
from streamer.server import Client, Server, ServerConfig
from streamer.sessionlog import AudioRecorder, SessionLog, new_session_id
from streamer.uploads import UploadStore

log = logging.getLogger("streamer.daemon")

# Ended streams stay in hello and status this long (clients see their final counts), then go.
ENDED_LISTED_S = 60.0


@dataclass
class DaemonConfig:
    model_path: str | Path = field(default_factory=default_model_path)
    device: str = "auto"
    precision: str = "auto"  # streamer.model.resolve_precision
    hop_s: float = 0.5
    explain_every: int = 1
    stream_norm: bool = False  # per-stream normalisation (streamer/stream_norm.py)
    vad: str = "silero"  # "silero" | "energy" | "off"
    vad_threshold: float = 0.5
    vad_min_voiced: float = 0.1
    sessions_dir: str | Path = "sessions"
    session_id: str | None = None
    record_audio: bool = False
    log_explanations_every: int = 10  # streamer/logpolicy.py; 0 = no explanations in the log
    max_session_mb: float | None = None  # past it explanations are no longer logged
    compress_logs: bool = True  # <id>.jsonl -> <id>.jsonl.gz when the session closes
    retain_days: float | None = None  # delete older logs at start-up and hourly (retention.py)
    allowed_dir: str | Path | None = None
    gap_s: float = 0.5
    max_batch: int = 64
    max_pending_windows: int = 256
    max_streams: int = 64
    status_interval_s: float = 1.0
    shutdown_grace_s: float = 3.0
    # A client's file check (open, header, directory listing) that takes longer is answered
    # with an error; its thread is left behind (see guards.Detached).
    file_timeout_s: float = 30.0
    exit_when_done: bool = False  # stop once every stream has ended (tests, benchmarks)
    inference: str = "local"  # or a Ray Serve address: ray, ray://HOST (streamer/backends)
    remote: RemoteOptions = field(default_factory=RemoteOptions)
    # conversation dynamics of calls (streamer/dynamics.py): on/off, the silence that counts
    # as dead air, and the roles of a split recording's channels (e.g. ("agent", "caller"))
    dynamics: bool = True
    dead_air_s: float = 10.0
    split_roles: tuple[str | None, ...] = ()
    validate_outgoing: bool = True
    server: ServerConfig = field(default_factory=ServerConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)  # /ingest: calls pushed in


@dataclass
class _Stream:
    info: dict
    source: Any
    windower: Any
    speed: float | None  # None: not paced against real time (speed 0, stdin)
    started: float = field(default_factory=time.monotonic)
    received: int = 0  # samples
    processed: int = 0  # samples whose windows have all been inferred
    pending: int = 0  # windows waiting for inference
    windows: int = 0
    voiced: int = 0
    dropped: int = 0
    state: str = "running"
    ended_at: float | None = None  # time.monotonic() when it ended


class Daemon:
    """Wires sources, engine, session log and server; ``await run()`` until stopped."""

    def __init__(self, config: DaemonConfig, sources: list[Any] | None = None,
                 model: Any = None, engine: Any = None) -> None:
        self.config = config
        self.initial_sources = list(sources or [])
        self.model = model
        self.engine = engine
        self.session_id = config.session_id or new_session_id()
        self.streams: dict[str, _Stream] = {}
        self.server: Server | None = None
        self.log: SessionLog | None = None
        self.keeper = LogKeeper(config, self.session_id)
        self.recorder: AudioRecorder | None = None
        self.started = time.monotonic()
        self._stop = asyncio.Event()
        self._ready = asyncio.Event()
        self._source_stops: dict[int, threading.Event] = {}
        self._stop_reason: dict[int, str] = {}
        self._tasks: set[asyncio.Task] = set()
        self._pending: Pending | None = None
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="inference")
        self._detached = Detached()
        self._redact = Redactor()  # server-side paths out of client-visible texts
        self._slots = StreamSlots(config.max_streams, lambda: sum(
            s.state == "running" for s in self.streams.values()))
        self.uploads = UploadStore()
        self.observers = Observers()  # conversation dynamics and the like (observers.py)
        self._uploads: dict[int, Path] = {}  # id(source) -> its upload's private file
        self._busy = False  # the inference loop is working on a batch
        self._names: collections.Counter[str] = collections.Counter()
        self.exit_code = 0
        self.log_errors = 0

    # ---------------------------------------------------------------- setup
    def _load(self) -> None:
        """Model and engine (torch, or Serve's client: streamer/backends) are imported here, so
        the CLI module stays light."""
        if self.engine is None:
            from streamer.backends import open_engine

            self.model, self.engine = open_engine(self.config, self.model)  # warmed up
        elif self.model is None:
            from streamer.model import ServedModel

            self.model = ServedModel.load(self.config.model_path, self.config.device,
                                          self.config.precision)

    def _listed(self, keep_s: float) -> list[tuple[str, _Stream]]:
        """Running streams and those that ended in the last ``keep_s`` seconds, so hello and
        status stay small in a daemon that has replayed thousands of files."""
        now = time.monotonic()
        return [(sid, st) for sid, st in self.streams.items()
                if st.ended_at is None or now - st.ended_at <= keep_s]

    def hello(self, client_id: str | None) -> dict:
        return protocol.hello(
            self.session_id, self.model.card,
            [{**s.info, "state": s.state} for _, s in self._listed(ENDED_LISTED_S)],
            self.config.hop_s, self.config.explain_every, self.config.server.limits(),
            client_id=client_id, server_version=_version())

    @property
    def port(self) -> int | None:
        return self.server.port if self.server else None

    async def wait_ready(self) -> None:
        await self._ready.wait()

    def request_stop(self) -> None:
        self._stop.set()

    # ---------------------------------------------------------------- main
    async def run(self) -> int:
        """Serve until SIGINT/SIGTERM, ``request_stop()``, or (``exit_when_done``) all ended."""
        loop = asyncio.get_running_loop()
        # Handlers first: a signal while the model loads still means a clean stop.
        installed = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, self.request_stop)
                installed.append(sig)
        try:
            await loop.run_in_executor(self._pool, self._load)
        except BaseException:
            for sig in installed:
                loop.remove_signal_handler(sig)
            raise
        if self.config.dynamics:  # conversation dynamics of calls
            self.observers.items.append(CallDynamics.for_daemon(self.model.sample_rate,
                                                                self.config))
        self._pending = Pending(self.config.max_pending_windows)
        if self.config.allowed_dir is not None:
            from streamer.sources import show_path

            for root in {Path(self.config.allowed_dir).resolve(), Path(self.config.allowed_dir)}:
                self._redact.hide(show_path(root) + os.sep, "")
                self._redact.hide(show_path(root), ".")
        self.keeper.start()  # retention sweep before this session's log exists
        self.log = SessionLog(self.config.sessions_dir, self.session_id)
        if self.config.record_audio:
            self.recorder = AudioRecorder(self.config.sessions_dir, self.session_id,
                                          self.model.sample_rate)
        self._publish(self.hello(None), broadcast=False)
        self.server = Server(self.config.server, self.hello, self._on_request, uploads=self.uploads,
                             ingest=IngestHub(self.config.ingest, self, self.config.server.token))
        infer = asyncio.create_task(self._infer_loop(), name="inference")
        status = asyncio.create_task(self._status_loop(), name="status")
        try:
            await self.server.start()
            for src in self.initial_sources:
                try:
                    await self._start_source(src, timeout=None)  # the operator's own files
                except _RequestError as exc:
                    log.error("source not started: %s", exc.message)
                    self._publish(protocol.error(exc.code, exc.message))
            self._ready.set()
            if self.config.exit_when_done and not any(
                    s.state == "running" for s in self.streams.values()):
                self.request_stop()
            log.info("session %s: serving ws://%s:%s/", self.session_id,
                     self.config.server.host, self.port)
            await self._stop.wait()
        finally:
            self._ready.set()
            await self._shutdown(infer, status)
            for sig in installed:
                loop.remove_signal_handler(sig)
        return self.exit_code

    async def _shutdown(self, infer: asyncio.Task, status: asyncio.Task) -> None:
        for i, stop in self._source_stops.items():
            self._stop_reason.setdefault(i, "shutdown")
            stop.set()
        # Sources end (their last windows and end markers are queued); let inference finish
        # them, within the grace period.
        tasks = [t for t in self._tasks if not t.done()]
        if tasks:
            await asyncio.wait(tasks, timeout=self.config.shutdown_grace_s)
        deadline = time.monotonic() + self.config.shutdown_grace_s
        while (self._pending and (self._pending.items or self._busy) and not infer.done()
               and time.monotonic() < deadline):
            await asyncio.sleep(0.02)
        infer.cancel()
        status.cancel()
        for t in (infer, status, *self._tasks):
            t.cancel()
        await asyncio.gather(infer, status, *self._tasks, return_exceptions=True)
        for sid, st in self.streams.items():
            if st.state == "running":  # windows that did not make it in time: counted
                st.dropped += st.pending
                self._end_stream(sid, "shutdown", None)
        for msg in self.observers.tick(time.time()):  # observers' last word (streams ended)
            self._publish(msg)
        if self.server is not None:
            self._publish(self._status())
            await self.server.close()
        if self.recorder is not None:
            self.recorder.close()
        if self.log is not None:
            self.log.close()
        await asyncio.to_thread(self.keeper.close, self.log)  # compress, stop the sweep
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self.engine is not None and hasattr(self.engine, "close"):
            self.engine.close()  # the VAD's background thread (D2)
        self.uploads.close()

    # ---------------------------------------------------------------- publishing
    def _publish(self, msg: dict, broadcast: bool = True) -> None:
        """Log, then queue to clients. Never waits."""
        if self.config.validate_outgoing:
            try:
                protocol.validate(msg, direction="server")
            except protocol.ProtocolError as exc:  # a bug upstream: say so, don't send junk
                log.error("invalid outgoing %s: %s", msg.get("type"), exc)
                msg = protocol.error("internal", f"invalid {msg.get('type')} message: {exc}",
                                     stream=msg.get("stream") if isinstance(
                                         msg.get("stream"), str) else None)
        text = protocol.encode(msg)
        if self.log is not None and not self.log.closed:
            try:
                for line in self.keeper.lines(msg, text, self.log):
                    self.log.append(line)
            except OSError as exc:  # disk full, volume gone: keep serving, say so loudly
                self.log_errors += 1
                if self.log_errors == 1:
                    log.error("session log %s: write failed (%s); messages are no longer "
                              "logged", self.log.path, exc)
        if broadcast and self.server is not None:
            self.server.broadcast(msg, text)

    def _on_engine_message(self, msg: dict) -> None:
        """Called in the loop for each message the engine builds, in order."""
        st = self.streams.get(msg.get("stream", ""))
        if msg["type"] == "prediction" and st is not None:
            st.windows += 1
            st.voiced += bool(msg["voiced"])
        self._publish(msg)

    # ---------------------------------------------------------------- sources
    def _stream_name(self, base: str) -> str:
        base = re.sub(r"[^A-Za-z0-9_.-]+", "_", base).strip("_.")[:48] or "stream"
        while True:  # "x-2" may be taken already by a file named so
            self._names[base] += 1
            n = self._names[base]
            name = base if n == 1 else f"{base}-{n}"
            if not any(s == name or s.startswith(name + ":") for s in self.streams):
                return name

    async def _start_source(self, src: Any, kind: str | None = None,
                            ref: str | int | None = None, timeout: float | None = -1.0,
                            slot_held: bool = False) -> list[str]:
        """Open (fast checks, in a thread), announce, and run a source; its stream ids.
        ``timeout`` of the open: -1 the config's ``file_timeout_s``, None none. ``slot_held``:
        the caller already holds a ``StreamSlots.opening`` slot for this source."""
        from streamer.sources import SourceError

        try:
            with contextlib.nullcontext() if slot_held else self._slots.opening():
                try:
                    if not getattr(src, "pushed", False):  # a call (ingest.py): nothing to open
                        await self._off_loop(src.open, timeout=timeout)
                except SourceError as exc:
                    raise _RequestError("bad_audio", self._redact(str(exc))) from None
                ids = list(src.stream_ids)
                self._slots.claim(len(ids))
                # From here to the streams' registration: no await (the slots stay true).
                return self._announce(src, ids, kind, ref)
        except Busy as exc:
            raise _RequestError("limit_reached", str(exc)) from None

    def _announce(self, src: Any, ids: list[str], kind: str | None,
                  ref: str | int | None) -> list[str]:
        """Register, announce and start a source's streams (synchronous on purpose)."""
        from streamer.windows import Windower

        clash = [i for i in ids if i in self.streams]
        if clash:
            raise _RequestError("invalid_message", f"stream id(s) {clash} already used")
        speed = getattr(src, "speed", 1.0) if src.kind in ("file", "mic") else None
        if src.kind == "mic":
            speed = 1.0
        now = time.time()
        for i, d in enumerate(src.describe()):
            sid = d["id"]
            channel = d.get("channel", i if len(ids) > 1 else None)
            info = protocol.stream_info(
                sid, kind or d.get("kind", src.kind), str(d.get("source") or src.kind), now,
                channel=channel, speed=speed if speed else None,
                call=d.get("call") or split_channel_call(sid, channel, self.config.split_roles))
            self.streams[sid] = _Stream(
                info, src, Windower(sid, self.model.sample_rate, self.model.window_s,
                                    self.config.hop_s), speed or None)
            self._publish(protocol.stream_started(info, ref=ref))
            self.observers.stream_started(info)
        skipped = getattr(src, "skipped", None)
        if skipped:  # files of a directory left out (unreadable): say so, once
            more = f" (and {len(skipped) - 1} more)" if len(skipped) > 1 else ""
            self._publish(protocol.error("bad_audio", self._redact(
                f"skipped {len(skipped)} unreadable file(s): {skipped[0][:300]}{more}"),
                stream=ids[0]))
        key = id(src)
        self._source_stops[key] = threading.Event()
        task = asyncio.create_task(self._run_source(src, key), name=f"source-{ids}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return ids

    async def _run_source(self, src: Any, key: int) -> None:
        from streamer.sources import SourceError, source_chunks

        assert self._pending is not None
        stop = self._source_stops[key]
        paced = getattr(src, "speed", 1.0) != 0 or src.kind != "file"
        error: Exception | None = None
        try:
            async for chunk in source_chunks(src, stop):
                st = self.streams[chunk.stream_id]
                st.received += chunk.samples.size
                if self.recorder is not None:
                    self.recorder.write(chunk.stream_id, chunk.samples)
                # VAD scores fed audio in the background, ahead of the window (D2)
                self.engine.feed(chunk.stream_id, chunk.samples,
                                 st.received - chunk.samples.size)
                self.observers.audio(chunk.stream_id, chunk.samples,
                                     st.received - chunk.samples.size, chunk.wall_time)
                wins = st.windower.push(chunk.samples, chunk.wall_time, chunk.arrived)
                if not wins and st.pending == 0:
                    st.processed = st.received
                for w in wins:
                    await self._enqueue(st, w, paced)
        except SourceError as exc:
            error = exc
        except Exception as exc:  # anything else still ends only this source
            log.exception("source %s failed", src.stream_ids)
            error = exc
        reason = "error" if error else self._stop_reason.get(key, "eof")
        for sid in src.stream_ids:
            st = self.streams[sid]
            for w in st.windower.flush():
                await self._enqueue(st, w, paced)
            await self._pending.put_end(End(sid, reason, error))
        self._source_stops.pop(key, None)

    async def _enqueue(self, st: _Stream, window: Any, paced: bool) -> None:
        assert self._pending is not None
        st.pending += 1
        dropped = await self._pending.put((window, st.received), wait=not paced)
        if dropped is not None:
            old = self.streams[dropped[0].stream_id]
            old.pending -= 1
            old.dropped += 1

    # ---------------------------------------------------------------- inference
    async def _infer_loop(self) -> None:
        assert self._pending is not None
        loop = asyncio.get_running_loop()

        def emit(msg: dict) -> None:  # called in the worker thread
            loop.call_soon_threadsafe(self._on_engine_message, msg)

        while True:
            self._busy = False
            batch = await self._pending.get_batch(self.config.max_batch)
            self._busy = True
            try:
                await self._infer_batch(batch, loop, emit)
            except Exception:  # a bug here must not stall every stream: log it, go on
                log.exception("inference loop error")
            if self.config.exit_when_done and self.streams and all(
                    s.state == "ended" for s in self.streams.values()) \
                    and not self._source_stops:
                self.request_stop()

    async def _infer_batch(self, batch: list[Any], loop: asyncio.AbstractEventLoop,
                           emit: Any) -> None:
        """Infer runs of windows in one batch each; handle end markers in order."""
        run: list[tuple[Any, int]] = []
        for item in [*batch, None]:
            if isinstance(item, tuple):
                run.append(item)
                continue
            if run:
                windows = [w for w, _ in run]
                try:
                    await loop.run_in_executor(self._pool, self.engine.process, windows,
                                               emit)
                    for sid, n in getattr(self.engine, "take_dropped", dict)().items():
                        self.streams[sid].dropped += n  # remote inference lost them
                except Exception as exc:  # the model failed on this batch: say so, go on
                    log.exception("inference failed")
                    for sid in {w.stream_id for w in windows}:
                        self._publish(protocol.error(
                            "internal", f"inference failed: {type(exc).__name__}: {exc}",
                            stream=sid))
                await asyncio.sleep(0)  # the emitted messages are published first
                for w, received in run:
                    st = self.streams[w.stream_id]
                    st.pending -= 1
                    st.processed = max(st.processed, received)
                    if st.pending == 0 and st.state == "running":
                        st.processed = max(st.processed, st.received)
                run = []
            if isinstance(item, End):
                await loop.run_in_executor(self._pool, self.engine.end_stream,
                                           item.stream_id)
                self._end_stream(item.stream_id, item.reason, item.error)

    def _end_stream(self, sid: str, reason: str, error: Exception | None) -> None:
        st = self.streams[sid]
        if st.state == "ended":
            return
        if error is not None:
            from streamer.sources import SourceError

            code = "bad_audio" if isinstance(error, SourceError) and st.info["kind"] in (
                "file", "upload") else "source_failed"
            log.error("stream %s failed: %s", sid, error)
            self._publish(protocol.error(code, self._redact(str(error)), stream=sid))
        st.state = "ended"
        st.ended_at = time.monotonic()
        st.info["state"] = "ended"
        self._publish(protocol.stream_ended(sid, reason, st.windows,
                                            st.received / self.model.sample_rate))
        self.observers.stream_ended(sid)
        if self.recorder is not None:
            self.recorder.close_stream(sid)
        if self.log is not None:
            with contextlib.suppress(RuntimeError):
                asyncio.get_running_loop().run_in_executor(None, self.log.sync)
        src = st.source
        if id(src) in self._uploads and all(
                self.streams[s].state == "ended" for s in src.stream_ids):
            path = self._uploads.pop(id(src))
            self.uploads.remove(path)
            self._redact.forget(str(path))

    # ---------------------------------------------------------------- status
    def _status(self) -> dict:
        now = time.monotonic()
        streams = []
        for sid, st in self._listed(ENDED_LISTED_S):
            t_proc = st.processed / self.model.sample_rate
            lag = None
            if st.speed and st.state == "running":
                lag = max(0.0, (now - st.started) * st.speed - t_proc)
            try:  # ended streams too: what a source repaired or skipped stays visible
                stats = {**(st.source.stats() or {}),  # + remote inference's counters
                         **getattr(self.engine, "stream_stats", lambda _: {})(sid)}
            except Exception:  # a source's own bookkeeping must not break status
                stats = None
            streams.append(protocol.stream_status(sid, st.state, lag, t_proc, st.windows,
                                                  st.voiced, st.dropped, stats))
        clients = self.server.clients_status() if self.server else []
        return protocol.status(streams, clients, now - self.started)

    async def _status_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.status_interval_s)
            try:
                self._publish(self._status())
                for msg in self.observers.tick(time.time()):
                    self._publish(msg)
                if self.log is not None:
                    await asyncio.to_thread(self.log.sync)
            except Exception:  # a status bug must not stop the next status
                log.exception("status failed")

    # ---------------------------------------------------------------- client requests
    async def _on_request(self, client: Client, msg: dict) -> list[dict]:
        ref = msg.get("id")
        try:
            if msg["type"] == "stop_stream":
                return self._stop_stream(msg["stream"], ref)
            if msg["type"] == "replay":
                return await self._replay(msg, ref)
        except _RequestError as exc:
            raise protocol.ProtocolError(exc.code, exc.message) from None
        raise protocol.ProtocolError("unknown_type", f"{msg['type']} is not handled here")

    async def _off_loop(self, fn: Any, *args: Any, timeout: float | None = -1.0) -> Any:
        """Blocking file work for a request: off the loop, bounded in time and threads."""
        limit = self.config.file_timeout_s if timeout == -1.0 else timeout
        try:
            return await self._detached.run(fn, *args, timeout=limit)
        except TimeoutError:
            raise _RequestError("source_failed",
                                f"file check took longer than {limit:g} s") from None
        except Busy as exc:
            raise _RequestError("busy", str(exc)) from None

    def _stop_stream(self, sid: str, ref: Any) -> list[dict]:
        st = self.streams.get(sid)
        if st is None:
            raise _RequestError("not_found", f"no stream {sid!r}")
        if st.state == "ended":
            raise _RequestError("not_found", f"stream {sid!r} has already ended")
        key = id(st.source)
        self._stop_reason[key] = "stopped"
        stop = self._source_stops.get(key)
        if stop is not None:
            stop.set()
        return [protocol.ack("stop_stream", ref=ref, stream=sid)]

    async def _replay(self, msg: dict, ref: Any) -> list[dict]:
        return await start_replay(self, msg, ref)  # streamer/replay.py


def _version() -> str:
    try:
        from emotion_monitor import __version__

        return str(__version__)
    except Exception:  # pragma: no cover
        return "0"


def run_daemon(config: DaemonConfig, sources: list[Any]) -> int:
    """Blocking entry point for the CLI."""
    return asyncio.run(Daemon(config, sources).run())
