"""The daemon under hostile and careless input (issue 14): each hole as a regression test
against a real daemon with real websocket clients, plus the variants the probe did not try."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time

import pytest

from streamer import protocol
from streamer.daemon import _RequestError
from streamer.sources import FileSource, Source
from tests.streamer_harness import (
    DaemonProcess,
    client,
    copy_files,
    make_config,
    running,
    tess_files,
)


def _ended(sid: str):
    return lambda m: m["type"] == "stream_ended" and m["stream"] == sid


# ----------------------------------------------------------------------------- special files

class HangingSource(Source):
    """A source whose open() never returns, like a file on a hung network mount."""

    kind = "file"

    def __init__(self) -> None:
        self.name, self.sample_rate = "hang", 16000
        self.release = threading.Event()

    @property
    def stream_ids(self):
        return [self.name]

    def open(self):
        self.release.wait(60)
        return self


@pytest.mark.timeout(90)
def test_special_files_refused_nothing_stalls(tmp_path, tiny_model_path, tess_dir):
    """FIFOs in the allowed directory are refused at once (more requests than the loop's
    default executor has threads), pings and a bystander stream go on, a directory holding a
    FIFO plays its regular files, a file swapped for a FIFO while it plays ends that stream
    with an error, and a file check that hangs is answered after file_timeout_s."""
    allowed = tmp_path / "allowed"
    clip = copy_files(tess_files(tess_dir, 1), allowed / "d")[0]
    os.mkfifo(allowed / "pipe.wav")
    os.mkfifo(allowed / "d" / "fifo.flac")
    swap = copy_files([clip], allowed)[0]
    cfg = make_config(tmp_path, tiny_model_path, allowed_dir=allowed, file_timeout_s=1.0)
    bystander = FileSource([clip], 16000, name="bystander", speed=4, loop=True)

    async def main():
        async with running(cfg, [bystander]) as daemon, client(daemon) as c:
            t0 = time.monotonic()
            for i in range(8):
                reply = await c.request(protocol.replay(path="pipe.wav", id=f"f{i}"), timeout=10)
                assert reply["type"] == "error" and reply["code"] == "bad_audio", reply
                assert "not a regular file" in reply["message"], reply
                pong = await c.request(protocol.ping(id=f"p{i}"), timeout=10)
                assert pong["type"] == "pong"
            refused_in = time.monotonic() - t0
            seq = c.of("prediction", "bystander")[-1]["seq"] if c.of("prediction") else -1
            await c.until(lambda m: m["type"] == "prediction" and m["stream"] == "bystander"
                          and m["seq"] > seq + 2, timeout=30)
            d_ack = await c.request(protocol.replay(path="d", speed=0, id="d"))
            assert d_ack["type"] == "ack", d_ack
            await c.until(_ended(d_ack["stream"]), seen=True)
            s_ack = await c.request(protocol.replay(path=swap.name, speed=0, loop=True, id="s"))
            assert s_ack["type"] == "ack", s_ack
            os.mkfifo(tmp_path / "new-fifo")
            os.replace(tmp_path / "new-fifo", swap)
            ended = await c.until(_ended(s_ack["stream"]), seen=True)
            with pytest.raises(_RequestError) as hung:
                await daemon._start_source(HangingSource())
            return c, refused_in, d_ack, s_ack, ended, hung.value

    c, refused_in, d_ack, s_ack, ended, hung = asyncio.run(main())
    assert refused_in < 30
    assert c.of("stream_ended", d_ack["stream"])[0]["reason"] == "eof"
    assert c.of("prediction", d_ack["stream"])
    assert ended["reason"] == "error"
    errs = [m for m in c.of("error") if m.get("stream") == s_ack["stream"]]
    assert errs and "not a regular file" in errs[0]["message"], errs
    assert hung.code == "source_failed" and "longer than 1 s" in hung.message


@pytest.mark.timeout(120)
def test_sigterm_bounded_while_sources_block(tmp_path, tiny_model_path):
    """SIGTERM stops the CLI daemon in bounded time while stdin never delivers and after a
    client asked for a FIFO (which used to hang a thread that interpreter exit waited for)."""
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    os.mkfifo(allowed / "pipe.wav")
    r, w = os.pipe()  # stdin for the daemon: open, silent
    try:
        d = DaemonProcess(["--replay", "-", "--model", str(tiny_model_path), "--device", "cpu",
                           "--vad", "energy", "--explain-every", "0", "--allowed-dir",
                           str(allowed), "--sessions-dir", str(tmp_path / "s")], cwd=tmp_path,
                          stdin=r)

        async def ask():
            async with client(d.url) as c:
                return await c.request(protocol.replay(path="pipe.wav", id="x"), timeout=20)

        reply = asyncio.run(ask())
        t0 = time.monotonic()
        d.signal()
        rc, err = d.wait(timeout=30)
        took = time.monotonic() - t0
    finally:
        os.close(w)
        os.close(r)
    assert reply["type"] == "error" and reply["code"] == "bad_audio", reply
    assert rc == 0, err
    assert took < 20, took


def test_fifo_on_command_line_does_not_block(tmp_path):
    """The same check for sources given by the operator (``--replay FIFO``)."""
    from streamer.sources import SourceError

    os.mkfifo(tmp_path / "p.wav")
    t0 = time.monotonic()
    with pytest.raises(SourceError, match="not a regular file"):
        FileSource([tmp_path / "p.wav"], 16000).open()
    assert time.monotonic() - t0 < 5


# ----------------------------------------------------------------------------- uploads

def _wav(seconds: float, seed: int, rate: int = 16000, subtype: str = "PCM_16") -> bytes:
    import io

    import numpy as np
    import soundfile as sf

    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    sf.write(buf, (rng.standard_normal(int(seconds * rate)) * 0.1).astype(np.float32), rate,
             format="WAV", subtype=subtype)
    return buf.getvalue()


@pytest.mark.timeout(90)
def test_concurrent_uploads_same_name_stay_private(tmp_path, tiny_model_path):
    """Eight clients upload different audio under one name at the same moment: each stream
    plays its own client's audio (its length), none fails; a 255-character name and a name
    with path parts work; the private files are gone once the streams end."""
    n = 8
    cfg = make_config(tmp_path, tiny_model_path)
    uploads = [_wav(1.0 + 0.5 * i, i) for i in range(n)]
    names = ["call.wav"] * n
    names[1] = "x" * 251 + ".wav"
    names[2] = "../../etc/passwd.wav"

    async def one(daemon, i: int):
        async with client(daemon) as c:
            ack = await c.request(protocol.replay(upload_name=names[i], upload_data=uploads[i],
                                                  speed=0, id=f"u{i}"), timeout=30)
            assert ack["type"] == "ack", ack
            ended = await c.until(_ended(ack["stream"]), seen=True)
            started = next(m for m in c.of("stream_started")
                           if m["stream"]["stream"] == ack["stream"])
            return ended, started, c.of("error")

    async def main():
        async with running(cfg) as daemon:
            results = await asyncio.gather(*(one(daemon, i) for i in range(n)))
            for _ in range(50):  # the last stream's file goes right after its stream_ended
                if not daemon.uploads.files:
                    break
                await asyncio.sleep(0.1)
            left = (sorted(p.name for p in daemon.uploads.directory.iterdir())
                    if daemon.uploads.directory else [])
            mode = daemon.uploads.directory.stat().st_mode & 0o777
            return results, left, mode, daemon.uploads.directory

    results, left, mode, directory = asyncio.run(main())
    for i, (ended, started, errors) in enumerate(results):
        assert not errors, errors
        assert ended["reason"] == "eof"
        assert ended["t_end_s"] == pytest.approx(1.0 + 0.5 * i, abs=0.02), (i, ended)
        assert started["stream"]["source"] == names[i]  # the client's name, not our path
        assert str(directory) not in started["stream"]["source"]
    assert len({e["stream"] for e, _, _ in results}) == n
    assert left == [] and mode == 0o700
    assert not directory.exists()  # removed at exit


# ----------------------------------------------------------------------------- limits

@pytest.mark.timeout(120)
def test_stream_limit_reserved_atomically(tmp_path, tiny_model_path, tess_dir):
    """60 clients send `replay` at the same moment with --max-streams 8: exactly 8 acks, the
    rest limit_reached, and no status ever shows more than 8 streams running."""
    n, limit = 60, 8
    allowed = tmp_path / "allowed"
    clip = copy_files(tess_files(tess_dir, 1), allowed)[0]
    cfg = make_config(tmp_path, tiny_model_path, allowed_dir=allowed, max_streams=limit,
                      max_clients=n + 1, status_interval_s=0.2)

    async def main():
        async with running(cfg) as daemon, client(daemon) as watcher, \
                contextlib.AsyncExitStack() as stack:
            clients = [await stack.enter_async_context(client(daemon)) for _ in range(n)]
            go = asyncio.Event()

            async def ask(i: int, c):
                await go.wait()
                return await c.request(protocol.replay(path=clip.name, loop=True, id=i),
                                       timeout=60)

            tasks = [asyncio.create_task(ask(i, c)) for i, c in enumerate(clients)]
            await asyncio.sleep(0.2)
            go.set()
            replies = await asyncio.gather(*tasks)
            # The watcher reads lazily: statuses queued while 60 clients connected come first
            # on a loaded machine, so wait for the streams themselves, then two fresh statuses.
            for _ in range(limit):
                await watcher.until(lambda m: m["type"] == "stream_started", timeout=60)
            await watcher.until(lambda m: m["type"] == "status")
            await watcher.until(lambda m: m["type"] == "status")
            return replies, watcher

    replies, watcher = asyncio.run(main())
    kinds = [r["type"] if r["type"] == "ack" else r["code"] for r in replies]
    assert kinds.count("ack") == limit, kinds
    assert kinds.count("limit_reached") == n - limit, kinds
    assert len(watcher.of("stream_started")) == limit
    most = max(sum(s["state"] == "running" for s in m["streams"]) for m in watcher.of("status"))
    assert most == limit


@pytest.mark.timeout(60)
def test_client_limit_holds_for_simultaneous_handshakes(tmp_path, tiny_model_path):
    """20 connections at once with --max-clients 4: at most 4 are ever served (the rest get
    503 or a 1013 close), and a slot freed is usable again."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed, InvalidStatus

    cfg = make_config(tmp_path, tiny_model_path, max_clients=4)

    async def main():
        async with running(cfg) as daemon:
            url = f"ws://127.0.0.1:{daemon.port}/"

            async def try_one():
                try:
                    ws = await connect(url)
                except InvalidStatus as exc:
                    return None, exc.response.status_code
                try:
                    first = await asyncio.wait_for(ws.recv(), 20)
                    return ws, first
                except ConnectionClosed as exc:
                    return None, exc.rcvd.code if exc.rcvd else None

            results = await asyncio.gather(*(try_one() for _ in range(20)))
            served = [ws for ws, _ in results if ws is not None]
            refused = sorted({r for ws, r in results if ws is None})
            peak = len(daemon.server.clients)
            for ws in served:
                await ws.close()
            for _ in range(100):
                if not daemon.server.clients:
                    break
                await asyncio.sleep(0.05)
            async with client(daemon) as again:
                pong = await again.request(protocol.ping(id=1))
            return len(served), refused, peak, pong

    served, refused, peak, pong = asyncio.run(main())
    assert 1 <= served <= 4 and peak <= 4, (served, peak)
    assert set(refused) <= {503, 1013}, refused
    assert pong["type"] == "pong"


