"""Plotly figures of the dashboard, as plain functions of the data (no Streamlit), so the live
view and the session review draw the same pictures and tests can inspect them.

Figures are built as plain Plotly JSON dicts on purpose: ``plotly.graph_objects`` validates
every property on assignment, which cost about 2 s per redraw here (``add_vrect`` alone is
quadratic), while the same figure as a dict costs a few milliseconds. `st.plotly_chart` and
``plotly.io`` take the dicts as they are.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from dashboard.smoothing import HORIZON_TAUS, smoothed
from dashboard.state import Prediction
from streamer import protocol

#: One colour per emotion everywhere in the app (colour-blind-friendly Okabe-Ito based).
EMOTION_COLORS = {
    "angry": "#D55E00",
    "disgust": "#009E73",
    "fear": "#7B3294",
    "happy": "#E69F00",
    "neutral": "#8C8C8C",
    "sad": "#0072B2",
    "surprise": "#CC79A7",
}
EMOTION_ICONS = {
    "angry": "😠", "disgust": "🤢", "fear": "😨", "happy": "😀", "neutral": "😐", "sad": "😢",
    "surprise": "😲",
}
_FALLBACK = ["#56B4E9", "#F0E442", "#000000", "#999933", "#882255"]
# Grad-CAM overlay: transparent where the CAM is low, then yellow to red.
_CAM_SCALE = [
    [0.0, "rgba(255,255,0,0)"], [0.3, "rgba(255,255,0,0)"], [0.5, "rgba(255,200,0,0.45)"],
    [0.75, "rgba(255,100,0,0.65)"], [1.0, "rgba(220,0,0,0.8)"],
]


def color(label: str) -> str:
    return EMOTION_COLORS.get(label, _FALLBACK[hash(label) % len(_FALLBACK)])


Figure = dict[str, Any]


def _figure(data: list[dict], title: str, height: int, **layout: Any) -> Figure:
    base = {
        "title": {"text": title, "x": 0.01, "font": {"size": 14}}, "height": height,
        "margin": {"l": 50, "r": 10, "t": 40, "b": 40}, "template": "plotly_white",
        "legend": {"orientation": "h", "y": -0.22, "x": 0},
        "paper_bgcolor": "white", "plot_bgcolor": "white",
    }
    return {"data": data, "layout": {**base, **layout}}


def timeline_figure(predictions: Sequence[Prediction], classes: Sequence[str],
                    last_s: float | None = 120.0, title: str = "Emotion timeline",
                    tau_s: float = 0.0, floor: float = 0.0) -> Figure:
    """Probability of each class per window over stream time (each window at its end),
    averaged over ``tau_s`` seconds of speech (``dashboard.smoothing``; 0: each window), with
    the model's confidence ``floor`` as a dashed line when it has one.

    Unvoiced windows and windows missing from the sequence break the lines (None), and
    stretches without speech are shaded, so silence never reads as "neutral".
    """
    preds = list(predictions)
    lead = 0  # windows before the first one shown that its average still needs
    if preds and last_s is not None:
        ends = [p.t_end for p in preds]
        start = bisect_left(ends, ends[-1] - last_s - HORIZON_TAUS * tau_s)
        lead = bisect_left(ends, ends[-1] - last_s) - start
        preds = preds[start:]
    shown = smoothed([(p.t_end, p.probs if p.voiced else None) for p in preds], tau_s)
    preds, shown = preds[lead:], shown[lead:]
    if tau_s > 0:
        title = f"{title} · averaged over {tau_s:g} s"
    xs: list[float | None] = []
    ys: dict[str, list[float | None]] = {c: [] for c in classes}
    silent: list[tuple[float, float]] = []
    prev: Prediction | None = None
    for p, probs in zip(preds, shown, strict=True):
        if prev is not None and p.seq != prev.seq + 1:
            xs.append(None)
            for c in classes:
                ys[c].append(None)
        xs.append(round(p.t_end, 3))
        for c in classes:
            v = probs.get(c) if probs is not None else None
            ys[c].append(None if v is None else round(v, 4))  # fewer bytes per redraw
        if not p.voiced:
            lo = prev.t_end if prev is not None else p.t_start
            if silent and abs(silent[-1][1] - lo) < 1e-6:
                silent[-1] = (silent[-1][0], p.t_end)
            else:
                silent.append((lo, p.t_end))
        prev = p
    data: list[dict] = [{
        "type": "scatter", "x": xs, "y": ys[c], "name": c, "mode": "lines",
        "connectgaps": False,
        "line": {"color": color(c), "width": 2.5 if c != "neutral" else 1.5},
        "hovertemplate": f"{c}: %{{y:.0%}} at %{{x:.1f}} s<extra></extra>",
    } for c in classes]
    shapes = [{"type": "rect", "xref": "x", "yref": "paper", "x0": lo, "x1": hi, "y0": 0,
               "y1": 1, "fillcolor": "#bbbbbb", "opacity": 0.25, "line": {"width": 0},
               "layer": "below"} for lo, hi in silent]
    if floor > 0:
        shapes.append({"type": "line", "xref": "paper", "yref": "y", "x0": 0, "x1": 1,
                       "y0": floor, "y1": floor, "line": {"color": "#888", "width": 1,
                                                          "dash": "dash"}})
    if silent:
        # A legend entry for the shading.
        data.append({"type": "scatter", "x": [None], "y": [None], "mode": "markers",
                     "name": "no speech",
                     "marker": {"color": "#bbbbbb", "symbol": "square", "size": 12}})
    annotations = [] if preds else [{
        "text": "waiting for the first window…", "showarrow": False, "x": 0.5, "y": 0.5,
        "xref": "paper", "yref": "paper"}]
    if floor > 0:
        annotations.append({"text": "below: uncertain", "showarrow": False, "x": 1, "y": floor,
                            "xref": "paper", "yref": "y", "xanchor": "right",
                            "yanchor": "top", "font": {"size": 10, "color": "#888"}})
    return _figure(data, title, 300, shapes=shapes, annotations=annotations,
                   yaxis={"range": [0, 1], "tickformat": ".0%"},
                   xaxis={"title": {"text": "stream time (s)"}})


def distribution_figure(counts: Mapping[str, int] | Counter, classes: Sequence[str],
                        title: str = "Session distribution (voiced windows)") -> Figure:
    total = sum(counts.values())
    shares = [counts.get(c, 0) / total if total else 0.0 for c in classes]
    bar = {"type": "bar", "x": shares, "y": list(classes), "orientation": "h",
           "marker": {"color": [color(c) for c in classes]},
           "text": [f"{v:.0%}" for v in shares], "textposition": "auto",
           "hovertemplate": "%{y}: %{x:.1%}<extra></extra>"}
    return _figure([bar], f"{title} · {total} windows", 300,
                   xaxis={"range": [0, max([*shares, 0.01]) * 1.15], "tickformat": ".0%"},
                   yaxis={"autorange": "reversed"}, showlegend=False)


#: What each explanation method is called on screen (the protocol's ``method`` names).
METHOD_NAMES = {"gradcam": "Grad-CAM", "vit-tokens": "Grad-CAM (tokens)",
                "saliency": "Saliency"}


def method_name(method: Any) -> str:
    """The on-screen name of an explanation ``method`` (itself when unknown)."""
    return METHOD_NAMES.get(str(method), str(method))


def explanation_figure(msg: Mapping[str, Any]) -> Figure:
    """Log-mel spectrogram with the Grad-CAM overlay and the focus box of one explanation.

    Bands are drawn evenly (mel spacing) and labelled in Hz, so low frequencies are not
    squashed as they would be on a linear Hz axis.
    """
    # 8-bit frames: two decimals of log-mel and three of CAM lose nothing real.
    spec = protocol.decode_frame(msg["spectrogram"]).round(2)
    cam = protocol.decode_frame({**msg["cam"], "min": 0.0, "max": 1.0}).round(3)
    times = list(msg["axes"]["times_s"])
    freqs = list(msg["axes"]["freqs_hz"])
    bands = list(range(len(freqs)))
    data = [
        {"type": "heatmap", "z": spec.tolist(), "x": times, "y": bands,
         "colorscale": [[0, "#0b0b0b"], [1, "#f2f2f2"]], "showscale": False,
         "name": "log-mel spectrogram",
         "hovertemplate": "%{x:.2f} s, band %{y}<br>log-mel %{z:.2f}<extra></extra>"},
        {"type": "heatmap", "z": cam.tolist(), "x": times, "y": bands,
         "colorscale": _CAM_SCALE, "zmin": 0, "zmax": 1, "name": "Grad-CAM",
         "colorbar": {"title": {"text": method_name(msg.get("method"))}, "len": 0.8,
                      "thickness": 12},
         "hovertemplate": "%{x:.2f} s, band %{y}<br>CAM %{z:.2f}<extra></extra>"},
    ]
    shapes, annotations = [], []
    metrics = msg.get("metrics") or {}
    ft, ff = metrics.get("focus_time_s"), metrics.get("focus_freq_hz")
    if ft and ff:
        y0, y1 = _band_of(ff[0], freqs) - 0.5, _band_of(ff[1], freqs) + 0.5
        shapes.append({"type": "rect", "xref": "x", "yref": "y", "x0": ft[0], "x1": ft[1],
                       "y0": y0, "y1": y1, "line": {"color": "#00E5FF", "width": 3},
                       "fillcolor": "rgba(0,0,0,0)"})
        annotations.append({"x": ft[0], "y": y1, "text": "focus", "showarrow": False,
                            "yanchor": "bottom", "xanchor": "left",
                            "font": {"color": "#00B8D4", "size": 12}})
    step = max(1, len(freqs) // 6)
    ticks = bands[::step]
    title = (f"{method_name(msg.get('method'))} for class: {msg.get('class')} · "
             f"window #{msg.get('seq')}")
    return _figure(data, title, 320, shapes=shapes, annotations=annotations, showlegend=False,
                   yaxis={"tickvals": ticks, "ticktext": [_hz(freqs[i]) for i in ticks],
                          "title": {"text": "Hz (mel bands)"}},
                   xaxis={"title": {"text": "time in window (s)"}})


def explanation_metrics(msg: Mapping[str, Any]) -> dict[str, str]:
    """The explanation's metrics as the paper's text block, label -> formatted value."""
    m = msg.get("metrics") or {}
    out = {
        "Model confidence": _pct(m.get("confidence")),
        "Max activation": _num(m.get("max_activation")),
        "Mean activation": _num(m.get("mean_activation")),
        "Activated area": _pct(m.get("activated_area_pct"), already=True),
        "Entropy": _num(m.get("entropy")),
    }
    ft, ff = m.get("focus_time_s"), m.get("focus_freq_hz")
    out["Focus region"] = (f"{ft[0]:.2f}–{ft[1]:.2f} s, {_hz(ff[0])}–{_hz(ff[1])} Hz"
                           if ft and ff else "none")
    drop, rnd = m.get("confidence_drop"), m.get("random_drop")
    out["Confidence drop (focus masked)"] = _pct(drop)
    out["Drop, random region"] = _pct(rnd)
    return out


def _band_of(hz: float, freqs: Sequence[float]) -> float:
    """Fractional band index of a frequency (linear between band centres)."""
    if not freqs:
        return 0.0
    if hz <= freqs[0]:
        return 0.0
    for i in range(1, len(freqs)):
        if hz <= freqs[i]:
            lo, hi = freqs[i - 1], freqs[i]
            return i - 1 + (hz - lo) / (hi - lo if hi > lo else 1.0)
    return float(len(freqs) - 1)


def _hz(v: float) -> str:
    return f"{v / 1000:.1f}k" if v >= 1000 else f"{v:.0f}"


def _pct(v: float | None, already: bool = False) -> str:
    if v is None:
        return "—"
    return f"{v:.1f}%" if already else f"{v:.1%}"


def _num(v: float | None) -> str:
    return "—" if v is None else f"{v:.3f}"
