"""The wallboard's definitions and order (`dashboard.calls`, pure Python), its HTML
(`dashboard.wallboard`), and the page under AppTest: the wallboard view, and a call opened from
it on the live page. The browser run is tests/test_wallboard_browser.py.

Messages are built with `streamer.protocol`, so they are valid protocol v1 by construction.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from dashboard import wallboard
from dashboard.alerts import DeadAir, SustainedFall, SustainedHigh
from dashboard.app import parse_args
from dashboard.calls import (
    NEGATIVE_EMOTIONS,
    CallBoard,
    Side,
    Tile,
    TileAlert,
    negative_mass,
    order,
    slope_per_min,
    tiles,
    trend,
)
from dashboard.calls import tile as call_tile
from dashboard.client import Feed
from dashboard.smoothing import DEFAULT_TAU_S
from dashboard.state import Prediction
from streamer import protocol
from tests.call_floor import CARD, CLASSES, Floor

APP = str(Path(__file__).resolve().parents[1] / "dashboard" / "app.py")
URL = "ws://floor:1"
HOP = 0.5
WALL0 = 1763760000.0


# ----------------------------------------------------------------------------- helpers

def hello(infos: list[dict], session: str = "sess-1") -> dict:
    return protocol.hello(session, CARD, infos, HOP, 0,
                          {"max_message_bytes": 65536, "max_upload_bytes": 2**20,
                           "queue_size": 64}, client_id="c1")


def call_info(call: str, side: str, role: str | None, track: str | None = None) -> dict:
    return protocol.stream_info(f"{call}-{side}", "call", f"{call} {side}", WALL0,
                                call={"id": call, "track": track or side, "role": role})


def probs(**given: float) -> dict[str, float]:
    """Probabilities with the given values; the rest spread evenly."""
    rest = (1.0 - sum(given.values())) / (len(CLASSES) - len(given))
    return {c: given.get(c, rest) for c in CLASSES}


def pred(stream: str, seq: int, p: dict[str, float] | None) -> dict:
    t = 3.0 + seq * HOP
    if p is None:
        return protocol.prediction(stream, seq, t - 3.0, t, WALL0 + t, None, 2.0, voiced=False)
    return protocol.prediction(stream, seq, t - 3.0, t, WALL0 + t, p, 9.0)


def neg_probs(negative: float) -> dict[str, float]:
    """Negative mass ``negative``, all on sad; the rest on neutral."""
    return {**{c: 0.0 for c in CLASSES}, "sad": negative, "neutral": 1.0 - negative}


def feed_with(*msgs: dict, rules: list | None = None) -> Feed:
    feed = Feed([URL])
    feed.store.alerts.set_rules(rules if rules is not None else [])
    for m in msgs:
        feed.inject(URL, m)
    return feed


def side(**kw: object) -> Side:
    base = dict(stream="s", role="caller", label=None, confidence=None, last_label=None,
                negative=None, trend_per_min=None, spark=(), ended=False)
    return Side(**{**base, **kw})  # type: ignore[arg-type]


def make_tile(key: str, severity: str | None = None, trend_: float | None = None,
         negative: float | None = None, duration_s: float = 60.0) -> Tile:
    alerts = () if severity is None else (TileAlert("r", severity, key, "m"),)
    return Tile(key=key, call_id=key, source=URL, streams=(key,),
                caller=side(trend_per_min=trend_, negative=negative), agent=None,
                duration_s=duration_s, alerts=alerts)


# ----------------------------------------------------------------------------- definitions

def test_negative_mass_is_angry_disgust_fear_sad() -> None:
    assert NEGATIVE_EMOTIONS == ("angry", "disgust", "fear", "sad")
    p = {"angry": 0.1, "disgust": 0.05, "fear": 0.15, "happy": 0.3, "neutral": 0.2, "sad": 0.1,
         "surprise": 0.1}
    assert negative_mass(p) == pytest.approx(0.4)
    assert negative_mass({"happy": 1.0}) == 0.0  # classes the model lacks count 0


def test_slope_is_per_minute_and_needs_enough_points() -> None:
    line = [(t, 0.2 + 0.01 * t) for t in range(10)]  # +0.01 per second
    assert slope_per_min(line) == pytest.approx(0.6)
    assert slope_per_min(line[:2]) is None  # fewer than 3 windows
    assert slope_per_min([(0.0, 0.1), (0.5, 0.9), (1.0, 0.1)]) is None  # under 2 s of span


def test_trend_reads_only_the_last_30_s_of_voiced_windows() -> None:
    preds = []
    for i in range(240):  # 120 s at a 0.5 s hop
        t = 3.0 + i * HOP
        # Falling until 92.5 s, then rising at +0.5/min over the last 30 s (to 122.5 s); every 5th
        # window unvoiced (it would read 0 if it counted).
        value = 0.9 - 0.005 * t if t < 92.5 else 0.3 + 0.5 / 60 * (t - 92.5)
        voiced = i % 5 != 0
        preds.append(Prediction("s", i, t - 3.0, t, 0.0, neg_probs(value) if voiced else {},
                                "sad" if voiced else None, 0.5 if voiced else None, voiced))
    assert trend(preds) == pytest.approx(0.5, abs=0.01)
    assert trend(preds[:2]) is None
    assert trend([]) is None


def test_order_severity_first_then_rising_caller_trend() -> None:
    tiles = [
        make_tile("none-flat", trend_=0.0, negative=0.9),
        make_tile("none-rising", trend_=0.4, negative=0.2),
        make_tile("none-no-trend", trend_=None, negative=0.95),
        make_tile("warning-falling", "warning", trend_=-0.5),
        make_tile("critical", "critical", trend_=-0.9),
        make_tile("info", "info", trend_=0.1),
        make_tile("none-falling", trend_=-0.3),
        make_tile("warning-rising", "warning", trend_=0.2),
        make_tile("none-flat-calm", trend_=0.0, negative=0.1),
    ]
    assert [t.key for t in order(tiles)] == [
        "critical", "warning-rising", "warning-falling", "info", "none-rising", "none-flat",
        "none-flat-calm", "none-falling", "none-no-trend"]
    # Ties: the longer call first, then the key.
    tied = [make_tile("b", duration_s=10), make_tile("c", duration_s=90),
            make_tile("a", duration_s=10)]
    assert [t.key for t in order(tied)] == ["c", "a", "b"]
    # A tile's severity is its most severe alert.
    both = Tile(key="x", call_id="x", source=URL, streams=(), caller=None, agent=None,
                duration_s=0.0, alerts=(TileAlert("a", "warning", "x", ""),
                                        TileAlert("b", "critical", "x", "")))
    assert both.severity == "critical"


# ----------------------------------------------------------------------------- the board

def test_calls_group_by_id_with_roles_and_plain_streams_stay_off_the_board() -> None:
    plain = protocol.stream_info("mic", "mic", "default", WALL0)
    feed = feed_with(hello([
        call_info("CA1", "in", "caller", "inbound"), call_info("CA1", "out", "agent", "outbound"),
        # A side without a role fills the free slot.
        call_info("CA2", "x", "agent"), call_info("CA2", "y", None), plain]))
    board = {t.key: t for t in tiles(feed.store)}
    assert set(board) == {"CA1", "CA2"}
    assert board["CA1"].streams == ("CA1-in", "CA1-out")  # caller first
    assert board["CA1"].caller.stream == "CA1-in" and board["CA1"].agent.stream == "CA1-out"
    assert board["CA2"].caller.stream == "CA2-y" and board["CA2"].agent.stream == "CA2-x"
    assert call_tile(feed.store, "CA1").streams == board["CA1"].streams
    assert call_tile(feed.store, "nope") is None


def test_tile_carries_emotions_trend_dynamics_and_duration() -> None:
    msgs = [hello([call_info("CA1", "c", "caller"), call_info("CA1", "a", "agent")])]
    for i in range(40):  # 20 s; caller's negative mass rising 0.3 -> 0.69
        msgs.append(pred("CA1-c", i, neg_probs(0.3 + 0.01 * i)))
        msgs.append(pred("CA1-a", i, None if i == 39 else probs(happy=0.8)))
    sides = [
        {"stream": "CA1-c", "role": "caller", "speaking": True, "talk_s": 15.0,
         "talk_share": 0.75, "interruptions": 3, "loudness_dbfs": -20.0},
        {"stream": "CA1-a", "role": "agent", "speaking": False, "talk_s": 5.0,
         "talk_share": 0.25, "interruptions": 1, "loudness_dbfs": None}]
    msgs.append(protocol.dynamics("CA1", 24.0, sides, overlap_s=2.0, overlaps=4, silence_s=12.0,
                                  dead_air=2, dead_air_s=10.0, longest_silence_s=14.0))
    feed = feed_with(*msgs)
    (t,) = tiles(feed.store, tau_s=0.0)  # each window as it came
    assert t.caller.label == "sad" and t.caller.negative == pytest.approx(0.69)
    # Averaged (the default): an exponential average trails a ramp by a / (1 - a) windows.
    a = math.exp(-HOP / DEFAULT_TAU_S)
    (avg,) = tiles(feed.store)
    assert avg.caller.negative == pytest.approx(0.69 - 0.01 * a / (1 - a), abs=1e-3)
    assert avg.caller.label == "sad" and avg.agent.last_label == "happy"
    assert t.caller.trend_per_min == pytest.approx(0.01 / HOP * 60, abs=1e-3)  # +1.2/min
    assert t.agent.label is None and t.agent.last_label == "happy"  # silent now
    assert t.caller.talk_share == 0.75 and t.caller.interruptions == 3
    assert t.agent.interruptions == 1 and t.agent.speaking is False
    assert (t.overlaps, t.dead_air, t.silence_s, t.longest_silence_s) == (4, 2, 12.0, 14.0)
    assert t.dead_air_now  # 12 s of silence over the 10 s threshold
    assert t.duration_s == pytest.approx(24.0)  # dynamics' t_s is ahead of the last window
    # Sparkline points: the last minute, None where a side was silent.
    assert t.agent.spark[-1][1] is None and t.caller.spark[-1][1] == pytest.approx(0.69)
    # The daemon restarted: its calls' dynamics are forgotten with its session.
    feed.inject(URL, hello([call_info("CA1", "c", "caller")], session="sess-2"))
    (t,) = tiles(feed.store)
    assert t.dead_air is None and t.caller.talk_share is None


def test_a_side_below_the_models_floor_is_marked_uncertain() -> None:
    card = {**CARD, "display": {"min_confidence": 0.7}}
    infos = [call_info("CA1", "c", "caller"), call_info("CA1", "a", "agent")]
    msgs = [protocol.hello("sess-1", card, infos, HOP, 0,
                           {"max_message_bytes": 65536, "max_upload_bytes": 2**20,
                            "queue_size": 64})]
    for i in range(10):
        msgs.append(pred("CA1-c", i, probs(angry=0.6)))
        msgs.append(pred("CA1-a", i, probs(happy=0.9)))
    feed = feed_with(*msgs)
    (t,) = tiles(feed.store)
    assert t.caller.uncertain and t.caller.label == "angry"
    assert not t.agent.uncertain and t.agent.label == "happy"
    html = wallboard.tile_html(t)
    assert "🤔 angry?" in html and "🤔 happy" not in html
    (off,) = tiles(feed.store, floors=False)
    assert not off.caller.uncertain


def test_board_order_follows_alerts_then_the_callers_trend() -> None:
    infos = [call_info(c, s, r) for c in ("CALM", "RISE", "ANGRY", "FALLHAPPY", "QUIET")
             for s, r in (("c", "caller"), ("a", "agent"))]
    msgs = [hello(infos)]
    for i in range(50):  # 25 s
        msgs.append(pred("ANGRY-c", i, probs(angry=0.9)))
        msgs.append(pred("RISE-c", i, neg_probs(0.1 + 0.012 * i)))
        msgs.append(pred("CALM-c", i, neg_probs(0.3)))
        msgs.append(pred("FALLHAPPY-c", i, probs(happy=0.9 if i < 42 else 0.1)))
        msgs.append(pred("QUIET-c", i, None))
    rules = [SustainedHigh(("angry",), 0.6, 3.0),  # critical
             SustainedFall("happy", drop=0.5, span_s=5.0)]  # warning
    feed = feed_with(*msgs, rules=rules)
    board = tiles(feed.store)
    assert [t.key for t in board] == ["ANGRY", "FALLHAPPY", "RISE", "CALM", "QUIET"]
    assert [t.severity for t in board] == ["critical", "warning", None, None, None]
    assert board[0].alerts[0].stream == "ANGRY-c" and "angry" in board[0].alerts[0].message
    assert board[2].caller_trend > 1.0 and board[3].caller_trend == 0.0
    assert board[4].caller_trend is None


def test_an_alert_raised_on_the_call_itself_counts_for_its_tile() -> None:
    """Dynamics rules (dead air) raise on the call, not on a side's stream."""
    sides = [{"stream": f"{c}-c", "role": "caller", "speaking": False, "talk_s": 1.0,
              "talk_share": 1.0, "interruptions": 0, "loudness_dbfs": None}
             for c in ("CA1", "CA2")]
    feed = feed_with(
        hello([call_info("CA1", "c", "caller"), call_info("CA2", "c", "caller")]),
        protocol.dynamics("CA1", 30.0, sides[:1], 0.0, 0, 2.0, 0, 10.0, 2.0),
        protocol.dynamics("CA2", 30.0, sides[1:], 0.0, 0, 20.0, 1, 10.0, 20.0),
        rules=[DeadAir(min_s=15.0)])
    board = tiles(feed.store)
    assert [(t.key, t.severity) for t in board] == [("CA2", "warning"), ("CA1", None)]
    assert board[0].alerts[0].stream == "CA2" and "dead air" in board[0].alerts[0].message
    assert board[0].dead_air_now and not board[1].dead_air_now