# ----------------------------------------------------------------------------- file names

def _non_utf8_tree(root, clip):
    """mixed/: a good clip, a good clip under a non-UTF-8 name, a corrupt non-UTF-8 file;
    onlybad/: one corrupt non-UTF-8 file."""
    import shutil

    mixed, onlybad = root / "mixed", root / "onlybad"
    mixed.mkdir(parents=True)
    onlybad.mkdir()
    shutil.copy(clip, mixed / "a.flac")
    shutil.copy(clip, os.path.join(os.fsencode(mixed), b"ok\xfe.flac"))
    with open(os.path.join(os.fsencode(mixed), b"bad\xff.wav"), "wb") as f:
        f.write(b"not audio at all" * 10)
    with open(os.path.join(os.fsencode(onlybad), b"\xff\xfe.wav"), "wb") as f:
        f.write(b"RIFF" + b"\0" * 60)
    return mixed, onlybad


@pytest.mark.timeout(90)
def test_non_utf8_file_names_over_websocket(tmp_path, tiny_model_path, tess_dir):
    """A directory with non-UTF-8 names plays its readable files (one of them non-UTF-8) and
    says which it skipped; a directory with only a bad one gets an error reply naming it with
    \\xNN escapes, and the connection stays. No reply shows the allowed directory's path."""
    import soundfile as sf

    allowed = tmp_path / "allowed"
    clip = tess_files(tess_dir, 1)[0]
    _non_utf8_tree(allowed, clip)
    duration = sf.info(str(clip)).duration
    cfg = make_config(tmp_path, tiny_model_path, allowed_dir=allowed, gap_s=0.5,
                      status_interval_s=0.2)

    async def main():
        async with running(cfg) as daemon, client(daemon) as c:
            ack = await c.request(protocol.replay(path="mixed", speed=0, id="m"))
            assert ack["type"] == "ack", ack
            await c.until(_ended(ack["stream"]), seen=True)
            status = await c.until(lambda m: m["type"] == "status" and any(
                s["stream"] == ack["stream"] and s["state"] == "ended" for s in m["streams"]))
            bad = await c.request(protocol.replay(path="onlybad", speed=0, id="b"))
            pong = await c.request(protocol.ping(id="still"))
            return c, ack, status, bad, pong

    c, ack, status, bad, pong = asyncio.run(main())
    sid = ack["stream"]
    ended = c.of("stream_ended", sid)[0]
    assert ended["reason"] == "eof"
    assert ended["t_end_s"] == pytest.approx(2 * duration + 0.5, abs=0.05)  # both good files
    skipped = [m for m in c.of("error") if m.get("stream") == sid]
    assert len(skipped) == 1 and "bad\\xff.wav" in skipped[0]["message"], skipped
    row = next(s for s in status["streams"] if s["stream"] == sid)
    assert row["source_stats"] == {"skipped_files": 1}
    assert bad["type"] == "error" and bad["code"] == "bad_audio", bad
    assert "\\xff\\xfe.wav" in bad["message"], bad
    assert pong["type"] == "pong"
    for raw in c.raw:
        assert str(allowed) not in raw and str(allowed.resolve()) not in raw
        raw.encode("utf-8")


