"""The Streamlit app under streamlit.testing.v1.AppTest: no daemon, a fed stream, alerts,
a real (fake) websocket daemon with reconnects, replay requests and session review.

Messages are built with `streamer.protocol`, so they are valid protocol v1 by construction.
"""

from __future__ import annotations

import asyncio
import json
import math
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from dashboard.app import parse_args
from dashboard.client import Feed
from dashboard.smoothing import DEFAULT_TAU_S
from dashboard.state import Store
from streamer import protocol
from tests.ws_thread import ThreadedServer

APP = str(Path(__file__).resolve().parents[1] / "dashboard" / "app.py")
CLASSES = ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]
CARD = {"name": "fake-model", "classes": CLASSES, "sample_rate": 16000, "window_s": 3.0}
HOP = 0.5
URL = "ws://fake-daemon:1"


# ----------------------------------------------------------------------------- messages

def hello(streams: list[str] = ("s1",)) -> dict:
    infos = [protocol.stream_info(s, "file", f"{s}.flac", 1763760000.0, speed=1.0)
             for s in streams]
    return protocol.hello("sess-1", CARD, infos, HOP, 1,
                          {"max_message_bytes": 65536, "max_upload_bytes": 2**20,
                           "queue_size": 64}, client_id="c1")


def probs_for(label: str, p: float) -> list[float]:
    rest = (1.0 - p) / (len(CLASSES) - 1)
    return [p if c == label else rest for c in CLASSES]


def window(stream: str, seq: int, label: str | None = "happy", p: float = 0.7) -> dict:
    t0 = seq * HOP
    if label is None:
        return protocol.prediction(stream, seq, t0, t0 + 3.0, 1763760000.0 + t0, None, 3.0,
                                   voiced=False)
    return protocol.prediction(stream, seq, t0, t0 + 3.0, 1763760000.0 + t0,
                               probs_for(label, p), 12.0, CLASSES)


def explanation(stream: str, seq: int, label: str = "angry") -> dict:
    f, t = 64, 100
    spec = np.outer(np.linspace(-10, 2, f), np.ones(t)) + np.sin(np.arange(t) / 5.0)
    cam = np.zeros((f, t))
    cam[10:30, 40:70] = 1.0
    metrics = {"confidence": 0.81, "max_activation": 1.0, "mean_activation": 0.12,
               "activated_area_pct": 9.4, "entropy": 5.1, "focus_time_s": [1.2, 2.1],
               "focus_freq_hz": [300.0, 1500.0], "confidence_drop": 0.42, "random_drop": 0.05}
    freqs = [float(50 + 120 * i) for i in range(f)]
    times = [0.015 + 0.03 * i for i in range(t)]
    return protocol.explanation(stream, seq, label, "gradcam", metrics,
                                protocol.encode_frame(spec, unit="log-mel"),
                                protocol.encode_frame(cam, 0.0, 1.0), times, freqs)


def status(stream: str = "s1", windows: int = 10, dropped: int = 0) -> dict:
    return protocol.status([protocol.stream_status(stream, "running", 0.03, windows * HOP,
                                                   windows, windows - 2, dropped)],
                           [{"client_id": "c1", "queued": 0, "dropped_messages": 0}], 10.0)


def session_messages() -> list[dict]:
    """A short session: speech, a pause, sustained anger, explanations, an end."""
    msgs = [hello()]
    labels = ["happy"] * 6 + [None] * 3 + ["angry"] * 12
    for seq, label in enumerate(labels):
        msgs.append(window("s1", seq, label, 0.9 if label == "angry" else 0.7))
        if label is not None and seq % 3 == 0:
            msgs.append(explanation("s1", seq, label))
    msgs.append(status("s1", len(labels)))
    msgs.append(protocol.stream_ended("s1", "eof", len(labels), len(labels) * HOP + 2.5))
    return msgs


# ----------------------------------------------------------------------------- helpers

def app(feed: Feed, *args: str) -> AppTest:
    if "--sessions-dir" not in args:  # never the checkout's own sessions/ (a demo's logs)
        args = (*args, "--sessions-dir", tempfile.mkdtemp(prefix="no-sessions-"))
    at = AppTest.from_file(APP, default_timeout=60)
    at.session_state["config"] = parse_args(["--url", feed.urls[0], *args])
    at.session_state["feed"] = feed
    return at


def picker(at: AppTest):
    """The stream picker (its key changes with the streams on offer)."""
    return next(m for m in at.multiselect if m.label == "Streams")


