"""Pooling on stream windows of VALIDATION speakers: all vs voiced positions (no test data).

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/stream_validation.py \
        [--encoder ../shared/models/whisper-tiny-encoder.pt] \
        [--out docs/results/stream_validation.json]

The shipped training side (TESS + RAVDESS speakers) is split by ``train.crosscorpus.inner_folds``
(the folds the recipe's choices use); for inner folds 0 and 1, a head (block 3, C 0.003,
telephone copies) is trained on the other speakers with each pooling, and scored on the
validation speakers' clips and on the stream protocol over them
(``train.whisper_train.stream_accuracy``). This is what chose ``--pooling voiced`` for the
served recipe (docs/results/crosscorpus.md). About 15 minutes on 2 shared cores.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train import crosscorpus as cc  # noqa: E402
from train.whisper_train import build_pool, stream_accuracy  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tess", default="../shared/data/tess")
    p.add_argument("--ravdess", default="../shared/data/ravdess")
    p.add_argument("--encoder", default="../shared/models/whisper-tiny-encoder.pt")
    p.add_argument("--folds", type=int, default=2)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    pool = build_pool([f"tess={args.tess}", f"ravdess={args.ravdess}"], args.encoder,
                      progress=False)
    rows = np.arange(len(pool.utts))
    out = {}
    for fi, val_spk in enumerate(cc.inner_folds(pool.speaker[rows])[:args.folds]):
        val = np.isin(pool.speaker, val_spk)
        split = cc.Split("inner", f"inner {fi}", rows[~val], {"val": rows[val]})
        for pooling in (0, 1):
            choice = cc.Choice(2, 0.003, True, pooling)
            head = cc.train_head(pool, split.train, choice, False)
            clip = cc.evaluate(pool, head, split.tests["val"], choice, False, "clean",
                               list(range(7)))
            result = {"choice": choice.__dict__,
                      "tests": {"val": {"clean": {"classes": clip["classes"]}}}}
            stream = stream_accuracy(pool, split, result, args.encoder)
            out[f"fold{fi}-{cc.POOLINGS[pooling]}"] = {
                "val_speakers": sorted(val_spk.tolist()), "clip_uar": clip["uar"],
                "clip_acc": clip["accuracy"], "stream_acc": stream["val"]["accuracy"]}
    text = json.dumps(out, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    print("stream_validation: " + "; ".join(
        f"{k} clip {100 * v['clip_acc']:.1f} % stream {100 * v['stream_acc']:.1f} %"
        for k, v in out.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