@pytest.mark.timeout(120)
def test_non_utf8_file_names_on_command_line(tmp_path, tiny_model_path, tess_dir):
    """`--replay DIR` holding non-UTF-8 names beside a second, valid source: the daemon
    starts, plays both (skipping the unreadable file with a warning) and exits 0."""
    from streamer.sessionlog import read_session, session_path

    clip = tess_files(tess_dir, 1)[0]
    mixed, onlybad = _non_utf8_tree(tmp_path / "data", clip)
    d = DaemonProcess(["--replay", str(mixed), "--replay", str(clip), "--replay", str(onlybad),
                       "--speed", "0", "--exit-when-done", "--model", str(tiny_model_path),
                       "--device", "cpu", "--vad", "energy", "--explain-every", "0",
                       "--sessions-dir", str(tmp_path / "s"), "--session-id", "nonutf8"],
                      cwd=tmp_path)
    rc, err = d.wait(timeout=90)
    assert rc == 0, err
    assert "skipped" in err and "bad\\xff.wav" in err
    msgs = read_session(session_path(tmp_path / "s", "nonutf8")).messages
    ended = {m["stream"]: m for m in msgs if m["type"] == "stream_ended"}
    assert len(ended) == 2 and all(m["reason"] == "eof" for m in ended.values()), ended
    assert any(m["type"] == "error" and "\\xff\\xfe.wav" in m["message"] for m in msgs)


