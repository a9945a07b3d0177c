"""Alert rules: sustained high emotion, sustained fall, re-arming, silence and restarts."""

from __future__ import annotations

import pytest

from dashboard.alerts import (
    AlertEngine,
    DeadAir,
    LouderThanUsual,
    LoudnessRising,
    Observation,
    SustainedFall,
    SustainedHigh,
    TalkShareAbove,
)

HOP = 0.5


def obs(t: float, voiced: bool = True, **probs: float) -> Observation:
    return Observation(t_end=t, voiced=voiced, probs=probs if voiced else {}, wall=1000.0 + t)


def feed(engine: AlertEngine, values: list[float | None], emotion: str = "angry",
         t0: float = 3.0, stream: str = "s1") -> list:
    """Feed one window per hop; None is an unvoiced window."""
    raised = []
    for i, v in enumerate(values):
        o = obs(t0 + i * HOP, voiced=False) if v is None else obs(t0 + i * HOP, **{emotion: v})
        raised.extend(engine.observe(stream, o))
    return raised


def test_sustained_high_fires_once_after_min_duration() -> None:
    engine = AlertEngine([SustainedHigh(("angry",), threshold=0.6, min_duration_s=2.0)])
    # 2.0 s held needs 5 windows (first window starts the run at 0 s held).
    raised = feed(engine, [0.7, 0.8, 0.9, 0.7])
    assert raised == []
    raised = feed(engine, [0.7, 0.95, 0.9], t0=3.0 + 4 * HOP)
    assert len(raised) == 1
    alert = raised[0]
    assert alert.emotion == "angry" and alert.stream == "s1"
    assert alert.t == pytest.approx(3.0 + 4 * HOP)
    assert "peak 90%" in alert.message or "peak" in alert.message
    assert engine.active() == [(engine.rules[0].name, "s1")]
    assert list(engine.log) == raised


def test_dip_below_threshold_resets_and_rearms() -> None:
    engine = AlertEngine([SustainedHigh(("angry",), threshold=0.6, min_duration_s=1.0)])
    assert feed(engine, [0.7, 0.7, 0.5, 0.7, 0.7]) == []  # the dip breaks the run
    raised = feed(engine, [0.7, 0.7, 0.7, 0.7], t0=3.0 + 5 * HOP)
    assert len(raised) == 1
    # Back below: the banner clears; a new episode raises a new alert.
    feed(engine, [0.1], t0=3.0 + 9 * HOP)
    assert engine.active() == []
    raised = feed(engine, [0.8, 0.8, 0.8], t0=3.0 + 10 * HOP)
    assert len(raised) == 1
    assert len(engine.log) == 2


def test_either_emotion_is_tracked_separately() -> None:
    engine = AlertEngine([SustainedHigh(("angry", "fear"), threshold=0.5, min_duration_s=1.0)])
    raised = []
    for i in range(4):
        raised += engine.observe("s", obs(3 + i * HOP, angry=0.3, fear=0.65))
    assert [a.emotion for a in raised] == ["fear"]


def test_unvoiced_windows_do_not_count_and_long_silence_breaks_run() -> None:
    rule = SustainedHigh(("angry",), threshold=0.6, min_duration_s=2.0, max_gap_s=1.0)
    engine = AlertEngine([rule])
    # Short pause (0.5 s of unvoiced): the run survives.
    assert len(feed(engine, [0.7, 0.7, None, 0.7, 0.7])) == 1
    engine = AlertEngine([rule])
    # Long silence (2 s): the run restarts, so 2 + 2 windows never make 2 s.
    assert feed(engine, [0.7, 0.7, None, None, None, None, 0.7, 0.7]) == []


def test_sustained_fall() -> None:
    engine = AlertEngine([SustainedFall("happy", drop=0.3, span_s=2.0, min_windows=3)])
    raised = feed(engine, [0.8] * 5 + [0.3] * 3, emotion="happy")
    assert len(raised) == 1
    assert raised[0].emotion == "happy" and "fell from 80%" in raised[0].message
    # Stays low: no repeat; recovers: re-armed, a second fall raises again.
    assert feed(engine, [0.3] * 6, emotion="happy", t0=3.0 + 8 * HOP) == []
    assert feed(engine, [0.8] * 6, emotion="happy", t0=3.0 + 14 * HOP) == []
    assert len(feed(engine, [0.2] * 5, emotion="happy", t0=3.0 + 20 * HOP)) == 1


def test_fall_needs_enough_windows_and_ignores_small_changes() -> None:
    engine = AlertEngine([SustainedFall("happy", drop=0.3, span_s=2.0, min_windows=3)])
    assert feed(engine, [0.8, 0.2], emotion="happy") == []
    engine = AlertEngine([SustainedFall("happy", drop=0.3, span_s=2.0)])
    assert feed(engine, [0.6] * 5 + [0.45] * 5, emotion="happy") == []