def test_a_call_known_only_by_its_dynamics_and_a_final_message() -> None:
    """Sides named by the dynamics join the call (their role from there); the final
    dynamics message takes the call off the board."""
    plain = [protocol.stream_info(s, "file", f"{s}.wav", WALL0) for s in ("left", "right")]
    sides = [{"stream": "left", "role": "agent", "speaking": True, "talk_s": 3.0,
              "talk_share": 0.6, "interruptions": 1, "loudness_dbfs": -20.0},
             {"stream": "right", "role": "caller", "speaking": False, "talk_s": 2.0,
              "talk_share": 0.4, "interruptions": 0, "loudness_dbfs": None}]
    feed = feed_with(hello(plain), protocol.dynamics("rec1", 5.0, sides, 0.0, 0, 0.0, 0, 10.0,
                                                     0.0))
    (t,) = tiles(feed.store)
    assert t.key == "rec1" and t.caller.stream == "right" and t.agent.stream == "left"
    assert t.agent.talk_share == 0.6
    feed.inject(URL, protocol.dynamics("rec1", 6.0, sides, 0.0, 0, 0.0, 0, 10.0, 0.0,
                                       final=True))
    assert tiles(feed.store) == [] and call_tile(feed.store, "rec1") is not None


def test_ended_calls_leave_the_board_and_two_daemons_prefix_the_key() -> None:
    msgs = [hello([call_info("CA1", "c", "caller"), call_info("CA2", "c", "caller")]),
            protocol.stream_ended("CA1-c", "eof", 0, 0.0)]
    feed = feed_with(*msgs)
    assert [t.key for t in tiles(feed.store)] == ["CA2"]
    assert {t.key for t in tiles(feed.store, live_only=False)} == {"CA1", "CA2"}

    feed = Feed([URL, "ws://other:2"])
    feed.inject(URL, hello([call_info("CA1", "c", "caller")]))
    feed.inject("ws://other:2", hello([call_info("CA1", "c", "caller")]))
    keys = sorted(t.key for t in tiles(feed.store))
    assert keys == ["floor:1 / CA1", "other:2 / CA1"]
    assert call_tile(feed.store, "other:2 / CA1").source == "ws://other:2"


