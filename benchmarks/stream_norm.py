"""Per-stream feature normalisation: how many seconds of a voice it needs, and what it costs.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/stream_norm.py \
        --data tess=../shared/data/tess --data ravdess=../shared/data/ravdess \
        --data savee=../shared/data/savee --encoder ../shared/models/whisper-tiny-encoder.pt \
        --run runs/whisper --out benchmarks/results/stream_norm.json

A monitored stream is one voice, so the pooled encoder features can be standardised by that
stream's running mean and standard deviation, as the offline "per speaker" rows standardise by
the speaker's whole set. Offline that set is balanced over emotions; a real call is not. This
script replays each held-out speaker as a stream of 3-s windows (one clip each, drawn with
replacement) under three emotion mixes -- balanced, 70 % neutral, 70 % angry (a caller angry
most of the call) -- and scores, at every position k of the stream, (a) the global head,
(b) the per-speaker head with plain statistics of the first k windows, shrunk towards the
training speakers' average statistics with ``PRIOR_WINDOWS`` pseudo-windows (the served path
until the balanced moments), (c) the same with each emotion weighing the same in those
statistics (``streamer.stream_norm.balanced_moments``, as served).

Held out: RAVDESS actor folds (head trained on TESS + the other actors), TESS actresses (head
on the other actress + RAVDESS), SAVEE (head on TESS + RAVDESS). The block, pooling, C and
augmentation are the served model's (``RUN/config.json``, chosen on its training speakers). With
``--validation`` the streams are instead the validation speakers of the shipped training side
(TESS + RAVDESS in the recipe's 3 grouped folds), where the choice between (b) and (c) was made.
Prints JSON and a one-line summary; writes a Plotly HTML of accuracy vs seconds of speech.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
from scipy.special import softmax  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from streamer.stream_norm import BALANCE_ALPHA, balanced_moments  # noqa: E402
from train import crosscorpus as cc  # noqa: E402
from train.corpus import EMOTIONS  # noqa: E402
from train.whisper_train import add_streams, build_pool  # noqa: E402

POSITIONS = (1, 2, 3, 5, 10, 20, 40)
MIXES = {"balanced": None, "70% neutral": "neutral", "70% angry": "angry"}
WINDOW_S = 3.0
#: curve -> its key in the JSON
HEADS = {"global": "global", "speaker": "speaker_norm", "balanced": "speaker_norm_balanced",
         "blend": "blend_global_balanced"}


def stream_rows(rows: np.ndarray, labels: np.ndarray, n: int, mix: str | None,
                rng: np.random.Generator) -> np.ndarray:
    """``n`` clip rows of one speaker: uniform over emotions, or 70 % ``mix`` and the rest
    uniform over the other emotions (with replacement)."""
    emotions = sorted(set(labels.tolist()))
    if mix is None:
        probs = {e: 1 / len(emotions) for e in emotions}
    else:
        main = EMOTIONS.index(mix)
        others = [e for e in emotions if e != main]
        probs = {e: (0.7 if e == main else 0.3 / len(others)) for e in emotions}
    picks = rng.choice(emotions, size=n, p=[probs[e] for e in emotions])
    return np.array([rng.choice(rows[labels == e]) for e in picks])


def running_balanced(x: np.ndarray, probs: np.ndarray, prior_mean: np.ndarray,
                     prior_std: np.ndarray, prior: float) -> tuple[np.ndarray, np.ndarray]:
    """Running mean/std of windows 1..k as served: emotion-balanced moments
    (``streamer.stream_norm.balanced_moments``, each window counted towards the emotions the
    global head gives it) shrunk towards the prior like ``cc.shrunk_moments``."""
    counts = np.cumsum(probs, axis=0)  # [K, C]
    totals = np.cumsum(probs[:, :, None] * x[:, None, :], axis=0)  # [K, C, D]
    squares = np.cumsum(probs[:, :, None] * (x * x)[:, None, :], axis=0)
    mean, square = balanced_moments(counts, totals, squares)
    k = np.arange(1, len(x) + 1)
    return cc.shrunk_moments(k, k[:, None] * mean, k[:, None] * square, prior_mean, prior_std,
                             prior)


def running_scores(x: np.ndarray, y: np.ndarray, global_head: cc.LinearHead,
                   spk_head: cc.LinearHead, prior_mean: np.ndarray, prior_std: np.ndarray,
                   prior: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per position k: correct under the global head, under the speaker head with the first k
    windows' statistics shrunk towards the prior (``prior`` pseudo-windows), the same with
    emotion-balanced statistics (``running_balanced``), and under the mean of the global and
    the balanced heads' probabilities ("blend")."""
    mean, std = cc.shrunk_moments(np.arange(1, len(x) + 1), np.cumsum(x, axis=0),
                                  np.cumsum(x * x, axis=0), prior_mean, prior_std, prior)
    probs = softmax(global_head.logits(x), axis=1)
    s = spk_head.logits((x - mean) / (std + 1e-5)).argmax(1) == y
    bmean, bstd = running_balanced(x, probs, prior_mean, prior_std, prior)
    b_probs = softmax(spk_head.logits((x - bmean) / (bstd + 1e-5)), axis=1)
    return (probs.argmax(1) == y, s, b_probs.argmax(1) == y,
            (probs + b_probs).argmax(1) == y)