def all_text(at: AppTest) -> str:
    parts = []
    for kind in ("markdown", "caption", "info", "warning", "error", "success", "subheader"):
        parts += [str(e.value) for e in getattr(at, kind)]
    parts += [f"{m.label}={m.value}" for m in at.metric]
    return "\n".join(parts)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FakeDaemon(ThreadedServer):
    """A tiny protocol v1 server in a thread: sends hello, then what a test pushes; records
    what clients send and answers `replay` with an ack."""

    def __init__(self, port: int) -> None:
        super().__init__(port)
        self.received: list[dict] = []
        self.outbox: list[dict] = []

    async def _handler(self, ws) -> None:  # noqa: ANN001 - websockets' connection
        await ws.send(protocol.encode(hello()))
        sent = 0

        async def pump() -> None:
            nonlocal sent
            while True:
                while sent < len(self.outbox):
                    await ws.send(protocol.encode(self.outbox[sent]))
                    sent += 1
                await asyncio.sleep(0.02)

        task = asyncio.ensure_future(pump())
        try:
            async for raw in ws:
                msg = json.loads(raw)
                self.received.append(msg)
                if msg["type"] == "replay":  # as the daemon answers: ack, then started
                    await ws.send(protocol.encode(protocol.ack("replay", ref=msg.get("id"),
                                                               stream="up1")))
                    info = protocol.stream_info("up1", "upload", "clip.flac", time.time())
                    await ws.send(protocol.encode(protocol.stream_started(info,
                                                                          ref=msg.get("id"))))
        finally:
            task.cancel()


def wait_for(cond, timeout: float = 10.0) -> bool:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def offline_feed() -> Iterator[Feed]:
    """A feed that is never started: tests inject messages into it."""
    yield Feed([URL])


# ----------------------------------------------------------------------------- tests

@pytest.mark.timeout(60)
def test_no_daemon_shows_a_clear_message_not_a_traceback() -> None:
    # A port bound but not listening refuses connections, and nothing else (a daemon started
    # by another test or another suite on this machine) can take it while the test runs.
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    feed = Feed([f"ws://127.0.0.1:{holder.getsockname()[1]}"], backoff=(0.1, 0.5)).start()
    try:
        assert wait_for(lambda: feed.store.source(feed.urls[0]).state == "retrying")
        at = app(feed)
        at.run()
        assert not at.exception
        text = all_text(at)
        assert "No daemon connected" in text
        assert "connection refused" in text and "retrying" in text
        assert "emotion-monitor demo" in text
    finally:
        feed.stop()
        holder.close()


@pytest.mark.timeout(60)
def test_a_retry_in_flight_keeps_the_last_failure_on_screen(offline_feed: Feed) -> None:
    src = offline_feed.store.source(URL)
    src.state, src.detail = "connecting", "connection refused"
    at = app(offline_feed)
    at.run()
    text = all_text(at)
    assert "connection refused" in text and "retrying" in text


@pytest.mark.timeout(60)
def test_fed_stream_shows_current_emotion_timeline_explanation_and_health(
        offline_feed: Feed) -> None:
    for msg in [hello(), *[window("s1", i, "happy", 0.6) for i in range(5)],
                window("s1", 5, None), window("s1", 6, "sad", 0.8), explanation("s1", 6, "sad"),
                status("s1", 7, dropped=2)]:
        offline_feed.inject(URL, msg)
    at = app(offline_feed)
    at.run()
    assert not at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert "sad" in metrics["Current emotion"]
    # averaged over DEFAULT_TAU_S of speech: the sad window came 1 s after the last happy one
    a = math.exp(-2 * HOP / DEFAULT_TAU_S)
    assert metrics["Confidence"] == f"{a * 0.4 / 6 + (1 - a) * 0.8:.0%}" != "80%"
    assert metrics["Dropped windows"] == "2"
    assert metrics["Lag"] == "0.03 s"
    assert metrics["Voiced windows"] == f"{5 / 7:.0%}"
    text = all_text(at)
    assert "Grad-CAM Analysis for class: sad" in text
    # Timeline, distribution and the explanation heatmap are drawn.
    charts = at.get("plotly_chart")
    assert len(charts) == 3
    timeline = json.loads(charts[0].proto.spec)
    happy = next(tr for tr in timeline["data"] if tr.get("name") == "happy")
    # The unvoiced window (seq 5) is a gap, not a value: silence is not "neutral".
    assert happy["y"][5] is None and happy["y"][0] == pytest.approx(0.6)
    expl = json.loads(charts[2].proto.spec)
    assert any(tr.get("name") == "Grad-CAM" for tr in expl["data"])
    assert expl["layout"]["shapes"], "the focus box is drawn"
    # "each window" in the sidebar: the latest window as it came
    (avg,) = [w for w in at.select_slider if w.label == "Average emotions over"]
    avg.set_value(0.0).run()
    assert {m.label: m.value for m in at.metric}["Confidence"] == "80%"
    timeline = json.loads(at.get("plotly_chart")[0].proto.spec)
    sad = next(tr for tr in timeline["data"] if tr.get("name") == "sad")
    assert sad["y"][-1] == pytest.approx(0.8)


