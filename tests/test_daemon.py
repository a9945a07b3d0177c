"""The daemon end to end: a real websockets client against a real daemon replaying TESS."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import soundfile as sf
from websockets.exceptions import ConnectionClosed

from streamer import protocol
from streamer.daemon import Daemon
from streamer.model import ServedModel
from streamer.sessionlog import SessionLog, read_session, session_path
from streamer.sources import Chunk, FileSource, Source, SourceError
from streamer.windows import Windower
from tests.streamer_harness import (
    REPO,
    DaemonProcess,
    client,
    copy_files,
    log_text,
    make_config,
    replay_to_end,
    running,
    tess_files,
)

HOP = 0.5
BROADCAST = {"prediction", "explanation", "status", "stream_started", "stream_ended", "error"}


def expected_windows(files, model: ServedModel, gap_s: float):
    """The windows the daemon should make of ``files`` (same source, same windower)."""
    src = FileSource(files, model.sample_rate, name="ref", speed=0, gap_s=gap_s).open()
    win = Windower("ref", model.sample_rate, model.window_s, HOP)
    out = []
    src.run(lambda c: out.extend(win.push(c.samples)), threading.Event())
    return out + win.flush()


@pytest.mark.timeout(90)
def test_replay_end_to_end(tmp_path, tiny_model_path, tess_dir):
    """hello first; seq +1; t_start steps by the hop; probabilities = the model's own output on
    the same windows (1e-5); the session log holds exactly what was sent."""
    allowed = tmp_path / "allowed"
    files = copy_files(tess_files(tess_dir, 3), allowed / "clips")
    cfg = make_config(tmp_path, tiny_model_path, allowed_dir=allowed, hop_s=HOP)

    async def main():
        async with running(cfg) as daemon, client(daemon) as c:
            ack = await c.request(protocol.replay(path="clips", speed=0, id="r1"))
            assert ack["type"] == "ack", ack
            sid = ack["stream"]
            await c.until(lambda m: m["type"] == "stream_ended" and m["stream"] == sid)
            await c.until(lambda m: m["type"] == "status")  # at least one status too
            return daemon, c, sid

    daemon, c, sid = asyncio.run(main())
    assert c.msgs[0]["type"] == "hello" and c.msgs[0]["client_id"]
    assert c.msgs[0]["model"]["classes"] == daemon.model.classes
    for m in c.msgs:
        protocol.validate(m, direction="server")
    assert not c.of("error"), c.of("error")
    preds = c.of("prediction", sid)
    ref = expected_windows(sorted(files), daemon.model, cfg.gap_s)
    assert len(preds) == len(ref) >= 8
    assert [p["seq"] for p in preds] == list(range(len(ref)))
    np.testing.assert_allclose([p["t_start"] for p in preds], np.arange(len(ref)) * HOP)
    voiced = [p for p in preds if p["voiced"]]
    assert len(voiced) >= len(preds) // 2, "TESS speech should be mostly voiced"
    probs = daemon.model.predict(np.stack([w.samples for w in ref]))
    for p in voiced:
        got = [p["probabilities"][k] for k in daemon.model.classes]
        np.testing.assert_allclose(got, probs[p["seq"]], atol=1e-5)
        assert p["label"] == daemon.model.classes[int(np.argmax(probs[p["seq"]]))]
    started = c.of("stream_started")
    assert started[0]["ref"] == "r1" and started[0]["stream"]["kind"] == "file"
    ended = c.of("stream_ended", sid)[0]
    assert ended["reason"] == "eof" and ended["windows"] == len(ref)
    # The session log: hello first, then byte for byte every broadcast message the client got;
    # closed cleanly, it was compressed (and only the .gz is left).
    assert [p.name for p in (tmp_path / "sessions").iterdir()] == [
        f"{daemon.session_id}.jsonl.gz"]
    lines = log_text(tmp_path / "sessions", daemon.session_id).splitlines()
    assert json.loads(lines[0])["type"] == "hello" and json.loads(lines[0])["client_id"] is None
    received = [r for r, m in zip(c.raw, c.msgs, strict=True) if m["type"] in BROADCAST]
    non_status_log = [ln for ln in lines[1:] if json.loads(ln)["type"] != "status"]
    assert [r for r in received if json.loads(r)["type"] != "status"] == non_status_log
    assert set(received) <= set(lines)
    # status reported this stream's windows.
    last = [s for s in c.of("status") if any(x["stream"] == sid for x in s["streams"])][-1]
    row = next(x for x in last["streams"] if x["stream"] == sid)
    assert row["windows"] == len(ref) and row["voiced_windows"] == len(voiced)
    assert row["dropped_windows"] == 0 and row["state"] == "ended"


@pytest.mark.timeout(60)
def test_explanations_follow_predictions(tmp_path, tiny_model_path, tess_dir):
    """--explain-every 2: every 2nd voiced window of the stream gets a valid explanation
    frame (<= 32 KB) with the same stream and seq, after its prediction."""
    files = tess_files(tess_dir, 2)
    cfg = make_config(tmp_path, tiny_model_path, explain_every=2)

    c = asyncio.run(replay_to_end(cfg, files, "ex"))
    assert not c.of("error"), c.of("error")
    voiced = [p["seq"] for p in c.of("prediction") if p["voiced"]]
    expl = c.of("explanation")
    assert [e["seq"] for e in expl] == voiced[::2]
    order = [(m["type"], m["seq"]) for m in c.msgs if m["type"] in ("prediction", "explanation")]
    for e in expl:
        assert order.index(("prediction", e["seq"])) < order.index(("explanation", e["seq"]))
        assert len(protocol.encode(e).encode()) <= protocol.MAX_EXPLANATION_BYTES
        assert protocol.decode_frame(e["cam"]).shape == tuple(e["cam"]["shape"])


@pytest.mark.timeout(60)
def test_speed_one_takes_about_real_time(tmp_path, tiny_model_path, tess_dir):
    """--speed 1 paces replay in real time (a behaviour check, loose bounds)."""
    files = tess_files(tess_dir, 1)
    duration = sf.info(str(files[0])).duration
    cfg = make_config(tmp_path, tiny_model_path)

    async def main():
        async with running(cfg) as daemon, client(daemon) as c:
            t0 = time.monotonic()
            await daemon._start_source(FileSource(files, 16000, name="rt", speed=1.0))
            await c.until(lambda m: m["type"] == "stream_ended", timeout=30)
            return time.monotonic() - t0, c

    elapsed, c = asyncio.run(main())
    assert 0.7 * duration <= elapsed <= 2.0 * duration + 0.5, (elapsed, duration)
    assert c.of("prediction") and not c.of("error")


class FailingSource(Source):
    """Delivers a second of noise, then fails like an unplugged microphone."""

    kind = "mic"

    def __init__(self, name: str) -> None:
        self.name, self.sample_rate = name, 16000

    @property
    def stream_ids(self):
        return [self.name]

    def describe(self):
        return [{"id": self.name, "kind": "mic", "source": "fake"}]

    def run(self, emit, stop):
        rng = np.random.default_rng(0)
        for _ in range(10):
            emit(Chunk(self.name, (rng.standard_normal(1600) * 0.1).astype(np.float32),
                       time.time(), time.perf_counter()))
        raise SourceError("fake microphone: device unplugged")


def _bad_files(d):
    d.mkdir(parents=True, exist_ok=True)
    (d / "empty.wav").write_bytes(b"")
    (d / "notes.wav").write_text("this is not audio\n" * 50)
    (d / "corrupt.flac").write_bytes(b"fLaC" + bytes(range(256)) * 20)
    sf.write(str(d / "six.wav"), np.zeros((16000, 6), dtype=np.float32), 16000)
    return d


@pytest.mark.timeout(90)
def test_bad_files_and_failing_source(tmp_path, tiny_model_path, tess_dir):
    """Corrupt, empty, non-audio and 6-channel files: a clear error each, the daemon goes on;
    a source that fails mid-stream ends its stream with error + stream_ended, others go on."""
    bad = _bad_files(tmp_path / "allowed")
    good = copy_files(tess_files(tess_dir, 1), tmp_path / "allowed")[0]
    cfg = make_config(tmp_path, tiny_model_path, allowed_dir=tmp_path / "allowed")
    initial = [FileSource([bad / "empty.wav"], 16000, name="initial", speed=0)]

    async def main():
        async with running(cfg, initial) as daemon, client(daemon) as c:
            replies = {}
            for name in ("empty.wav", "notes.wav", "corrupt.flac", "six.wav"):
                replies[name] = await c.request(protocol.replay(path=name, speed=0, id=name))
            await daemon._start_source(FailingSource("flaky"))
            ack = await c.request(protocol.replay(path=good.name, speed=0, id="good"))
            await c.until(lambda m: m["type"] == "stream_ended" and m["stream"] == ack["stream"])
            await c.until(lambda m: m["type"] == "stream_ended" and m["stream"] == "flaky",
                          seen=True)
            return daemon, c, replies, ack

    daemon, c, replies, ack = asyncio.run(main())
    for name, reply in replies.items():
        assert reply["type"] == "error" and reply["code"] == "bad_audio", reply
        assert name in reply["message"]
    assert "channels" in replies["six.wav"]["message"]
    for reply in replies.values():
        assert "audio file" in reply["message"] or "channels" in reply["message"]
    errs = [m for m in c.of("error") if m.get("stream") == "flaky"]
    assert errs and errs[0]["code"] == "source_failed" and "unplugged" in errs[0]["message"]
    ended = c.of("stream_ended", "flaky")[0]
    assert ended["reason"] == "error" and ended["windows"] >= 1
    assert c.msgs.index(errs[0]) < c.msgs.index(ended)
    assert c.of("stream_ended", ack["stream"])[0]["reason"] == "eof"
    assert c.of("prediction", ack["stream"])
    # The start-up source that failed to open was logged as an error; the daemon went on.
    logged = read_session(session_path(tmp_path / "sessions", daemon.session_id)).messages
    assert any(m["type"] == "error" and "empty.wav" in m["message"] for m in logged)


@pytest.mark.timeout(60)
def test_stop_stream_and_record_audio(tmp_path, tiny_model_path, tess_dir):
    """stop_stream ends a looping stream with reason "stopped"; --record-audio writes FLAC."""
    files = tess_files(tess_dir, 1)
    cfg = make_config(tmp_path, tiny_model_path, record_audio=True)

    async def main():
        async with running(cfg) as daemon, client(daemon) as c:
            await daemon._start_source(FileSource(files, 16000, name="lp", speed=4, loop=True))
            await c.until(lambda m: m["type"] == "prediction" and m["seq"] >= 3)
            reply = await c.request(protocol.stop_stream("lp", id="s"))
            assert reply["type"] == "ack"
            ended = await c.until(lambda m: m["type"] == "stream_ended")
            missing = await c.request(protocol.stop_stream("nope", id="x"))
            return daemon, ended, missing

    daemon, ended, missing = asyncio.run(main())
    assert ended["reason"] == "stopped" and ended["stream"] == "lp"
    assert missing["code"] == "not_found"
    flac = tmp_path / "sessions" / daemon.session_id / "lp.flac"
    info = sf.info(str(flac))
    assert info.samplerate == 16000 and info.frames / 16000 == pytest.approx(ended["t_end_s"])


def _messages_from(url_: str, n_predictions: int, out: list, done: threading.Event) -> None:
    """Background client (own loop) that reads everything until the connection closes."""
    from websockets.sync.client import connect as sync_connect

    try:
        with sync_connect(url_) as ws:
            try:
                while True:
                    raw = ws.recv(timeout=30)
                    out.append(raw)
                    if sum('"type":"prediction"' in r for r in out) >= n_predictions:
                        done.set()
            except ConnectionClosed as exc:
                out.append(("closed", exc.rcvd.code if exc.rcvd else None))
    finally:
        done.set()


@pytest.mark.timeout(60)
def test_sigint_in_process(tmp_path, tiny_model_path, tess_dir):
    """SIGINT (Ctrl-C) to a daemon running in this process: run() returns 0, the stream ends
    with "shutdown", the client is closed with 1001."""
    import os

    files = tess_files(tess_dir, 1)
    cfg = make_config(tmp_path, tiny_model_path)

    async def main():
        daemon = Daemon(cfg, [FileSource(files, 16000, name="ctrlc", speed=2, loop=True)])
        task = asyncio.create_task(daemon.run())
        await daemon.wait_ready()
        async with client(daemon) as c:
            await c.until(lambda m: m["type"] == "prediction")
            os.kill(os.getpid(), signal.SIGINT)
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    await c.recv()
            return await asyncio.wait_for(task, 30), c, closed.value

    rc, c, closed = asyncio.run(main())
    assert rc == 0 and closed.rcvd is not None and closed.rcvd.code == 1001
    assert c.of("stream_ended", "ctrlc")[0]["reason"] == "shutdown"


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("sig", [signal.SIGTERM])
def test_signal_mid_stream_clean_exit(tmp_path, tiny_model_path, tess_dir, sig):
    """SIGTERM mid-stream to the CLI daemon: exit 0, streams end with "shutdown", clients
    closed with 1001, and the log is complete (everything the client got, no partial line)."""
    files = tess_files(tess_dir, 2)
    d = DaemonProcess(["--replay", *map(str, files), "--loop", "--speed", "2",
                       "--model", str(tiny_model_path), "--device", "cpu", "--vad", "energy",
                       "--explain-every", "0", "--sessions-dir", str(tmp_path / "s"),
                       "--session-id", "sig"], cwd=tmp_path)
    got: list = []
    done = threading.Event()
    t = threading.Thread(target=_messages_from, args=(d.url, 4, got, done), daemon=True)
    t.start()
    assert done.wait(60), got
    d.signal(sig)
    rc, err = d.wait()
    t.join(10)
    assert rc == 0, err
    assert got[-1] == ("closed", 1001), got[-5:]
    read = read_session(tmp_path / "s" / "sig.jsonl.gz")  # a clean exit compresses the log
    assert not read.partial_last_line and read.bad_lines == 0
    texts = set(log_text(tmp_path / "s", "sig").splitlines())
    received = [r for r in got[:-1] if json.loads(r)["type"] in BROADCAST]
    assert set(received) <= texts
    ended = [m for m in read.messages if m["type"] == "stream_ended"]
    assert ended and all(m["reason"] == "shutdown" for m in ended)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_sigkill_log_readable(tmp_path, tiny_model_path, tess_dir):
    """SIGKILL: the log stays readable; everything the client received is in it (at most a
    partial last line is lost, and the reader skips it)."""
    files = tess_files(tess_dir, 2)
    d = DaemonProcess(["--replay", *map(str, files), "--loop", "--speed", "4",
                       "--model", str(tiny_model_path), "--device", "cpu", "--vad", "energy",
                       "--explain-every", "0", "--sessions-dir", str(tmp_path / "s"),
                       "--session-id", "kill"], cwd=tmp_path)
    got: list = []
    done = threading.Event()
    t = threading.Thread(target=_messages_from, args=(d.url, 6, got, done), daemon=True)
    t.start()
    assert done.wait(60), got
    d.signal(signal.SIGKILL)
    rc, _ = d.wait()
    t.join(10)
    assert rc == -signal.SIGKILL
    path = tmp_path / "s" / "kill.jsonl"
    read = read_session(path)
    assert read.bad_lines == 0 and read.messages[0]["type"] == "hello"
    complete = set(path.read_bytes().decode().split("\n")[:-1])
    received = [r for r in got if isinstance(r, str) and json.loads(r)["type"] in BROADCAST]
    assert received and set(received) <= complete


@pytest.mark.timeout(60)
def test_stdin_pcm_split_channels(tmp_path, tiny_model_path, tess_dir):
    """Raw PCM (s16le, 8 kHz, stereo) as from a pipe, split into one stream per channel."""
    import io

    import soxr

    from streamer.sources import StdinSource

    audio, rate = sf.read(str(tess_files(tess_dir, 1)[0]), dtype="float32")
    left = soxr.resample(audio, rate, 8000)
    stereo = np.stack([left, np.zeros_like(left)], axis=1)
    pcm = (stereo * 32767).astype("<i2").tobytes()
    cfg = make_config(tmp_path, tiny_model_path)

    async def main():
        async with running(cfg) as daemon, client(daemon) as c:
            src = StdinSource(8000, 16000, fmt="s16le", channels=2, name="call",
                              split_channels=True, stream=io.BytesIO(pcm))
            ids = await daemon._start_source(src)
            for sid in ids:
                await c.until(lambda m, s=sid: m["type"] == "stream_ended" and m["stream"] == s,
                              seen=True)
            return ids, c

    ids, c = asyncio.run(main())
    assert ids == ["call:ch0", "call:ch1"]
    kinds = {m["stream"]["stream"]: m["stream"] for m in c.of("stream_started")}
    assert kinds["call:ch1"]["kind"] == "stdin" and kinds["call:ch1"]["channel"] == 1
    assert any(p["voiced"] for p in c.of("prediction", "call:ch0"))
    assert not any(p["voiced"] for p in c.of("prediction", "call:ch1"))  # silent channel
    assert c.of("stream_ended", "call:ch0")[0]["t_end_s"] == pytest.approx(len(left) / 8000,
                                                                           abs=0.01)


def test_cli_builds_sources(tmp_path):
    from emotion_monitor.cli import build_parser
    from streamer.cli import build_sources
    from streamer.sources import StdinSource

    args = build_parser().parse_args([
        "stream", "--replay", "a/x.wav", "b.wav", "--replay", "c/x.flac", "--replay", "-",
        "--rate", "8000", "--format", "f32le", "--speed", "0", "--loop", "--gap", "1.5"])
    srcs = build_sources(args, 16000)
    assert [type(s).__name__ for s in srcs] == ["FileSource", "FileSource", "StdinSource"]
    assert srcs[0].paths == ["a/x.wav", "b.wav"] and srcs[0].gap_s == 1.5 and srcs[0].loop
    assert srcs[0].name != srcs[1].name  # two streams named after "x" stay distinct
    assert isinstance(srcs[2], StdinSource) and srcs[2].rate == 8000 and srcs[2].fmt == "f32le"


@pytest.mark.timeout(120)
def test_cuda_inference_matches_cpu(tmp_path, tiny_model_path, tess_dir):
    """--device cuda: the same probabilities as on CPU (features run on the GPU)."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("CUDA is not available on this machine")
    files = tess_files(tess_dir, 1)
    cfg = make_config(tmp_path, tiny_model_path, device="cuda", explain_every=1)

    c = asyncio.run(replay_to_end(cfg, files, "g"))
    assert not c.of("error")
    cpu = ServedModel.load(tiny_model_path, "cpu")
    ref = expected_windows(files, cpu, 0.5)
    probs = cpu.predict(np.stack([w.samples for w in ref]))
    for p in c.of("prediction"):
        if p["voiced"]:
            got = [p["probabilities"][k] for k in cpu.classes]
            np.testing.assert_allclose(got, probs[p["seq"]], atol=1e-4)
    assert c.of("explanation")


