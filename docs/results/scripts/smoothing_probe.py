"""Probe: how much does smoothing a stream's probabilities over time buy on new voices?

The monitor shows one label per 3-s window; on held-out speakers the stream windows are 7-11
points below isolated clips (crosscorpus.md). Emotion in a call lasts longer than one window,
so a causal exponential moving average of the window probabilities, p_t = a p_(t-1) +
(1 - a) q_t with a = exp(-hop / tau) (``dashboard.smoothing``, what the dashboard shows),
should cancel some of the per-window noise, at the cost of reacting ``tau`` seconds later to
a change. How much it buys depends on how long an emotion
lasts, which no corpus here records, so each held-out voice is replayed two ways:

- ``shuffled``: the stream protocol's own order (``build_stream``): every utterance a random
  emotion, the worst case for smoothing (an emotion lasts one clip, 2-4 s);
- ``episodes``: the same clips in runs of up to 4 of one emotion (a random emotion each run,
  never the previous one): an emotion lasts 8-16 s, still shorter than a mood in a call.

Heads: the version-3 recipe at the shipped choice (block 2, voiced pooling, C = 0.003,
telephone copies of the clips, stream windows at weight 1; clean stream windows only here),
trained per split. tau in {0 (no smoothing: what is served), 1, 2, 3, 5, 8} s is chosen on the
shipped split's 3 grouped folds of TESS + RAVDESS speakers (the validation speakers' streams,
mean UAR over both orders); test folds choose nothing. Windows every 1 s (the training streams'
hop; the daemon's is 0.5 s, the EMA's time constant is in seconds either way).

    nohup .venv/bin/python docs/results/scripts/smoothing_probe.py > runs/smoothing.log 2>&1 &

Writes ``runs/smoothing/results.json``.
"""

from __future__ import annotations

import json
import sys
import time
import zlib
from dataclasses import replace

# isort: off
from probe_setup import CHOICE, DATA, ENCODER, REPO  # OMP_WAIT_POLICY first
# isort: on

import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from dashboard.smoothing import CHOICES_S, smoothed  # noqa: E402
from train import crosscorpus as cc  # noqa: E402
from train.embeddings import embed_stream  # noqa: E402
from train.whisper_train import STREAM_TRAIN_HOP, build_pool  # noqa: E402

TAUS = CHOICES_S
HOP_S = STREAM_TRAIN_HOP / 16_000
EPISODE_CLIPS = 4
ORDERS = ("shuffled", "episodes")
RECIPE = replace(CHOICE, stream_mix=1.0)
OUT = REPO / "runs" / "smoothing"


def episode_order(labels: np.ndarray, seed: int) -> list[int]:
    """Indices of the clips in runs of up to EPISODE_CLIPS of one emotion, each run's emotion
    drawn at random among those left (not the previous run's while another is left)."""
    rng = np.random.default_rng(seed)
    left = {int(c): list(rng.permutation(np.flatnonzero(labels == c))) for c in np.unique(labels)}
    order: list[int] = []
    prev = None
    while left:
        options = [c for c in left if c != prev] or list(left)
        c = int(rng.choice(options))
        order += [int(i) for i in left[c][:EPISODE_CLIPS]]
        left[c] = left[c][EPISODE_CLIPS:]
        if not left[c]:
            del left[c]
        prev = c
    return order


