"""The remote backend's fault paths against a fake Serve endpoint (no Ray): the daemon-side
handling that a real Serve cluster rarely exercises (Serve re-routes a killed replica's
request itself), each tested on a real daemon replaying TESS files in real time.

``FakeServe`` is Serve's HTTP proxy and one replica in a thread of the test: the routes
``RemoteEngine``/``ServeClient`` use (GET ``/emotion/card``, POST ``/emotion``), the wire format
of ``streamer.backends.wire``, real answers from ``streamer.backends.compute`` on the tiny
model. A per-test ``plan`` says how each request is answered: normally, slowly, 503, the
connection dropped, or not at all (past ``--inference-timeout``).

- backpressure: a replica slower than real time; the daemon's queue drops its oldest windows
  (counted), every window is a prediction or a counted drop, latency stays under a bound that
  follows from the config and does not grow through the run;
- 503: those requests' windows are dropped and counted, no error reaches clients, predictions
  resume when the endpoint answers again;
- a dropped connection: retried (a kept-alive one at once, uncounted; one opened for the request
  once more after ``RETRY_DELAY_S``, counted in ``inference_retried_windows``), no window lost;
- a request past the timeout: its windows dropped and counted, the daemon goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from streamer.backends import RemoteOptions
from streamer.backends.compute import Compute, file_sha256
from streamer.backends.remote import ROUTE
from streamer.backends.wire import Chunk, WireError, decode_chunk, encode_result
from streamer.daemon import Daemon, DaemonConfig
from streamer.model import ServedModel
from streamer.sources import FileSource
from tests.streamer_harness import client, make_config, running, tess_files

pytestmark = pytest.mark.timeout(90)

# What the fake does with a request (a plan's answer)
OK, CLOSE, SLOW, OVERLOADED, DROP, HANG = "ok", "close", "slow", "503", "drop", "hang"


@dataclass
class Seen:
    """One POST as the fake saw it: whose windows, on which connection, what it did."""

    streams: list[str]
    seqs: list[int]
    predict: bool
    reused: bool  # the connection had served a request before (kept alive)
    action: str = OK

    def windows(self) -> list[tuple[str, int]]:
        return list(zip(self.streams, self.seqs, strict=True))


Plan = Callable[[Seen], str]


class FakeServe:
    """Serve's proxy and one replica over real compute; ``plan`` decides each POST's fate."""

    def __init__(self, model_path: Path) -> None:
        model = ServedModel.load(model_path, "cpu")
        self.compute = Compute(model, file_sha256(model_path))
        self.compute.warmup()
        self.card = {**model.card, "sha256": self.compute.sha256}
        self.delay_s = 0.5  # SLOW: per request, one request at a time (one busy replica)
        self.hang_s = 5.0  # HANG: no answer for this long (or until the test ends)
        self.plan: Plan = lambda seen: OK
        self.seen: list[Seen] = []
        self._replica = threading.Lock()  # one compute at a time, as one replica
        self._plan_lock = threading.Lock()
        self._release = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._server.handle_error = lambda *a: None  # a client gone under a hung request
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name="fake-serve")
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}{ROUTE}"

    def reset(self, plan: Plan = lambda seen: OK, delay_s: float = 0.5,
              hang_s: float = 5.0) -> None:
        with self._plan_lock:
            self.plan, self.seen = plan, []
        self.delay_s, self.hang_s = delay_s, hang_s
        self._release.clear()

    def decide(self, chunk: Chunk, reused: bool) -> str:
        seen = Seen(list(chunk.streams), list(chunk.seqs), chunk.predict, reused)
        if chunk.streams and chunk.streams[0] == "warmup":  # RemoteEngine.warmup's trip
            return OK
        with self._plan_lock:
            seen.action = self.plan(seen)
            self.seen.append(seen)
        return seen.action

    def answer(self, chunk: Chunk, slow: bool) -> bytes:
        with self._replica:
            if slow:
                time.sleep(self.delay_s)
            probs, expls, errors = self.compute.run(chunk)
        return encode_result(probs, expls, self.compute.identity, errors)

    def windows(self, action: str) -> list[tuple[str, int]]:
        """The (stream, seq) of every prediction window the fake answered with ``action``."""
        return [w for s in self.seen if s.action == action and s.predict for w in s.windows()]

    def close(self) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()


def _handler(fake: FakeServe) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as Serve's proxy
        served = 0  # requests answered on this connection (one handler per connection)

        def log_message(self, *args: Any) -> None:
            pass

        def _reply(self, status: int, body: bytes, close: bool = False) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            if close:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            self.wfile.write(body)
            self.served += 1

        def do_GET(self) -> None:
            if self.path != ROUTE + "/card":
                return self._reply(404, b'{"error": "not found"}')
            self._reply(200, json.dumps({"card": fake.card}).encode())

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            try:
                chunk = decode_chunk(body)
            except WireError as exc:
                return self._reply(400, json.dumps({"error": str(exc)}).encode())
            action = fake.decide(chunk, self.served > 0)
            if action == DROP:  # read, then closed without a word
                self.close_connection = True
            elif action == HANG:  # no answer within the client's timeout
                fake._release.wait(fake.hang_s)
                self.close_connection = True
            elif action == OVERLOADED:
                self._reply(503, b"Service Unavailable: max_queued_requests reached")
            else:
                self._reply(200, fake.answer(chunk, action == SLOW), close=action == CLOSE)

    return Handler


@pytest.fixture(scope="module")
def fake_serve(tiny_model_path: Path) -> Iterator[FakeServe]:
    fake = FakeServe(tiny_model_path)
    try:
        yield fake
    finally:
        fake.close()


@pytest.fixture
def fake(fake_serve: FakeServe) -> Iterator[FakeServe]:
    fake_serve.reset()
    yield fake_serve
    fake_serve.reset()
    fake_serve._release.set()  # a request still hung: let it go


# ----------------------------------------------------------------------------- the run

@dataclass
class Run:
    """What one client received (with its receive times) and the daemon's final counts."""

    daemon: Daemon
    msgs: list[dict]
    recv_at: list[float]  # time.time() at which msgs[i] arrived
    made: dict[str, int] = field(default_factory=dict)  # windows each stream's windower made

    def predictions(self, sid: str) -> list[dict]:
        return [m for m in self.msgs if m["type"] == "prediction" and m["stream"] == sid]

    def statuses(self) -> list[dict]:
        return [m for m in self.msgs if m["type"] == "status"]

    def final(self, sid: str) -> dict:
        """The stream's line in the last status the client got (after every stream ended)."""
        return next(s for s in self.statuses()[-1]["streams"] if s["stream"] == sid)

    def errors(self) -> list[dict]:
        return [m for m in self.msgs if m["type"] == "error"]


