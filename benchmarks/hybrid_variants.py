"""Which training variant of paper 1's hybrid to run under cv5, chosen without its test folds.

Each variant trains on 80 % of a cv5 training split and is scored on the other 20 % (a stratified
inner validation split); the cv5 test folds are never seen. Two outer folds (0 and 1) give 896
validation clips per variant. Every variant starts from the settings the table's best hybrid row
uses (Keras initialisation, bidirectional LSTM, cosine lr decay, the paper's 50 epochs, Adam
1e-3, batch 32) and adds one regulariser. Prints JSON (one entry per run and a total per
variant) and a one-line summary. ~3 min per run on one CPU thread.

    .venv/bin/python benchmarks/hybrid_variants.py --data ../shared/data/tess --variants A,B
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch
from sklearn.model_selection import StratifiedShuffleSplit

from train.corpus import scan_corpus
from train.experiments import _evaluate, default_config, extract_features, labels_of, train_torch
from train.splits import make_splits

BASE_MODEL = {"init": "keras", "bidirectional": True}
VARIANTS: dict[str, dict[str, float]] = {
    "A": {},
    "B": {"label_smoothing": 0.1},
    "C": {"weight_decay": 0.05},
    "D": {"label_smoothing": 0.1, "weight_decay": 0.05},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data/tess")
    ap.add_argument("--cache", default=".cache/features")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset")
    ap.add_argument("--outer-folds", default="0,1")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    utts = scan_corpus(args.data).utterances
    x, kept, _ = extract_features(utts, "vector", args.cache, progress=False)
    utts = [utts[i] for i in kept]
    y = labels_of(utts)
    splits = make_splits("cv5", utts, k=5, seed=0)
    runs = []
    for name in args.variants.split(","):
        for outer in (int(f) for f in args.outer_folds.split(",")):
            train_idx = splits[outer][0]
            inner = StratifiedShuffleSplit(1, test_size=0.2, random_state=outer)
            a, b = next(inner.split(train_idx, y[train_idx]))
            fit_idx, val_idx = train_idx[a], train_idx[b]
            cfg = default_config(args.data, "hybrid", "cv5", model_config=BASE_MODEL,
                                 lr_schedule="cosine", **VARIANTS[name])
            t0 = time.perf_counter()
            model, hist = train_torch(cfg, x[fit_idx], y[fit_idx], None, None,
                                      torch.device("cpu"), seed=outer, progress=False)
            _, pred = _evaluate(model, torch.from_numpy(x[val_idx]),
                                torch.from_numpy(y[val_idx]), torch.device("cpu"))
            runs.append({"variant": name, "settings": VARIANTS[name], "outer_fold": outer,
                         "n_fit": len(fit_idx), "n_val": len(val_idx),
                         "val_errors": int((pred != y[val_idx]).sum()),
                         "train_acc_last_epoch": hist[-1]["train_acc"],
                         "seconds": round(time.perf_counter() - t0, 1)})
            print(json.dumps(runs[-1]), flush=True)
    totals = {}
    for name in dict.fromkeys(r["variant"] for r in runs):
        mine = [r for r in runs if r["variant"] == name]
        errors, n = sum(r["val_errors"] for r in mine), sum(r["n_val"] for r in mine)
        totals[name] = {"settings": VARIANTS[name], "val_errors": errors, "n_val": n,
                        "val_accuracy": round(1 - errors / n, 4)}
    print(json.dumps({
        "machine": {"platform": platform.platform(), "cpus": torch.get_num_threads(),
                    "torch": torch.__version__},
        "settings": {"model": "hybrid", "base_model_config": BASE_MODEL, "lr_schedule": "cosine",
                     "epochs": 50, "inner_validation": "stratified 20 % of the outer training "
                     "split", "outer_folds": args.outer_folds},
        "runs": runs, "variants": totals,
    }, indent=2))
    best = max(totals, key=lambda k: totals[k]["val_accuracy"])
    print("inner-validation accuracy: " + ", ".join(
        f"{k} {v['val_accuracy']:.2%} ({v['val_errors']}/{v['n_val']} wrong)"
        for k, v in totals.items()) + f"; best {best}")


if __name__ == "__main__":
    main()