@pytest.mark.timeout(60)
def test_paced_stream_drops_oldest_windows_when_inference_lags(tmp_path, tiny_model_path,
                                                                tess_dir):
    """A paced source never waits for inference: with a slow engine the oldest waiting windows
    are dropped and counted (status dropped_windows), and what is sent stays in order."""
    from streamer.engine import Engine

    model = ServedModel.load(tiny_model_path, "cpu")

    class SlowEngine(Engine):
        def process(self, windows, emit=None):
            time.sleep(0.15)
            return super().process(windows, emit)

    files = tess_files(tess_dir, 3)
    cfg = make_config(tmp_path, tiny_model_path, max_pending_windows=2, max_batch=1)
    engine = SlowEngine(model, vad=None, explain_every=0, max_batch=1)

    async def main():
        daemon = Daemon(cfg, [], model=model, engine=engine)
        task = asyncio.create_task(daemon.run())
        await daemon.wait_ready()
        async with client(daemon) as c:
            await daemon._start_source(FileSource(files, 16000, name="fast", speed=20))
            await c.until(lambda m: m["type"] == "stream_ended")
            status = await c.until(lambda m: m["type"] == "status")
        daemon.request_stop()
        assert await task == 0
        return c, status

    c, status = asyncio.run(main())
    seqs = [p["seq"] for p in c.of("prediction", "fast")]
    row = next(s for s in status["streams"] if s["stream"] == "fast")
    assert row["dropped_windows"] > 0
    assert seqs == sorted(seqs) and len(seqs) + row["dropped_windows"] == seqs[-1] + 1
    assert c.of("stream_ended", "fast")[0]["windows"] == len(seqs)