# ----------------------------------------------------------------------------- samples

def _garbage_float_audio(seconds: float = 5.0, rate: int = 16000):
    """Noise with NaN, +Inf, -Inf and one absurd finite sample in it; (audio, non-finite
    count, clipped count)."""
    import numpy as np

    x = (np.random.default_rng(7).standard_normal(int(seconds * rate)) * 0.1).astype(np.float32)
    x = np.clip(x, -0.9, 0.9)
    x[[100, 20000, 40000]] = np.nan
    x[30000] = np.inf
    x[50000] = -np.inf
    x[60000] = 1e30
    return x, 5, 1


@pytest.mark.timeout(90)
def test_non_finite_samples_repaired_and_counted(tmp_path, tiny_model_path):
    """NaN/Inf in float audio from a file, an upload and stdin (VAD off): every window gets a
    prediction (seq without gaps), nobody gets an error, and status counts what was
    repaired."""
    import io

    import soundfile as sf

    from streamer.sources import StdinSource

    x, n_bad, n_clip = _garbage_float_audio()
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    sf.write(str(allowed / "nan.wav"), x, 16000, subtype="FLOAT")
    buf = io.BytesIO()
    sf.write(buf, x, 16000, format="WAV", subtype="FLOAT")
    cfg = make_config(tmp_path, tiny_model_path, allowed_dir=allowed, vad="off",
                      status_interval_s=0.2)

    async def main():
        async with running(cfg) as daemon, client(daemon) as c:
            ids = [(await c.request(protocol.replay(path="nan.wav", speed=0, id="f")))["stream"],
                   (await c.request(protocol.replay(upload_name="nan.wav", speed=0, id="u",
                                                    upload_data=buf.getvalue())))["stream"]]
            ids += await daemon._start_source(StdinSource(
                16000, 16000, fmt="f32le", name="pipe", stream=io.BytesIO(x.tobytes())))
            for sid in ids:
                await c.until(_ended(sid), seen=True)
            status = await c.until(lambda m: m["type"] == "status" and all(
                any(s["stream"] == sid and s["state"] == "ended" for s in m["streams"])
                for sid in ids))
            return c, ids, status

    c, ids, status = asyncio.run(main())
    assert not c.of("error"), c.of("error")
    for sid in ids:
        preds = c.of("prediction", sid)
        assert len(preds) >= 4  # 5 s of audio: windows at 0, 0.5, ... 2 s
        assert [p["seq"] for p in preds] == list(range(len(preds)))
        assert all(p["probabilities"] is not None for p in preds)
        assert c.of("stream_ended", sid)[0]["windows"] == len(preds)
        row = next(s for s in status["streams"] if s["stream"] == sid)
        assert row["source_stats"] == {"nonfinite_samples": n_bad, "clipped_samples": n_clip}