def test_an_explanation_is_titled_by_its_method() -> None:
    from dashboard import figures

    msg = explanation("s1", 3, "sad")
    assert figures.explanation_figure(msg)["layout"]["title"]["text"].startswith(
        "Grad-CAM for class: sad")
    sal = figures.explanation_figure({**msg, "method": "saliency"})
    assert sal["layout"]["title"]["text"].startswith("Saliency for class: sad")
    assert sal["data"][1]["colorbar"]["title"]["text"] == "Saliency"


@pytest.mark.timeout(60)
def test_below_the_models_floor_the_emotion_reads_uncertain(offline_feed: Feed) -> None:
    """A card with a confidence floor: a steady 60 % "happy" under a 75 % floor shows as
    uncertain (leaning happy), with the floor drawn on the timeline; the sidebar toggle turns
    it off."""
    card = {**CARD, "display": {"min_confidence": 0.75}}
    offline_feed.inject(URL, protocol.hello(
        "sess-1", card, [protocol.stream_info("s1", "file", "s1.flac", 1763760000.0)], HOP, 1,
        {"max_message_bytes": 65536, "max_upload_bytes": 2**20, "queue_size": 64}))
    for i in range(6):
        offline_feed.inject(URL, window("s1", i, "happy", 0.6))
    at = app(offline_feed)
    at.run()
    assert not at.exception
    metrics = {m.label: m for m in at.metric}
    assert "uncertain" in metrics["Current emotion"].value
    assert "leaning happy" in metrics["Current emotion"].help
    assert metrics["Confidence"].value == "60%"
    timeline = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert any(sh.get("type") == "line" and sh.get("y0") == 0.75
               for sh in timeline["layout"]["shapes"])
    (toggle,) = [t for t in at.toggle if "uncertain" in t.label]
    toggle.set_value(False).run()
    assert "happy" in {m.label: m.value for m in at.metric}["Current emotion"]


@pytest.mark.timeout(60)
def test_invalid_message_is_skipped_with_an_event(offline_feed: Feed) -> None:
    offline_feed.inject(URL, hello())
    offline_feed._handle(URL, '{"type": "prediction", "v": "1", "stream": "s1"}')
    offline_feed._handle(URL, "not json")
    offline_feed.inject(URL, window("s1", 0, "fear", 0.9))
    assert offline_feed.store.rejected == 2
    at = app(offline_feed)
    at.run()
    assert not at.exception
    assert "invalid message skipped" in all_text(at)
    assert "fear" in {m.label: m.value for m in at.metric}["Current emotion"]


@pytest.mark.timeout(60)
def test_sustained_anger_raises_banner_and_log(offline_feed: Feed) -> None:
    at = app(offline_feed)
    at.run()  # the sidebar installs the default rule: angry or fear >= 60% for 3 s
    offline_feed.inject(URL, hello())
    for seq in range(10):
        offline_feed.inject(URL, window("s1", seq, "angry", 0.9))
    at.run()
    assert not at.exception
    banners = [e.value for e in at.error]
    assert any("ALERT" in b and "angry" in b for b in banners), banners
    log = offline_feed.store.alerts.log
    assert len(log) == 1 and log[0].emotion == "angry"
    # Calm again: the banner goes, the log keeps the alert.
    offline_feed.inject(URL, window("s1", 10, "neutral", 0.9))
    at.run()
    assert not any("ALERT" in e.value for e in at.error)
    assert len(offline_feed.store.alerts.log) == 1


