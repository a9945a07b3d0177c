"""Offline Grad-CAM reports: the paper's text block, a PNG figure, an interactive HTML figure.

One explanation (``streamer.gradcam.Explanation`` with metrics) becomes, like paper 1's
Figures 7-13: the log-mel spectrogram, the CAM over it with the focus box, the class
probabilities, and the "Grad-CAM Analysis for class: ..." block. matplotlib and Plotly are
imported inside the functions (the daemon never needs them). Also: reading one audio file into
a model window, and a small TESS file-name parser so ``explain --per-class`` can pick examples
without importing ``train/`` (streamer/ never does; see docs/architecture.md).
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from streamer.gradcam import Explanation

# ----------------------------------------------------------------------------- audio in

#: TESS (and most corpora's) emotion words -> canonical labels; "ps" is pleasant surprise.
EMOTION_WORDS = {
    "angry": "angry", "anger": "angry", "disgust": "disgust", "fear": "fear",
    "fearful": "fear", "happy": "happy", "neutral": "neutral", "sad": "sad",
    "ps": "surprise", "surprise": "surprise", "surprised": "surprise",
    "pleasant_surprise": "surprise", "pleasant_surprised": "surprise",
}


def label_from_name(path: str | Path) -> str | None:
    """The emotion a TESS-style path names: the file's last ``_`` token (``OAF_back_ps``),
    else its folder (``YAF_pleasant_surprised``); None when neither names one.

    Deliberately a small local parser (not ``train.corpus``): the streamer room may not import
    train/, and only the file-name convention is needed to pick per-class examples.
    """
    p = Path(path)
    last = p.stem.lower().rsplit("_", 1)[-1]
    if last in EMOTION_WORDS:
        return EMOTION_WORDS[last]
    folder = re.sub(r"^[a-z]+_", "", p.parent.name.lower(), count=1)
    return EMOTION_WORDS.get(folder) or EMOTION_WORDS.get(p.parent.name.lower())


def load_window(path: str | Path, sample_rate: int, n_samples: int) -> tuple[np.ndarray, float]:
    """One model window from an audio file: (wave [n_samples] float32, start time in the file).

    Mono mix, soxr resampling to the model's rate. A clip shorter than the window is centred in
    it with zeros around (as the streaming model is evaluated on held-out clips); a longer file
    gives its loudest window (10-ms steps), the stretch a person would want explained.
    """
    import soundfile as sf
    import soxr

    try:
        audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as err:  # soundfile raises LibsndfileError/RuntimeError/TypeError
        raise ValueError(f"{path}: not a readable audio file ({err})") from err
    if audio.size == 0:
        raise ValueError(f"{path}: empty audio file")
    mono = audio.mean(axis=1)
    if rate != sample_rate:
        mono = soxr.resample(mono, rate, sample_rate).astype(np.float32)
    if mono.size <= n_samples:
        out = np.zeros(n_samples, dtype=np.float32)
        lo = (n_samples - mono.size) // 2
        out[lo:lo + mono.size] = mono
        return out, -lo / sample_rate
    step = max(1, sample_rate // 100)
    energy = np.concatenate([[0.0], np.cumsum(mono.astype(np.float64) ** 2)])
    starts = np.arange(0, mono.size - n_samples + 1, step)
    best = int(starts[np.argmax(energy[starts + n_samples] - energy[starts])])
    return mono[best:best + n_samples].astype(np.float32), best / sample_rate


# ----------------------------------------------------------------------------- text block

def method_title(method: str) -> str:
    """What the report calls the map: the papers' "Grad-CAM" for Grad-CAM models, "Saliency"
    for the Whisper model's gradient over the log-mel (the earlier reports said Grad-CAM for
    both)."""
    return {"gradcam": "Grad-CAM", "saliency": "Saliency"}.get(method, method)


def text_block(expl: Explanation, source: str | None = None) -> str:
    """The paper's "Grad-CAM Analysis for class: ..." block (Figures 7-13), plus the control.

    Confidence drop = p(class) before minus after masking, in percentage points (negative: the
    masked input was classified *more* confidently).
    """
    m = expl.metrics
    if m is None:
        raise ValueError("the text block needs metrics (explain_windows(..., metrics=True))")

    def pct(x: float | None) -> str:
        return "n/a (no activated area)" if x is None else f"{100 * x:.2f}%"

    def rng(r: tuple[float, float] | None, nd: int) -> str:
        return "none" if r is None else f"({r[0]:.{nd}f}, {r[1]:.{nd}f})"

    t = "none" if m.time_focus_range is None else \
        f"{m.time_focus_range[0]:.2f}-{m.time_focus_range[1]:.2f}s"
    f = "none" if m.freq_focus_range is None else \
        f"{m.freq_focus_range[0]:.1f}-{m.freq_focus_range[1]:.1f}Hz"
    name = expl.target_name
    lines = [
        f"{method_title(expl.method)} Analysis for class: {name}",
        *([f"Source: {source}"] if source else []),
        f"Method: {expl.method} (frequency axis: {expl.mel_scale} mel-band centres)",
        f"{'Metric':<46}Value",
        f"{'Model Confidence':<46}{100 * m.confidence:.2f}% ({name})",
        f"{method_title(expl.method) + ' Max Activation':<46}= {m.max_activation:.2f}"
        + ("  (the map is zero everywhere: no positive evidence for this class at this layer)"
           if expl.raw_max <= 0 else ""),
        f"{'Activated Area':<46}= {m.activated_area_pct:.2f}% (CAM >= {m.threshold:g})",
        f"Focus Region (time: {t}, freq: {f})",
        f"{'Confidence Drop (after masking focus region)':<46}= {pct(m.confidence_drop)}",
        f"{'Confidence Drop (random region, equal area)':<46}= {pct(m.random_drop)}",
        f"{'mean_activation':<46}{m.mean_activation:.8f}",
        f"{'max_activation':<46}{m.max_activation:.8f}",
        f"{'activated_area_pct':<46}{m.activated_area_pct:.2f}",
        f"{'entropy':<46}{m.entropy:.3f}",
        f"{'time_focus_range':<46}{rng(m.time_focus_range, 2)}",
        f"{'freq_focus_range':<46}{rng(m.freq_focus_range, 1)}",
        "Class probabilities:",
        *[f"{c}: {p:.4f}" for c, p in zip(expl.classes, expl.probabilities, strict=True)],
    ]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- figures

def _hz_ticks(freqs: np.ndarray, n: int = 7) -> tuple[list[int], list[str]]:
    idx = np.unique(np.linspace(0, len(freqs) - 1, n).round().astype(int)).tolist()
    return idx, [f"{freqs[i]:.0f}" for i in idx]


def _box_xy(expl: Explanation, box: tuple[int, int, int, int]) -> tuple[float, float, float,
                                                                        float]:
    """(x0, x1, y0, y1) of an inclusive cell box in (seconds, band index) coordinates."""
    times = expl.times_s
    dt = float(times[1] - times[0]) if len(times) > 1 else 1.0
    r0, r1, c0, c1 = box
    return times[c0] - dt / 2, times[c1] + dt / 2, r0 - 0.5, r1 + 0.5


def figure_png(expl: Explanation, path: str | Path, title: str | None = None) -> Path:
    """Spectrogram | CAM overlay with focus box | class probabilities, as a PNG."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    m = expl.metrics
    times, freqs = expl.times_s, expl.freqs_hz
    dt = float(times[1] - times[0]) if len(times) > 1 else 1.0
    extent = (times[0] - dt / 2, times[-1] + dt / 2, -0.5, len(freqs) - 0.5)
    ticks, labels = _hz_ticks(freqs)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), gridspec_kw={"width_ratios": [4, 4, 2]})
    ax = axes[0]
    im = ax.imshow(expl.spectrogram, origin="lower", aspect="auto", extent=extent,
                   cmap="magma")
    ax.set_title("log-mel spectrogram")
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax = axes[1]
    ax.imshow(expl.spectrogram, origin="lower", aspect="auto", extent=extent, cmap="gray")
    im = ax.imshow(expl.cam, origin="lower", aspect="auto", extent=extent, cmap="jet",
                   alpha=0.5, vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, label="CAM")
    ax.set_title(f"{expl.method} for '{expl.target_name}'")
    if m is not None and m.focus_box is not None:
        x0, x1, y0, y1 = _box_xy(expl, m.focus_box)
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="white",
                               linewidth=2, label="focus region"))
        ax.legend(loc="upper right", fontsize=8)
    for ax in axes[:2]:
        ax.set_xlabel("time (s)")
        ax.set_yticks(ticks, labels)
        ax.set_ylabel(f"frequency (Hz, {expl.mel_scale} mel)")
    ax = axes[2]
    colours = ["crimson" if i == expl.target else "steelblue" for i in range(len(expl.classes))]
    ax.barh(expl.classes, expl.probabilities, color=colours)
    ax.set_xlim(0, 1)
    ax.invert_yaxis()
    ax.set_title("class probabilities")
    if title is None and m is not None:
        title = (f"{method_title(expl.method)} Analysis for class: {expl.target_name} — "
                 f"confidence "
                 f"{100 * m.confidence:.1f}%, area {m.activated_area_pct:.1f}%, drop "
                 + ("n/a" if m.confidence_drop is None else f"{100 * m.confidence_drop:.1f}%"))
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def figure_html(expl: Explanation, path: str | Path, title: str | None = None) -> Path:
    """The same figure in Plotly (hover shows time, Hz and CAM); plotly.js is written once
    next to the page (``include_plotlyjs="directory"``), so the report works offline."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    m = expl.metrics
    times, freqs = expl.times_s.astype(np.float32), expl.freqs_hz
    rows = np.arange(len(freqs))
    hz = np.repeat(freqs[:, None], len(times), axis=1).astype(np.float32)
    spec = expl.spectrogram.astype(np.float32)  # float32 halves the page (typed arrays)
    fig = make_subplots(rows=1, cols=3, column_widths=[0.4, 0.4, 0.2],
                        subplot_titles=("log-mel spectrogram",
                                        f"{expl.method} for '{expl.target_name}'",
                                        "class probabilities"))
    hover = "t=%{x:.2f}s, %{customdata:.0f} Hz<br>%{z:.3f}<extra></extra>"
    fig.add_trace(go.Heatmap(z=spec, x=times, y=rows, customdata=hz,
                             colorscale="Magma", hovertemplate=hover, showscale=False),
                  row=1, col=1)
    fig.add_trace(go.Heatmap(z=spec, x=times, y=rows, colorscale="Greys",
                             reversescale=True, showscale=False, hoverinfo="skip"), row=1, col=2)
    fig.add_trace(go.Heatmap(z=expl.cam, x=times, y=rows, customdata=hz, colorscale="Jet",
                             zmin=0, zmax=1, opacity=0.5, hovertemplate=hover,
                             colorbar={"title": "CAM", "x": 0.78}), row=1, col=2)
    if m is not None and m.focus_box is not None:
        x0, x1, y0, y1 = _box_xy(expl, m.focus_box)
        fig.add_shape(type="rect", x0=x0, x1=x1, y0=y0, y1=y1, line={"color": "white",
                      "width": 2}, row=1, col=2)
    fig.add_trace(go.Bar(x=expl.probabilities, y=expl.classes, orientation="h",
                         marker_color=["crimson" if i == expl.target else "steelblue"
                                       for i in range(len(expl.classes))],
                         hovertemplate="%{y}: %{x:.4f}<extra></extra>"), row=1, col=3)
    ticks, labels = _hz_ticks(freqs)
    for col in (1, 2):
        fig.update_xaxes(title_text="time (s)", row=1, col=col)
        fig.update_yaxes(tickvals=ticks, ticktext=labels, row=1, col=col,
                         title_text=f"Hz ({expl.mel_scale} mel)")
    fig.update_xaxes(range=[0, 1], row=1, col=3)
    fig.update_yaxes(autorange="reversed", row=1, col=3)
    fig.update_layout(title=title or f"{method_title(expl.method)} Analysis for class: "
                                 f"{expl.target_name}",
                      height=480, showlegend=False)
    path = Path(path)
    fig.write_html(str(path), include_plotlyjs="directory", full_html=True)
    return path


# ----------------------------------------------------------------------------- a report

def safe_stem(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "explanation"


def write_report(expl: Explanation, out_dir: str | Path, stem: str, source: str | None = None,
                 title: str | None = None) -> dict[str, Path]:
    """``<stem>.png``, ``<stem>.html`` and ``<stem>.txt`` in ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = safe_stem(stem)
    text = out / f"{stem}.txt"
    text.write_text(text_block(expl, source), encoding="utf-8")
    return {"png": figure_png(expl, out / f"{stem}.png", title),
            "html": figure_html(expl, out / f"{stem}.html", title), "txt": text}


def write_index(entries: Sequence[dict[str, Any]], path: str | Path, title: str) -> Path:
    """An index page: per entry its heading, PNG thumbnail, links and text block."""
    path = Path(path)
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
             "</title><style>body{font-family:sans-serif;margin:2em}section{margin-bottom:2em}"
             "img{max-width:100%;border:1px solid #ccc}pre{background:#f6f6f6;padding:1em}"
             f"</style></head><body><h1>{html.escape(title)}</h1>"]
    for e in entries:
        files = {k: Path(v).name for k, v in e["files"].items()}
        parts.append(
            f"<section><h2>{html.escape(e['heading'])}</h2>"
            f"<p><a href='{files['html']}'>interactive figure</a> · "
            f"<a href='{files['txt']}'>text</a> · <a href='{files['png']}'>PNG</a></p>"
            f"<a href='{files['html']}'><img src='{files['png']}' "
            f"alt='{html.escape(e['heading'])}'></a><pre>{html.escape(e['text'])}</pre></section>")
    parts.append("</body></html>")
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


__all__ = ["EMOTION_WORDS", "figure_html", "figure_png", "label_from_name", "load_window",
           "safe_stem", "text_block", "write_index", "write_report"]
