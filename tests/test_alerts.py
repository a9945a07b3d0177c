"""Alert rules: sustained high emotion, sustained fall, re-arming, silence and restarts."""

from __future__ import annotations

import pytest

from dashboard.alerts import AlertEngine, Observation, SustainedFall, SustainedHigh

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
