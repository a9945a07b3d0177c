"""Stream-window accuracy of the previous recipe's (clips-only) tess-si +RAVDESS heads, for
comparison with the recipe that trains on stream windows too (one-off; figures quoted in
docs/results/crosscorpus.md). Run from the repository root:

    .venv/bin/python docs/results/scripts/tess_si_stream_clips_only.py
"""

import json
from pathlib import Path

import torch

from train import crosscorpus as cc
from train.whisper_train import build_pool, stream_accuracy

ENCODER = "../shared/models/whisper-tiny-encoder.pt"
RUN = Path("runs/whisper-voiced")  # the clips-only recipe's run

torch.set_num_threads(1)
pool = build_pool(["tess=../shared/data/tess", "ravdess=../shared/data/ravdess"], ENCODER,
                  progress=False)
out = {}
for split in cc.splits(pool, ["tess-si"]):
    if "RAVDESS" not in split.name:
        continue
    key = f"{split.protocol}-{split.name}-none"
    r = json.loads((RUN / "splits" / ("".join(c if c.isalnum() else "_" for c in key)
                                      + ".json")).read_text())
    out[split.name] = stream_accuracy(pool, split, r, ENCODER)
    print(split.name, r["choice_label"], out[split.name]["tess"]["accuracy"], flush=True)
Path("runs/old_tess_stream.json").write_text(json.dumps(out, indent=1))