def test_streams_are_independent_and_time_reset_starts_afresh() -> None:
    engine = AlertEngine([SustainedHigh(("angry",), threshold=0.6, min_duration_s=1.0)])
    feed(engine, [0.9, 0.9], stream="agent")
    assert feed(engine, [0.9, 0.9], stream="caller") == []
    # Stream time jumps back (daemon restarted): the old run does not carry over.
    assert feed(engine, [0.9], stream="agent", t0=3.0) == []
    assert len(feed(engine, [0.9, 0.9], stream="agent", t0=3.5)) == 1


def test_bad_rule_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        SustainedHigh((), threshold=0.5)
    with pytest.raises(ValueError):
        SustainedHigh(("angry",), threshold=1.5)
    with pytest.raises(ValueError):
        SustainedFall("happy", drop=0.0)


def test_log_is_bounded() -> None:
    engine = AlertEngine([SustainedHigh(("angry",), threshold=0.5, min_duration_s=0.0)],
                         log_size=10)
    for i in range(100):
        engine.observe("s", obs(3 + i, angry=0.9))
        engine.observe("s", obs(3 + i + 0.5, angry=0.1))
    assert len(engine.log) == 10


# ----------------------------------------------------------------------------- dynamics rules

def dyn(t: float, caller: dict | None = None, agent: dict | None = None,
        silence: float = 0.0, final: bool = False, call: str = "CA1") -> dict:
    """A valid protocol ``dynamics`` message for a two-sided call at call time ``t``."""
    from streamer import protocol

    def side(stream: str, role: str, v: dict) -> dict:
        base = {"stream": stream, "role": role, "speaking": True, "talk_s": 0.0,
                "talk_share": None, "talk_share_recent": None, "interruptions": 0,
                "loudness_dbfs": -30.0, "loudness_trend_db_per_min": None, "pitch_hz": None,
                "pitch_var_st": None, "rate_per_s": None}
        return {**base, **v}

    msg = protocol.dynamics(call, t, [side("in", "caller", caller or {}),
                                      side("out", "agent", agent or {})],
                            overlap_s=0.0, overlaps=0, silence_s=silence, dead_air=0,
                            dead_air_s=10.0, longest_silence_s=silence, final=final,
                            wall_time=1000.0 + t)
    protocol.validate(msg, direction="server")
    return msg


def store_with(rules: list):
    from dashboard.state import Store

    store = Store(alerts=AlertEngine(rules))
    return store


def test_louder_than_usual_against_the_sides_own_baseline() -> None:
    rule = LouderThanUsual("caller", min_rise_db=8.0, recent_s=20.0, for_s=10.0)
    store = store_with([rule])

    def feed(t0: int, t1: int, caller_db: float | None, agent_db: float = -20.0) -> list:
        out = []
        for t in range(t0, t1):
            out += store.apply("ws://d", dyn(t, caller={"loudness_dbfs": caller_db},
                                             agent={"loudness_dbfs": agent_db}))
        return out

    # 60 s at -30 dBFS (the agent, 10 dB louder throughout, is not the caller's baseline)
    assert feed(1, 61, -30.0) == []
    # a pause neither raises nor clears; then 12 dB louder: the recent mean crosses +8 dB
    # after a few seconds, and the alert comes once that has held 10 s
    assert feed(61, 70, None) == []
    raised = feed(70, 100, -18.0)
    assert len(raised) == 1 and raised[0].emotion == "loudness"
    assert 80 <= raised[0].t <= 90 and "louder than usual: +1" in raised[0].message
    assert store.alerts.active()
    # back to the usual level: the recent mean falls under +8 dB and the alert clears
    feed(100, 130, -30.0)
    assert not store.alerts.active()


def test_louder_than_usual_needs_a_baseline_and_ignores_steady_loud_speakers() -> None:
    store = store_with([LouderThanUsual("caller")])
    loud = []
    for t in range(1, 200):  # a loud speaker from the first second on: that is their usual
        loud += store.apply("ws://d", dyn(t, caller={"loudness_dbfs": -12.0 + (t % 3)}))
    assert loud == []
    rule = LouderThanUsual("caller")
    state = rule.new_state()
    assert rule.rise_db(state, 5.0) is None  # no baseline yet


def test_loudness_rising_raised_after_held_and_cleared() -> None:
    store = store_with([LoudnessRising("caller", min_slope_db_per_min=6.0, for_s=5.0)])
    raised = []
    for t in range(1, 6):  # rising for 4 s: not yet
        raised += store.apply("ws://d", dyn(t, caller={"loudness_trend_db_per_min": 9.0},
                                            agent={"loudness_trend_db_per_min": 30.0}))
    assert raised == [] and store.alerts.active() == []
    raised = store.apply("ws://d", dyn(6, caller={"loudness_trend_db_per_min": 8.0}))
    assert len(raised) == 1 and raised[0].stream == "in" and raised[0].call == "CA1"
    assert raised[0].emotion == "loudness" and "+8 dB/min for 5 s" in raised[0].message
    assert store.alerts.active() == [(raised[0].rule, "in")]  # the caller's stream, not agent's
    assert store.apply("ws://d", dyn(7, caller={"loudness_trend_db_per_min": 12.0})) == []
    store.apply("ws://d", dyn(8, caller={"loudness_trend_db_per_min": 2.0}))  # flattens
    assert store.alerts.active() == []
    store.apply("ws://d", dyn(9, caller={"loudness_trend_db_per_min": None}))
    assert all(store.apply("ws://d", dyn(t, caller={"loudness_trend_db_per_min": 7.0})) == []
               for t in range(10, 15))
    assert len(store.apply("ws://d", dyn(15, caller={"loudness_trend_db_per_min": 7.0}))) == 1