@pytest.mark.timeout(120)
def test_existing_session_id_refused_at_start(tmp_path, tiny_model_path, tess_dir):
    """Restarting the CLI daemon with a session id that already has a log: exit code 2 before
    the model loads or a port is bound, the log untouched (no second hello, no seq restart)."""
    files = tess_files(tess_dir, 1)
    common = ["--model", str(tiny_model_path), "--device", "cpu", "--vad", "energy",
              "--explain-every", "0", "--sessions-dir", str(tmp_path / "s"),
              "--session-id", "again"]
    first = DaemonProcess(["--replay", *map(str, files), "--speed", "0", "--exit-when-done",
                           *common], cwd=tmp_path)
    rc, err = first.wait(60)
    assert rc == 0, err
    logs = sorted((tmp_path / "s").iterdir())
    assert len(logs) == 1 and logs[0].name.startswith("again.jsonl"), logs
    before = logs[0].read_bytes()
    env = {k: v for k, v in os.environ.items() if k != "EMOTION_MONITOR_TOKEN"}
    again = subprocess.run(
        [sys.executable, "-m", "emotion_monitor", "stream", "--port", "0", "--replay",
         *map(str, files), *common], cwd=tmp_path, env={**env, "PYTHONPATH": str(REPO)},
        capture_output=True, text=True, timeout=60)
    assert again.returncode == 2, again.stderr
    assert "'again' already has a log" in again.stderr and "serving" not in again.stderr
    assert sorted((tmp_path / "s").iterdir()) == logs and logs[0].read_bytes() == before
    # the Python API refuses it as well (a Daemon built without the CLI)
    with pytest.raises(FileExistsError):
        SessionLog(tmp_path / "s", "again")


