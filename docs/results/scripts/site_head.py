"""The shipped file's site head (``train.site_norm``): version 3's recipe and choice (block 2,
voiced pooling, C = 0.003, telephone copies, stream windows at weight 1) on TESS + RAVDESS with
each corpus standardised by its own statistics. Also refits the global head the same way and
checks it equals the one in models/default.pt, so the two heads read the same features.

    .venv/bin/python docs/results/scripts/site_head.py runs/site_head.npz
    emotion-monitor export models/default.pt -o models/default.pt --version 3.3.0 \\
        --encoder ../shared/models/whisper-tiny-encoder.pt --site-head runs/site_head.npz
"""

from __future__ import annotations

import dataclasses
import sys

# isort: off
from probe_setup import CHOICE, DATA, ENCODER, REPO  # OMP_WAIT_POLICY first
# isort: on

import numpy as np  # noqa: E402
import torch  # noqa: E402

from train import crosscorpus as cc  # noqa: E402
from train.export import load_model  # noqa: E402
from train.site_norm import fit_site_head, save_site_head  # noqa: E402
from train.whisper_train import add_streams, build_pool  # noqa: E402


def main(out: str) -> int:
    torch.set_num_threads(2)
    pool = build_pool(DATA[:2], ENCODER)  # TESS and RAVDESS only: what the file trains on
    add_streams(pool, ENCODER, progress=False)
    rows = np.arange(len(pool.utts))
    choice = dataclasses.replace(CHOICE, stream_mix=1.0)
    served = load_model(REPO / "models" / "default.pt")
    head = cc.train_head(pool, rows, choice, speaker_norm=False)
    diff = float(np.abs(head.weight - served.head.weight.detach().numpy()).max())
    print(f"global head refit vs default.pt: max weight difference {diff:.2e}")
    if diff > 1e-3:
        print("the refit global head differs from the served one: not the same recipe",
              file=sys.stderr)
        return 1
    save_site_head(fit_site_head(pool, rows, choice), out)
    print(f"site head -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "runs/site_head.npz"))