def speaker_stream(pool: cc.Pool, spk: str, order: str, variant: str = "clean"
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(features, labels) of speaker ``spk``'s stream windows in time order, clips in
    ``order``; ``shuffled`` clean is exactly the training stream (same seed, same cache)."""
    rows = np.flatnonzero(pool.speaker == spk)
    seed = zlib.crc32(str(spk).encode())
    utts = [pool.utts[i] for i in rows]
    if order == "shuffled":
        return embed_stream(utts, ENCODER, variant, hop=STREAM_TRAIN_HOP, seed=seed,
                            progress=False)
    return embed_stream([utts[i] for i in episode_order(pool.label[rows], seed)], ENCODER,
                        variant, hop=STREAM_TRAIN_HOP, seed=seed, progress=False,
                        shuffle=False)


def speaker_streams(pool: cc.Pool) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """order -> speaker -> (features, labels) of every speaker's clean stream windows."""
    out: dict[str, dict] = {o: {} for o in ORDERS}
    for spk in tqdm(list(dict.fromkeys(pool.speaker.tolist())), desc="streams", unit="speaker"):
        for o in ORDERS:
            out[o][spk] = speaker_stream(pool, spk, o)
    return out


def ema(prob: np.ndarray, tau: float) -> np.ndarray:
    """The dashboard's average (``dashboard.smoothing``) over rows (windows every HOP_S)."""
    rows = smoothed([(i * HOP_S, dict(enumerate(p.tolist()))) for i, p in enumerate(prob)],
                    tau)
    return np.array([[r[c] for c in range(prob.shape[1])] for r in rows])


def window_probs(head, f: np.ndarray, classes: list[int], tau: float) -> np.ndarray:
    """The head's probabilities over ``classes`` for a stream's windows ``f`` (time order),
    averaged over ``tau`` seconds as the dashboard does."""
    logits = head.logits(f[:, RECIPE.pooling, RECIPE.block])[:, classes]
    p = np.exp(logits - logits.max(1, keepdims=True))
    return ema(p / p.sum(1, keepdims=True), tau)


def stream_scores(head, streams: dict, speakers, classes) -> dict:
    """order -> tau -> metrics over the speakers' stream windows (each speaker's stream
    smoothed on its own)."""
    out: dict = {}
    for order in ORDERS:
        ys, probs = [], {t: [] for t in TAUS}
        for spk in speakers:
            f, y = streams[order][str(spk)]
            keep = np.isin(y, classes)
            ys.append(y[keep])
            for t in TAUS:
                probs[t].append(window_probs(head, f, classes, t)[keep])
        y = np.concatenate(ys)
        out[order] = {f"{t:g}": cc.metrics(y, np.asarray(classes)[np.concatenate(probs[t])
                                                                   .argmax(1)], classes)
                      for t in TAUS}
    return out


def main() -> int:
    torch.set_num_threads(2)
    OUT.mkdir(parents=True, exist_ok=True)
    pool = build_pool(DATA, ENCODER)
    streams = speaker_streams(pool)
    pool.streams["clean"] = streams["shuffled"]
    results: dict = {}
    split_list = [s for s in cc.splits(pool, ["tess-si", "ravdess-ai", "shipped"])
                  if "TESS only" not in s.name]
    # validation: the shipped split's training speakers, 3 grouped folds
    shipped = next(s for s in split_list if s.protocol == "shipped")
    groups = pool.speaker[shipped.train]
    val: dict = {o: {f"{t:g}": [] for t in TAUS} for o in ORDERS}
    for val_groups in cc.inner_folds(groups):
        rows = shipped.train[~np.isin(groups, val_groups)]
        head = cc.train_head(pool, rows, RECIPE, speaker_norm=False)
        classes = sorted(set(pool.label[shipped.train].tolist()))
        scores = stream_scores(head, streams, val_groups, classes)
        for o in ORDERS:
            for t in TAUS:
                val[o][f"{t:g}"].append(scores[o][f"{t:g}"]["uar"])
    val_uar = {o: {t: float(np.mean(v)) for t, v in by.items()} for o, by in val.items()}
    chosen = max((f"{t:g}" for t in TAUS),
                 key=lambda t: np.mean([val_uar[o][t] for o in ORDERS]))
    results["validation_uar"] = val_uar
    results["chosen_tau_s"] = float(chosen)
    print("validation UAR " + "; ".join(
        f"{o}: " + ", ".join(f"tau {t} {100 * v:.1f}" for t, v in val_uar[o].items())
        for o in ORDERS) + f"; chosen tau {chosen} s", flush=True)
    results["tests"] = {}
    for split in split_list:
        t0 = time.time()
        head = cc.train_head(pool, split.train, RECIPE, speaker_norm=False)
        train_classes = set(pool.label[split.train].tolist())
        row = {}
        for name, rows in split.tests.items():
            classes = sorted(train_classes & set(pool.label[rows].tolist()))
            row[name] = stream_scores(head, streams, np.unique(pool.speaker[rows]), classes)
        key = f"{split.protocol}: {split.name}"
        results["tests"][key] = row
        print(f"{key}: " + "; ".join(
            f"{name} {o} acc " + "/".join(
                f"{100 * row[name][o][f'{t:g}']['accuracy']:.1f}" for t in TAUS)
            for name in row for o in ORDERS) + f"  [{time.time() - t0:.0f} s]", flush=True)
        (OUT / "results.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