def _old_log(directory, name: str, days: float) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text('{"type":"hello"}\n')
    t = time.time() - days * 86400
    os.utime(path, (t, t))


@pytest.mark.timeout(120)
def test_log_keeps_every_nth_explanation_compresses_and_sweeps(tmp_path, tiny_model_path,
                                                               tess_dir, monkeypatch):
    """Clients get every explanation, the log every 3rd of the stream and every prediction;
    logs older than --retain-days go at start-up and on the (here shortened) hourly sweep;
    the closed log is compressed and reads back."""
    from streamer import retention

    monkeypatch.setattr(retention, "SWEEP_INTERVAL_S", 0.2)
    sessions = tmp_path / "sessions"
    _old_log(sessions, "20200101T000000Z-aaaaaa.jsonl.gz", 30)
    _old_log(sessions, "20200102T000000Z-bbbbbb.jsonl.gz", 1)
    files = tess_files(tess_dir, 3)
    cfg = make_config(tmp_path, tiny_model_path, explain_every=1, log_explanations_every=3,
                      retain_days=7)

    async def main():
        async with running(cfg) as daemon, client(daemon) as c:
            assert sorted(p.name for p in sessions.iterdir()) == [  # swept at start-up
                "20200102T000000Z-bbbbbb.jsonl.gz", f"{daemon.session_id}.jsonl"]
            _old_log(sessions, "20200103T000000Z-cccccc.jsonl", 9)
            await daemon._start_source(FileSource(files, 16000, name="ex", speed=0))
            await c.until(lambda m: m["type"] == "stream_ended")
            deadline = time.monotonic() + 20
            while (sessions / "20200103T000000Z-cccccc.jsonl").exists():
                assert time.monotonic() < deadline, "the periodic sweep did not run"
                await asyncio.sleep(0.1)
            return daemon, c

    daemon, c = asyncio.run(main())
    assert sorted(p.name for p in sessions.iterdir()) == [
        "20200102T000000Z-bbbbbb.jsonl.gz", f"{daemon.session_id}.jsonl.gz"]
    lines = log_text(sessions, daemon.session_id).splitlines()
    logged = [json.loads(x) for x in lines]
    sent = [r for r, m in zip(c.raw, c.msgs, strict=True) if m["type"] == "explanation"]
    assert len(sent) >= 7, "too few explanations to test the log rate"
    assert [x for x in lines if json.loads(x)["type"] == "explanation"] == sent[::3]
    preds = [r for r, m in zip(c.raw, c.msgs, strict=True) if m["type"] == "prediction"]
    assert preds == [x for x in lines if json.loads(x)["type"] == "prediction"]
    assert not [m for m in logged if m["type"] == "error"]


