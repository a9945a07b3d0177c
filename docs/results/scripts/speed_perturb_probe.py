"""Probe: does training the served head on speed-perturbed copies of the training clips help
it hear new voices?

Speed perturbation (Ko et al., 2015, as in Kaldi): a clip resampled by a factor and played at
the original rate, so tempo and pitch and the formants all move together; 0.9x and 1.1x are
the usual factors. For a frozen encoder with a linear head it adds voices that sound like
longer or shorter vocal tracts than the 26 training actors'.

Fixed recipe (the shipped choice: block 2, voiced pooling, C = 0.003, telephone copies; clips
only, no stream windows, so both arms are the same apart from the copies). Arm ``base``: the
training clips. Arm ``perturbed``: those plus a 0.9x and a 1.1x copy of each (same speaker,
label and corpus; each (corpus, class) cell keeps its total weight, so the copies dilute
rather than outweigh the originals). For every split of the cross-corpus protocols the
script reports the validation UAR over the training side's speakers (3 grouped folds,
originals only, clean + telephone band: what a choice would be made on) and the test figures.

    nohup .venv/bin/python docs/results/scripts/speed_perturb_probe.py > runs/speed_perturb.log &

Writes ``runs/speed_perturb/results.json``; features are cached under ``.cache/embeddings``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

# isort: off
from probe_setup import (  # OMP_WAIT_POLICY first
    CHOICE, DATA, ENCODER, REPO, pending_splits, test_figures, validation_uar)
# isort: on

import numpy as np  # noqa: E402
import soxr  # noqa: E402
import torch  # noqa: E402

from train import crosscorpus as cc  # noqa: E402
from train.audio import SAMPLE_RATE, load_audio  # noqa: E402
from train.embeddings import VARIANTS, _run_encoder, default_cache_dir, window_of  # noqa: E402
from train.whisper_train import build_pool  # noqa: E402

FACTORS = (0.9, 1.1)
OUT = REPO / "runs" / "speed_perturb"


def perturb(wave: np.ndarray, factor: float) -> np.ndarray:
    """``factor`` x speed: resampled to rate / factor and read at the original rate (soxr)."""
    return soxr.resample(wave, SAMPLE_RATE, SAMPLE_RATE / factor).astype(np.float32)


def perturbed_features(pool: cc.Pool, rows: np.ndarray) -> dict[str, np.ndarray]:
    """Features [len(FACTORS) * len(rows), ...] per variant of ``rows``' perturbed copies
    (factor-major), cached in one file keyed by the rows' paths."""
    import hashlib

    key = hashlib.sha256(json.dumps([str(pool.utts[i].path) for i in rows] + list(FACTORS))
                         .encode()).hexdigest()[:16]
    path = default_cache_dir() / f"speed-perturb-{key}.npz"
    if path.exists():
        with np.load(path) as z:
            return {v: z[v] for v in VARIANTS}
    clips = [load_audio(pool.utts[i].path) for i in rows]
    out = {}
    for v in VARIANTS:
        waves = [window_of(perturb(c, f), v) for f in FACTORS for c in clips]
        out[v] = _run_encoder(Path(ENCODER), waves, f"perturbed ({v})", 16, True)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **out)
    return out


def augmented(pool: cc.Pool, rows: np.ndarray, extra: dict[str, np.ndarray]
              ) -> tuple[cc.Pool, np.ndarray]:
    """A pool of the originals plus their copies (copies appended; returns the copies' rows)."""
    copies = [pool.utts[i] for i in rows] * len(FACTORS)
    feats = {v: np.concatenate([pool.feats[v], extra[v]]) for v in VARIANTS}
    new = cc.Pool(pool.utts + copies, feats)
    return new, np.arange(len(pool.utts), len(pool.utts) + len(copies))


def with_copies(train_rows: np.ndarray, src_rows: np.ndarray, copy_rows: np.ndarray
                ) -> np.ndarray:
    """``train_rows`` plus the copies of those of them that have copies."""
    index = {int(r): k for k, r in enumerate(src_rows)}
    n = len(src_rows)
    extra = [copy_rows[j * n + index[int(r)]] for j in range(len(FACTORS))
             for r in train_rows if int(r) in index]
    return np.concatenate([train_rows, np.asarray(extra, dtype=np.int64)])


def fitter(pool: cc.Pool, src_rows: np.ndarray, copy_rows: np.ndarray, arm: str):
    """The head of ``arm`` on some rows (the perturbed arm adds their copies)."""

    def fit(rows: np.ndarray):
        if arm == "perturbed":
            rows = with_copies(rows, src_rows, copy_rows)
        return cc.train_head(pool, rows, CHOICE, speaker_norm=False)

    return fit


def main() -> int:
    torch.set_num_threads(2)
    base = build_pool(DATA, ENCODER)
    src = np.flatnonzero(np.isin(base.corpus, ["tess", "ravdess"]))
    extra = perturbed_features(base, src)
    pool, copy_rows = augmented(base, src, extra)
    for split, key, row in pending_splits(base, OUT):
        t0 = time.time()
        for arm in ("base", "perturbed"):
            fit = split.train if arm == "base" else with_copies(split.train, src, copy_rows)
            head = cc.train_head(pool, fit, CHOICE, speaker_norm=False)
            row[arm] = {"val_uar": validation_uar(pool, split.train,
                                                  fitter(pool, src, copy_rows, arm)),
                        "n_train": int(len(fit)), "tests": test_figures(pool, split, head)}
        b, p = row["base"], row["perturbed"]
        print(f"{key}: val UAR {100 * b['val_uar']:.1f} -> {100 * p['val_uar']:.1f}; " + "; ".join(
            f"{t} acc {100 * b['tests'][t]['clean']['accuracy']:.1f} -> "
            f"{100 * p['tests'][t]['clean']['accuracy']:.1f} (tel "
            f"{100 * b['tests'][t]['ulaw']['accuracy']:.1f} -> "
            f"{100 * p['tests'][t]['ulaw']['accuracy']:.1f})" for t in b["tests"])
            + f"  [{time.time() - t0:.0f} s]", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
