"""What the head probes in this folder share: the corpora and encoder under ../shared, the
shipped head's choice, and the score every choice is made on (validation speakers of the
training side). Imported first: it sets ``OMP_WAIT_POLICY`` before torch loads and puts the
repository on ``sys.path``."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from train import crosscorpus as cc  # noqa: E402

SHARED = REPO.parent / "shared"
DATA = [f"{c}={SHARED / 'data' / c}" for c in ("tess", "ravdess", "savee", "urdu")]
ENCODER = str(SHARED / "models" / "whisper-tiny-encoder.pt")
#: The shipped recipe's head: block 2, voiced positions, C = 0.003, telephone copies.
CHOICE = cc.Choice(block=1, c=0.003, phone_aug=True, pooling=1)


def validation_uar(pool: cc.Pool, train_rows: np.ndarray,
                   fit: Callable[[np.ndarray], object]) -> float:
    """Mean UAR over 3 grouped folds of ``train_rows``' speakers, clean and telephone band
    (what ``cc.choose`` scores), of the heads ``fit(rows)`` trains on the other folds."""
    groups = pool.speaker[train_rows]
    uars = []
    for val_groups in cc.inner_folds(groups):
        val = np.isin(groups, val_groups)
        head = fit(train_rows[~val])
        classes = sorted(set(pool.label[train_rows[val]].tolist()))
        for variant in ("clean", "ulaw"):
            uars.append(cc.evaluate(pool, head, train_rows[val], CHOICE, False, variant,
                                    classes)["uar"])
    return float(np.mean(uars))


def test_figures(pool: cc.Pool, split: cc.Split, head: object) -> dict:
    """Accuracy, UAR and macro-F1 of ``head`` on each test set of ``split``, clean and
    telephone band, on the classes the test corpus shares with training."""
    train_classes = set(pool.label[split.train].tolist())
    out = {}
    for name, rows in split.tests.items():
        classes = sorted(train_classes & set(pool.label[rows].tolist()))
        out[name] = {v: {k: cc.evaluate(pool, head, rows, CHOICE, False, v, classes)[k]
                         for k in ("accuracy", "uar", "macro_f1")} for v in ("clean", "ulaw")}
    return out


def pending_splits(pool: cc.Pool, out: Path) -> Iterator[tuple[cc.Split, str, dict]]:
    """The cross-corpus splits (TESS-only ones left out) not yet in ``out/results.json``, as
    (split, key, row): the caller fills ``row``, which is saved before the next split
    (resumable)."""
    out.mkdir(parents=True, exist_ok=True)
    done = out / "results.json"
    results = json.loads(done.read_text()) if done.exists() else {}
    for split in cc.splits(pool, ["tess-si", "ravdess-ai", "shipped"]):
        key = f"{split.protocol}: {split.name}"
        if "TESS only" in split.name or key in results:
            continue
        row: dict = {}
        yield split, key, row
        results[key] = row
        done.write_text(json.dumps(results, indent=1))