@pytest.mark.timeout(60)
def test_pause_freezes_the_view_but_keeps_the_data(offline_feed: Feed) -> None:
    offline_feed.inject(URL, hello())
    offline_feed.inject(URL, window("s1", 0, "happy", 0.9))
    at = app(offline_feed)
    at.run()
    at.sidebar.toggle[0].set_value(True).run()
    offline_feed.inject(URL, window("s1", 1, "sad", 0.9))
    at.run()
    metrics = {m.label: m.value for m in at.metric}
    assert "happy" in metrics["Current emotion"]
    assert "paused" in all_text(at)
    assert len(offline_feed.store.streams["s1"].predictions) == 2
    # An alert raised while paused still shows.
    for seq in range(2, 12):
        offline_feed.inject(URL, window("s1", seq, "fear", 0.9))
    at.run()
    assert "happy" in {m.label: m.value for m in at.metric}["Current emotion"]
    assert any("ALERT" in e.value and "fear" in e.value for e in at.error)
    at.sidebar.toggle[0].set_value(False).run()
    assert "fear" in {m.label: m.value for m in at.metric}["Current emotion"]


def test_ring_buffers_bound_memory() -> None:
    store = Store(max_predictions=50, max_explanations=3)
    store.apply(URL, hello())
    for seq in range(500):
        store.apply(URL, window("s1", seq, "happy" if seq % 2 else None))
        if seq % 10 == 0:
            store.apply(URL, explanation("s1", seq))
    data = store.streams["s1"]
    assert len(data.predictions) == 50 and data.predictions[-1].seq == 499
    assert len(data.explanations) == 3
    assert data.n_windows == 500 and data.n_voiced == 250
    assert sum(data.counts.values()) == 250


@pytest.mark.timeout(90)
def test_real_websocket_feed_reconnects_and_sends_replay(tmp_path: Path) -> None:
    port = free_port()
    url = f"ws://127.0.0.1:{port}"
    feed = Feed([url], backoff=(0.1, 0.3)).start()
    try:
        with FakeDaemon(port) as daemon:
            daemon.outbox += [window("s1", i, "fear", 0.75) for i in range(4)]
            assert wait_for(lambda: len(feed.store.streams.get("s1", _empty()).predictions) == 4)
            assert wait_for(lambda: any(m["type"] == "subscribe" for m in daemon.received))
            at = app(feed)
            at.run()
            assert not at.exception
            assert "connected" in all_text(at)
            assert "fear" in {m.label: m.value for m in at.metric}["Current emotion"]
            # Replay an uploaded FLAC through the Replay tab.
            flac = (Path(__file__).resolve().parents[1] / "examples" / "tess_stream"
                    / "YAF_dog_fear.flac").read_bytes()
            at.file_uploader[0].upload("clip.flac", flac, "audio/flac").run()
            next(b for b in at.button if "Replay" in b.label).click().run()
            assert not at.exception
            assert any("Replaying as stream `up1`" in s.value for s in at.success)
            sent = [m for m in daemon.received if m["type"] == "replay"]
            assert len(sent) == 1 and sent[0]["upload"]["name"] == "clip.flac"
            protocol.validate(sent[0], "client")
            # Stop a stream from its card.
            at.button(key="stop-s1").click().run()
            assert wait_for(lambda: any(m["type"] == "stop_stream" and m["stream"] == "s1"
                                        for m in daemon.received))
        # The daemon went away: the feed says so and retries.
        assert wait_for(lambda: feed.store.source(url).state in ("retrying", "connecting"))
        with FakeDaemon(port) as daemon:
            daemon.outbox += [window("s1", 0, "sad", 0.9)]
            assert wait_for(lambda: feed.store.source(url).state == "connected")
            assert wait_for(lambda: feed.store.streams["s1"].predictions[-1].label == "sad")
    finally:
        feed.stop()


@pytest.mark.timeout(60)
def test_upload_of_a_non_audio_file_is_refused(offline_feed: Feed, tmp_path: Path) -> None:
    port = free_port()
    feed = Feed([f"ws://127.0.0.1:{port}"], backoff=(0.1, 0.3)).start()
    try:
        with FakeDaemon(port) as daemon:
            assert wait_for(lambda: feed.connected())
            at = app(feed)
            at.run()
            at.file_uploader[0].upload("notes.wav", b"hello, not audio" * 10, "audio/wav").run()
            next(b for b in at.button if "Replay" in b.label).click().run()
            assert not at.exception
            assert any("not a WAV or FLAC" in e.value for e in at.error)
            assert not [m for m in daemon.received if m["type"] == "replay"]
    finally:
        feed.stop()


