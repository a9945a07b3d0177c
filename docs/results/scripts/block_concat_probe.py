"""Does the head gain from reading encoder blocks 1 and 2 together (their pooled statistics
concatenated, 1,536 values) instead of block 2 alone (768)? The serving cost is the same: the
shipped 2-block encoder computes both. One-off probe; figures quoted in
docs/results/crosscorpus.md. Run from the repository root (resumable: finished splits are kept
in OUT):

    nohup .venv/bin/python docs/results/scripts/block_concat_probe.py > runs/block_concat.log 2>&1 &

Same recipe as `emotion-monitor train whisper` (default.pt v3) with its choices held where v3
made them on every multi-speaker split (voiced pooling, stream windows at weight 1); C and the
telephone-band copies are chosen per split by the recipe's grouped CV over the training
speakers, for both readings alike. Test: RAVDESS actor-independent (4 folds) and the shipped
split (TESS + RAVDESS -> SAVEE, URDU), clips (clean and telephone band) and stream windows.
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch

from train import crosscorpus as cc
from train.whisper_train import add_streams, build_pool

ENCODER = "../shared/models/whisper-tiny-encoder.pt"
DATA = [f"{c}=../shared/data/{c}" for c in ("tess", "ravdess", "savee", "urdu")]
OUT = Path("runs/block_concat")
READINGS = {"block 2": [1], "blocks 1+2": [0, 1]}  # 0-based encoder blocks


def reading(pool: cc.Pool, blocks: list[int]) -> cc.Pool:
    """The pool with one "block" whose features are ``blocks``' concatenated: [n, pooling, 1,
    len(blocks) * 2D], clips and stream windows alike."""
    def cat(x: np.ndarray) -> np.ndarray:
        return np.concatenate([x[:, :, b] for b in blocks], axis=-1)[:, :, None]

    out = cc.Pool(pool.utts, {v: cat(f) for v, f in pool.feats.items()})
    out.streams = {v: {s: (cat(f), y) for s, (f, y) in by.items()}
                   for v, by in pool.streams.items()}
    return out


def main() -> int:
    torch.set_num_threads(2)
    OUT.mkdir(parents=True, exist_ok=True)
    pool = build_pool(DATA, ENCODER)
    add_streams(pool, ENCODER)
    for name, blocks in READINGS.items():
        view = reading(pool, blocks)
        for split in cc.splits(view, ["ravdess-ai", "shipped"]):
            file = OUT / f"{name.replace(' ', '_')}-{split.protocol}-{split.name[:6]}.json"
            if file.exists():
                continue
            r = cc.run_split(view, split, False, blocks=[0], poolings=(1,), mixes=(1.0,))
            r["reading"] = name
            choice = cc.Choice(**r["choice"])
            head = cc.train_head(view, split.train, choice, speaker_norm=False)
            train_classes = set(view.label[split.train].tolist())
            for test, rows in split.tests.items():  # the test speakers' stream windows
                classes = sorted(train_classes & set(view.label[rows].tolist()))
                r["tests"][test]["stream"] = cc.evaluate_streams(
                    view, head, np.unique(view.speaker[rows]), choice, "clean", classes)
            file.write_text(json.dumps(r))
            tests = {t: round(100 * m["clean"]["accuracy"], 1) for t, m in r["tests"].items()}
            print(name, split.protocol, split.name, r["choice_label"], tests, flush=True)
    rows = [json.loads(f.read_text()) for f in sorted(OUT.glob("*.json"))]
    print("| reading | protocol | test | folds | accuracy | UAR | telephone accuracy | "
          "stream windows |")
    print("|---|---|---|---|---|---|---|---|")
    for name in READINGS:
        for proto in ("ravdess-ai", "shipped"):
            mine = [r for r in rows if r["reading"] == name and r["protocol"] == proto]
            for test in sorted({t for r in mine for t in r["tests"]}):
                def mean(key: str, variant: str, test: str = test, mine: list = mine) -> float:
                    return 100 * float(np.mean([r["tests"][test][variant][key] for r in mine]))
                print(f"| {name} | {proto} | {test} | {len(mine)} | "
                      f"{mean('accuracy', 'clean'):.1f} | {mean('uar', 'clean'):.1f} | "
                      f"{mean('accuracy', 'ulaw'):.1f} | {mean('accuracy', 'stream'):.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
