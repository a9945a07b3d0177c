"""The daemon's side of inference on Ray Serve: ``RemoteEngine`` has the engine interface the
daemon uses on ``streamer.engine.Engine``, keeps VAD and the explanation counters here (cheap,
per-stream state) and sends only voiced windows to the cluster, over HTTP to Serve's proxy
(``streamer.backends.serve_app`` says why HTTP and not a Ray handle). No Ray import here.

Faults, as the daemon sees them (every message is still built and emitted here, so protocol v1
and the session log do not change):

- a request that fails (a replica died under it, a 5xx, its new connection dropped under it) is
  retried ``retries`` times — windows are idempotent — then its windows are dropped and counted
  in their stream's ``dropped_windows``; Serve restarts the replica. A kept-alive connection
  found closed (the proxy may close idle ones) is reopened at once, not counted;
- the proxy answers 503 (replicas full, ``max_queued`` waiting): the chunk's windows are dropped
  and counted; the daemon's own queue meanwhile drops its oldest windows, as with a slow local
  model, so latency stays bounded (``timeout_s`` per request, ``max_inflight`` requests);
- the proxy unreachable (connection refused or timed out): an outage. Streams go on (unvoiced
  windows still get their predictions); voiced windows are dropped and counted, or inferred
  locally with ``fallback`` (same model file, checked by sha256 at start). One probe a
  ``PROBE_INTERVAL_S`` until the proxy answers; then inference resumes by itself. The outage
  shows in ``status`` as per-stream ``source_stats`` counters (``inference_unavailable`` while
  it lasts, ``inference_dropped_windows``, ``inference_fallback_windows``,
  ``inference_retried_windows``) and in the log.
"""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import logging
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from streamer import protocol
from streamer.backends import RemoteOptions
from streamer.backends.wire import (
    CONTENT_TYPE,
    TOKEN_ENV,
    Chunk,
    WireError,
    decode_result,
    encode_chunk,
)
from streamer.card import CardView
from streamer.vad import Vad, VadConfig
from streamer.windows import Window

log = logging.getLogger(__name__)

Message = dict[str, Any]
DEFAULT_PORT = 8000  # Serve's HTTP proxy (not the Ray Client's 10001)
ROUTE = "/emotion"  # serve_app.ROUTE_PREFIX (not imported: that module imports Ray)
CONNECT_TIMEOUT_S = 3.0
PROBE_INTERVAL_S = 1.0  # during an outage, one request a second tries the proxy
RETRY_DELAY_S = 0.2  # before retrying a failed request (a replica is being replaced)
#: Windows per explanation request: at most serve_app.EXPLAIN_MAX_BATCH (a replica refuses more)
EXPLAIN_REQUEST_WINDOWS = 4


class RemoteError(Exception):
    """A request that got an answer, but not a result (5xx, bad body): worth a retry."""


class Overloaded(RemoteError):
    """503: the deployment's queue is full. Not retried: the windows are dropped."""


class TimedOut(RemoteError):
    """No answer within ``timeout_s``: not retried (it would double the windows' latency)."""


class Unreachable(RemoteError):
    """No connection to the proxy (refused, no route, connect timed out): an outage."""


def serve_url(inference: str) -> str:
    """``ray`` -> the local cluster's proxy; ``ray://HOST[:PORT]`` -> the proxy on HOST (port
    8000 unless given); ``http(s)://HOST:PORT[/route]`` as given (route ``/emotion`` if none)."""
    if inference == "ray":
        return f"http://127.0.0.1:{DEFAULT_PORT}{ROUTE}"
    parts = urllib.parse.urlsplit(inference)
    if parts.scheme == "ray":
        if not parts.hostname:
            raise ValueError(f"--inference {inference!r}: no host")
        return f"http://{parts.hostname}:{parts.port or DEFAULT_PORT}{parts.path or ROUTE}"
    if parts.scheme in ("http", "https") and parts.hostname:
        return f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/') or ROUTE}"
    raise ValueError(f"--inference {inference!r}: use local, ray, ray://HOST[:PORT] or "
                     "http://HOST:PORT/emotion")