def test_a_board_kept_between_redraws_agrees_with_a_fresh_one() -> None:
    """The board updates each side's points from the new windows only; after more windows,
    a stream starting over and a daemon restart, it must build what a fresh board builds."""
    feed = Feed([URL])
    floor = Floor(4)
    feed.inject(URL, floor.hello())
    board = CallBoard()
    for step in range(150):  # 75 s: points older than a minute are dropped on the way
        for m in floor.tick():
            feed.inject(URL, m)
        if step % 10 == 0:
            assert board.tiles(feed.store) == tiles(feed.store)
    spark = board.tiles(feed.store)[0].caller.spark
    assert 100 <= len(spark) <= 121 and spark[-1][0] - spark[0][0] <= 60.0
    # One stream starts over (seq and stream time back to 0).
    feed.inject(URL, pred("CA001-caller", 0, neg_probs(0.9)))
    assert board.tiles(feed.store) == tiles(feed.store)
    assert board.tile(feed.store, "CA001").caller.spark == ((3.0, 0.9),)
    # The daemon restarts: a new session, the same stream ids.
    feed.inject(URL, floor.hello(session_id="floor-2"))
    for m in floor.tick():
        feed.inject(URL, m)
    assert board.tiles(feed.store) == tiles(feed.store)


# ----------------------------------------------------------------------------- HTML