@pytest.mark.timeout(60)
def test_session_review_reads_log_skips_partial_line_and_exports_csv(
        offline_feed: Feed, tmp_path: Path) -> None:
    sessions = tmp_path / "sessions"
    sessions.mkdir()
    log = sessions / "sess-1.jsonl"
    lines = [protocol.encode(m) for m in session_messages()]
    log.write_text("\n".join(lines) + "\n" + lines[3][: len(lines[3]) // 2])  # crash mid-line
    at = app(offline_feed, "--sessions-dir", str(sessions))
    at.run()
    assert not at.exception
    text = all_text(at)
    assert "Session `sess-1`" in text and "1 skipped" in text
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Windows"] == "21"
    assert metrics["Voiced"] == f"{18 / 21:.0%}"
    assert metrics["Alerts (current rules)"] == "1"  # 12 angry windows at 90% = 5.5 s
    slider = at.get("select_slider")
    seqs = next(s for s in slider if s.label == "Explanation of window").options
    assert seqs[-1] == "18"
    assert "Grad-CAM Analysis for class: angry" in text
    # CSV export: one row per window, empty probabilities for unvoiced windows.
    from dashboard.session import predictions_csv, read_session

    session = read_session(log)
    assert session.skipped and "partial last line" in session.skipped[0]
    csv_text = predictions_csv(session.store.streams["s1"].predictions, CLASSES)
    rows = csv_text.strip().splitlines()
    assert rows[0].startswith("stream,seq,t_start,t_end,wall_time,voiced,label")
    assert len(rows) == 22
    unvoiced = rows[1 + 6].split(",")
    assert unvoiced[5] == "0" and unvoiced[-1] == ""
    assert session.explanation("s1", 18)["class"] == "angry"


@pytest.mark.timeout(60)
def test_session_review_reads_a_compressed_log(offline_feed: Feed, tmp_path: Path) -> None:
    """A closed session's log is <id>.jsonl.gz (streamer.retention.compress): the review tab
    lists it under its id, reads it and opens explanations from it, like a plain log."""
    from dashboard.session import list_sessions, read_session
    from streamer.retention import compress

    sessions = tmp_path / "sessions"
    sessions.mkdir()
    plain = sessions / "sess-1.jsonl"  # the id the hello of session_messages() names
    plain.write_text("\n".join(protocol.encode(m) for m in session_messages()) + "\n")
    gz = compress(plain)
    assert not plain.exists() and list_sessions(sessions) == [gz]
    at = app(offline_feed, "--sessions-dir", str(sessions))
    at.run()
    assert not at.exception
    text = all_text(at)
    assert "Session `sess-1`" in text and "skipped" not in text
    assert {m.label: m.value for m in at.metric}["Windows"] == "21"
    assert "Grad-CAM Analysis for class: angry" in text
    session = read_session(gz)
    assert session.session_id == "sess-1" and not session.skipped
    assert session.explanation("s1", 18)["class"] == "angry"


def test_session_reader_refuses_a_file_with_no_message(tmp_path: Path) -> None:
    from dashboard.session import read_session

    bad = tmp_path / "x.jsonl"
    bad.write_text("garbage\nmore garbage\n")
    with pytest.raises(ValueError, match="no protocol v1 message"):
        read_session(bad)


def test_upload_checks() -> None:
    from dashboard.replay import check_path, check_upload

    flac = b"fLaC" + bytes(100)
    wav = b"RIFF" + bytes(4) + b"WAVE" + bytes(100)
    assert check_upload("a.flac", flac) == "flac"
    assert check_upload("b.WAV", wav) == "wav"
    for name, data, why in [("a.mp3", flac, "only WAV and FLAC"), ("a.flac", b"", "empty"),
                            ("a.flac", wav, "content is WAV"),
                            ("a.flac", flac + bytes(2000), "upload limit")]:
        with pytest.raises(ValueError, match=why):
            check_upload(name, data, max_bytes=1000)
    with pytest.raises(ValueError, match=r"'\.\.'"):
        check_path("../etc/passwd")
    assert check_path(" calls/a.flac ") == "calls/a.flac"


def _empty():  # noqa: ANN202 - a stand-in with no predictions
    class _E:
        predictions: list = []
    return _E()


def test_timeline_breaks_lines_at_missing_windows() -> None:
    from dashboard.figures import timeline_figure
    from dashboard.state import Store

    store = Store()
    for seq in (0, 1, 4, 5):
        store.apply(URL, window("s1", seq, "happy", 0.5))
    fig = timeline_figure(list(store.streams["s1"].predictions), CLASSES, last_s=None)
    ys = next(tr for tr in fig["data"] if tr["name"] == "happy")["y"]
    assert list(ys) == [0.5, 0.5, None, 0.5, 0.5]
    assert store.streams["s1"].gaps == 2
    assert not any(isinstance(y, float) and math.isnan(y) for y in ys if y is not None)


@pytest.mark.timeout(60)
def test_two_daemons_and_split_channels_are_told_apart() -> None:
    other = "ws://other-daemon:2"
    feed = Feed([URL, other])
    agent = protocol.stream_info("call-ch0", "file", "call.wav", 1763760000.0, channel=0)
    caller = protocol.stream_info("call-ch1", "file", "call.wav", 1763760000.0, channel=1)
    feed.inject(URL, protocol.hello("sess-1", CARD, [agent, caller], HOP, 1,
                                    {"max_message_bytes": 1, "max_upload_bytes": 1,
                                     "queue_size": 1}))
    feed.inject(URL, window("call-ch0", 0, "neutral", 0.8))
    feed.inject(URL, window("call-ch1", 0, "angry", 0.8))
    feed.inject(other, hello())
    feed.inject(other, window("s1", 0, "sad", 0.8))
    keys = list(feed.store.streams)
    assert keys == ["fake-daemon:1 / call-ch0", "fake-daemon:1 / call-ch1", "other-daemon:2 / s1"]
    labels = [feed.store.streams[k].label for k in keys]
    assert "ch 0 (agent)" in labels[0] and "ch 1 (caller)" in labels[1]
    at = app(feed)
    at.run()
    assert not at.exception
    currents = [m.value for m in at.metric if m.label == "Current emotion"]
    assert len(currents) == 3 and any("angry" in c for c in currents)
    subheaders = [s.value for s in at.subheader]
    assert any("caller" in s for s in subheaders) and any("agent" in s for s in subheaders)


def test_daemon_restart_starts_the_streams_over() -> None:
    store = Store()
    store.apply(URL, hello())
    for seq in range(8):
        store.apply(URL, window("s1", seq, "angry", 0.9))
    assert store.streams["s1"].counts["angry"] == 8
    restarted = {**hello(), "session_id": "sess-2"}
    store.apply(URL, restarted)
    data = store.streams["s1"]
    assert data.n_windows == 0 and not data.counts and not data.predictions
    store.apply(URL, window("s1", 0, "sad", 0.9))
    assert store.streams["s1"].counts == {"sad": 1}
    assert "daemon restarted" in store.events[-1][2]
    # The same session again (a plain reconnect) keeps everything.
    store.apply(URL, restarted)
    assert store.streams["s1"].n_windows == 1


@pytest.mark.timeout(60)
def test_new_streams_join_the_picker_and_removed_ones_stay_removed(offline_feed: Feed) -> None:
    offline_feed.inject(URL, hello(["s1", "s2"]))
    offline_feed.inject(URL, window("s1", 0, "happy", 0.9))
    at = app(offline_feed)
    at.run()
    assert picker(at).value == ["s1", "s2"]
    picker(at).unselect("s2").run()
    info = protocol.stream_info("up1", "upload", "x.flac", time.time())
    offline_feed.inject(URL, protocol.stream_started(info, ref="r1"))
    offline_feed.inject(URL, window("up1", 0, "fear", 0.9))
    at.run()
    assert not at.exception
    assert picker(at).value == ["s1", "up1"]
    assert [m.value for m in at.metric if m.label == "Current emotion"][-1].endswith("fear")


def test_ended_streams_are_forgotten_oldest_first() -> None:
    from dashboard.state import MAX_ENDED_STREAMS

    store = Store()
    store.apply(URL, hello([]))
    for i in range(MAX_ENDED_STREAMS + 10):
        store.apply(URL, window(f"r{i}", 0, "happy", 0.9))
        store.apply(URL, protocol.stream_ended(f"r{i}", "eof", 1, 3.0))
    store.apply(URL, window("live", 0, "sad", 0.9))
    assert len(store.streams) <= MAX_ENDED_STREAMS + 1
    assert "live" in store.streams and f"r{MAX_ENDED_STREAMS + 9}" in store.streams
    assert "r0" not in store.streams