def _config(tmp_path: Path, model: Path, url: str, **kw: Any) -> DaemonConfig:
    """Every window voiced (``vad="off"``): each one travels to the endpoint."""
    return make_config(tmp_path, model, inference=url, vad="off", status_interval_s=0.25, **kw)


def _sources(tess_dir: Path, names: list[str], n_files: int) -> list[FileSource]:
    """Real-time replays of the same ``n_files`` TESS files each, rotated (streams of one
    length, ending together)."""
    files = tess_files(tess_dir, n_files)
    return [FileSource([files[(i + k) % n_files] for k in range(n_files)], 16000, name=name,
                       speed=1.0) for i, name in enumerate(names)]


async def _replay(config: DaemonConfig, sources: list[FileSource], timeout: float = 40.0) -> Run:
    async with running(config) as daemon, client(daemon) as c:
        recv_at = [time.time()]  # the hello
        sids = [sid for src in sources for sid in await daemon._start_source(src)]
        deadline = time.monotonic() + timeout

        def done() -> bool:  # every stream ended, and a status since says so
            last = next((m for m in reversed(c.msgs) if m["type"] == "status"), None)
            return last is not None and all(
                s["state"] == "ended" for s in last["streams"] if s["stream"] in sids) and \
                {s["stream"] for s in last["streams"]} >= set(sids)

        while not done():
            assert time.monotonic() < deadline, "the replay did not end in time"
            await c.recv(max(0.1, deadline - time.monotonic()))
            recv_at.append(time.time())
        made = {sid: daemon.streams[sid].windower.seq for sid in sids}
        return Run(daemon, c.msgs, recv_at, made)


