"""Chunked uploads (issue 14, item 6) against a real daemon and real websocket clients: the
file plays as the inline upload does, uploads stay private, the in-flight budget and the size
limits hold, abandoned uploads leave nothing behind, and the small frame limit closes only the
offending connection."""

from __future__ import annotations

import asyncio
import io
import time

import pytest
from websockets.exceptions import ConnectionClosed

from streamer import protocol
from streamer.sources import FileSource
from tests.streamer_harness import (
    client,
    make_config,
    running,
    tess_files,
    upload_chunked,
)


def _wav(seconds: float, seed: int, rate: int = 16000) -> bytes:
    import numpy as np
    import soundfile as sf

    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    sf.write(buf, (rng.standard_normal(int(seconds * rate)) * 0.1).astype(np.float32), rate,
             format="WAV", subtype="PCM_16")
    return buf.getvalue()


def _speech(tess_dir) -> bytes:
    """Four TESS clips back to back as one WAV (~8 s: a dozen windows)."""
    import numpy as np
    import soundfile as sf

    parts = [sf.read(f, dtype="float32") for f in tess_files(tess_dir, 4)]
    assert len({rate for _, rate in parts}) == 1
    buf = io.BytesIO()
    sf.write(buf, np.concatenate([a for a, _ in parts]), parts[0][1], format="WAV",
             subtype="PCM_16")
    return buf.getvalue()


def _ended(sid: str):
    return lambda m: m["type"] == "stream_ended" and m["stream"] == sid


