"""The websocket server against real clients: security, bad messages, backpressure, churn."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import socket
import subprocess
import sys
import threading

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect as sync_connect

from streamer import protocol
from streamer.server import ConfigError, Server, ServerConfig, check_bind
from streamer.sources import FileSource
from tests.streamer_harness import REPO, client, copy_files, make_config, running, tess_files


def _status_code(exc: BaseException) -> int:
    assert isinstance(exc, InvalidStatus), exc
    return exc.response.status_code


# ----------------------------------------------------------------------------- handshake

def test_public_bind_needs_token():
    with pytest.raises(ConfigError, match="token"):
        check_bind("0.0.0.0", None)
    with pytest.raises(ConfigError):
        Server(ServerConfig(host="192.168.1.5"), hello=lambda c: {})
    check_bind("0.0.0.0", "s3cret")
    check_bind("127.0.0.1", None)
    check_bind("::1", None)
    check_bind("localhost", None)


@pytest.mark.timeout(60)
def test_cli_refuses_public_bind_without_token(tmp_path, tiny_model_path):
    env = {k: v for k, v in os.environ.items() if k != "EMOTION_MONITOR_TOKEN"}
    proc = subprocess.run(
        [sys.executable, "-m", "emotion_monitor", "stream", "--host", "0.0.0.0", "--replay",
         "x.wav", "--model", str(tiny_model_path)], cwd=REPO, env=env, capture_output=True,
        text=True, timeout=60)
    assert proc.returncode == 2 and "token" in proc.stderr


@pytest.mark.timeout(60)
def test_token_and_origin_checked_at_handshake(tmp_path, tiny_model_path):
    cfg = make_config(tmp_path, tiny_model_path, token="s3cret-token",
                      origins=("http://localhost:8501",))

    async def main():
        async with running(cfg) as daemon:
            base = f"ws://127.0.0.1:{daemon.port}/"
            refused = {}
            for name, kw in {
                "no token": {"uri": base},
                "wrong token": {"uri": base, "additional_headers": {
                    "Authorization": "Bearer s3cret-tokem"}},
                "wrong query token": {"uri": base + "?token=nope"},
                "foreign origin": {"uri": base + "?token=s3cret-token",
                                   "origin": "http://evil.example"},
            }.items():
                with pytest.raises(InvalidStatus) as info:
                    async with connect(**kw):
                        pass
                refused[name] = _status_code(info.value)
            ok = []
            for kw in ({"uri": base, "additional_headers": {
                            "Authorization": "Bearer s3cret-token"}},
                       {"uri": base + "?token=s3cret-token"},
                       {"uri": base + "?token=s3cret-token", "origin": "http://localhost:8501"}):
                async with client(kw.pop("uri"), **kw) as c:
                    ok.append((await c.request(protocol.ping(id=1)))["type"])
            return refused, ok

    refused, ok = asyncio.run(main())
    assert refused == {"no token": 401, "wrong token": 401, "wrong query token": 401,
                       "foreign origin": 403}
    assert ok == ["pong"] * 3


@pytest.mark.timeout(60)
def test_max_clients(tmp_path, tiny_model_path):
    cfg = make_config(tmp_path, tiny_model_path, max_clients=2)

    async def main():
        async with running(cfg) as daemon, client(daemon), client(daemon):
            with pytest.raises(InvalidStatus) as info:
                async with connect(f"ws://127.0.0.1:{daemon.port}/"):
                    pass
            return _status_code(info.value)

    assert asyncio.run(main()) == 503


# ----------------------------------------------------------------------------- messages

@pytest.mark.timeout(60)
def test_bad_client_messages_get_errors_connection_stays(tmp_path, tiny_model_path):
    cfg = make_config(tmp_path, tiny_model_path, max_message_bytes=4096, max_upload_bytes=1000)
    bad = {
        "not json": ("{not json", "bad_json"),
        "array": ("[1, 2, 3]", "bad_json"),
        "unknown type": (json.dumps({"type": "launch", "v": "1", "id": "u"}), "unknown_type"),
        "server type": (json.dumps({"type": "prediction", "v": "1"}), "unknown_type"),
        "no version": (json.dumps({"type": "ping"}), "unsupported_version"),
        "version 2": (json.dumps({"type": "ping", "v": "2"}), "unsupported_version"),
        "extra field": (json.dumps({"type": "ping", "v": "1", "bogus": 1}), "invalid_message"),
        "bad subscribe": (json.dumps({"type": "subscribe", "v": "1", "streams": 5}),
                          "invalid_message"),
        "oversized": (json.dumps({"type": "ping", "v": "1", "pad": "x" * 5000}), "too_large"),
        "oversized junk": ("x" * 5000, "too_large"),
        "upload too big": (json.dumps(protocol.replay(upload_name="a.wav",
                                                      upload_data=b"\0" * 2000)), "too_large"),
        "upload not base64": (json.dumps({"type": "replay", "v": "1", "upload": {
            "name": "a.wav", "data": "!!!!"}}), "invalid_message"),
        "binary frame": (b"\x00\x01binary", "bad_json"),
        "path replay disabled": (json.dumps(protocol.replay(path="a.wav")), "forbidden"),
    }

    async def main():
        async with running(cfg) as daemon, client(daemon) as c:
            codes = {}
            for i, (name, (payload, _)) in enumerate(bad.items()):
                await c.send(payload) if isinstance(payload, str) else await c.ws.send(payload)
                err = await c.until(lambda m: m["type"] in ("error", "pong"))
                codes[name] = err.get("code")
                pong = await c.request(protocol.ping(id=i, t=float(i)))  # still usable
                assert pong["type"] == "pong" and pong["t"] == float(i)
            ref = await c.request({"type": "ping", "v": "1", "id": "r9", "junk": True})
            return codes, ref

    codes, ref = asyncio.run(main())
    assert codes == {name: code for name, (_, code) in bad.items()}
    assert ref["type"] == "error" and ref["ref"] == "r9"  # errors point at the request


@pytest.mark.timeout(60)
def test_replay_paths_confined_to_allowed_dir(tmp_path, tiny_model_path, tess_dir):
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    copy_files(tess_files(tess_dir, 1), allowed)
    secret = copy_files(tess_files(tess_dir, 1), outside)[0]
    (allowed / "link.flac").symlink_to(secret)
    (allowed / "linkdir").symlink_to(outside, target_is_directory=True)
    (allowed / "sub").mkdir()
    (allowed / "sub" / "inner.flac").symlink_to(secret)
    cfg = make_config(tmp_path, tiny_model_path, allowed_dir=allowed)
    inside_name = tess_files(tess_dir, 1)[0].name
    cases = {
        "../outside/" + secret.name: "forbidden",
        "sub/../../outside/" + secret.name: "forbidden",
        str(secret): "forbidden",
        "link.flac": "forbidden",
        "linkdir/" + secret.name: "forbidden",
        "sub": "forbidden",  # a directory holding a link that escapes
        "missing.flac": "not_found",
        inside_name: None,
        str(allowed / inside_name): None,
    }

    async def main():
        async with running(cfg) as daemon, client(daemon) as c:
            out = {}
            for i, path in enumerate(cases):
                reply = await c.request(protocol.replay(path=path, speed=0, id=i))
                out[path] = reply.get("code") if reply["type"] == "error" else None
            return out

    assert asyncio.run(main()) == cases


@pytest.mark.timeout(60)
def test_upload_replay(tmp_path, tiny_model_path, tess_dir):
    """An uploaded file (base64) within the limit is replayed; garbage is refused clearly."""
    data = tess_files(tess_dir, 1)[0].read_bytes()
    cfg = make_config(tmp_path, tiny_model_path)

    async def main():
        async with running(cfg) as daemon, client(daemon) as c:
            bad = await c.request(protocol.replay(upload_name="x.wav", upload_data=b"RIFFjunk",
                                                  id="bad"))
            ack = await c.request(protocol.replay(upload_name="clip one.flac", upload_data=data,
                                                  speed=0, id="up"))
            await c.until(lambda m: m["type"] == "stream_ended" and m["stream"] == ack["stream"],
                          seen=True)
            upload_dir = daemon.uploads.directory
            return bad, ack, c, upload_dir

    bad, ack, c, upload_dir = asyncio.run(main())
    assert bad["code"] == "bad_audio" and "x.wav" in bad["message"]
    assert ack["type"] == "ack"
    started = next(m for m in c.of("stream_started") if m["stream"]["stream"] == ack["stream"])
    assert started["stream"]["kind"] == "upload" and started["ref"] == "up"
    assert c.of("prediction", ack["stream"])
    assert upload_dir is None or not upload_dir.exists()  # uploads removed at exit


# ----------------------------------------------------------------------------- backpressure

def _reader(url: str, out: list, stop: threading.Event) -> None:
    """A fast client in its own thread: reads everything until the stream ends."""
    with sync_connect(url) as ws:
        while not stop.is_set():
            try:
                msg = json.loads(ws.recv(timeout=60))
            except (TimeoutError, ConnectionClosed):
                return
            out.append(msg)
            if msg["type"] == "stream_ended":
                stop.set()


async def _start_reader(daemon, url: str, out: list, clients: int
                        ) -> tuple[threading.Thread, threading.Event]:
    """Start ``_reader`` in a thread; return once the server has ``clients`` clients."""
    done = threading.Event()
    t = threading.Thread(target=_reader, args=(url, out, done), daemon=True)
    t.start()
    while len(daemon.server.clients) < clients:
        await asyncio.sleep(0.01)
    return t, done


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_slow_client_loses_oldest_others_unaffected(tmp_path, tiny_model_path, tess_dir):
    files = tess_files(tess_dir, 3) * 2
    cfg = make_config(tmp_path, tiny_model_path, queue_size=16, max_batch=4, explain_every=1,
                      send_buffer_bytes=8192)

    async def main():
        async with running(cfg) as daemon:
            url = f"ws://127.0.0.1:{daemon.port}/"
            # The slow client never reads; a tiny receive buffer so the kernel holds little.
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", daemon.port))
            async with connect(url, sock=sock, max_queue=1) as slow:
                slow_id = json.loads(await slow.recv())["client_id"]  # hello; then no reads
                fast: list = []
                t, done = await _start_reader(daemon, url, fast, clients=2)
                await daemon._start_source(FileSource(files, 16000, name="s", speed=0))
                while not done.is_set():
                    await asyncio.sleep(0.05)
                t.join(10)
                stats = {c["client_id"]: c for c in daemon.server.clients_status()}
                got = []
                while not got or got[-1]["type"] != "stream_ended":
                    got.append(json.loads(await asyncio.wait_for(slow.recv(), 30)))
                return fast, got, stats, slow_id, daemon.streams["s"].dropped

    fast, slow, stats, slow_id, dropped_windows = asyncio.run(main())
    fast_preds = [m["seq"] for m in fast if m["type"] == "prediction"]
    n = len(fast_preds)
    assert fast_preds == list(range(n)) and n >= 20
    assert sum(m["type"] == "explanation" for m in fast) > 0
    assert stats[slow_id]["dropped_messages"] > 0
    assert all(s["dropped_messages"] == 0 for cid, s in stats.items() if cid != slow_id)
    slow_preds = [m["seq"] for m in slow if m["type"] == "prediction"]
    assert slow_preds == sorted(slow_preds) and len(slow_preds) < n
    assert slow_preds[-1] == n - 1  # it kept the newest, lost the oldest
    assert dropped_windows == 0


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_fifty_clients_come_and_go(tmp_path, tiny_model_path, tess_dir):
    files = tess_files(tess_dir, 2)
    cfg = make_config(tmp_path, tiny_model_path)

    async def churn(url: str, i: int, rng: random.Random) -> str:
        await asyncio.sleep(rng.uniform(0, 1.5))
        ws = await connect(url, open_timeout=30)
        hello = json.loads(await ws.recv())
        for _ in range(rng.randint(0, 3)):
            json.loads(await asyncio.wait_for(ws.recv(), 30))
        if i % 3 == 0:
            ws.transport.abort()  # vanish without a close handshake
        else:
            await ws.close()
        return hello["type"]

    async def main():
        async with running(cfg) as daemon:
            url = f"ws://127.0.0.1:{daemon.port}/"
            steady: list = []
            t, done = await _start_reader(daemon, url, steady, clients=1)
            await daemon._start_source(FileSource(files, 16000, name="s", speed=3, loop=True))
            rng = random.Random(0)
            hellos = await asyncio.gather(*(churn(url, i, rng) for i in range(50)))
            async with client(daemon) as c:
                pong = await c.request(protocol.ping(id="after"))
            daemon._stop_stream("s", None)
            while not done.is_set():
                await asyncio.sleep(0.05)
            t.join(10)
            for _ in range(100):  # the server notices the aborted connections
                if len(daemon.server.clients) <= 1:
                    break
                await asyncio.sleep(0.05)
            return hellos, pong, steady, len(daemon.server.clients), daemon.streams["s"]

    hellos, pong, steady, n_clients, stream = asyncio.run(main())
    assert hellos == ["hello"] * 50 and pong["type"] == "pong"
    preds = [m["seq"] for m in steady if m["type"] == "prediction"]
    assert preds == list(range(len(preds))) and len(preds) >= 3
    assert n_clients <= 1
    assert stream.dropped == 0 and stream.state == "ended"


def test_client_builders_roundtrip_upload():
    m = protocol.replay(upload_name="a.wav", upload_data=b"abc", speed=2)
    assert base64.b64decode(m["upload"]["data"]) == b"abc"


def test_client_queue_bounds():
    """The per-client queues themselves: the oldest broadcast goes first; unread replies are
    bounded too."""
    from streamer.server import MAX_UNREAD_REPLIES, Client

    async def main():
        c = Client("c1", ws=None, queue_size=4)
        for i in range(10):
            c.offer(str(i))
        for i in range(MAX_UNREAD_REPLIES + 6):
            c.reply(protocol.pong(ref=i))
        return c

    c = asyncio.run(main())
    assert list(c.queue) == ["6", "7", "8", "9"]
    assert len(c.control) == MAX_UNREAD_REPLIES and c.dropped == 6 + 6
    assert json.loads(c.control[0])["ref"] == 6
    assert not c.wants("prediction", "s2") or c.streams is None
    c.streams, c.types = {"s1"}, {"prediction"}
    assert c.wants("prediction", "s1") and not c.wants("prediction", "s2")
    assert not c.wants("explanation", "s1") and not c.wants("status", None)
    assert c.wants("stream_ended", "s2") and c.wants("error", None)


@pytest.mark.timeout(60)
def test_subscribe_filters_streams_and_types(tmp_path, tiny_model_path, tess_dir):
    files = tess_files(tess_dir, 2)
    cfg = make_config(tmp_path, tiny_model_path, explain_every=1)

    async def main():
        async with running(cfg) as daemon, client(daemon) as c:
            ack = await c.request(protocol.subscribe(["b"], types=["prediction"], id="sub"))
            await daemon._start_source(FileSource(files[:1], 16000, name="a", speed=0))
            await daemon._start_source(FileSource(files[1:], 16000, name="b", speed=0))
            for s in ("a", "b"):
                await c.until(lambda m, s=s: m["type"] == "stream_ended" and m["stream"] == s,
                              seen=True)
            return ack, c

    ack, c = asyncio.run(main())
    assert ack["type"] == "ack" and ack["streams"] == ["b"]
    assert c.of("prediction", "b") and not c.of("prediction", "a")
    assert not c.of("explanation") and not c.of("status")
    assert {m["stream"] for m in c.of("stream_ended")} == {"a", "b"}  # always delivered