@pytest.mark.timeout(120)
def test_session_size_cap_stops_explanations_never_predictions(tmp_path, tiny_model_path,
                                                               tess_dir):
    """--max-session-mb: explanations are logged until the cap, then one log_truncated error
    (in the log only); every prediction is logged, also past the cap."""
    cap = 40_000
    cfg = make_config(tmp_path, tiny_model_path, explain_every=1, log_explanations_every=1,
                      max_session_mb=cap / 2**20, max_batch=1)  # pred, expl, pred, expl, ...
    c = asyncio.run(replay_to_end(cfg, tess_files(tess_dir, 3), "cap"))
    sent = [r for r, m in zip(c.raw, c.msgs, strict=True) if m["type"] == "explanation"]
    assert sum(len(r) + 1 for r in sent) > 2 * cap, "the cap would not be reached"
    assert not c.of("error"), c.of("error")  # the note is not sent to clients
    sid = c.msgs[0]["session_id"]
    lines = log_text(tmp_path / "sessions", sid).splitlines()
    kinds = [json.loads(x)["type"] for x in lines]
    expl = [x for x in lines if json.loads(x)["type"] == "explanation"]
    assert 1 <= len(expl) < len(sent) and expl == sent[:len(expl)]
    notes = [json.loads(x) for x in lines if json.loads(x)["type"] == "error"]
    assert [n["code"] for n in notes] == ["log_truncated"]
    note_at = kinds.index("error")
    assert sum(len(x) + 1 for x in lines[:note_at]) <= cap  # explanations stayed under it
    assert "explanation" not in kinds[note_at:]
    preds = [r for r, m in zip(c.raw, c.msgs, strict=True) if m["type"] == "prediction"]
    assert preds == [x for x in lines if json.loads(x)["type"] == "prediction"]
    assert kinds[note_at:].count("prediction") >= 1  # logged past the cap
    assert sum(len(x) + 1 for x in lines) > cap
