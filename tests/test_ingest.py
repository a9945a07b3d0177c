"""Call ingest (/ingest) against a real daemon and real websocket clients: Media Streams in both
layouts, the raw variant, tokens, and every way a sender can go wrong."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from streamer import g711, protocol
from streamer import media_streams as ms
from streamer.ingest import IngestConfig
from streamer.push import push_call
from streamer.sources import FileSource
from tests.streamer_harness import REPO, DaemonProcess, client, log_text, make_config, running

TOKEN = "ingest-s3cret"
RATE = 8000
CLIPS = ["OAF_angry/OAF_bath_angry.flac", "YAF_sad/YAF_bath_sad.flac"]  # caller, agent
LONG = [["OAF_angry/OAF_bath_angry.flac", "OAF_happy/OAF_bath_happy.flac"],
        ["YAF_sad/YAF_bath_sad.flac", "OAF_neutral/OAF_bath_neutral.flac"]]


# ----------------------------------------------------------------------------- helpers

def telephone(tess_dir: Path, clips: list = CLIPS, seconds: float | None = None
              ) -> np.ndarray:
    """TESS clips as one 8-kHz call, one channel per entry (a clip or a list of clips one
    after the other), after a μ-law round trip: the exact audio a phone platform delivers
    (μ-law decodes to int16 values, so a PCM_16 file of it is lossless)."""
    chans = []
    for entry in clips:
        parts = []
        for c in [entry] if isinstance(entry, str) else entry:
            x, sr = sf.read(tess_dir / c, dtype="float32")
            parts.append(soxr.resample(x, sr, RATE).astype(np.float32))
        chans.append(np.concatenate(parts))
    n = int(seconds * RATE) if seconds else max(len(c) for c in chans)
    out = np.zeros((n, len(chans)), np.float32)
    for i, c in enumerate(chans):
        out[:min(n, len(c)), i] = c[:n]
    return g711.pcm16_to_float(g711.ulaw_decode(g711.ulaw_encode(g711.float_to_pcm16(out))))


def ingest_url(daemon, query: str = "") -> str:
    return f"ws://127.0.0.1:{daemon.port}/ingest{query}"


def v1_url(daemon) -> str:
    return f"ws://127.0.0.1:{daemon.port}/?token={TOKEN}"


def config(tmp_path: Path, model: Path, **ingest) -> object:
    ingest.setdefault("token", None)
    return make_config(tmp_path, model, token=TOKEN, ingest=IngestConfig(**ingest))


def start_event(call: str = "CA1", tracks=("inbound", "outbound"), encoding="audio/x-mulaw",
                rate=RATE, params=None) -> str:
    return json.dumps({"event": "start", "sequenceNumber": "1", "streamSid": "MZ1", "start": {
        "streamSid": "MZ1", "callSid": call, "accountSid": "AC1", "tracks": list(tracks),
        "customParameters": params or {},
        "mediaFormat": {"encoding": encoding, "sampleRate": rate, "channels": 1}}})


def media_event(samples: np.ndarray | bytes, track: str = "inbound") -> str:
    data = samples if isinstance(samples, bytes) else g711.ulaw_encode(
        g711.float_to_pcm16(samples)).tobytes()
    return json.dumps({"event": "media", "streamSid": "MZ1", "media": {
        "track": track, "chunk": "1", "timestamp": "0",
        "payload": base64.b64encode(data).decode()}})


async def send_media(ws, audio: np.ndarray, tracks=("inbound", "outbound")) -> None:
    for lo in range(0, len(audio), 160):
        for ch, track in enumerate(tracks):
            await ws.send(media_event(audio[lo:lo + 160, ch], track))


async def closed(ws) -> tuple[int | None, str]:
    await asyncio.wait_for(ws.wait_closed(), 20)
    return ws.close_code, ws.close_reason or ""


async def until_ended(c, streams: list[str]) -> dict[str, dict]:
    ended = {m["stream"]: m for m in c.of("stream_ended") if m["stream"] in streams}
    while set(ended) != set(streams):
        m = await c.until(lambda m: m["type"] == "stream_ended" and m["stream"] in streams)
        ended[m["stream"]] = m
    return ended


def preds(c, stream: str) -> list[dict]:
    return sorted(c.of("prediction", stream), key=lambda m: m["seq"])


# ----------------------------------------------------------------------------- pure parsing

def test_parse_start_reads_both_layouts_and_keeps_the_token_out_of_params():
    twilio = ms.parse_start(json.loads(start_event("CAx", params={"token": "t", "q": "vip"})))
    assert (twilio.call_id, twilio.stream_sid, twilio.format.describe()) == (
        "CAx", "MZ1", "mulaw/8000")
    assert twilio.tracks == (("inbound", "caller"), ("outbound", "agent"))
    assert twilio.params == {"q": "vip"} and twilio.token == "t"
    telnyx = ms.parse_start({"event": "start", "stream_id": "s-1", "start": {
        "call_control_id": "v3:abc", "media_format": {"encoding": "PCMA", "sample_rate": 8000,
                                                      "channels": 1},
        "custom_parameters": [{"name": "Token", "value": "t2"}, {"name": "k", "value": "v"}]}})
    assert (telnyx.call_id, telnyx.stream_sid, telnyx.format.name) == ("v3:abc", "s-1", "alaw")
    assert telnyx.tracks == (("inbound", "caller"), ("outbound", "agent"))  # none listed
    assert telnyx.params == {"k": "v"} and telnyx.token == "t2"


def test_formats_decode_as_documented():
    pcm = np.array([1, -2, 300, -32768, 32767], np.int16)
    l16 = ms.parse_format("L16", 16000)
    assert np.array_equal(l16.decode(pcm.astype(">i2").tobytes())[:, 0] * 32768, pcm)  # BE
    le = ms.parse_format("s16le", 16000, 2, max_channels=2)
    assert le.decode(pcm[:4].astype("<i2").tobytes()).shape == (2, 2)
    mu = ms.parse_format("PCMU", 8000)
    assert np.array_equal(mu.decode(bytes(range(256)))[:, 0],
                          g711.pcm16_to_float(g711.ULAW_TO_LINEAR))
    with pytest.raises(ms.IngestError, match="not whole samples") as err:
        l16.decode(b"\x00\x01\x02")
    assert err.value.code == 1003
    with pytest.raises(ms.IngestError, match="unknown format"):
        ms.parse_format("audio/x-opus", 8000)
    with pytest.raises(ms.IngestError, match="not valid base64"):
        ms.parse_media({"event": "media", "media": {"track": "inbound", "payload": "@@@"}})


# ----------------------------------------------------------------------------- good calls

@pytest.mark.timeout(120)
def test_media_streams_call_predicts_as_the_same_audio_replayed(tmp_path, tiny_model_path,
                                                                tess_dir):
    """Two μ-law tracks pushed as Twilio does -> two streams named after the call, carrying
    its id and custom parameters (never the token), whose predictions equal those of the same
    audio (after the same μ-law round trip) replayed from a file. Equal, not just close:
    soxr's streaming resampler gives the same samples for any chunking (20-ms media frames
    grouped by 100 ms here, 1-s blocks of a 2-channel resampler in the file replay), and the
    largest probability difference measured was 0.0; the 1e-5 tolerance only allows for the
    model batching windows differently."""
    audio = telephone(tess_dir, LONG)
    wav = tmp_path / "call.wav"
    sf.write(wav, audio, RATE, subtype="PCM_16")
    cfg = config(tmp_path, tiny_model_path, max_ahead_s=60.0)

    async def main():
        async with running(cfg) as daemon, client(v1_url(daemon)) as c:
            res = await push_call(ingest_url(daemon), audio, RATE, token=TOKEN, token_via="param",
                                  speed=0, call_id="CA42", params={"agent": "a7"})
            ended = await until_ended(c, ["CA42-caller", "CA42-agent"])
            await daemon._start_source(FileSource([wav], 16000, name="ref", speed=0,
                                                  split_channels=True))
            ended |= await until_ended(c, ["ref:ch0", "ref:ch1"])
            return res, c, ended, daemon.session_id

    res, c, ended, session = asyncio.run(main())
    assert (res.close_code, res.close_reason) == (1000, "stop received")
    started = {m["stream"]["stream"]: m["stream"] for m in c.of("stream_started")}
    for sid, track, role in (("CA42-caller", "inbound", "caller"),
                             ("CA42-agent", "outbound", "agent")):
        assert started[sid]["kind"] == "call"
        assert started[sid]["call"] == {"id": "CA42", "track": track, "role": role,
                                        "format": "mulaw/8000", "params": {"agent": "a7"}}
        assert ended[sid]["reason"] == "eof"
    for call_sid, ref_sid in (("CA42-caller", "ref:ch0"), ("CA42-agent", "ref:ch1")):
        got, want = preds(c, call_sid), preds(c, ref_sid)
        assert len(got) == len(want) == ended[call_sid]["windows"] >= 4
        assert ended[call_sid]["t_end_s"] == pytest.approx(ended[ref_sid]["t_end_s"])
        for g, w in zip(got, want, strict=True):
            assert (g["seq"], g["voiced"], g.get("label")) == (w["seq"], w["voiced"],
                                                               w.get("label"))
            if g["voiced"]:
                for k, p in w["probabilities"].items():
                    assert g["probabilities"][k] == pytest.approx(p, abs=1e-5)
    text = log_text(tmp_path / "sessions", session)
    assert '"id": "CA42"' in text or '"id":"CA42"' in text
    assert "a7" in text and TOKEN not in text


@pytest.mark.timeout(120)
def test_telnyx_layout_alaw_and_the_raw_variant(tmp_path, tiny_model_path, tess_dir):
    """Telnyx's snake_case start with PCMA (token in the query), and a softphone's raw s16le
    stereo at 16 kHz (token in the raw start): each track its stream, all audio kept."""
    call = telephone(tess_dir, seconds=1.5)
    wide = np.repeat(call, 2, axis=0)  # "16 kHz"
    cfg = config(tmp_path, tiny_model_path, max_ahead_s=60.0)

    async def main():
        async with running(cfg) as daemon, client(v1_url(daemon)) as c:
            tel = await push_call(ingest_url(daemon), call, RATE, token=TOKEN, token_via="query",
                                  fmt="alaw", layout="telnyx", speed=0, call_id="v3:tx-1")
            raw = await push_call(ingest_url(daemon), wide, 16000, token=TOKEN,
                                  token_via="param", fmt="s16le", protocol="raw", speed=0,
                                  call_id="soft1")
            ended = await until_ended(c, ["v3_tx-1-caller", "v3_tx-1-agent", "soft1-caller",
                                          "soft1-agent"])
            return tel, raw, c, ended

    tel, raw, c, ended = asyncio.run(main())
    assert tel.close_code == raw.close_code == 1000
    started = {m["stream"]["stream"]: m["stream"] for m in c.of("stream_started")}
    assert started["v3_tx-1-agent"]["call"]["id"] == "v3:tx-1"
    assert started["v3_tx-1-agent"]["call"]["format"] == "alaw/8000"
    assert started["soft1-caller"]["call"]["format"] == "s16le/16000/2"
    assert [started[s]["channel"] for s in ("soft1-caller", "soft1-agent")] == [0, 1]
    for sid, m in ended.items():
        assert m["reason"] == "eof" and m["t_end_s"] == pytest.approx(1.5, abs=0.01), sid
        assert m["windows"] == 1 and len(preds(c, sid)) == 1


# ----------------------------------------------------------------------------- tokens

@pytest.mark.timeout(120)
def test_tokens(tmp_path, tiny_model_path, tess_dir):
    """Header, query and start parameter let a call in; a wrong one in the header is refused
    at the handshake (401), in the start with a close (1008); none at all: 1008 after the
    start. A separate --ingest-token is the only one /ingest takes, and v1 keeps its own."""
    audio = telephone(tess_dir, seconds=0.3)
    cfg = config(tmp_path, tiny_model_path, token="only-ingest")

    async def main():
        out = {}
        async with running(cfg) as daemon:
            url = ingest_url(daemon)
            for via in ("header", "query", "param"):
                r = await push_call(url, audio, RATE, token="only-ingest", token_via=via,
                                    speed=0)
                out[via] = r.close_code
            for bad in ({"additional_headers": {"Authorization": f"Bearer {TOKEN}"}},
                        {"uri": url + "?token=nope"}):
                try:
                    async with connect(bad.pop("uri", url), **bad):
                        pass
                except InvalidStatus as exc:
                    out.setdefault("http", []).append(exc.response.status_code)
            for params in ({"token": "nope"}, {}):
                async with connect(url) as ws:
                    await ws.send(start_event(params=params))
                    out[json.dumps(params)] = await closed(ws)
            async with client(v1_url(daemon)) as c:  # v1 still takes --token
                out["v1"] = (await c.request(protocol.ping(id=1)))["type"]
            out["refused"] = dict(daemon.server._ingest.refused)
        return out

    out = asyncio.run(main())
    assert [out[v] for v in ("header", "query", "param")] == [1000, 1000, 1000]
    assert out["http"] == [401, 401]
    assert out['{"token": "nope"}'] == (1008, "wrong token")
    code, reason = out["{}"]
    assert code == 1008 and reason.startswith("missing token")
    assert out["v1"] == "pong" and out["refused"]["token"] == 4


@pytest.mark.timeout(60)
def test_ingest_is_off_without_any_token(tmp_path, tiny_model_path):
    cfg = make_config(tmp_path, tiny_model_path)  # no --token, no --ingest-token

    async def main():
        async with running(cfg) as daemon:
            with pytest.raises(InvalidStatus) as refused:
                async with connect(ingest_url(daemon)):
                    pass
            async with client(daemon) as c:  # loopback v1 without a token works as before
                assert (await c.request(protocol.ping(id=1)))["type"] == "pong"
            return refused.value.response

    response = asyncio.run(main())
    assert response.status_code == 403 and b"ingest is off" in response.body


# ----------------------------------------------------------------------------- bad senders

async def _bad_start(ws, audio):
    await ws.send(start_event(encoding="audio/x-opus"))


async def _not_base64(ws, audio):
    await ws.send(start_event())
    await send_media(ws, audio)
    await ws.send(json.dumps({"event": "media", "media": {"track": "inbound",
                                                          "payload": "not base64!"}}))


async def _half_samples(ws, audio):
    await ws.send(start_event(encoding="L16", rate=RATE))
    pcm = g711.float_to_pcm16(audio)
    for lo in range(0, len(audio), 160):
        for ch, track in enumerate(("inbound", "outbound")):
            await ws.send(media_event(pcm[lo:lo + 160, ch].astype(">i2").tobytes(), track))
    await ws.send(media_event(b"\x00\x01\x02", "inbound"))


async def _media_first(ws, audio):
    await ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
    await ws.send(media_event(audio[:160, 0]))


async def _unknown_track(ws, audio):
    await ws.send(start_event(tracks=("inbound",)))
    for lo in range(0, len(audio), 160):
        await ws.send(media_event(audio[lo:lo + 160, 0]))
    await ws.send(media_event(audio[:160, 1], "outbound"))


async def _too_fast(ws, audio):
    await ws.send(start_event())
    await send_media(ws, np.concatenate([audio] * 4))  # 4 x 0.8 s, at once


async def _idle(ws, audio):
    await ws.send(start_event())
    await send_media(ws, audio)  # then nothing: closed() waits for the daemon's close


async def _oversized(ws, audio):
    await ws.send(start_event())
    await send_media(ws, audio)
    await ws.send(json.dumps({"event": "mark", "mark": {"name": "x" * 10000}}))


async def _binary_in_media_streams(ws, audio):
    await ws.send(start_event())
    await send_media(ws, audio)
    await ws.send(b"\x00" * 320)


async def _dropped(ws, audio):
    await ws.send(start_event())
    await send_media(ws, audio)
    await asyncio.sleep(0.3)
    ws.transport.abort()  # no close frame: a crashed sender or a cut network


# name -> (sender, close code or None (dropped), reason part, seconds kept or None (no streams))
BAD = {
    "unknown_format": (_bad_start, 1003, "unknown format", None),
    "not_base64": (_not_base64, 1003, "not valid base64", 0.8),
    "not_whole_samples": (_half_samples, 1003, "not whole samples", 0.8),
    "media_before_start": (_media_first, 1008, "media before start", None),
    "unannounced_track": (_unknown_track, 1008, "did not announce", 0.8),
    "faster_than_real_time": (_too_fast, 1008, "faster than real time", "ahead"),
    "idle": (_idle, 1008, "idle: no media for 0.5 s", 0.8),
    "oversized": (_oversized, 1009, "", 0.8),
    "binary_frame": (_binary_in_media_streams, 1003, "binary frame", 0.8),
    "dropped": (_dropped, None, "", 0.8),
}


@pytest.mark.timeout(90)
@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_sender_is_closed_with_a_reason_and_loses_nothing(case, tmp_path, tiny_model_path,
                                                              tess_dir):
    """Each bad sender gets its close code and reason; the audio it sent before is windowed,
    inferred and its streams end with ``error`` (saying why). A good call alongside and a v1
    client notice nothing."""
    sender, code, reason, kept = BAD[case]
    audio = telephone(tess_dir, seconds=0.8)
    good_audio = telephone(tess_dir, seconds=1.2)
    cfg = config(tmp_path, tiny_model_path, token=TOKEN, idle_s=0.5, max_message_bytes=4096)

    async def main():
        async with running(cfg) as daemon, client(v1_url(daemon)) as c:
            good = asyncio.create_task(push_call(ingest_url(daemon), good_audio, RATE,
                                                 token=TOKEN, speed=1.0, call_id="GOOD"))
            ws = await connect(ingest_url(daemon), additional_headers={
                "Authorization": f"Bearer {TOKEN}"})
            with_streams = kept is not None
            try:
                await sender(ws, audio)
            except Exception:  # the daemon may close while we still send
                pass
            got = await closed(ws)
            streams = ["CA1-caller"] + (["CA1-agent"] if case != "unannounced_track" else [])
            ended = await until_ended(c, streams) if with_streams else {}
            good_ended = await until_ended(c, ["GOOD-caller", "GOOD-agent"])
            pong = await c.request(protocol.ping(id="after"))
            return got, ended, (await good), good_ended, pong, c

    (got_code, got_reason), ended, good, good_ended, pong, c = asyncio.run(main())
    if code is not None:
        assert got_code == code and reason in got_reason, (got_code, got_reason)
    else:
        assert got_code == 1006  # we aborted: no close frame either way
    for sid, m in ended.items():
        assert m["reason"] == "error", m
        errors = [e for e in c.of("error", sid) if e["code"] == "source_failed"]
        assert len(errors) == 1 and errors[0]["message"].startswith("call CA1:"), errors
        if reason:
            assert reason in errors[0]["message"]
        if kept == "ahead":  # everything up to the refused message: about 2 s ahead
            assert 2.0 <= m["t_end_s"] < 3.2
        else:
            assert m["t_end_s"] == pytest.approx(kept, abs=0.001), m
        assert m["windows"] == len(preds(c, sid)) >= 1
    assert not ended or set(ended) >= {"CA1-caller"}
    assert (good.close_code, good.seconds_sent) == (1000, pytest.approx(1.2))
    assert all(m["reason"] == "eof" and m["t_end_s"] == pytest.approx(1.2, abs=0.001)
               for m in good_ended.values())
    assert pong["type"] == "pong"


@pytest.mark.timeout(60)
def test_max_calls_and_start_timeout(tmp_path, tiny_model_path, tess_dir):
    """Beyond --max-calls a start is closed with 1013 and the calls in progress go on; a
    connection that never starts is closed after start_timeout_s."""
    audio = telephone(tess_dir, seconds=0.5)
    cfg = config(tmp_path, tiny_model_path, token=TOKEN, max_calls=1, start_timeout_s=0.5)
    auth = {"additional_headers": {"Authorization": f"Bearer {TOKEN}"}}

    async def main():
        async with running(cfg) as daemon, client(v1_url(daemon)) as c:
            first = await connect(ingest_url(daemon), **auth)
            await first.send(start_event("CA1"))
            await c.until(lambda m: m["type"] == "stream_started")
            second = await connect(ingest_url(daemon), **auth)
            await second.send(start_event("CA2"))
            refused = await closed(second)
            await send_media(first, audio)
            await first.send(json.dumps({"event": "stop"}))
            done = await closed(first)
            silent = await connect(ingest_url(daemon))  # no token, no start
            timed_out = await closed(silent)
            ended = await until_ended(c, ["CA1-caller", "CA1-agent"])
            return refused, done, timed_out, ended, c

    refused, done, timed_out, ended, c = asyncio.run(main())
    assert refused == (1013, "too many concurrent calls (max 1)")
    assert done == (1000, "stop received")
    assert timed_out == (1008, "no start within 0.5 s (with the token)")
    assert all(m["reason"] == "eof" and m["t_end_s"] == pytest.approx(0.5, abs=0.001)
               for m in ended.values())
    assert not [m for m in c.of("stream_started") if m["stream"]["stream"].startswith("CA2")]


@pytest.mark.timeout(60)
def test_stop_stream_ends_the_call(tmp_path, tiny_model_path, tess_dir):
    """An operator's stop_stream ends the call: the sender is closed with 1001, the audio
    received so far is kept, both tracks end with ``stopped``."""
    audio = telephone(tess_dir, seconds=0.6)
    cfg = config(tmp_path, tiny_model_path, token=TOKEN)

    async def main():
        async with running(cfg) as daemon, client(v1_url(daemon)) as c:
            ws = await connect(ingest_url(daemon), additional_headers={
                "Authorization": f"Bearer {TOKEN}"})
            await ws.send(start_event("CA9"))
            await send_media(ws, audio)
            await asyncio.sleep(0.3)
            ack = await c.request(protocol.stop_stream("CA9-caller", id="s"))
            got = await closed(ws)
            return ack, got, await until_ended(c, ["CA9-caller", "CA9-agent"])

    ack, got, ended = asyncio.run(main())
    assert ack["type"] == "ack" and got == (1001, "stream stopped by the daemon")
    assert all(m["reason"] == "stopped" and m["t_end_s"] == pytest.approx(0.6, abs=0.001)
               for m in ended.values())


# ----------------------------------------------------------------------------- the CLI

@pytest.mark.timeout(120)
def test_cli_stream_ingest_and_push(tmp_path, tiny_model_path, tess_dir):
    """`stream --ingest` with no local source waits for calls; `push FILE` sends one; without a
    token `stream --ingest` is refused at once and `stream` alone says ingest is off."""
    env = {k: v for k, v in os.environ.items() if k != "EMOTION_MONITOR_TOKEN"}
    refused = subprocess.run([sys.executable, "-m", "emotion_monitor", "stream", "--ingest"],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "--ingest needs a token" in refused.stderr
    wav = tmp_path / "call.wav"
    sf.write(wav, telephone(tess_dir, seconds=1.0), RATE, subtype="PCM_16")
    daemon = DaemonProcess(["--ingest", "--token", TOKEN, "--model", str(tiny_model_path),
                            "--vad", "energy", "--explain-every", "0", "--sessions-dir",
                            str(tmp_path / "sessions"), "--session-id", "calls"], cwd=tmp_path)
    try:
        announced = daemon.proc.stderr.readline()  # the line after "serving ..."
        push = subprocess.run(
            [sys.executable, "-m", "emotion_monitor", "push", str(wav), "--url",
             f"ws://127.0.0.1:{daemon.port}/ingest", "--token", TOKEN, "--speed", "0",
             "--call-id", "CLI1"], cwd=REPO, env=env, capture_output=True, text=True,
            timeout=60)
    finally:
        daemon.signal()
        code, err = daemon.wait()
    assert push.returncode == 0, push.stderr
    assert "closed 1000 stop received" in push.stderr
    assert code == 0 and "calls on ws://127.0.0.1:" in announced, err
    text = log_text(tmp_path / "sessions", "calls")
    assert '"CLI1-caller"' in text and '"CLI1-agent"' in text and TOKEN not in text


@pytest.mark.timeout(60)
def test_daemon_shutdown_ends_calls_in_progress(tmp_path, tiny_model_path, tess_dir):
    """A daemon stopping with a call in progress: the sender is closed with 1001, the call's
    audio so far is inferred, its streams end with ``shutdown``, and run() returns 0."""
    audio = telephone(tess_dir, seconds=0.7)
    cfg = config(tmp_path, tiny_model_path, token=TOKEN)

    async def main():
        async with running(cfg) as daemon:
            async with client(v1_url(daemon)) as c:
                ws = await connect(ingest_url(daemon), additional_headers={
                    "Authorization": f"Bearer {TOKEN}"})
                await ws.send(start_event("CA7"))
                await send_media(ws, audio)
                await c.until(lambda m: m["type"] == "status" and any(
                    s["stream"] == "CA7-agent" and s["t_processed_s"] > 0
                    for s in m["streams"]))
                daemon.request_stop()
                got = await closed(ws)
                return got, await until_ended(c, ["CA7-caller", "CA7-agent"])

    got, ended = asyncio.run(main())
    assert got == (1001, "daemon shutting down")
    assert all(m["reason"] == "shutdown" and m["t_end_s"] == pytest.approx(0.7, abs=0.001)
               and m["windows"] == 1 for m in ended.values()), ended


@pytest.mark.timeout(60)
def test_connections_waiting_to_start_are_capped_by_the_floor_size(tmp_path, tiny_model_path):
    """A floor's calls may all connect at once: max(16, max_calls) may wait for their start;
    the next handshake gets HTTP 503, and a slot frees when a waiting one goes."""
    assert IngestConfig(max_calls=4).waiting_limit == 16
    assert IngestConfig(max_calls=40).waiting_limit == 40
    assert IngestConfig(max_calls=40, max_waiting=3).waiting_limit == 3
    cfg = config(tmp_path, tiny_model_path, token=TOKEN, max_calls=20, start_timeout_s=20.0)

    async def main():
        async with running(cfg) as daemon:
            waiting = [await connect(ingest_url(daemon)) for _ in range(20)]  # no start yet
            with pytest.raises(InvalidStatus) as over:
                await connect(ingest_url(daemon))
            await waiting.pop().close()
            for _ in range(50):  # the daemon notices the close
                await asyncio.sleep(0.02)
                if daemon.server._ingest.waiting < 20:
                    break
            again = await connect(ingest_url(daemon))
            for ws in [*waiting, again]:
                await ws.close()
            return over.value.response.status_code

    assert asyncio.run(main()) == 503


def test_rate_guard_counts_from_the_handshake():
    """A daemon that reads late (busy) receives a real-time sender's backlog in one burst:
    counted from the handshake, that is on time; a sender really ahead is still refused."""
    from streamer.ingest import RateGuard

    guard = RateGuard(RATE, 2.0, t0=10.0)
    guard.add(0, 3 * RATE, now=13.0)  # nothing read for 3 s, then 3 s of audio at once
    guard.add(0, RATE // 2, now=13.6)
    fast = RateGuard(RATE, 2.0, t0=10.0)
    with pytest.raises(ms.IngestError, match="faster than real time: 2.5 s"):
        fast.add(0, 3 * RATE, now=10.5)


@pytest.mark.timeout(60)
def test_a_stalled_daemon_does_not_refuse_a_real_time_call(tmp_path, tiny_model_path,
                                                           tess_dir, monkeypatch):
    """The daemon's event loop blocked for 3 s while it opens a call (50 calls starting at
    once did that in CI): the sender, in real time from another thread, keeps sending, and the
    daemon then reads 3 s of its audio at once. The call goes on and ends normally."""
    import threading
    import time

    from streamer.ingest import IngestHub

    opened = IngestHub.open_call

    async def busy_open(self, call, start):
        time.sleep(3.0)  # blocks the daemon's loop, as a burst of call starts does
        return await opened(self, call, start)

    monkeypatch.setattr(IngestHub, "open_call", busy_open)
    audio = telephone(tess_dir, seconds=6.0)
    cfg = config(tmp_path, tiny_model_path, token=TOKEN)
    result: dict = {}

    async def main():
        async with running(cfg) as daemon, client(v1_url(daemon)) as c:
            def push() -> None:
                result["push"] = asyncio.run(push_call(ingest_url(daemon), audio, RATE,
                                                       token=TOKEN, call_id="STALL"))

            sender = threading.Thread(target=push, daemon=True)
            sender.start()
            ended = await until_ended(c, ["STALL-caller", "STALL-agent"])
            await asyncio.to_thread(sender.join, 30)
            return ended

    ended = asyncio.run(main())
    assert (result["push"].close_code, result["push"].close_reason) == (1000, "stop received")
    assert all(m["reason"] == "eof" for m in ended.values()), ended