def _accounted(run: Run, sid: str) -> tuple[list[int], int]:
    """Every window is a prediction or a counted drop; (predicted seqs, dropped)."""
    seqs = [m["seq"] for m in run.predictions(sid)]
    assert seqs == sorted(set(seqs)), f"{sid}: predictions out of order or twice: {seqs}"
    final = run.final(sid)
    assert final["state"] == "ended" and final["windows"] == len(seqs)
    assert len(seqs) + final["dropped_windows"] == run.made[sid], (sid, seqs, final)
    assert run.daemon.streams[sid].dropped == final["dropped_windows"]
    return seqs, final["dropped_windows"]


def _ended_eof(run: Run, sid: str) -> None:
    ended = [m for m in run.msgs if m["type"] == "stream_ended" and m["stream"] == sid]
    assert len(ended) == 1 and ended[0]["reason"] == "eof", ended


# ----------------------------------------------------------------------------- backpressure

# One replica answering one request at a time, DELAY_S each: with REQUEST_WINDOWS per request
# it infers REQUEST_WINDOWS / DELAY_S = 4 windows/s; STREAMS real-time streams make 2 each.
STREAMS, DELAY_S = 4, 0.5
PENDING, MAX_BATCH, REQUEST_WINDOWS, INFLIGHT, TIMEOUT_S = 8, 4, 2, 2, 5.0
# A batch of MAX_BATCH windows is ceil(MAX_BATCH / REQUEST_WINDOWS) requests, one after the other
# at the replica: BATCH_S (at worst ceil(requests / INFLIGHT) * TIMEOUT_S, when every request
# times out). A window queued behind at most PENDING - 1 others is taken within ceil(PENDING /
# MAX_BATCH) batches after the one in progress, or dropped (oldest first): so it is predicted
# within (ceil(PENDING / MAX_BATCH) + 1) * BATCH_S of its last sample, whatever the run's length.
BATCH_S = math.ceil(MAX_BATCH / REQUEST_WINDOWS) * DELAY_S
LATENCY_BOUND_S = (math.ceil(PENDING / MAX_BATCH) + 1) * BATCH_S  # 3.0 s
SLACK_S = 0.75  # websocket, event loop and GIL on a shared 2-core machine