class ServeClient:
    """HTTP/1.1 keep-alive to the Serve proxy, one connection per calling thread."""

    def __init__(self, url: str, timeout_s: float = 10.0, token: str | None = None) -> None:
        self.url = url
        self._headers = {"Content-Type": CONTENT_TYPE}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        parts = urllib.parse.urlsplit(url)
        self._conn_cls = (http.client.HTTPSConnection if parts.scheme == "https"
                          else http.client.HTTPConnection)
        self._host, self._port = parts.hostname or "127.0.0.1", parts.port
        self._path = parts.path or ROUTE
        self.timeout_s = timeout_s
        self._local = threading.local()

    def _request(self, method: str, path: str, body: bytes | None = None) -> bytes:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._conn_cls(self._host, self._port,
                                                     timeout=CONNECT_TIMEOUT_S)
        for _ in range(2):
            reused = conn.sock is not None  # kept alive since an earlier answer
            try:
                if not reused:
                    self._connect(conn)
                conn.request(method, path, body=body, headers=self._headers)
                resp = conn.getresponse()
                data = resp.read()
                break
            except (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected):
                conn.close()
                if not reused:  # the proxy took the request and dropped it: a failed request
                    raise RemoteError(f"{self.url}: connection dropped under the request"
                                      ) from None
                # else a kept-alive connection the proxy closed (idle): once more, on a new one
            except TimeoutError:
                conn.close()
                raise TimedOut(f"{self.url}: no answer within {self.timeout_s:g} s") from None
            except (OSError, http.client.HTTPException) as exc:  # refused, unreachable
                conn.close()
                raise Unreachable(f"{self.url}: {type(exc).__name__}: {exc}") from None
        if resp.status == 503:
            raise Overloaded(f"{self.url}: 503 {data[:200]!r}")
        if resp.status == 401:
            raise RemoteError(f"{self.url}: refused: wrong or missing token (--inference-token "
                              f"or {TOKEN_ENV}, as given to `cluster up --token`)")
        if resp.status != 200:
            raise RemoteError(f"{self.url}: HTTP {resp.status} {data[:300]!r}")
        return data

    def _connect(self, conn: http.client.HTTPConnection) -> None:
        try:  # refused, no route, or no answer within CONNECT_TIMEOUT_S: an outage
            conn.connect()
        except OSError as exc:
            conn.close()
            raise Unreachable(f"{self.url}: {type(exc).__name__}: {exc}") from None
        conn.sock.settimeout(self.timeout_s)  # the answer may take a batch or two

    def card(self) -> dict:
        """The served model's card (with its file's ``sha256``)."""
        try:
            return dict(json.loads(self._request("GET", self._path + "/card"))["card"])
        except (ValueError, KeyError, TypeError) as exc:
            raise RemoteError(f"{self.url}: not an emotion-monitor deployment ({exc})") from None

    def infer(self, chunk: Chunk) -> dict:
        try:
            return decode_result(self._request("POST", self._path, encode_chunk(chunk)),
                                 chunk.n if chunk.predict else 0)
        except (ValueError, WireError) as exc:
            raise RemoteError(f"{self.url}: bad result ({exc})") from None


@dataclass
class RemoteModel(CardView):
    """What the daemon needs of a model it does not load: the served card (hello, windows)."""

    url: str


def connect(inference: str, options: RemoteOptions) -> tuple[ServeClient, RemoteModel]:
    """Reach the deployment and read its card; ``Unreachable``/``RemoteError`` otherwise."""
    client = ServeClient(serve_url(inference), options.timeout_s, options.token)
    card = client.card()
    return client, RemoteModel({**card, "served_by": client.url}, client.url)