def test_tile_html_escapes_what_comes_from_the_wire_and_marks_order_data() -> None:
    evil = '"><script>alert(1)</script>'
    t = Tile(key=evil, call_id=evil, source=URL, streams=("s",),
             caller=side(label="angry", confidence=0.8, negative=0.8, trend_per_min=0.25,
                         spark=((1.0, 0.2), (1.5, None), (2.0, 0.4), (2.5, 0.5))),
             agent=None, duration_s=3725.0,
             alerts=(TileAlert("r", "critical", "s", "<b>angry</b>"),))
    out = wallboard.tile_html(t)
    assert "<script>" not in out and "&lt;script&gt;" in out and "&lt;b&gt;angry" in out
    assert 'data-severity="3"' in out and 'data-trend="0.2500"' in out
    assert "1:02:05" in out and "↑+0.25/min" in out
    # The sparkline breaks at the silent window: two pen-downs (M), one line segment (L).
    path = out.split('stroke="#D55E00"')[0].rsplit('d="', 1)[1]
    assert path.count("M") == 2 and path.count("L") == 1
    assert wallboard.duration(65) == "01:05"


# ----------------------------------------------------------------------------- the page

def floor_feed(n_calls: int = 6, ticks: int = 30) -> tuple[Feed, Floor]:
    feed = Feed([URL])
    feed.store.alerts.set_rules([SustainedHigh()])
    floor = Floor(n_calls)
    feed.inject(URL, floor.hello())
    return feed, floor