# ----------------------------------------------------------------------------- protocol edges

def _edge_cases() -> dict[str, tuple[str, str]]:
    """name -> (frame, expected error code)."""
    import json

    deep = "[" * 30000 + "]" * 30000
    ping = {"type": "ping", "v": "1"}
    return {
        "30k nested arrays": (deep, "bad_json"),
        "nested in a field": ('{"type":"ping","v":"1","x":' + deep + "}", "bad_json"),
        "lone surrogate id": ('{"type":"ping","v":"1","id":"\\ud800"}', "invalid_message"),
        "lone surrogate key": ('{"type":"ping","v":"1","\\udfff":1}', "invalid_message"),
        "lone surrogate path": ('{"type":"replay","v":"1","path":"a\\udcff.wav"}',
                                "invalid_message"),
        "id true": (json.dumps({**ping, "id": True}), "invalid_message"),
        "id 65 chars": (json.dumps({**ping, "id": "i" * 65}), "invalid_message"),
        "id 5 MB": (json.dumps({**ping, "id": "i" * 5_000_000}), "too_large"),
        "id 1.0": (json.dumps({**ping, "id": 1.0}), "invalid_message"),
        "id 1e300": (json.dumps({**ping, "id": 1e300}), "invalid_message"),
        "v 50 KB": (json.dumps({**ping, "v": "v" * 50_000}), "unsupported_version"),
        "v 5 MB": (json.dumps({**ping, "v": "v" * 5_000_000}), "too_large"),
        "type 50 KB": (json.dumps({"type": "t" * 50_000, "v": "1"}), "unknown_type"),
        "upload + 1 MB junk field": (json.dumps({
            "type": "replay", "v": "1", "upload": {"name": "a.wav", "data": "AAAA"},
            "junk": "j" * 1_000_000}), "too_large"),
        "upload + 100 KB name": (json.dumps({
            "type": "replay", "v": "1", "upload": {"name": "n" * 100_000, "data": "AAAA"}}),
            "too_large"),
    }


@pytest.mark.timeout(90)
def test_protocol_edges_answered_connection_stays(tmp_path, tiny_model_path):
    """Each hostile frame gets one valid error reply with the right code, a short text and a
    `ref` that is only ever a valid id; the connection stays usable after every one."""
    cases = _edge_cases()
    cfg = make_config(tmp_path, tiny_model_path)

    async def main():
        async with running(cfg) as daemon, client(daemon, max_size=None) as c:
            out = {}
            for i, (name, (frame, _)) in enumerate(cases.items()):
                await c.send(frame)
                out[name] = await c.until(lambda m: m["type"] in ("error", "pong", "ack"))
                raw = c.raw[-1]
                pong = await c.request(protocol.ping(id=i), timeout=20)
                assert pong["type"] == "pong" and pong["ref"] == i, (name, pong)
                out[name] = (out[name], len(raw))
            ok = await c.request({"type": "ping", "v": "1", "id": 2**53 - 1})
            return out, ok

    out, ok = asyncio.run(main())
    got = {name: reply["code"] if reply["type"] == "error" else reply["type"]
           for name, (reply, _) in out.items()}
    assert got == {name: code for name, (_, code) in cases.items()}
    for name, (reply, size) in out.items():
        protocol.validate(reply, direction="server")
        assert reply.get("ref") is None, (name, reply)
        assert size < 1500, (name, size)
    assert ok["type"] == "pong" and ok["ref"] == 2**53 - 1


