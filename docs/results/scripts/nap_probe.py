"""Probe: does projecting the speaker directions out of the features (nuisance attribute
projection) help the head hear new voices, from a stream's first window?

Per-speaker normalisation is worth 8-16 points on clips when all of a speaker's clips are at
hand, but a live stream has only its past: it needs about a minute and standardises a
one-emotion call away (crosscorpus.md). Nuisance attribute projection (Solomonoff, Campbell &
Boardman 2005, from speaker verification's channel compensation) removes the directions in
which *training speakers* differ within an emotion, learnt once from the training side:

- standardise the features (the head's own standardiser);
- mean of every (speaker, class) cell, minus that class's mean over the cells: how the speaker
  (and its corpus: recording chain, language) shifts an emotion;
- the top ``k`` right singular vectors U of those residuals; features -> z - z U U^T.

It is linear, so a head trained on projected features folds back into one linear head over
the unprojected standardised features (W P, P symmetric): the exported file's layout does not
change, and it needs nothing from the stream. Here, for every split of the cross-corpus
protocols, the shipped choice (block 2, voiced pooling, C = 0.003, telephone copies, clips
only) with ``k`` in {0 (the served head), 8, 16, 32, 64}, or the speakers' mean shifts alone
with ``k`` in {4, 8, 16}; the arm chosen per split on 3 grouped folds of the split's training
speakers (clean + telephone UAR, what ``choose`` scores); the
projection inside validation is learnt from that fold's training speakers only.

    nohup .venv/bin/python docs/results/scripts/nap_probe.py > runs/nap.log 2>&1 &

Writes ``runs/nap/results.json`` (resumable per split).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

# isort: off
from probe_setup import (  # OMP_WAIT_POLICY first
    CHOICE, DATA, ENCODER, REPO, pending_splits, test_figures, validation_uar)
# isort: on

import numpy as np  # noqa: E402
import torch  # noqa: E402

from train import crosscorpus as cc  # noqa: E402
from train.whisper_train import build_pool  # noqa: E402

# (basis, k): k = 0 is the served head
ARMS = [("cell", 0), ("cell", 8), ("cell", 16), ("cell", 32), ("cell", 64),
        ("speaker", 4), ("speaker", 8), ("speaker", 16)]
OUT = REPO / "runs" / "nap"


def nap_basis(z: np.ndarray, y: np.ndarray, speaker: np.ndarray, k: int,
              kind: str = "cell") -> np.ndarray:
    """[D, k]: the top ``k`` directions of (speaker, class) cell means around their class's
    mean over cells (``kind="cell"``), or of each speaker's mean over its cells around the
    speakers' average (``"speaker"``: a shift shared by all of a speaker's emotions)."""
    cells, inverse = np.unique(np.char.add(np.char.add(speaker.astype(str), "|"),
                                           y.astype(str)), return_inverse=True)
    means = np.stack([z[inverse == i].mean(0) for i in range(len(cells))])
    cell_class = np.array([int(c.rsplit("|", 1)[1]) for c in cells])
    for c in np.unique(cell_class):
        means[cell_class == c] -= means[cell_class == c].mean(0)
    if kind == "speaker":
        cell_speaker = np.array([c.rsplit("|", 1)[0] for c in cells])
        means = np.stack([means[cell_speaker == s].mean(0) for s in np.unique(cell_speaker)])
    _, _, vt = np.linalg.svd(means, full_matrices=False)
    return vt[:k].T.astype(np.float32)


@dataclass
class NapHead:
    """Standardise -> project out U -> linear head; duck-types ``cc.LinearHead``."""

    mean: np.ndarray
    std: np.ndarray
    basis: np.ndarray
    inner: cc.LinearHead
    prior: None = None

    def logits(self, x: np.ndarray) -> np.ndarray:
        z = (x - self.mean) / self.std
        return self.inner.logits(z - (z @ self.basis) @ self.basis.T)


def train(pool: cc.Pool, rows: np.ndarray, arm: tuple[str, int]):
    kind, k = arm
    if k == 0:
        return cc.train_head(pool, rows, CHOICE, speaker_norm=False)
    x, y, corpus, speaker = cc._design(pool, rows, CHOICE, None, ("clean", "ulaw"))
    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-5
    z = (x - mean) / std
    basis = nap_basis(z, y, speaker, k, kind)
    inner = cc.fit_head(z - (z @ basis) @ basis.T, y, cc.balanced_weights(corpus, y), CHOICE.c)
    return NapHead(mean.astype(np.float32), std.astype(np.float32), basis, inner)


def main() -> int:
    torch.set_num_threads(2)
    pool = build_pool(DATA, ENCODER)
    for split, key, row in pending_splits(pool, OUT):
        t0 = time.time()
        names = [f"{kind} k{k}" for kind, k in ARMS]
        val = {n: validation_uar(pool, split.train, lambda r, a=a: train(pool, r, a))
               for n, a in zip(names, ARMS, strict=True)}
        row.update({"val_uar": val, "choice": max(names, key=val.__getitem__),
                    "tests": {n: test_figures(pool, split, train(pool, split.train, a))
                              for n, a in zip(names, ARMS, strict=True)}})
        print(f"{key}: val UAR " + ", ".join(f"{n} {100 * v:.1f}" for n, v in val.items())
              + f"; chosen {row['choice']}; " + "; ".join(
                  f"{t} acc " + "/".join(
                      f"{100 * row['tests'][n][t]['clean']['accuracy']:.1f}" for n in names)
                  for t in split.tests) + f"  [{time.time() - t0:.0f} s]", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