def test_splits(pool: cc.Pool) -> list[tuple[str, cc.Split]]:
    """The held-out voices: RAVDESS actor folds, TESS actresses, SAVEE."""
    held = [("ravdess", s) for s in cc.splits(pool, ["ravdess-ai"])]
    held += [("tess", s) for s in cc.splits(pool, ["tess-si"]) if "RAVDESS" in s.name]
    return held + [("savee", s) for s in cc.splits(pool, ["loco"]) if "savee" in s.tests]


def validation_splits(pool: cc.Pool) -> list[tuple[str, cc.Split]]:
    """The shipped recipe's training side (TESS + RAVDESS) in the recipe's 3 grouped folds of
    speakers: each fold's speakers are streamed, heads trained on the others. Choices about
    per-stream normalisation are made here, not on the held-out voices."""
    train = next(iter(cc.splits(pool, ["shipped"]))).train
    out = []
    for i, val_speakers in enumerate(cc.inner_folds(pool.speaker[train])):
        val = np.isin(pool.speaker[train], val_speakers)
        out.append(("validation", cc.Split("validation", f"shipped training side, fold {i}",
                                           train[~val], {"validation": train[val]})))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", action="append", required=True)
    p.add_argument("--encoder", required=True)
    p.add_argument("--run", required=True, help="the served model's run dir (its choice)")
    p.add_argument("--streams", type=int, default=20, help="random streams per speaker and mix")
    p.add_argument("--length", type=int, default=max(POSITIONS))
    p.add_argument("--out", default=None)
    p.add_argument("--validation", action="store_true",
                   help="stream the validation speakers of the shipped training side instead "
                        "of the held-out voices (where choices are made)")
    args = p.parse_args(argv)
    t0 = time.time()
    cfg = json.loads((Path(args.run) / "config.json").read_text())
    choice = cc.Choice(**cfg["choice"])
    # the served per-stream head has its own choice (clips only: no stream windows)
    spk_choice = cc.Choice(**cfg.get("stream_choice", {**cfg["choice"], "stream_mix": 0.0}))
    pool = build_pool(args.data, args.encoder, progress=False)
    if choice.stream_mix:
        add_streams(pool, args.encoder, progress=False)
    held = validation_splits(pool) if args.validation else test_splits(pool)
    rng = np.random.default_rng(0)
    curves: dict[str, dict[str, list[list[float]]]] = {
        m: {"global": [], "speaker": [], "balanced": [], "blend": []} for m in MIXES}
    for corpus, split in held:
        train = split.train
        if corpus == "savee":  # the shipped recipe: TESS + RAVDESS only
            train = train[np.isin(pool.corpus[train], ["tess", "ravdess"])]
        g_head = cc.train_head(pool, train, choice, speaker_norm=False)
        s_head = cc.train_head(pool, train, spk_choice, speaker_norm=True)
        prior_mean, prior_std = s_head.prior
        rows = next(iter(split.tests.values()))
        for spk in np.unique(pool.speaker[rows]):
            srows = rows[pool.speaker[rows] == spk]
            for mix, target in MIXES.items():
                for _ in range(args.streams):
                    picked = stream_rows(srows, pool.label[srows], args.length, target, rng)
                    x = pool.feats["clean"][picked, choice.pooling, choice.block]
                    scores = running_scores(x, pool.label[picked], g_head, s_head, prior_mean,
                                            prior_std, cc.PRIOR_WINDOWS)
                    for head, ok in zip(HEADS, scores, strict=True):
                        curves[mix][head].append(ok.astype(float).tolist())
    result = {"benchmark": "stream_norm", "machine": platform.platform(),
              "settings": {"choice": cfg["choice"], "stream_choice": asdict(spk_choice),
                           "streams_per_speaker_mix": args.streams,
                           "length_windows": args.length, "prior_windows": cc.PRIOR_WINDOWS,
                           "window_s": WINDOW_S, "balance_alpha": BALANCE_ALPHA,
                           "voices": "validation" if args.validation else "held out",
                           "held_out": [f"{c}: {s.name}" for c, s in held]},
              "accuracy": {}}
    for mix, c in curves.items():
        result["accuracy"][mix] = {"n_streams": len(c["global"]),
                                   "seconds": [k * WINDOW_S for k in POSITIONS]}
        for head, key in HEADS.items():
            acc = np.asarray(c[head]).mean(0)
            result["accuracy"][mix][key] = [round(float(acc[k - 1]), 4) for k in POSITIONS]
            result["accuracy"][mix][f"{key}_mean_all"] = round(float(acc.mean()), 4)
    result["seconds"] = round(time.time() - t0, 1)
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
        import plotly.graph_objects as go

        fig = go.Figure()
        for mix, c in curves.items():
            for head in HEADS:
                acc = np.asarray(c[head]).mean(0)
                fig.add_trace(go.Scatter(x=np.arange(1, len(acc) + 1) * WINDOW_S, y=100 * acc,
                                         name=f"{mix}, {head}", mode="lines",
                                         line={"dash": "dot" if head == "global" else "solid"}))
        fig.update_layout(title="Held-out voices as streams: accuracy of window k vs seconds "
                                "of speech heard", xaxis_title="seconds of speech (3 s/window)",
                          yaxis_title="window accuracy, %", width=1000, height=550)
        fig.write_html(Path(args.out).with_suffix(".html"), include_plotlyjs="cdn")
    b = result["accuracy"]["balanced"]
    a = result["accuracy"]["70% angry"]
    n = result["accuracy"]["70% neutral"]
    print(f"stream_norm: balanced streams {100 * b['global_mean_all']:.1f} % global vs "
          f"{100 * b['speaker_norm_mean_all']:.1f} % per-stream norm "
          f"({100 * b['speaker_norm_balanced_mean_all']:.1f} emotion-balanced); 70 % angry "
          f"{100 * a['global_mean_all']:.1f} vs {100 * a['speaker_norm_mean_all']:.1f} % "
          f"({100 * a['speaker_norm_balanced_mean_all']:.1f}); 70 % neutral "
          f"{100 * n['global_mean_all']:.1f} vs {100 * n['speaker_norm_mean_all']:.1f} % "
          f"({100 * n['speaker_norm_balanced_mean_all']:.1f}); blend of global and balanced: "
          f"{100 * b['blend_global_balanced_mean_all']:.1f} / "
          f"{100 * a['blend_global_balanced_mean_all']:.1f} / "
          f"{100 * n['blend_global_balanced_mean_all']:.1f}; "
          f"first window {100 * b['global'][0]:.1f} vs {100 * b['speaker_norm'][0]:.1f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