def app(feed: Feed, **params: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60)
    at.session_state["config"] = parse_args(
        ["--url", URL, "--sessions-dir", tempfile.mkdtemp(prefix="no-sessions-")])
    at.session_state["feed"] = feed
    for k, v in params.items():
        at.query_params[k] = v
    return at


def component_data(at: AppTest) -> dict:
    (element,) = at.get("bidi_component")
    return json.loads(element.proto.json)


@pytest.mark.timeout(60)
def test_wallboard_page_draws_every_live_call_in_order() -> None:
    feed, floor = floor_feed()
    at = app(feed, view="wallboard")
    at.run()  # the board attaches to the store on the first run, before the data flows
    assert not at.exception
    # Calls announced by hello are on the board at once, before any window or dynamics.
    assert len(component_data(at)["tiles"]) == 6
    assert "no dynamics yet" in component_data(at)["tiles"][0][1]
    for _ in range(30):
        for m in floor.tick():
            feed.inject(URL, m)
    at.run()
    assert not at.exception
    data = component_data(at)
    keys = [k for k, _ in data["tiles"]]
    assert sorted(keys) == [f"CA{i:03d}" for i in range(6)]
    assert keys[0] == "CA000"  # the angry caller's alert puts it first
    first = data["tiles"][0][1]
    assert 'data-severity="3"' in first and "angry" in first
    assert "6</b> live calls" in data["summary"] and "1</b> critical" in data["summary"]
    assert data["build_ms"] >= 0
    # The streams page (no tabs drawn on the wallboard) is one click away.
    assert not at.tabs
    streams = next(b for b in at.sidebar.button if b.label == "📈 Streams")
    streams.click().run()
    assert not at.exception and "view" not in at.query_params
    assert len(at.tabs) == 3 and not at.get("bidi_component")


@pytest.mark.timeout(60)
def test_a_call_opened_from_the_wallboard_shows_its_streams_on_the_live_page() -> None:
    feed, floor = floor_feed()
    for _ in range(20):
        for m in floor.tick():
            feed.inject(URL, m)
    at = app(feed, call="CA003")
    at.run()
    assert not at.exception
    picker = next(m for m in at.multiselect if m.label == "Streams")
    assert picker.value == ["CA003-caller", "CA003-agent"]
    assert any("Call `CA003`" in str(m.value) for m in at.markdown)
    # Only this call's alerts in the banner (CA000's anger is on the wallboard).
    assert not [e for e in at.error if "CA000" in str(e.value)]
    # The way back.
    back = next(b for b in at.button if b.label == "← Wallboard")
    back.click().run()
    assert at.query_params["view"] == "wallboard" and "call" not in at.query_params
    assert component_data(at)["tiles"]


@pytest.mark.timeout(60)
def test_unknown_call_and_no_daemon_say_so() -> None:
    feed, _ = floor_feed(2)
    at = app(feed, call="CA999")
    at.run()
    assert not at.exception
    assert any("CA999" in str(w.value) and "not on any connected daemon" in str(w.value)
               for w in at.warning)
    empty = Feed([URL])
    at = app(empty, view="wallboard")
    at.run()
    assert not at.exception
    assert any("No daemon connected" in str(w.value) for w in at.warning)
