"""The stream protocol for the shipped recipe's tess-si +RAVDESS splits, stored in their split
files: what ``train whisper --stream tess-si`` adds, without the TESS-only splits (one-off;
figures in docs/results/crosscorpus.md). Run from the repository root:

    .venv/bin/python docs/results/scripts/tess_si_stream_with_windows.py
"""

import json
from pathlib import Path

import torch

from train import crosscorpus as cc
from train.whisper_train import add_streams, build_pool, stream_accuracy

ENCODER = "../shared/models/whisper-tiny-encoder.pt"
RUN = Path("runs/whisper-streams")

torch.set_num_threads(1)
pool = build_pool(["tess=../shared/data/tess", "ravdess=../shared/data/ravdess"], ENCODER,
                  progress=False)
add_streams(pool, ENCODER, progress=False)
for split in cc.splits(pool, ["tess-si"]):
    if "RAVDESS" not in split.name:
        continue
    key = f"{split.protocol}-{split.name}-none"
    file = RUN / "splits" / ("".join(c if c.isalnum() else "_" for c in key) + ".json")
    r = json.loads(file.read_text())
    r["stream"] = stream_accuracy(pool, split, r, ENCODER)
    file.write_text(json.dumps(r) + "\n")
    print(split.name, r["choice_label"], r["stream"]["tess"]["accuracy"], flush=True)
