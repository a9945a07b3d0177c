"""The dashboard's emotion smoothing (dashboard/smoothing.py): an exponential moving average
in stream time."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest

from dashboard.smoothing import (
    HORIZON_TAUS,
    Smoother,
    current,
    latest,
    min_confidence,
    smoothed,
)

A = {"angry": 0.9, "neutral": 0.1}
N = {"angry": 0.2, "neutral": 0.8}


@dataclass(frozen=True)
class P:
    t_end: float
    voiced: bool
    probs: dict


def test_zero_tau_shows_each_window_as_it_came() -> None:
    assert smoothed([(1.0, A), (1.5, N), (2.0, None)], 0.0) == [A, N, None]


def test_the_average_follows_the_formula_and_sums_to_one() -> None:
    s = Smoother(2.0)
    assert s(3.0, A) == A  # the first window is the average
    out = s(3.5, N)
    a = math.exp(-0.5 / 2.0)
    assert out["angry"] == pytest.approx(a * 0.9 + (1 - a) * 0.2)
    assert sum(out.values()) == pytest.approx(1.0)


def test_the_same_change_is_followed_alike_at_any_hop() -> None:
    """A switch from angry to neutral at t = 10 s, windows every 0.5 s or every 1 s: each
    window stands for the time since the previous one, and the old emotion then decays as
    exp(-elapsed / tau) with elapsed in seconds, whatever the hop."""
    for hop in (0.5, 1.0):
        s = Smoother(3.0)
        for k in range(int(20 / hop) + 1):
            t = k * hop
            angry = s(t, A if t < 10 else N)["angry"]
            if t >= 10:
                assert angry - 0.2 == pytest.approx(0.7 * math.exp(-(t - 10 + hop) / 3.0))


def test_unvoiced_windows_change_nothing_and_a_long_pause_forgets() -> None:
    out = smoothed([(1.0, A), (1.5, None), (2.0, None), (60.0, N)], 3.0)
    assert out[1] is None and out[2] is None
    assert out[3]["neutral"] == pytest.approx(0.8, abs=1e-6)


def test_latest_equals_the_whole_history_within_the_horizon() -> None:
    preds = [P(0.5 * k, k % 7 != 3, A if (k // 9) % 2 else N) for k in range(400)]
    full = smoothed([(p.t_end, p.probs if p.voiced else None) for p in preds], 2.0)
    last = [x for x in full if x is not None][-1]
    got = latest(preds, 2.0)
    assert got is not None and set(got) == set(last)
    for k in last:
        assert got[k] == pytest.approx(last[k], abs=math.exp(-HORIZON_TAUS))
    assert preds[-1].voiced and latest(preds, 0.0) == preds[-1].probs
    assert latest([P(1.0, False, {})], 2.0) is None


@pytest.mark.parametrize("tau", [-1.0, float("nan"), float("inf")])
def test_a_bad_time_constant_is_refused(tau: float) -> None:
    with pytest.raises(ValueError, match="tau_s"):
        Smoother(tau)


def test_the_floor_comes_from_the_card_and_garbage_means_none() -> None:
    assert min_confidence({"display": {"min_confidence": 0.55}}) == 0.55
    for card in (None, {}, {"display": None}, {"display": [0.5]},
                 {"display": {"min_confidence": "0.5"}}, {"display": {"min_confidence": True}},
                 {"display": {"min_confidence": 1.0}}, {"display": {"min_confidence": -1}},
                 {"display": {"min_confidence": float("nan")}}):
        assert min_confidence(card) == 0.0, card


def test_current_is_uncertain_below_the_floor() -> None:
    preds = [P(3.0, True, {"angry": 0.5, "neutral": 0.5 - 1e-3, "sad": 1e-3})]
    now = current(preds, 1.0, floor=0.55)
    assert now is not None and now.label == "angry" and now.uncertain
    assert not current(preds, 1.0, floor=0.5).uncertain
    assert current([P(3.0, False, {})], 1.0, 0.55) is None
