"""Probe: does a small non-linear head on the frozen encoder's pooled features hear new voices
better than the served linear head?

The served head is a multinomial logistic regression on block 2's voiced-pooled mean and
standard deviation (768 values). The issue asks for the head to be chosen by measurement; the
linear head was the only one measured. Here, for every split of the cross-corpus protocols:

- ``linear``: the shipped choice (block 2, voiced pooling, C = 0.003, telephone copies);
- ``mlp``: the same standardised features -> Linear(768, H) -> GELU -> dropout -> Linear(H, 7),
  AdamW in minibatches on the same balanced weighted cross-entropy, a fixed number of epochs;
  its hidden width and weight decay chosen from a small grid on the validation speakers.

Both arms train on clips only (no stream windows), so the linear figures equal the speed
perturbation probe's base arm. Validation: 3 grouped folds over each split's training speakers,
clean + telephone band, mean UAR (what ``choose`` scores). Every test figure is the arm's chosen
configuration; test folds choose nothing.

    nohup .venv/bin/python docs/results/scripts/mlp_head_probe.py > runs/mlp_head.log 2>&1 &

Writes ``runs/mlp_head/results.json`` (resumable per split).
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
import torch.nn.functional as F  # noqa: E402

from train import crosscorpus as cc  # noqa: E402
from train.corpus import EMOTIONS  # noqa: E402
from train.whisper_train import build_pool  # noqa: E402

GRID = [(256, 0.01), (256, 1.0), (64, 0.01), (64, 1.0)]  # (hidden width, AdamW weight decay)
EPOCHS, BATCH, LR, DROPOUT = 20, 256, 1e-3, 0.3
SEEDS = (0, 1, 2)  # the chosen MLP retrained with each: its test spread from the seed alone
OUT = REPO / "runs" / "mlp_head"


@dataclass
class MlpHead:
    """Standardiser + one hidden layer; duck-types ``cc.LinearHead`` for ``cc.evaluate``."""

    mean: np.ndarray
    std: np.ndarray
    net: torch.nn.Module
    mask: torch.Tensor
    prior: None = None

    @torch.no_grad()
    def logits(self, x: np.ndarray) -> np.ndarray:
        self.net.eval()
        xt = torch.from_numpy(((x - self.mean) / self.std).astype(np.float32))
        return (self.net(xt) + self.mask).numpy()


def fit_mlp(x: np.ndarray, y: np.ndarray, w: np.ndarray, hidden: int, decay: float,
            seed: int = 0) -> MlpHead:
    torch.manual_seed(seed)
    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-5
    xt = torch.from_numpy(((x - mean) / std).astype(np.float32))
    yt, wt = torch.from_numpy(y), torch.from_numpy(w.astype(np.float32))
    present = torch.zeros(len(EMOTIONS), dtype=torch.bool)
    present[yt.unique()] = True
    mask = torch.where(present, 0.0, -1e4)
    net = torch.nn.Sequential(torch.nn.Dropout(0.1), torch.nn.Linear(xt.shape[1], hidden),
                              torch.nn.GELU(), torch.nn.Dropout(DROPOUT),
                              torch.nn.Linear(hidden, len(EMOTIONS)))
    opt = torch.optim.AdamW(net.parameters(), lr=LR, weight_decay=decay)
    steps = EPOCHS * -(-len(yt) // BATCH)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, LR, total_steps=steps)
    gen = torch.Generator().manual_seed(seed)
    net.train()
    for _ in range(EPOCHS):
        for idx in torch.randperm(len(yt), generator=gen).split(BATCH):
            opt.zero_grad()
            loss = (wt[idx] * F.cross_entropy(net(xt[idx]) + mask, yt[idx], reduction="none")
                    ).sum() / wt[idx].sum()
            loss.backward()
            opt.step()
            sched.step()
    return MlpHead(mean.astype(np.float32), std.astype(np.float32), net, mask)


def train(pool: cc.Pool, rows: np.ndarray, arm: tuple[int, float] | None, seed: int = 0):
    if arm is None:
        return cc.train_head(pool, rows, CHOICE, speaker_norm=False)
    x, y, corpus, _ = cc._design(pool, rows, CHOICE, None, ("clean", "ulaw"))
    return fit_mlp(x, y, cc.balanced_weights(corpus, y), *arm, seed=seed)


def main() -> int:
    torch.set_num_threads(2)
    pool = build_pool(DATA, ENCODER)
    for split, key, row in pending_splits(pool, OUT):
        t0 = time.time()
        val = {"linear": validation_uar(pool, split.train, lambda r: train(pool, r, None))}
        for arm in GRID:
            val[f"mlp h{arm[0]} wd{arm[1]:g}"] = validation_uar(
                pool, split.train, lambda r, arm=arm: train(pool, r, arm))
        best = max(GRID, key=lambda a: val[f"mlp h{a[0]} wd{a[1]:g}"])
        row.update({"val_uar": val, "mlp_choice": f"mlp h{best[0]} wd{best[1]:g}",
                    "linear": test_figures(pool, split, train(pool, split.train, None)),
                    "mlp": test_figures(pool, split, train(pool, split.train, best)),
                    "mlp_seeds": [test_figures(pool, split,
                                               train(pool, split.train, best, seed))
                                  for seed in SEEDS]})
        print(f"{key}: val UAR linear {100 * val['linear']:.1f}, {row['mlp_choice']} "
              f"{100 * val[row['mlp_choice']]:.1f}; " + "; ".join(
                  f"{t} acc {100 * row['linear'][t]['clean']['accuracy']:.1f} -> "
                  f"{100 * row['mlp'][t]['clean']['accuracy']:.1f} (tel "
                  f"{100 * row['linear'][t]['ulaw']['accuracy']:.1f} -> "
                  f"{100 * row['mlp'][t]['ulaw']['accuracy']:.1f}; seeds "
                  + "/".join(f"{100 * r[t]['clean']['accuracy']:.1f}" for r in row["mlp_seeds"])
                  + ")" for t in row["linear"])
              + f"  [{time.time() - t0:.0f} s]", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
