"""Does `emotion-monitor calibrate` help the served file on corpora it never heard?

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/site_calibration.py \
        --data savee=../shared/data/savee --data urdu=../shared/data/urdu \
        --model models/default.pt --out benchmarks/results/site_calibration.json

For each corpus (a "site"): the model file as shipped, and the file calibrated on the site's
recordings by ``streamer.calibrate.calibrate`` (the daemon's windows and silero voice
detection; no labels), each scoring every clip of the corpus (centred in the 3-s window with
the evaluation floor, as every clip figure in docs/results; argmax over the classes the corpus
shares with the model). Two calibrations per site: on all its recordings (a site calibrating
on the calls it then monitors), and on half of its speakers with the other half scored (no
voice scored was heard in calibration). The offline twin of these figures is
docs/results/scripts/corpus_norm_probe.py. Prints JSON and a one-line summary.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from streamer.calibrate import calibrate  # noqa: E402
from streamer.model import ServedModel  # noqa: E402
from train.audio import load_audio  # noqa: E402
from train.corpus import EMOTIONS, load_corpora  # noqa: E402
from train.crosscorpus import metrics  # noqa: E402
from train.embeddings import window_of  # noqa: E402


def scores(model_path: Path, waves: np.ndarray, labels: np.ndarray) -> dict:
    """Accuracy, UAR and per-class recall of a model file on windows, over the shared classes."""
    model = ServedModel.load(model_path, device="cpu", precision="float32")
    classes = sorted(set(labels.tolist()) & {EMOTIONS.index(c) for c in model.classes})
    index = [model.classes.index(EMOTIONS[c]) for c in classes]
    probs = np.concatenate([model.predict(waves[i:i + 32]) for i in range(0, len(waves), 32)])
    pred = np.asarray(classes)[probs[:, index].argmax(1)]
    keep = np.isin(labels, classes)
    m = metrics(labels[keep], pred[keep], classes)
    return {k: m[k] for k in ("n", "accuracy", "uar", "recall", "confusion", "classes")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", action="append", required=True, help="NAME=PATH of a site corpus")
    p.add_argument("--model", default=str(REPO / "models" / "default.pt"))
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    t0 = time.time()
    result: dict = {"benchmark": "site_calibration", "machine": platform.platform(),
                    "settings": {"model": Path(args.model).name, "vad": "silero",
                                 "window": "clip centred in 3 s with the evaluation floor"},
                    "sites": {}}
    for spec in args.data:
        name = spec.split("=", 1)[0]
        utts = load_corpora([spec])
        waves = np.stack([window_of(load_audio(u.path)) for u in utts])
        labels = np.array([u.label for u in utts])
        speakers = sorted({u.speaker for u in utts})
        half = set(speakers[::2])
        calib = [u.path for u in utts if u.speaker in half]
        scored = np.array([u.speaker not in half for u in utts])
        site: dict = {"clips": len(utts), "speakers": len(speakers)}
        with tempfile.TemporaryDirectory() as tmp:
            site_all = calibrate(args.model, [u.path for u in utts], Path(tmp) / "all.pt",
                                 progress=False)
            site_half = calibrate(args.model, calib, Path(tmp) / "half.pt", progress=False)
            site["shipped"] = scores(Path(args.model), waves, labels)
            site["calibrated on all its recordings"] = scores(site_all, waves, labels)
            site["other half, shipped"] = scores(Path(args.model), waves[scored], labels[scored])
            site["other half, calibrated on the first half"] = scores(
                site_half, waves[scored], labels[scored])
        result["sites"][name] = site
        print(name, {k: round(100 * v["accuracy"], 1) for k, v in site.items()
                     if isinstance(v, dict)}, flush=True)
    result["seconds"] = round(time.time() - t0, 1)
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print("site_calibration: " + "; ".join(
        f"{n} {100 * s['shipped']['accuracy']:.1f} -> "
        f"{100 * s['calibrated on all its recordings']['accuracy']:.1f} % "
        f"(other half {100 * s['other half, shipped']['accuracy']:.1f} -> "
        f"{100 * s['other half, calibrated on the first half']['accuracy']:.1f})"
        for n, s in result["sites"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