class RemoteEngine:
    """``Engine``'s interface over a Serve deployment (see the module docstring)."""

    def __init__(self, client: ServeClient, model: RemoteModel,
                 vad: VadConfig | None = VadConfig(), explain_every: int = 1,
                 options: RemoteOptions = RemoteOptions(),
                 fallback: Any = None) -> None:
        if explain_every < 0:
            raise ValueError("explain_every must be >= 0")
        self.client = client
        self.model = model
        self.vad = Vad(vad, model.sample_rate) if vad is not None else None
        self.explain_every = explain_every
        self.options = options
        self._fallback = fallback  # a warmed-up Compute on the same model file, or None
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max(1, options.max_inflight), thread_name_prefix="serve-request")
        self._lock = threading.Lock()
        self._voiced_count: dict[str, int] = {}
        self._dropped: Counter[str] = Counter()  # since the daemon last took them
        self._per_stream: dict[str, Counter[str]] = {}
        self.down_since: float | None = None
        self._next_probe = 0.0
        self.stats = {"windows": 0, "voiced": 0, "explained": 0, "explain_errors": 0,
                      "requests": 0, "failed_requests": 0, "retried_windows": 0,
                      "dropped_windows": 0, "fallback_windows": 0, "outages": 0}

    # ------------------------------------------------------------ the engine interface
    def warmup(self) -> None:
        """One small request end to end (the proxy, a replica, the wire) before streams."""
        zeros = np.zeros((1, self.model.window_samples), dtype=np.float32)
        self.client.infer(Chunk(zeros, ["warmup"], [0]))
        if self.explain_every:
            self.client.infer(Chunk(zeros, ["warmup"], [0], [0], predict=False))

    def feed(self, stream_id: str, samples: np.ndarray, start_sample: int) -> None:
        if self.vad is not None:
            self.vad.feed(stream_id, samples, start_sample)

    def end_stream(self, stream_id: str) -> None:
        self._voiced_count.pop(stream_id, None)
        if self.vad is not None:
            self.vad.end_stream(stream_id)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self.vad is not None:
            self.vad.close()

    def take_dropped(self) -> dict[str, int]:
        """Windows dropped here since the last call, per stream (the daemon adds them to its
        ``dropped_windows``)."""
        with self._lock:
            out, self._dropped = dict(self._dropped), Counter()
        return out

    def stream_stats(self, stream_id: str) -> dict[str, int]:
        """Counters for the stream's ``source_stats`` in ``status`` (only those above 0)."""
        with self._lock:
            out = {f"inference_{k}": v for k, v in self._per_stream.get(stream_id, {}).items()
                   if v}
        if self.down_since is not None:
            out["inference_unavailable"] = 1
        return out

    def process(self, windows: list[Window], emit: Callable[[Message], None] | None = None
                ) -> list[Message]:
        """As ``Engine.process``: a prediction per window in order, then the explanations.
        Voiced windows go out in chunks of ``request_windows``, up to ``max_inflight`` at once
        (the replicas batch them with other daemons' chunks); the windows to explain go in
        separate requests (``EXPLAIN_REQUEST_WINDOWS`` each) once the predictions are out."""
        if not windows:
            return []
        messages: list[Message] = []

        def out(msg: Message) -> None:
            messages.append(msg)
            if emit is not None:
                emit(msg)

        fractions = ([1.0] * len(windows) if self.vad is None
                     else self.vad.voiced_fractions(windows))
        voiced = [self.vad.is_voiced(f) if self.vad else True for f in fractions]
        vw = [w for w, v in zip(windows, voiced, strict=True) if v]
        ex = [w for w in vw if self._wants_explanation(w.stream_id)]
        size = max(1, self.options.request_windows)
        futures = [self._pool.submit(self._infer_chunk, vw[lo:lo + size], True)
                   for lo in range(0, len(vw), size)]
        predicted: set[tuple[str, int]] = set()
        k = 0
        probs: Any = None
        for win, is_voiced in zip(windows, voiced, strict=True):
            self.stats["windows"] += 1
            row = None
            if is_voiced:
                if k % size == 0:
                    probs = futures[k // size].result()
                k += 1
                if probs is None:
                    continue  # dropped and counted by _infer_chunk
                row = probs[(k - 1) % size]
                self.stats["voiced"] += 1
                predicted.add((win.stream_id, win.seq))
            latency = (time.perf_counter() - win.arrived) * 1000.0
            out(protocol.prediction(win.stream_id, win.seq, win.t_start, win.t_end,
                                    win.wall_time, row, latency, self.model.classes,
                                    voiced=is_voiced))
        # Explanations only once this batch's predictions are out (as in-process): sent
        # together, a Grad-CAM batch could reach the replica first and hold them up.
        ex = [w for w in ex if (w.stream_id, w.seq) in predicted]
        ex_futures = [self._pool.submit(self._infer_chunk, ex[lo:lo + EXPLAIN_REQUEST_WINDOWS],
                                        False) for lo in range(0, len(ex),
                                                               EXPLAIN_REQUEST_WINDOWS)]
        for fut in ex_futures:
            for msg in fut.result() or []:
                self.stats["explained"] += 1
                out(msg)
        return messages

    # ------------------------------------------------------------ requests
    def _wants_explanation(self, stream_id: str) -> bool:
        n = self._voiced_count.get(stream_id, 0)
        self._voiced_count[stream_id] = n + 1
        return self.explain_every > 0 and n % self.explain_every == 0

    def _infer_chunk(self, wins: list[Window], predict: bool) -> Any:
        """One request (with retries), in a pool thread: probabilities ``[B, C]`` (``predict``)
        or explanation messages; None when it failed (a prediction chunk's windows are then
        dropped and counted)."""
        chunk = Chunk(np.stack([w.samples for w in wins]), [w.stream_id for w in wins],
                      [w.seq for w in wins], [] if predict else list(range(len(wins))),
                      predict)
        if self._may_try():
            for attempt in range(1 + max(0, self.options.retries)):
                try:
                    res = self.client.infer(chunk)
                    self._up()
                    with self._lock:
                        self.stats["requests"] += 1
                        self.stats["explain_errors"] += int(res.get("explain_errors", 0))
                    return (np.asarray(res["probs"], dtype=np.float64) if predict
                            else res["explanations"])
                except Unreachable as exc:
                    self._down(exc)
                    break
                except RemoteError as exc:
                    self._count("failed_requests", None, wins)
                    if isinstance(exc, Overloaded | TimedOut) or attempt == self.options.retries:
                        log.warning("inference request dropped: %s", exc)
                        break
                    log.warning("inference request failed, retrying: %s", exc)
                    self._count("retried_windows", "retried_windows", wins)
                    time.sleep(RETRY_DELAY_S)
        if self._fallback is not None:
            return self._run_fallback(chunk, wins)
        if not predict:
            with self._lock:
                self.stats["explain_errors"] += len(wins)
            return None
        self._count("dropped_windows", "dropped_windows", wins)
        with self._lock:
            self._dropped.update(w.stream_id for w in wins)
        return None

    def _run_fallback(self, chunk: Chunk, wins: list[Window]) -> Any:
        with self._lock:  # one local model, one thread at a time
            probs, msgs, errors = self._fallback.run(chunk)
            self.stats["explain_errors"] += errors
        if not chunk.predict:
            return msgs
        self._count("fallback_windows", "fallback_windows", wins)
        return np.asarray(probs, dtype=np.float64)

    def _count(self, total: str, per_stream: str | None, wins: list[Window]) -> None:
        with self._lock:
            self.stats[total] += 1 if total == "failed_requests" else len(wins)
            if per_stream is not None:
                for w in wins:
                    self._per_stream.setdefault(w.stream_id, Counter())[per_stream] += 1

    def _may_try(self) -> bool:
        """Always while up; during an outage one request a ``PROBE_INTERVAL_S``."""
        with self._lock:
            if self.down_since is None:
                return True
            now = time.monotonic()
            if now < self._next_probe:
                return False
            self._next_probe = now + PROBE_INTERVAL_S
            return True

    def _down(self, exc: Exception) -> None:
        with self._lock:
            if self.down_since is None:
                self.down_since = time.monotonic()
                self._next_probe = self.down_since + PROBE_INTERVAL_S
                self.stats["outages"] += 1
                log.error("remote inference unreachable (%s); windows are %s until it is back",
                          exc, "inferred locally" if self._fallback is not None else
                          "dropped (counted)")

    def _up(self) -> None:
        if self.down_since is None:
            return
        with self._lock:
            if self.down_since is not None:
                log.warning("remote inference back after %.1f s", time.monotonic()
                            - self.down_since)
                self.down_since = None
