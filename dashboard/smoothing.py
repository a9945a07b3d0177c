"""A stream's current emotion as the dashboard shows it: averaged over time, and "uncertain"
below the model's confidence floor.

One 3-s window's label is noisy on a voice the model never heard, and an emotion in a call
lasts longer than a window. The dashboard therefore shows a causal exponential moving average
of the voiced windows' probabilities, p <- a p + (1 - a) q with a = exp(-dt / tau), where dt
is the stream time since the previous voiced window: the same average whatever the hop, the
replay speed or the pauses (a long pause decays the past away by itself). Unvoiced windows
carry no probabilities and change nothing. ``tau_s = 0`` shows each window as it came.

What it buys on held-out voices, and the default, were measured on validation speakers:
docs/results/crosscorpus.md, "Smoothing over time" (``docs/results/scripts/smoothing_probe.py``
uses this module). The session log and CSV exports keep the raw windows.

A model card may carry a confidence floor (``display.min_confidence``): below it the averaged
label is shown as uncertain (leaning towards it), because on voices the model reads poorly its
low-confidence labels are mostly wrong. The shipped model's floor was chosen on validation
speakers (docs/results/crosscorpus.md, "Saying uncertain"); a card without one shows every
label.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["CHOICES_S", "DEFAULT_TAU_S", "HORIZON_TAUS", "Current", "Smoother", "current",
           "latest", "min_confidence", "shown", "smoothed"]

#: The time constants offered (seconds; 0: each window) and measured (the smoothing probe).
CHOICES_S = (0.0, 1.0, 2.0, 3.0, 5.0, 8.0)
#: The default, chosen on validation speakers (see the module doc).
DEFAULT_TAU_S = 1.0


class Smoother:
    """One stream's running average; call it with each voiced window in stream order."""

    def __init__(self, tau_s: float = DEFAULT_TAU_S) -> None:
        if not math.isfinite(tau_s) or tau_s < 0:
            raise ValueError(f"tau_s must be a finite number >= 0, got {tau_s!r}")
        self.tau_s = tau_s
        self.t: float | None = None
        self.probs: dict[str, float] = {}

    def __call__(self, t_end: float, probs: Mapping[str, float]) -> dict[str, float]:
        """The average after the window ending at ``t_end`` (stream seconds) with ``probs``."""
        if self.t is None or self.tau_s == 0:
            self.probs = dict(probs)
        else:
            a = math.exp(-max(t_end - self.t, 0.0) / self.tau_s)
            keys = self.probs.keys() | probs.keys()
            self.probs = {k: a * self.probs.get(k, 0.0) + (1 - a) * probs.get(k, 0.0)
                          for k in keys}
        self.t = t_end
        return dict(self.probs)


def smoothed(windows: Iterable[tuple[float, Mapping[str, float] | None]],
             tau_s: float = DEFAULT_TAU_S) -> list[dict[str, float] | None]:
    """The average after each of ``windows`` ((t_end, probs), probs None when unvoiced: its
    entry is None too), from a fresh ``Smoother``."""
    s = Smoother(tau_s)
    return [None if probs is None else s(t, probs) for t, probs in windows]


#: Windows older than this many time constants weigh under exp(-12) = 6e-6: left out.
HORIZON_TAUS = 12.0


def latest(predictions: Sequence[Any], tau_s: float = DEFAULT_TAU_S
           ) -> dict[str, float] | None:
    """The average at the latest voiced window of ``predictions`` (objects with ``t_end``,
    ``voiced`` and ``probs``, oldest first; None: no voiced window), from the windows of the
    last ``HORIZON_TAUS * tau_s`` seconds before it: a redraw reads a few dozen windows per
    stream, not its whole history."""
    recent: list[Any] = []
    for p in reversed(predictions):
        if not (p.voiced and p.probs):
            continue
        if recent and p.t_end < recent[0].t_end - HORIZON_TAUS * tau_s:
            break
        recent.append(p)
    if not recent:
        return None
    s = Smoother(tau_s)
    out: dict[str, float] = {}
    for p in reversed(recent):
        out = s(p.t_end, p.probs)
    return out


def min_confidence(card: Mapping[str, Any] | None) -> float:
    """The card's confidence floor (``display.min_confidence``) in [0, 1); 0 (show every
    label) when the card has none or it is not such a number (cards come over the wire)."""
    display = card.get("display") if isinstance(card, Mapping) else None
    value = display.get("min_confidence") if isinstance(display, Mapping) else None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0.0
    return float(value) if 0.0 <= value < 1.0 else 0.0


@dataclass(frozen=True)
class Current:
    """The emotion shown for a stream: the averaged label, its probability, and whether that
    is below the model's floor (then shown as "uncertain", leaning towards ``label``)."""

    label: str
    confidence: float
    uncertain: bool


def shown(avg: Mapping[str, float] | None, floor: float = 0.0) -> Current | None:
    """What to show for an averaged distribution ``avg`` (None: nothing to show)."""
    if not avg:
        return None
    label, conf = max(avg.items(), key=lambda kv: kv[1])
    return Current(label, conf, conf < floor)


def current(predictions: Sequence[Any], tau_s: float = DEFAULT_TAU_S,
            floor: float = 0.0) -> Current | None:
    """What to show at the latest voiced window (None: no voiced window yet)."""
    return shown(latest(predictions, tau_s), floor)
