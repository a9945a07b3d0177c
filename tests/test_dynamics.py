"""Conversation dynamics (streamer/dynamics.py): a synthetic two-speaker call with known turns,
overlaps and silences (TESS speech placed at known times); the interruption definition on
its edges; loudness trend, pitch and rate on signals with known answers; grouping of streams
into calls; and a real daemon replaying the call as a split-channel stereo file (messages,
session log, CSV export)."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from emotion_monitor.cli import main as cli_main
from streamer import protocol
from streamer.dynamics import (
    FRAME_S,
    CallDynamics,
    DynamicsConfig,
    parse_roles,
    smooth_talk,
    yin_pitch,
)
from tests.call_fixture import RATE, ramp, two_speaker_call
from tests.streamer_harness import client, log_text, make_config, running

WALL0 = 1_000_000.0


def drive(stereo: np.ndarray, roles: tuple = (), chunk_s: float = 0.05, name: str = "call",
          config: DynamicsConfig | None = None) -> list[dict]:
    """Feed a [n, channels] recording to the observer as the daemon would feed a split-channel
    replay (chunks in turn, a tick per second of audio, then the ends and a last tick)."""
    obs = CallDynamics(RATE, config or DynamicsConfig(split_roles=roles))
    ids = [f"{name}:ch{i}" for i in range(stereo.shape[1])]
    for i, sid in enumerate(ids):
        obs.stream_started(protocol.stream_info(sid, "file", "call.wav", WALL0, channel=i))
    chunk = max(1, int(chunk_s * RATE))
    msgs, next_tick = [], RATE
    for lo in range(0, stereo.shape[0], chunk):
        for i, sid in enumerate(ids):
            obs.audio(sid, stereo[lo:lo + chunk, i], lo, WALL0 + lo / RATE)
        if lo + chunk >= next_tick:
            msgs += obs.tick(WALL0 + lo / RATE)
            next_tick += RATE
    for sid in ids:
        obs.stream_ended(sid)
    msgs += obs.tick(WALL0 + stereo.shape[0] / RATE)
    for m in msgs:
        protocol.validate(m, direction="server")
    return msgs


def overlap_truth(spans: list[list[tuple[float, float]]]) -> float:
    return sum(max(0.0, min(b1, b2) - max(a1, a2)) for a1, b1 in spans[0] for a2, b2 in spans[1])


def bursts(spans: list[tuple[float, float]], seconds: float, f0: float = 140.0) -> np.ndarray:
    """A harmonic voice-like tone (4 Hz syllable envelope) on ``spans``, silence elsewhere."""
    t = np.arange(int(seconds * RATE)) / RATE
    tone = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 8)) * 0.05
    env = (0.5 * (1 - np.cos(2 * np.pi * 4 * t))) ** 2 + 0.05
    on = np.zeros_like(t, dtype=bool)
    for a, b in spans:
        on[int(a * RATE):int(b * RATE)] = True
    return (tone * env * on).astype(np.float32)


@pytest.fixture(scope="module")
def call(tess_dir: Path):
    return two_speaker_call(tess_dir)


@pytest.fixture(scope="module")
def call_msgs(call) -> list[dict]:
    return drive(call.audio, roles=("agent", "caller"))


# ----------------------------------------------------------------------------- the call

def test_one_message_per_second_then_a_final_one(call, call_msgs) -> None:
    ts = [m["t_s"] for m in call_msgs]
    whole = int(call.duration)
    assert ts[:-1] == [float(t) for t in range(1, whole + 1)]
    assert ts[-1] == pytest.approx(call.duration, abs=FRAME_S)
    assert [m.get("final", False) for m in call_msgs] == [False] * whole + [True]
    assert all(m["call"] == "call" for m in call_msgs)
    last = call_msgs[-1]
    assert [(s["stream"], s["role"]) for s in last["sides"]] == [("call:ch0", "agent"),
                                                                 ("call:ch1", "caller")]
    assert last["wall_time"] == pytest.approx(WALL0 + call.duration, abs=0.1)


def test_talk_overlap_and_silence_figures(call, call_msgs) -> None:
    last = call_msgs[-1]
    a, b = last["sides"]
    # talk within 0.25 s of the placed speech (pauses inside turns <= 0.3 s are talk)
    assert a["talk_s"] == pytest.approx(call.talk_s(0), abs=0.25)
    assert b["talk_s"] == pytest.approx(call.talk_s(1), abs=0.25)
    total = call.talk_s(0) + call.talk_s(1)
    assert a["talk_share"] == pytest.approx(call.talk_s(0) / total, abs=0.02)
    assert a["talk_share"] + b["talk_share"] == pytest.approx(1.0, abs=0.002)
    assert last["overlaps"] == 3  # B on A, A's fragment over B, A on B
    assert last["overlap_s"] == pytest.approx(overlap_truth(call.talk), abs=0.3)
    gap = call.talk[1][2][0] - max(call.talk[0][1][1], call.talk[1][1][1])  # the 12 s hole
    assert last["dead_air"] == 1 and last["dead_air_s"] == 10.0
    assert last["longest_silence_s"] == pytest.approx(gap, abs=0.1)
    assert last["silence_s"] == pytest.approx(3.0, abs=0.1)  # the call's trailing silence
    assert not a["speaking"] and not b["speaking"]


def test_interruptions_who_on_whom_and_when(call, call_msgs) -> None:
    def counts(t: float) -> tuple[int, int]:
        m = next(m for m in call_msgs if m["t_s"] >= t)
        return m["sides"][0]["interruptions"], m["sides"][1]["interruptions"]

    b_cut_in = call.talk[1][1][0]  # 8.0: B (caller) starts while A has talked 1.4 s
    a_cut_in = call.talk[0][3][0]  # A (agent) starts over B's third turn
    assert counts(b_cut_in) == (0, 0)
    # confirmed once B has talked 1 s; the message of that second carries it
    assert counts(b_cut_in + 2.0) == (0, 1)
    assert counts(a_cut_in) == (0, 1)  # A's 0.6 s fragment in between was no interruption
    assert counts(a_cut_in + 2.0) == (1, 1)
    assert counts(call_msgs[-1]["t_s"]) == (1, 1)


def test_dead_air_counted_when_reached_and_silence_runs(call, call_msgs) -> None:
    start = max(call.talk[0][1][1], call.talk[1][1][1])
    before = [m for m in call_msgs if m["t_s"] < start + 10.0 - 0.05]
    after = [m for m in call_msgs if m["t_s"] >= start + 10.0 + 0.05]
    assert before[-1]["dead_air"] == 0 and after[0]["dead_air"] == 1
    m = next(m for m in call_msgs if m["t_s"] >= start + 5)
    assert m["silence_s"] == pytest.approx(m["t_s"] - start, abs=0.1)


def test_chunk_size_does_not_change_the_figures(call) -> None:
    fine = drive(call.audio[: 15 * RATE], chunk_s=0.02)
    coarse = drive(call.audio[: 15 * RATE], chunk_s=1.0)
    strip = [{k: v for k, v in m.items() if k != "wall_time"} for m in fine]
    assert strip == [{k: v for k, v in m.items() if k != "wall_time"} for m in coarse]


def test_recent_share_forgets_old_talk() -> None:
    # A talks 0-4 s, B talks 6-16 s; with recent_s 8, the recent share is B's alone by 16 s.
    x = np.stack([bursts([(0, 4)], 17), bursts([(6, 16)], 17, f0=220)], axis=1)
    msgs = drive(x, config=DynamicsConfig(recent_s=8.0))
    at16 = next(m for m in msgs if m["t_s"] == 16.0)
    assert at16["sides"][0]["talk_share"] == pytest.approx(0.29, abs=0.03)
    assert at16["sides"][0]["talk_share_recent"] == 0.0
    assert at16["sides"][1]["talk_share_recent"] == 1.0
    assert at16["recent_s"] == 8.0


# ----------------------------------------------------------------------------- interruptions

@pytest.mark.parametrize("a_spans,b_spans,expected", [
    ([(1, 5)], [(2, 4)], (0, 1)),          # B cuts in 1 s into A's turn, both go on: B on A
    ([(1, 5)], [(1.2, 4)], (0, 0)),        # A had talked 0.2 s only: a simultaneous start
    ([(1, 5)], [(2, 2.7)], (0, 0)),        # B's 0.7 s is a backchannel ("mm-hm")
    ([(1, 2.15)], [(2, 4)], (0, 0)),       # A stops 0.15 s after B starts: a hand-over
    ([(1, 3), (4.5, 7)], [(2.5, 6)], (1, 1)),  # each cuts in on the other once
    ([(1, 8)], [(2, 3.5), (4.0, 6)], (0, 1)),  # B resumes after a 0.5 s pause: still one
    ([(1, 8)], [(2, 3.5), (4.6, 6)], (0, 2)),  # after 1.1 s of quiet: a second cut-in
], ids=["cut-in", "too-early", "backchannel", "hand-over", "both", "pause-in-own-turn",
        "second-cut-in"])
def test_interruption_definition(a_spans, b_spans, expected) -> None:
    x = np.stack([bursts(a_spans, 9), bursts(b_spans, 9, f0=210)], axis=1)
    last = drive(x)[-1]
    assert (last["sides"][0]["interruptions"], last["sides"][1]["interruptions"]) == expected


def test_overlap_shorter_than_a_fifth_of_a_second_is_not_counted() -> None:
    x = np.stack([bursts([(1, 3)], 5), bursts([(2.9, 4)], 5, f0=210)], axis=1)
    assert drive(x)[-1]["overlaps"] == 0
    x = np.stack([bursts([(1, 3)], 5), bursts([(2.6, 4)], 5, f0=210)], axis=1)
    last = drive(x)[-1]
    assert last["overlaps"] == 1 and last["overlap_s"] == pytest.approx(0.4, abs=0.06)


# ----------------------------------------------------------------------------- signal figures

@pytest.mark.parametrize("db_per_s", [0.5, -0.5])
def test_loudness_trend_follows_a_ramp(tess_dir: Path, db_per_s: float) -> None:
    x = ramp(tess_dir, 30.0, db_per_s)
    msgs = drive(np.stack([x, np.zeros_like(x)], axis=1))
    trends = [m["sides"][0]["loudness_trend_db_per_min"] for m in msgs if m["t_s"] >= 20]
    assert all(t is not None and np.sign(t) == np.sign(db_per_s) for t in trends), trends
    assert np.median(trends) == pytest.approx(db_per_s * 60, abs=8.0)
    early = next(m for m in msgs if m["t_s"] == 5.0)  # under 10 s of points: no trend yet
    assert early["sides"][0]["loudness_trend_db_per_min"] is None


def test_loudness_level_of_talk() -> None:
    x = bursts([(0.5, 4.5)], 5)
    level = float(10 * np.log10(np.mean(x[int(0.5 * RATE):int(4.5 * RATE)] ** 2)))
    msgs = drive(np.stack([x, np.zeros_like(x)], axis=1))
    m = next(m for m in msgs if m["t_s"] == 3.0)
    assert m["sides"][0]["loudness_dbfs"] == pytest.approx(level, abs=1.5)
    assert m["sides"][1]["loudness_dbfs"] is None and not m["sides"][1]["speaking"]


def test_pitch_and_rate_of_a_synthetic_voice() -> None:
    t = np.arange(6 * RATE) / RATE
    voice = bursts([(0, 6)], 6, f0=140.0)
    # 220 Hz gliding +-2 semitones (sinusoid): spread = 2 / sqrt(2) semitones
    glide = 220.0 * 2 ** (2 * np.sin(2 * np.pi * 0.5 * t) / 12)
    phase = 2 * np.pi * np.cumsum(glide) / RATE
    sung = (0.05 * sum(np.sin(k * phase) / k for k in range(1, 6))
            * ((0.5 * (1 - np.cos(2 * np.pi * 4 * t))) ** 2 + 0.05)).astype(np.float32)
    last = drive(np.stack([voice, sung], axis=1))[-1]
    a, b = last["sides"]
    assert a["pitch_hz"] == pytest.approx(140.0, abs=2.0)
    assert a["pitch_var_st"] < 0.2
    assert a["rate_per_s"] == pytest.approx(4.0, abs=0.5)  # the 4 Hz syllable envelope
    assert b["pitch_hz"] == pytest.approx(220.0, abs=6.0)
    assert b["pitch_var_st"] == pytest.approx(2 / np.sqrt(2), abs=0.3)


@pytest.mark.parametrize("f0", [90.0, 150.0, 310.0])
def test_yin_pitch_of_harmonic_tones(f0: float) -> None:
    t = np.arange(640) / RATE
    tone = sum(np.sin(2 * np.pi * f0 * k * t + k) / k for k in range(1, 6))
    noise = np.random.default_rng(0).standard_normal(640)
    got = yin_pitch(np.stack([tone, noise]), RATE)
    assert got[0] == pytest.approx(f0, abs=2.0)
    assert np.isnan(got[1])


def test_smooth_talk_fills_short_pauses_and_drops_clicks() -> None:
    gap = 3
    a = np.zeros(30, bool)
    a[5:8] = a[10:12] = True  # a 2-frame pause: filled
    a[20] = True  # a lone frame: a click
    a[25:27] = True  # 5 frames after... the click does not bridge to it
    padded = np.concatenate([np.zeros(gap + 1, bool), a, np.zeros(gap + 1, bool)])
    talk = smooth_talk(padded, gap)
    assert np.flatnonzero(talk).tolist() == [5, 6, 7, 8, 9, 10, 11, 25, 26]


# ----------------------------------------------------------------------------- grouping

def test_streams_form_calls_by_call_id_or_split_channels() -> None:
    obs = CallDynamics(RATE, DynamicsConfig(split_roles=parse_roles("agent,caller")))
    info = protocol.stream_info
    obs.stream_started(info("mic", "mic", "mic", WALL0))  # not a call: no dynamics
    obs.stream_started(info("CA1-in", "call", "ingest", WALL0,
                            call={"id": "CA1", "track": "inbound", "role": "caller"}))
    obs.stream_started(info("CA1-out", "call", "ingest", WALL0,
                            call={"id": "CA1", "track": "outbound", "role": "agent"}))
    obs.stream_started(info("CA1-x", "call", "ingest", WALL0,
                            call={"id": "CA1", "track": "x", "role": None}))  # a third: left out
    obs.stream_started(info("rec:ch1", "file", "rec.wav", WALL0, channel=1))
    obs.stream_started(info("rec:ch0", "file", "rec.wav", WALL0, channel=0))
    x = bursts([(0, 2)], 2)
    for sid in ("mic", "CA1-in", "CA1-out", "CA1-x", "rec:ch0", "rec:ch1"):
        obs.audio(sid, x, 0, WALL0)
        obs.stream_ended(sid)
    msgs = obs.tick(WALL0 + 2)
    calls = {m["call"]: m for m in msgs if m.get("final")}
    assert set(calls) == {"CA1", "rec"}
    assert [(s["stream"], s["role"]) for s in calls["CA1"]["sides"]] == [
        ("CA1-in", "caller"), ("CA1-out", "agent")]
    assert [(s["stream"], s["role"]) for s in calls["rec"]["sides"]] == [
        ("rec:ch0", "agent"), ("rec:ch1", "caller")]
    assert obs.calls == {} and obs.sides == {}  # finished calls are forgotten
    assert obs.tick(WALL0 + 3) == []


def test_split_roles_are_checked() -> None:
    assert parse_roles("agent,caller") == ("agent", "caller")
    assert parse_roles("-,caller") == (None, "caller")
    with pytest.raises(ValueError):
        parse_roles("agent,customer")


def test_a_side_joining_late_is_aligned_by_its_start_time() -> None:
    obs = CallDynamics(RATE)
    info = protocol.stream_info
    obs.stream_started(info("c-in", "call", "ingest", WALL0,
                            call={"id": "c", "track": "inbound", "role": "caller"}))
    obs.stream_started(info("c-out", "call", "ingest", WALL0 + 2.0,
                            call={"id": "c", "track": "outbound", "role": "agent"}))
    caller = bursts([(0.5, 3.5)], 5)
    agent = bursts([(0.0, 1.0)], 3, f0=220)  # call time 2.0-3.0: 1 s overlap with the caller
    obs.audio("c-in", caller, 0, WALL0)
    obs.audio("c-out", agent, 0, WALL0 + 2.0)
    for sid in ("c-in", "c-out"):
        obs.stream_ended(sid)
    last = obs.tick(WALL0 + 5)[-1]
    assert last["overlap_s"] == pytest.approx(1.0, abs=0.1)


# ----------------------------------------------------------------------------- a real daemon

@pytest.mark.timeout(90)
def test_daemon_split_channel_replay_sends_logs_and_exports_dynamics(
        tmp_path: Path, tiny_model_path: Path, call, call_msgs, capsys) -> None:
    from streamer.sessionlog import export_dynamics_csv, session_path
    from streamer.sources import FileSource

    wav = tmp_path / "call.wav"
    sf.write(str(wav), call.audio, RATE, subtype="FLOAT")
    cfg = make_config(tmp_path, tiny_model_path, split_roles=("agent", "caller"),
                      status_interval_s=0.2)

    async def main():
        async with running(cfg) as daemon, client(daemon) as c:
            await daemon._start_source(FileSource([wav], RATE, name="call", speed=0,
                                                  split_channels=True))
            await c.until(lambda m: m["type"] == "dynamics" and m.get("final"), timeout=60)
            return daemon.session_id, c

    session_id, c = asyncio.run(main())
    got = c.of("dynamics")
    for m in got:
        protocol.validate(m, direction="server")
    # the daemon's figures are the observer's own (same audio, any chunking)
    strip = ("wall_time",)
    assert [{k: v for k, v in m.items() if k not in strip} for m in got] == \
        [{k: v for k, v in m.items() if k not in strip} for m in call_msgs]
    ended = {m["stream"] for m in c.of("stream_ended")}
    assert ended == {"call:ch0", "call:ch1"}
    # each channel says it is one side of the recording's call (protocol v1's call block), so
    # the dashboard's wallboard shows the recording as a call
    started = {m["stream"]["stream"]: m["stream"] for m in c.of("stream_started")}
    assert started["call:ch0"]["call"] == {"id": "call", "track": "ch0", "role": "agent"}
    assert started["call:ch1"]["call"] == {"id": "call", "track": "ch1", "role": "caller"}
    # in the session log, as sent
    logged = [json.loads(line) for line in log_text(cfg.sessions_dir, session_id).splitlines()
              if '"type":"dynamics"' in line.replace(" ", "")]
    assert logged == got
    # exported: one row per call per second (plus the final part-second)
    out = io.StringIO()
    assert export_dynamics_csv(session_path(cfg.sessions_dir, session_id), out) == len(got)
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert [float(r["t_s"]) for r in rows] == [m["t_s"] for m in got]
    assert rows[-1]["final"] == "True" and rows[0]["final"] == "False"
    assert rows[-1]["s1_role"] == "agent" and rows[-1]["s2_stream"] == "call:ch1"
    assert int(rows[-1]["s2_interruptions"]) == 1 and rows[-1]["overlaps"] == "3"
    dest = tmp_path / "calls.csv"
    assert cli_main(["sessions", "export", session_id, "--dynamics", "-o", str(dest),
                     "--sessions-dir", str(cfg.sessions_dir)]) == 0
    assert dest.read_text().splitlines() == out.getvalue().splitlines()


def test_daemon_without_dynamics_sends_none(tmp_path: Path, tiny_model_path: Path) -> None:
    from streamer.sources import FileSource

    wav = tmp_path / "call.wav"
    sf.write(str(wav), np.stack([bursts([(0.2, 1.5)], 2)] * 2, axis=1), RATE)
    cfg = make_config(tmp_path, tiny_model_path, dynamics=False, status_interval_s=0.2)

    async def main():
        async with running(cfg) as daemon, client(daemon) as c:
            await daemon._start_source(FileSource([wav], RATE, name="call", speed=0,
                                                  split_channels=True))
            for _ in range(2):
                await c.until(lambda m: m["type"] == "stream_ended", timeout=30)
            await asyncio.sleep(0.5)
            return c

    assert asyncio.run(main()).of("dynamics") == []
