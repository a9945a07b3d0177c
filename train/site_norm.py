"""Per-site normalisation: a head for features standardised by each corpus's own statistics.

A deployment (a call centre's floor) has many voices, so the mean and standard deviation of
its features need no labels, mix many callers' emotions and carry what sets the site apart
from the training corpora. The *site head* is trained with every training corpus standardised
by its own statistics (clips by its clips', stream windows by its windows', each per variant:
a telephone site's statistics are of telephone audio); ``emotion-monitor calibrate`` later
standardises a new site by statistics of its unlabelled recordings and folds them into a model
file of its own. Why, and what it buys on corpora never heard: docs/results/crosscorpus.md
("Standardising per corpus"; chosen on the training side's own leave-one-corpus-out).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from train import crosscorpus as cc

EPS = 1e-5  # added to a site's std before dividing (as ``WhisperEmotion.classify_stream``)


def standardised(x: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Each group's rows of ``x`` [n, ...] standardised by that group's mean and std."""
    out = np.empty_like(x)
    for g in np.unique(groups):
        rows = groups == g
        mu, sd = x[rows].mean(0), x[rows].std(0)
        out[rows] = (x[rows] - mu) / (sd + EPS)
    return out


def corpus_standardised_pool(pool: cc.Pool) -> cc.Pool:
    """``pool`` with clips standardised per (corpus, variant) by the corpus's clip statistics
    and stream windows per (corpus, variant) by its windows' statistics."""
    out = cc.Pool(pool.utts, {v: standardised(f, pool.corpus) for v, f in pool.feats.items()})
    for v, by in pool.streams.items():
        speakers = list(by)
        if not speakers:
            out.streams[v] = {}
            continue
        x = np.concatenate([by[s][0] for s in speakers])
        corpus = np.concatenate([np.full(len(by[s][1]), s.split(":")[0]) for s in speakers])
        z = standardised(x, corpus)
        bounds = np.cumsum([0] + [len(by[s][1]) for s in speakers])
        out.streams[v] = {s: (z[a:b], by[s][1]) for s, a, b in
                          zip(speakers, bounds[:-1], bounds[1:], strict=True)}
    return out


def fit_site_head(pool: cc.Pool, rows: np.ndarray, choice: cc.Choice) -> cc.LinearHead:
    """The site head of ``choice`` on ``rows`` (the served head's recipe on corpus-standardised
    features)."""
    return cc.train_head(corpus_standardised_pool(pool), rows, choice, speaker_norm=False)


def site_arrays(head: cc.LinearHead) -> dict[str, np.ndarray]:
    """The arrays ``head.npz`` keeps for the site head (read by the exporter)."""
    return {"site_mean": head.mean, "site_std": head.std, "site_weight": head.weight,
            "site_bias": head.bias}


def save_site_head(head: cc.LinearHead, path: str | Path) -> Path:
    path = Path(path)
    np.savez(path, **site_arrays(head))
    return path


__all__ = ["EPS", "corpus_standardised_pool", "fit_site_head", "save_site_head", "site_arrays",
           "standardised"]