async def _until_true(cond, timeout: float = 10.0) -> None:
    """Wait for a condition on the daemon's own state (no message announces it)."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition never held"
        await asyncio.sleep(0.02)


def _predictions(c, sid: str) -> list[tuple]:
    return [(m["seq"], m["t_start"], m["voiced"], m["label"],
             None if m["probabilities"] is None else sorted(m["probabilities"].items()))
            for m in c.of("prediction", sid)]


@pytest.mark.timeout(90)
def test_chunked_upload_plays_like_the_inline_one(tmp_path, tiny_model_path, tess_dir):
    """The same file, inline and in 7 KB chunks: the same stream description (kind upload,
    the client's name) and the same predictions; hello advertises the limits."""
    data = _speech(tess_dir)
    cfg = make_config(tmp_path, tiny_model_path)

    async def main():
        async with running(cfg) as daemon, client(daemon) as c:
            hello = c.msgs[0]
            inline = await c.request(protocol.replay(upload_name="call.wav", upload_data=data,
                                                     speed=0, id="inline"))
            await c.until(_ended(inline["stream"]), seen=True)
            chunked = await upload_chunked(c, "call.wav", data, id="chunked", chunk=7000,
                                           speed=0)
            await c.until(_ended(chunked["stream"]), seen=True)
            await _until_true(lambda: not daemon.uploads.files)
            return hello, inline, chunked, c, daemon.server.upload_budget.in_flight

    hello, inline, chunked, c, in_flight = asyncio.run(main())
    assert hello["limits"] == {"max_message_bytes": 65536, "max_upload_bytes": 4 * 2**20,
                               "queue_size": 256, "max_chunked_upload_bytes": 20 * 2**20,
                               "max_chunk_bytes": 2**20}
    assert inline["type"] == chunked["type"] == "ack", (inline, chunked)
    started = {m["stream"]["stream"]: m for m in c.of("stream_started")}
    a, b = started[inline["stream"]], started[chunked["stream"]]
    assert b["ref"] == "chunked" and b["stream"]["kind"] == "upload"
    assert a["stream"]["source"] == b["stream"]["source"] == "call.wav"
    pa, pb = _predictions(c, inline["stream"]), _predictions(c, chunked["stream"])
    assert len(pa) >= 10 and [x[:4] for x in pa] == [x[:4] for x in pb]
    for x, y in zip(pa, pb, strict=True):
        if x[4] is not None:
            assert [v for _, v in x[4]] == pytest.approx([v for _, v in y[4]], abs=1e-5)
    ends = [c.of("stream_ended", s)[0]["t_end_s"] for s in (inline["stream"], chunked["stream"])]
    assert ends[0] == ends[1]
    assert not c.of("error") and in_flight == 0


@pytest.mark.timeout(90)
def test_concurrent_chunked_uploads_same_name_never_swap(tmp_path, tiny_model_path):
    """Three clients upload different audio under one name, their chunks interleaved frame by
    frame: each stream plays its own client's audio (its length); nothing is left after."""
    cfg = make_config(tmp_path, tiny_model_path)
    files = [_wav(1.0 + 0.75 * i, i) for i in range(3)]

    async def main():
        async with running(cfg) as daemon:
            async with client(daemon) as c0, client(daemon) as c1, client(daemon) as c2:
                cs = [c0, c1, c2]
                acks = [await c.request(protocol.upload_start("call.wav", len(f), id="s"))
                        for c, f in zip(cs, files, strict=True)]
                assert len({a["upload_id"] for a in acks}) == 3, acks
                pieces = [list(protocol.upload_chunks(f, 4096)) for f in files]
                for i in range(max(map(len, pieces))):  # c0 chunk 0, c1 chunk 0, ...
                    for c, p in zip(cs, pieces, strict=True):
                        if i < len(p):
                            await c.ws.send(p[i])
                replies = [await c.request(protocol.replay(upload_id=a["upload_id"], speed=0,
                                                           id="r"))
                           for c, a in zip(cs, acks, strict=True)]
                ends = [await c.until(_ended(r["stream"]), seen=True)
                        for c, r in zip(cs, replies, strict=True)]
                errors = [c.of("error") for c in cs]
            await _until_true(lambda: not daemon.uploads.files)
            return replies, ends, errors

    replies, ends, errors = asyncio.run(main())
    assert all(r["type"] == "ack" for r in replies), replies
    assert not any(errors), errors
    for i, ended in enumerate(ends):
        assert ended["reason"] == "eof"
        assert ended["t_end_s"] == pytest.approx(1.0 + 0.75 * i, abs=0.02), (i, ended)


@pytest.mark.timeout(60)
def test_upload_beyond_the_budget_gets_busy(tmp_path, tiny_model_path):
    """The size is reserved at upload_start: a second upload that does not fit beside it is
    refused at once with busy (its client still served); once the first is replayed its bytes
    are free and the second goes through."""
    data = _wav(2.4, 1)  # 76,844 bytes
    cfg = make_config(tmp_path, tiny_model_path, max_upload_bytes=100_000,
                      max_upload_inflight_bytes=100_000)

    async def main():
        async with running(cfg) as daemon, client(daemon) as a, client(daemon) as b:
            budget = daemon.server.upload_budget
            first = await a.request(protocol.upload_start("a.wav", len(data), id="a"))
            reserved = budget.in_flight
            refused = await b.request(protocol.upload_start("b.wav", len(data), id="b"))
            pong = await b.request(protocol.ping(id="p"))
            for piece in protocol.upload_chunks(data, 30_000):
                await a.ws.send(piece)
            played = await a.request(protocol.replay(upload_id=first["upload_id"], speed=0,
                                                     id="ra"))
            freed = budget.in_flight
            second = await upload_chunked(b, "b.wav", data, id="rb", speed=0)
            await b.until(_ended(second["stream"]), seen=True)
            return first, reserved, refused, pong, played, freed, second

    first, reserved, refused, pong, played, freed, second = asyncio.run(main())
    assert first["type"] == "ack" and reserved == len(data)
    assert refused["type"] == "error" and refused["code"] == "busy", refused
    assert refused["ref"] == "b" and "retry" in refused["message"]
    assert pong["type"] == "pong"
    assert played["type"] == "ack" and freed == 0
    assert second["type"] == "ack", second


@pytest.mark.timeout(60)
def test_size_limits(tmp_path, tiny_model_path):
    """too_large for an upload over max_upload_bytes (nothing reserved), a chunk over
    max_chunk_bytes or more bytes than announced (the upload abandoned: file gone, bytes
    freed, its stray chunks dropped unanswered, a replay naming it not_found with the reason),
    and an inline upload over the inline limit (the reply points at chunked uploads)."""
    cfg = make_config(tmp_path, tiny_model_path, max_upload_bytes=50_000, max_chunk_bytes=4096,
                      max_inline_upload_bytes=8192)

    async def main():
        async with running(cfg) as daemon, client(daemon) as c:
            budget, out = daemon.server.upload_budget, {}
            out["start"] = await c.request(protocol.upload_start("x.wav", 50_001, id="big"))
            out["start_in_flight"] = budget.in_flight
            ack = await c.request(protocol.upload_start("x.wav", 10_000, id="chunk"))
            await c.ws.send(b"\0" * 4097)
            out["chunk"] = await c.until(lambda m: m["type"] == "error")
            out["chunk_left"] = (budget.in_flight, set(daemon.uploads.files))
            await c.ws.send(b"\0" * 100)  # a stray chunk of the abandoned upload
            out["stray"] = await c.request(protocol.ping(id="p1"))
            out["replay"] = await c.request(protocol.replay(upload_id=ack["upload_id"], id="r"))
            await c.request(protocol.upload_start("x.wav", 5000, id="over"))
            await c.ws.send(b"\0" * 4096)
            await c.ws.send(b"\0" * 1000)
            out["over"] = await c.until(lambda m: m["type"] == "error")
            out["over_left"] = (budget.in_flight, set(daemon.uploads.files))
            out["inline"] = await c.request(protocol.replay(upload_name="x.wav",
                                                            upload_data=b"\0" * 9000, id="i"))
            out["ping"] = await c.request(protocol.ping(id="p2"))
            return out

    out = asyncio.run(main())
    assert out["start"]["code"] == "too_large" and out["start"]["ref"] == "big"
    assert out["start_in_flight"] == 0
    assert out["chunk"]["code"] == "too_large" and out["chunk"]["ref"] == "chunk"
    assert "4097" in out["chunk"]["message"]
    assert out["chunk_left"] == (0, set())
    assert out["stray"]["type"] == "pong"  # the stray chunk got no answer of its own
    assert out["replay"]["code"] == "not_found" and "abandoned" in out["replay"]["message"]
    assert out["over"]["code"] == "too_large" and out["over"]["ref"] == "over"
    assert "5000 bytes announced" in out["over"]["message"]
    assert out["over_left"] == (0, set())
    assert out["inline"]["code"] == "too_large" and "upload_start" in out["inline"]["message"]
    assert out["ping"]["type"] == "pong"


@pytest.mark.timeout(60)
def test_disconnect_mid_upload_frees_everything(tmp_path, tiny_model_path):
    """A client that goes away half-way: its reservation is released and its private file
    removed; the daemon's other client never notices."""
    cfg = make_config(tmp_path, tiny_model_path)

    async def main():
        async with running(cfg) as daemon, client(daemon) as other:
            budget = daemon.server.upload_budget
            async with client(daemon) as c:
                await c.request(protocol.upload_start("half.wav", 200_000, id="u"))
                await c.ws.send(b"\1" * 65536)
                await c.request(protocol.ping(id="p"))  # the chunk has been written
                files = set(daemon.uploads.files)
                during = (budget.in_flight, [f.stat().st_size for f in files],
                          [f.stat().st_mode & 0o777 for f in files])
            await _until_true(lambda: budget.in_flight == 0 and not daemon.uploads.files)
            pong = await other.request(protocol.ping(id="o"))
            return during, files, pong

    during, files, pong = asyncio.run(main())
    assert during == (200_000, [65536], [0o600])
    assert not any(f.exists() for f in files)
    assert pong["type"] == "pong"


@pytest.mark.timeout(60)
def test_misuse_answered_clearly_connection_stays(tmp_path, tiny_model_path):
    """A binary frame with no upload open, a second upload_start while one is open (both
    abandoned: two uploads' chunks must never mix), a replay before the last byte, another
    connection naming an upload, and an upload left idle (timeout): each gets its error, the
    reservations all come back, and the connection goes on."""
    cfg = make_config(tmp_path, tiny_model_path, upload_idle_s=0.5)

    async def main():
        async with running(cfg) as daemon, client(daemon) as c, client(daemon) as thief:
            budget, out = daemon.server.upload_budget, {}
            await c.ws.send(b"RIFF....")
            out["binary"] = await c.until(lambda m: m["type"] == "error")
            a = await c.request(protocol.upload_start("a.wav", 1000, id="a"))
            out["theft"] = await thief.request(protocol.replay(upload_id=a["upload_id"],
                                                               id="t"))
            await c.send(protocol.upload_start("b.wav", 1000, id="b"))
            out["interleaved"] = [await c.until(lambda m: m["type"] == "error")
                                  for _ in range(2)]
            early = await c.request(protocol.upload_start("c.wav", 1000, id="c"))
            await c.ws.send(b"\0" * 10)
            out["early"] = await c.request(protocol.replay(upload_id=early["upload_id"],
                                                           id="ce"))
            await c.request(protocol.upload_start("d.wav", 1000, id="d"))
            out["idle"] = await c.until(lambda m: m["type"] == "error", timeout=10)
            out["left"] = (budget.in_flight, set(daemon.uploads.files))
            out["ping"] = await c.request(protocol.ping(id="p"))
            return out

    out = asyncio.run(main())
    assert out["binary"]["code"] == "bad_json" and "upload_start" in out["binary"]["message"]
    assert out["binary"].get("ref") is None
    assert out["theft"]["code"] == "not_found"
    assert sorted((e["ref"], e["code"]) for e in out["interleaved"]) == [
        ("a", "invalid_message"), ("b", "invalid_message")]
    assert out["early"]["code"] == "invalid_message" and "10 of its 1000" in \
        out["early"]["message"]
    assert out["idle"]["code"] == "timeout" and out["idle"]["ref"] == "d"
    assert out["left"] == (0, set())
    assert out["ping"]["type"] == "pong"
    for reply in (out["binary"], out["theft"], *out["interleaved"], out["early"], out["idle"]):
        protocol.validate(reply, "server")


@pytest.mark.timeout(90)
def test_frame_over_the_limit_closes_1009_bystander_served(tmp_path, tiny_model_path, tess_dir):
    """With the inline limit at its 4 MiB default the websocket frame limit is ~5.7 MB (it was
    ~28 MB): a 4.5 MiB inline upload's frame closes that connection with 1009; a bystander
    stream and its client go on."""
    clip = tess_files(tess_dir, 1)[0]
    cfg = make_config(tmp_path, tiny_model_path)
    assert cfg.server.frame_limit < 6 * 2**20
    bystander = FileSource([clip], 16000, name="bystander", speed=4, loop=True)
    frame = protocol.encode(protocol.replay(upload_name="big.wav",
                                            upload_data=b"\0" * (9 * 2**19), id="big"))

    async def main():
        async with running(cfg, [bystander]) as daemon, client(daemon) as watcher:
            async with client(daemon) as c:
                with pytest.raises(ConnectionClosed) as closed:
                    await c.send(frame)  # (the server may close while it is being sent)
                    await c.until(lambda m: False)
            seq = max([m["seq"] for m in watcher.of("prediction", "bystander")], default=-1)
            later = await watcher.until(lambda m: m["type"] == "prediction"
                                        and m["stream"] == "bystander" and m["seq"] > seq + 2)
            pong = await watcher.request(protocol.ping(id="w"))
            return closed.value, later, pong

    closed, later, pong = asyncio.run(main())
    assert len(frame) > make_config(tmp_path, tiny_model_path).server.frame_limit
    assert closed.rcvd is not None and closed.rcvd.code == 1009, closed
    assert later["stream"] == "bystander" and pong["type"] == "pong"


@pytest.mark.timeout(90)
def test_dashboard_feed_sends_big_files_in_chunks(tmp_path, tiny_model_path, tess_dir):
    """The dashboard's feed replays a file over the daemon's inline limit as a chunked upload
    (several chunks): the replay is acknowledged and the stream plays the whole file."""
    from dashboard.client import Feed

    data = _speech(tess_dir)
    cfg = make_config(tmp_path, tiny_model_path, max_inline_upload_bytes=16_384,
                      max_chunk_bytes=65_536)

    async def main():
        async with running(cfg) as daemon, client(daemon) as watcher:
            feed = Feed([f"ws://127.0.0.1:{daemon.port}"], backoff=(0.05, 0.2)).start()
            url = feed.urls[0]
            try:
                await _until_true(lambda: feed.connected()
                                  and feed.store.source(url).hello is not None)
                await asyncio.to_thread(feed.send_upload, url, "call.wav", data, "rq",
                                        speed=0)
                await _until_true(lambda: "rq" in feed.store.replies)
                reply = feed.store.replies["rq"]
                started = await watcher.until(lambda m: m["type"] == "stream_started"
                                              and m.get("ref") == "rq")
                ended = await watcher.until(_ended(started["stream"]["stream"]), seen=True)
            finally:
                await asyncio.to_thread(feed.stop)
            return reply, started, ended

    reply, started, ended = asyncio.run(main())
    assert len(data) > 3 * 65_536
    assert reply["type"] in ("ack", "stream_started"), reply
    assert started["stream"]["kind"] == "upload" and started["stream"]["source"] == "call.wav"
    assert ended["reason"] == "eof" and ended["t_end_s"] > 7
