"""float32 vs bfloat16 for one model file: speed, held-out accuracy and saliency, in one run.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/precision.py --model models/default.pt \
        --data savee=../shared/data/savee --data urdu=../shared/data/urdu \
        --out benchmarks/results/precision.json

The file is loaded twice (``streamer.model.ServedModel``, ``precision`` float32 and bfloat16:
the card's bfloat16 submodules cast, the rest float32) and compared on
- speed, round-robin in one run at ``--threads``: ``predict`` and the daemon's explanation
  pass (``gradcam.explain_windows``, whose forward is also the prediction) at batch 1 and
  ``--batch``; p50 / p95 per call and per window;
- accuracy on held-out corpora (``--data``; for the shipped file SAVEE and URDU, never in its
  training set): each clip's centred 3-s window, clean and after the telephone band (8-kHz
  G.711 mu-law), argmax over the corpus's classes; accuracy, UAR, macro-F1 for both
  precisions, and how often the top class agrees;
- saliency: the maps of the first ``--maps`` clean windows of each corpus for the float32
  top class, Pearson correlation between the two precisions' maps.
Prints JSON and a one-line summary. Where the CPU lacks native bfloat16
(``streamer.model.bfloat16_native``) bfloat16 is emulated and the JSON says so.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from streamer import gradcam as g  # noqa: E402
from streamer.model import ServedModel, bfloat16_native  # noqa: E402

COMPARED = ("float32", "bfloat16")


def _stats(ms: list[float], batch: int) -> dict:
    a = np.asarray(ms)
    return {"p50": round(float(np.median(a)), 2), "p95": round(float(np.percentile(a, 95)), 2),
            "per_window_p50": round(float(np.median(a)) / batch, 2), "n": len(ms)}


def time_calls(models: dict[str, ServedModel], batch: int, repeats: int) -> dict:
    """Each precision's predict and explanation pass, interleaved round by round."""
    n = next(iter(models.values())).window_samples
    gen = torch.Generator().manual_seed(0)
    inputs = {1: 0.05 * torch.randn(1, n, generator=gen),
              batch: 0.05 * torch.randn(batch, n, generator=gen)}
    calls = {}
    for prec, m in models.items():
        for b, x in inputs.items():
            calls[(prec, "predict", b)] = lambda m=m, x=x: m.predict(x)
            calls[(prec, "explain", b)] = lambda m=m, x=x: g.explain_windows(m, x, metrics=False)
    for fn in calls.values():  # warm-up: the executor's profiling runs
        for _ in range(3):
            fn()
    ms: dict = {k: [] for k in calls}
    for _ in range(repeats):
        for k, fn in calls.items():
            t0 = time.perf_counter()
            fn()
            ms[k].append((time.perf_counter() - t0) * 1000.0)
    out: dict = {p: {} for p in models}
    for (prec, what, b), v in ms.items():
        out[prec][f"{what}_batch{b}_ms"] = _stats(v, b)
    return out


def held_out(models: dict[str, ServedModel], spec: str, n_maps: int, batch: int) -> dict:
    """Accuracy of both precisions on one corpus (clean and telephone band), and the saliency
    maps' agreement on its first ``n_maps`` clean windows."""
    from tqdm import tqdm

    from train.audio import load_audio
    from train.corpus import EMOTIONS, load_corpora
    from train.crosscorpus import metrics
    from train.embeddings import window_of

    utts = load_corpora([spec])
    labels = np.array([EMOTIONS.index(u.emotion) for u in utts])
    classes = sorted(set(labels.tolist()))
    name = spec.partition("=")[0]
    clips = [load_audio(u.path) for u in tqdm(utts, desc=f"{name}: decoding", unit="clip")]
    result: dict = {"clips": len(utts), "classes": [EMOTIONS[c] for c in classes]}
    for variant in ("clean", "ulaw"):
        waves = torch.from_numpy(np.stack([window_of(c, variant) for c in clips]))
        probs = {}
        for prec, m in models.items():
            probs[prec] = np.concatenate([
                m.predict(waves[i:i + batch])
                for i in tqdm(range(0, len(waves), batch), desc=f"{name} {variant} {prec}",
                              unit="batch", leave=False)])
        preds = {p: np.asarray(classes)[v[:, classes].argmax(1)] for p, v in probs.items()}
        row = {p: {k: metrics(labels, preds[p], classes)[k]
                   for k in ("accuracy", "uar", "macro_f1")} for p in models}
        row["top_class_agreement"] = float((preds["float32"] == preds["bfloat16"]).mean())
        row["max_probability_difference"] = float(
            np.abs(probs["float32"] - probs["bfloat16"]).max())
        result[variant] = row
        if variant == "clean" and n_maps:
            x = waves[:n_maps]
            target = probs["float32"][:n_maps].argmax(1).tolist()
            cams = {p: np.stack([e.cam for e in g.explain_windows(m, x, targets=target,
                                                                 metrics=False)])
                    for p, m in models.items()}
            r = [float(np.corrcoef(a.ravel(), b.ravel())[0, 1])
                 for a, b in zip(cams["float32"], cams["bfloat16"], strict=True)]
            result["saliency_pearson"] = {"mean": round(float(np.mean(r)), 4),
                                          "min": round(float(np.min(r)), 4), "n": len(r)}
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, default=REPO / "models" / "default.pt")
    p.add_argument("--data", action="append", default=[], metavar="NAME=PATH",
                   help="held-out corpora for the accuracy comparison (repeatable)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=12, help="the larger timed batch (default 12: "
                   "what the daemon batches at about a dozen streams)")
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--maps", type=int, default=32, help="windows per corpus whose saliency "
                   "maps are compared (0: none)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    models = {prec: ServedModel.load(args.model, "cpu", prec) for prec in COMPARED}
    speed = time_calls(models, args.batch, args.repeats)
    accuracy = {spec.partition("=")[0]: held_out(models, spec, args.maps, 32)
                for spec in args.data}
    result = {
        "benchmark": "precision",
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "torch": torch.__version__, "bfloat16_native": bfloat16_native(
                        torch.device("cpu")), "cpu_load_1min": os.getloadavg()[0]},
        "settings": {"model": str(args.model), "threads": args.threads, "batch": args.batch,
                     "repeats": args.repeats,
                     "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
                     "bfloat16_submodules": models["bfloat16"].card["precision"]["bfloat16"]},
        "speed": speed,
        "held_out": accuracy,
    }
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    b = args.batch
    f32, b16 = speed["float32"], speed["bfloat16"]
    parts = [f"{what} batch {k}: {f32[f'{what}_batch{k}_ms']['p50']} -> "
             f"{b16[f'{what}_batch{k}_ms']['p50']} ms"
             for what in ("predict", "explain") for k in (1, b)]
    for name, r in accuracy.items():
        parts.append(f"{name} UAR {100 * r['clean']['float32']['uar']:.1f} -> "
                     f"{100 * r['clean']['bfloat16']['uar']:.1f} (telephone "
                     f"{100 * r['ulaw']['float32']['uar']:.1f} -> "
                     f"{100 * r['ulaw']['bfloat16']['uar']:.1f}), top class agrees "
                     f"{100 * r['clean']['top_class_agreement']:.1f} %")
    print("precision float32 -> bfloat16: " + "; ".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