def test_any_side_rule_watches_both_sides() -> None:
    engine = AlertEngine([LoudnessRising("any", min_slope_db_per_min=6.0, for_s=0.0)])
    from dashboard.state import Store

    store = Store(alerts=engine)
    raised = store.apply("ws://d", dyn(1, caller={"loudness_trend_db_per_min": 7.0},
                                       agent={"loudness_trend_db_per_min": 9.0}))
    assert sorted(a.stream for a in raised) == ["in", "out"]


def test_talk_share_above_over_a_span() -> None:
    store = store_with([TalkShareAbove("agent", share=0.8, over_s=120.0)])
    raised = []
    for t in range(0, 131):  # the agent talks 0.9 s of each second, the caller 0.1 s
        raised += store.apply("ws://d", dyn(t, caller={"talk_s": 0.1 * t},
                                            agent={"talk_s": 0.9 * t}))
    assert len(raised) == 1 and raised[0].t == 120.0  # needs the whole 2 minutes first
    assert raised[0].stream == "out" and "90% of the talking" in raised[0].message
    assert store.alerts.active() == [(raised[0].rule, "out")]
    # the caller takes over: over the last 120 s the agent's part falls below 80 %
    for t in range(131, 200):
        store.apply("ws://d", dyn(t, caller={"talk_s": 13.0 + 0.9 * (t - 130)},
                                  agent={"talk_s": 117.0 + 0.1 * (t - 130)}))
    assert store.alerts.active() == []


def test_talk_share_needs_enough_talk() -> None:
    store = store_with([TalkShareAbove("agent", share=0.8, over_s=30.0, min_talk_s=10.0)])
    raised = []
    for t in range(0, 60):  # 0.1 s of talk a second, all the agent's: 3 s per span
        raised += store.apply("ws://d", dyn(t, agent={"talk_s": 0.1 * t}))
    assert raised == []


def test_dead_air_raised_once_per_silence_and_cleared() -> None:
    store = store_with([DeadAir(min_s=15.0)])
    raised = []
    for t in range(1, 21):
        raised += store.apply("ws://d", dyn(t, silence=float(t)))
    assert [a.t for a in raised] == [15.0]
    assert raised[0].stream == "CA1" and raised[0].call == "CA1"
    assert store.alerts.active() == [("dead air > 15 s", "CA1")]
    store.apply("ws://d", dyn(21, silence=0.0))  # someone talks
    assert store.alerts.active() == []
    raised = [a for t in range(22, 40) for a in store.apply("ws://d", dyn(t, silence=t - 21.0))]
    assert [a.t for a in raised] == [36.0]


def test_final_message_clears_call_alerts_and_rules_keep_to_their_kind() -> None:
    rules = [DeadAir(min_s=5.0), SustainedHigh(("angry",), threshold=0.6, min_duration_s=0.0)]
    store = store_with(rules)
    for t in range(1, 8):
        store.apply("ws://d", dyn(t, silence=float(t)))
    assert store.alerts.active() == [("dead air > 5 s", "CA1")]
    # an emotion rule ignores dynamics, a dynamics rule ignores windows
    assert store.alerts.observe("in", obs(3.0, angry=0.9))[0].rule.startswith("angry")
    store.apply("ws://d", dyn(8, silence=8.0, final=True))
    assert store.alerts.active() == [(rules[1].name, "in")]  # the call's alerts are gone
    call = store.calls["CA1"]
    assert call.ended and call.streams == ["in", "out"] and call.latest["t_s"] == 8.0
    assert len(call.history) == 8
    assert store.call_of("in") == "CA1" and store.call_of("CA1") == "CA1"
    assert store.call_of("nope") is None


def test_store_calls_in_snapshot_and_restart() -> None:
    from dashboard.state import snapshot

    store = store_with([])
    store.apply("ws://d", dyn(1))
    view = snapshot(store)
    assert view.calls["CA1"].streams == ["in", "out"] and not view.calls["CA1"].ended
    assert view.calls["CA1"].latest["sides"][0]["role"] == "caller"
    store.apply("ws://d", {"type": "hello", "v": "1", "session_id": "a", "streams": []})
    store.apply("ws://d", {"type": "hello", "v": "1", "session_id": "b", "streams": []})
    assert store.calls == {}  # a daemon restart forgets its calls


def test_bad_dynamics_rule_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        LoudnessRising("customer")
    with pytest.raises(ValueError):
        TalkShareAbove("agent", share=1.0)
    with pytest.raises(ValueError):
        DeadAir(min_s=0)
