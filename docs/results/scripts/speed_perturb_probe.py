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
from collections.abc import Callable
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


def copy_features(pool: cc.Pool, rows: np.ndarray,
                  copy: Callable[[np.ndarray, int, int], np.ndarray], n_copies: int,
                  name: str, tag: list) -> dict[str, np.ndarray]:
    """Features [n_copies * len(rows), ...] per variant of ``rows``' copies (copy-major;
    ``copy(clip, j, k)`` makes copy ``j`` of the ``k``-th row's clip), cached in one file keyed
    by the rows' paths and ``tag``."""
    import hashlib

    key = hashlib.sha256(json.dumps([str(pool.utts[i].path) for i in rows] + tag)
                         .encode()).hexdigest()[:16]
    path = default_cache_dir() / f"{name}-{key}.npz"
    if path.exists():
        with np.load(path) as z:
            return {v: z[v] for v in VARIANTS}
    clips = [load_audio(pool.utts[i].path) for i in rows]
    copies = [copy(c, j, k) for j in range(n_copies) for k, c in enumerate(clips)]
    out = {}
    for v in VARIANTS:
        waves = [window_of(c, v) for c in copies]
        out[v] = _run_encoder(Path(ENCODER), waves, f"{name} ({v})", 16, True)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **out)
    return out


def perturbed_features(pool: cc.Pool, rows: np.ndarray) -> dict[str, np.ndarray]:
    """The speed-perturbed copies' features (factor-major)."""
    return copy_features(pool, rows, lambda c, j, k: perturb(c, FACTORS[j]), len(FACTORS),
                         "speed-perturb", list(FACTORS))


def augmented(pool: cc.Pool, rows: np.ndarray, extra: dict[str, np.ndarray]
              ) -> tuple[cc.Pool, np.ndarray]:
    """A pool of the originals plus their copies (copies appended, copy-major: ``extra`` holds
    a whole number of copies of ``rows``); returns it and the copies' rows."""
    copies = [pool.utts[i] for i in rows] * (len(extra[VARIANTS[0]]) // len(rows))
    feats = {v: np.concatenate([pool.feats[v], extra[v]]) for v in VARIANTS}
    new = cc.Pool(pool.utts + copies, feats)
    return new, np.arange(len(pool.utts), len(pool.utts) + len(copies))


def with_copies(train_rows: np.ndarray, src_rows: np.ndarray, copy_rows: np.ndarray
                ) -> np.ndarray:
    """``train_rows`` plus the copies of those of them that have copies."""
    index = {int(r): k for k, r in enumerate(src_rows)}
    n = len(src_rows)
    extra = [copy_rows[j * n + index[int(r)]] for j in range(len(copy_rows) // n)
             for r in train_rows if int(r) in index]
    return np.concatenate([train_rows, np.asarray(extra, dtype=np.int64)])


def fitter(pool: cc.Pool, src_rows: np.ndarray, copy_rows: np.ndarray, arm: str):
    """The head of ``arm`` on some rows (any arm but "base" adds their copies)."""

    def fit(rows: np.ndarray):
        if arm != "base":
            rows = with_copies(rows, src_rows, copy_rows)
        return cc.train_head(pool, rows, CHOICE, speaker_norm=False)

    return fit


def compare(base: cc.Pool, pool: cc.Pool, src: np.ndarray, copy_rows: np.ndarray, out: Path,
            arm: str) -> None:
    """For every split not yet in ``out``: validation UAR and test figures of the heads without
    (arm "base") and with the copies (``arm``), printed and saved split by split."""
    for split, key, row in pending_splits(base, out):
        t0 = time.time()
        for name in ("base", arm):
            fit = split.train if name == "base" else with_copies(split.train, src, copy_rows)
            head = cc.train_head(pool, fit, CHOICE, speaker_norm=False)
            row[name] = {"val_uar": validation_uar(pool, split.train,
                                                   fitter(pool, src, copy_rows, name)),
                         "n_train": int(len(fit)), "tests": test_figures(pool, split, head)}
        b, p = row["base"], row[arm]
        print(f"{key}: val UAR {100 * b['val_uar']:.1f} -> {100 * p['val_uar']:.1f}; " + "; ".join(
            f"{t} acc {100 * b['tests'][t]['clean']['accuracy']:.1f} -> "
            f"{100 * p['tests'][t]['clean']['accuracy']:.1f} (tel "
            f"{100 * b['tests'][t]['ulaw']['accuracy']:.1f} -> "
            f"{100 * p['tests'][t]['ulaw']['accuracy']:.1f})" for t in b["tests"])
            + f"  [{time.time() - t0:.0f} s]", flush=True)


def main() -> int:
    torch.set_num_threads(2)
    base = build_pool(DATA, ENCODER)
    src = np.flatnonzero(np.isin(base.corpus, ["tess", "ravdess"]))
    extra = perturbed_features(base, src)
    pool, copy_rows = augmented(base, src, extra)
    compare(base, pool, src, copy_rows, OUT, "perturbed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