@pytest.mark.timeout(60)
def test_internal_errors_logged_at_a_bounded_rate(tmp_path, tiny_model_path, caplog):
    """A request that hits a server bug gets `internal` every time, but the log gets only a
    few tracebacks per client, not one per message."""
    import logging

    cfg = make_config(tmp_path, tiny_model_path)

    async def main():
        async with running(cfg) as daemon, client(daemon) as c:
            async def broken(msg, ref):
                raise RuntimeError("a bug " + "x" * 5000)

            daemon._replay = broken
            replies = [await c.request(protocol.replay(path="a.wav", id=i)) for i in range(30)]
            pong = await c.request(protocol.ping(id="p"))
            return replies, pong

    with caplog.at_level(logging.ERROR, logger="streamer.server"):
        replies, pong = asyncio.run(main())
    assert [r["code"] for r in replies] == ["internal"] * 30
    assert all(len(r["message"]) < 200 for r in replies)
    tracebacks = [r for r in caplog.records if r.name == "streamer.server" and r.exc_info]
    assert 1 <= len(tracebacks) <= 5, len(tracebacks)
    assert pong["type"] == "pong"


@pytest.mark.timeout(90)
def test_client_that_never_reads_is_disconnected(tmp_path, tiny_model_path, tess_dir):
    """A client that stops reading (tiny receive buffer, never calls recv) is disconnected
    after send_timeout_s without progress and its slot is freed; a reading client is not."""
    import socket

    from websockets.asyncio.client import connect

    files = tess_files(tess_dir, 1)
    cfg = make_config(tmp_path, tiny_model_path, send_timeout_s=2.0, send_buffer_bytes=4096,
                      explain_every=1, max_clients=3)

    async def main():
        async with running(cfg) as daemon, client(daemon, close_timeout=1) as reader:
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", daemon.port))
            async with connect(f"ws://127.0.0.1:{daemon.port}/", sock=sock, max_queue=1,
                               close_timeout=0.5):
                await asyncio.sleep(0.2)
                stuck = [cid for cid in daemon.server.clients if cid != "c1"]
                await daemon._start_source(FileSource(files, 16000, name="busy", speed=0,
                                                      loop=True))
                t0 = time.monotonic()
                while any(cid in daemon.server.clients for cid in stuck):
                    assert time.monotonic() - t0 < 60, "the stuck client was never dropped"
                    await reader.recv()
                took = time.monotonic() - t0
                await reader.until(lambda m: m["type"] == "prediction")  # still served
                async with client(daemon) as again:  # the freed slot is usable
                    pong = await again.request(protocol.ping(id=1))
                await reader.request(protocol.stop_stream("busy", id="stop"))
            return stuck, took, pong

    stuck, took, pong = asyncio.run(main())
    assert len(stuck) == 1 and pong["type"] == "pong"
    assert took >= 1.5, took


# ----------------------------------------------------------------------------- upload budget

@pytest.mark.timeout(60)
def test_upload_frames_beyond_the_budget_get_busy(tmp_path, tiny_model_path):
    """While other upload bytes fill the in-flight budget, an upload frame is refused at once
    with `busy` (small messages still served); once they are done the same upload plays. The
    frame is decoded off the event loop: pings are answered while it is."""
    cfg = make_config(tmp_path, tiny_model_path, max_upload_bytes=2 * 2**20)
    data = _wav(20.0, 3)  # ~640 KB
    request = protocol.replay(upload_name="call.wav", upload_data=data, speed=0, id="up")

    async def main():
        async with running(cfg) as daemon, client(daemon) as c:
            budget = daemon.server.upload_budget
            assert budget.try_acquire(budget.limit)  # another client's uploads, in flight
            await c.send(request)  # refused before it is read: the reply has no ref
            refused = await c.until(lambda m: m["type"] == "error")
            pong = await c.request(protocol.ping(id="p"))
            budget.release(budget.limit)
            ack = await c.request(request)
            await c.until(_ended(ack["stream"]), seen=True)
            return refused, pong, ack, budget.in_flight

    refused, pong, ack, left = asyncio.run(main())
    assert refused["code"] == "busy" and refused.get("ref") is None, refused
    assert pong["type"] == "pong"
    assert ack["type"] == "ack" and left == 0