def test_backpressure_drops_oldest_and_latency_stays_bounded(
        tmp_path: Path, tiny_model_path: Path, tess_dir: Path, fake: FakeServe) -> None:
    fake.reset(lambda seen: SLOW, delay_s=DELAY_S)
    cfg = _config(tmp_path, tiny_model_path, fake.url, max_pending_windows=PENDING,
                  max_batch=MAX_BATCH, remote=RemoteOptions(
                      timeout_s=TIMEOUT_S, request_windows=REQUEST_WINDOWS,
                      max_inflight=INFLIGHT))
    names = [f"s{i}" for i in range(STREAMS)]
    run = asyncio.run(_replay(cfg, _sources(tess_dir, names, 4)))

    assert not run.errors()
    dropped = {}
    for sid in names:
        seqs, dropped[sid] = _accounted(run, sid)
        _ended_eof(run, sid)
        # oldest first: the newest windows survive; a stream's last window is never dropped
        assert seqs[-1] == run.made[sid] - 1, (sid, seqs, run.made[sid])
        # the drops are the daemon queue's, not the endpoint's (it answered every request)
        assert "inference_dropped_windows" not in run.final(sid).get("source_stats", {})
    total = sum(run.made.values())
    assert sum(dropped.values()) >= total // 4, (dropped, total)  # it really could not keep up
    assert all(s.action == SLOW for s in fake.seen) and len(fake.seen) >= 10

    preds = sorted((m for m in run.msgs if m["type"] == "prediction"), key=lambda m: m["wall_time"])
    at = {id(m): t for m, t in zip(run.msgs, run.recv_at, strict=True)}
    lat = np.array([at[id(m)] - m["wall_time"] for m in preds])
    # Growth: first vs last third of the windows made while windows kept coming. The last
    # PENDING windows made are left out of this comparison (not of the bound above): when the
    # streams end (a stream's padded final window comes with its last full one) they drain with
    # nothing newer pushing the queue's oldest out, so they wait the whole queue.
    steady = lat[:-PENDING]
    thirds = (steady[:len(steady) // 3], steady[-(len(steady) // 3):])
    p95 = [float(np.percentile(part, 95)) for part in thirds]
    print(f"backpressure: {sum(dropped.values())} of {total} windows dropped {dropped}; "
          f"latency p50 {np.median(lat):.2f} s, p95 {np.percentile(lat, 95):.2f} s, "
          f"max {lat.max():.2f} s (bound {LATENCY_BOUND_S:.1f} s); p95 first/last third "
          f"{p95[0]:.2f}/{p95[1]:.2f} s; the last {PENDING} windows (drained) "
          f"max {lat[-PENDING:].max():.2f} s")
    assert float(np.percentile(lat, 95)) < LATENCY_BOUND_S + SLACK_S
    assert lat.max() < LATENCY_BOUND_S + 2 * SLACK_S
    # Without the drops the queue would grow by 4 windows a second: 1 s more latency a second,
    # over 2 s more from the first third to the last.
    assert p95[1] < p95[0] + BATCH_S, p95


# ----------------------------------------------------------------------------- 503

def test_503_drops_and_counts_then_predictions_resume(
        tmp_path: Path, tiny_model_path: Path, tess_dir: Path, fake: FakeServe) -> None:
    """Overloaded while any window of the request has seq 2-4; answers again afterwards."""
    fake.reset(lambda seen: OVERLOADED if any(2 <= q <= 4 for q in seen.seqs) else OK)
    cfg = _config(tmp_path, tiny_model_path, fake.url)
    run = asyncio.run(_replay(cfg, _sources(tess_dir, ["a", "b"], 3)))

    refused = fake.windows(OVERLOADED)
    assert refused and not run.errors()
    for sid in ("a", "b"):
        seqs, dropped = _accounted(run, sid)
        _ended_eof(run, sid)
        lost = sorted(q for s, q in refused if s == sid)
        assert {2, 3, 4} <= set(lost) and dropped == len(lost)
        assert seqs == [q for q in range(run.made[sid]) if q not in lost]  # exactly those
        assert max(seqs) > 4  # predictions resumed once the endpoint answered again
        stats = run.final(sid)["source_stats"]
        assert stats["inference_dropped_windows"] == dropped
    # 503 is overload, not an outage: no retry, no probe, never shown as unavailable
    assert run.daemon.engine.stats["outages"] == 0
    assert run.daemon.engine.stats["retried_windows"] == 0
    assert not any("inference_unavailable" in s.get("source_stats", {})
                   for m in run.statuses() for s in m["streams"])
    print(f"503: {len(refused)} windows refused in "
          f"{sum(s.action == OVERLOADED for s in fake.seen)} requests, all counted")


# ----------------------------------------------------------------------------- retry

class DropTwice:
    """Drops two requests' connections, once each: first one kept alive since an earlier
    request (seq >= 2), then one opened for its request (seq >= 5: from seq 4 the fake closes
    connections after answering, so the next request opens a new one). Their resends pass."""

    def __init__(self) -> None:
        self.stale: Seen | None = None
        self.fresh: Seen | None = None

    def __call__(self, seen: Seen) -> str:
        if seen.windows() in ([s.windows() for s in (self.stale, self.fresh) if s]):
            return OK  # the resend
        if self.stale is None:
            if seen.reused and max(seen.seqs) >= 2:
                self.stale = seen
                return DROP
            return OK
        if self.fresh is None and max(seen.seqs) >= 4:
            if not seen.reused and max(seen.seqs) >= 5:
                self.fresh = seen
                return DROP
            return CLOSE
        return OK


def test_dropped_connection_is_retried_and_its_windows_predicted(
        tmp_path: Path, tiny_model_path: Path, tess_dir: Path, fake: FakeServe) -> None:
    plan = DropTwice()
    fake.reset(plan)
    cfg = _config(tmp_path, tiny_model_path, fake.url)
    run = asyncio.run(_replay(cfg, _sources(tess_dir, ["a", "b"], 3)))

    assert plan.stale is not None and plan.fresh is not None, fake.seen
    for target in (plan.stale, plan.fresh):  # dropped once, then answered
        assert [s.action for s in fake.seen if s.windows() == target.windows()] == [DROP, OK]
    assert not run.errors()
    for sid in ("a", "b"):
        seqs, dropped = _accounted(run, sid)
        _ended_eof(run, sid)
        assert dropped == 0 and seqs == list(range(run.made[sid]))  # nothing lost
    stats = run.daemon.engine.stats
    # the kept-alive connection: resent at once (it may simply have idled out), uncounted; the
    # new one: a failed request, retried after RETRY_DELAY_S and counted
    assert stats["retried_windows"] == len(plan.fresh.seqs) and stats["failed_requests"] == 1
    assert stats["outages"] == 0 and stats["dropped_windows"] == 0
    for sid in ("a", "b"):
        n = plan.fresh.streams.count(sid)
        assert run.final(sid).get("source_stats", {}).get("inference_retried_windows", 0) == n
    print(f"retry: kept-alive drop {plan.stale.windows()} resent, new-connection drop "
          f"{plan.fresh.windows()} retried and counted")


# ----------------------------------------------------------------------------- timeout

def test_request_past_the_timeout_is_dropped_and_counted(
        tmp_path: Path, tiny_model_path: Path, tess_dir: Path, fake: FakeServe) -> None:
    hung: list[Seen] = []

    def plan(seen: Seen) -> str:  # the first request with a window of seq >= 3: no answer
        if not hung and max(seen.seqs) >= 3:
            hung.append(seen)
            return HANG
        return OK

    fake.reset(plan, hang_s=5.0)
    cfg = _config(tmp_path, tiny_model_path, fake.url, remote=RemoteOptions(timeout_s=1.0))
    t0 = time.monotonic()
    run = asyncio.run(_replay(cfg, _sources(tess_dir, ["a", "b"], 3)))
    elapsed = time.monotonic() - t0

    assert hung and not run.errors()
    lost = hung[0].windows()
    for sid in ("a", "b"):
        seqs, dropped = _accounted(run, sid)
        _ended_eof(run, sid)
        mine = [q for s, q in lost if s == sid]
        assert dropped == len(mine)
        assert seqs == [q for q in range(run.made[sid]) if q not in mine]
        assert max(seqs) > max(hung[0].seqs)  # the daemon went on
        if mine:
            assert run.final(sid)["source_stats"]["inference_dropped_windows"] == len(mine)
    stats = run.daemon.engine.stats
    assert stats["dropped_windows"] == len(lost) and stats["retried_windows"] == 0
    assert stats["outages"] == 0  # a slow answer is not an outage
    # the windows after the hung request waited for its timeout (1 s), not for the answer (5 s)
    late = [m["latency_ms"] for m in run.msgs if m["type"] == "prediction"]
    assert max(late) < 3000, max(late)
    print(f"timeout: {len(lost)} windows of the hung request dropped; run {elapsed:.1f} s, "
          f"max latency {max(late):.0f} ms")


def test_fake_serve_speaks_the_wire(fake: FakeServe) -> None:
    """The fake answers as a replica: the card with the sha256, probabilities per window."""
    from streamer.backends.remote import ServeClient

    c = ServeClient(fake.url, 5.0)
    card = c.card()
    assert card["name"] == "tiny-test" and card["sha256"] == fake.compute.sha256
    waves = np.zeros((3, fake.compute.model.window_samples), np.float32)
    res = c.infer(Chunk(waves, ["x"] * 3, [0, 1, 2]))
    assert np.asarray(res["probs"]).shape == (3, len(card["classes"]))
    with contextlib.suppress(Exception):
        c._local.conn.close()


def test_a_given_model_must_be_the_one_the_cluster_serves(fake: FakeServe, tmp_path: Path,
                                                           tiny_model_path: Path) -> None:
    """``stream --inference URL --model F``: F is checked against the cluster's card instead
    of being silently ignored; without --model (check_model off) the cluster's model is used."""
    from streamer.backends import InferenceUnavailable, RemoteOptions, connect_remote

    other = tmp_path / "other.pt"
    other.write_bytes(b"not the served file")
    wrong = make_config(tmp_path, other, remote=RemoteOptions(check_model=True))
    wrong.inference = fake.url
    with pytest.raises(InferenceUnavailable, match="--model: .*is not the model the cluster"):
        connect_remote(wrong)
    same = make_config(tmp_path, tiny_model_path, remote=RemoteOptions(check_model=True))
    same.inference = fake.url
    assert connect_remote(same).card["sha256"] == fake.compute.sha256
    unchecked = make_config(tmp_path, other)
    unchecked.inference = fake.url
    assert connect_remote(unchecked).card["name"] == "tiny-test"
