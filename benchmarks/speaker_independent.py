"""What helps speaker-independent TESS (train on one actress, test on the other)?

Cheap probes with the logistic-regression baseline on cached features: fold-level vs speaker-level
standardisation (statistics of each speaker's own, unlabelled audio), log-compressing the mel
part of paper 1's 187-vector, and a per-speaker quantile transform. Prints JSON (one entry per
variant: both directions and their mean) and a one-line summary.

    .venv/bin/python benchmarks/speaker_independent.py --data ../shared/data/tess
"""

from __future__ import annotations

import argparse
import json
import platform

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import QuantileTransformer, StandardScaler

from train.corpus import scan_corpus
from train.experiments import extract_features, labels_of, speaker_normalise
from train.splits import make_splits

MEL = slice(52, 180)  # the 128 mel means inside the 187-vector (after MFCC 40 + chroma 12)


def per_speaker_quantile(x: np.ndarray, speakers: np.ndarray) -> np.ndarray:
    out = x.copy()
    for s in np.unique(speakers):
        m = speakers == s
        qt = QuantileTransformer(n_quantiles=200, output_distribution="normal")
        out[m] = qt.fit_transform(x[m])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data/tess")
    ap.add_argument("--cache", default=".cache/features")
    args = ap.parse_args()
    utts = scan_corpus(args.data).utterances
    x, kept, _ = extract_features(utts, "vector", args.cache, progress=False)
    utts = [utts[i] for i in kept]
    y = labels_of(utts)
    spk = np.array([u.speaker for u in utts])
    splits = make_splits("speaker-independent", utts)
    logmel = x.copy()
    logmel[:, MEL] = np.log(logmel[:, MEL] + 1e-10)
    variants = {
        "187-vector, fold standardisation (the table's logreg)": x,
        "187-vector, speaker standardisation": speaker_normalise(x, spk),
        "log-mel 187-vector, fold standardisation": logmel,
        "log-mel 187-vector, speaker standardisation": speaker_normalise(logmel, spk),
        "log-mel 187-vector, per-speaker quantile transform": per_speaker_quantile(logmel, spk),
    }
    results = {}
    for name, feats in variants.items():
        accs = []
        for train, test in splits:
            clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000, C=0.1))
            clf.fit(feats[train], y[train])
            accs.append(float((clf.predict(feats[test]) == y[test]).mean()))
        results[name] = {"test_OAF": accs[0], "test_YAF": accs[1], "mean": float(np.mean(accs))}
    best = max(results, key=lambda k: results[k]["mean"])
    print(json.dumps({"machine": platform.platform(), "classifier": "logreg C=0.1",
                      "results": results}, indent=2))
    print(f"best speaker-independent logreg: {best}: {100 * results[best]['mean']:.1f} %")


if __name__ == "__main__":
    main()
