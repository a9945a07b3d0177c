"""Speed, size and accuracy of the Whisper-encoder model by depth, and int8, in one run.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/whisper_tradeoff.py \
        --data tess=../shared/data/tess --data ravdess=../shared/data/ravdess \
        --encoder ../shared/models/whisper-tiny-encoder.pt --run runs/whisper \
        --baseline models/tess-cnn-lstm.pt --out benchmarks/results/whisper_tradeoff.json

For 1-4 encoder blocks: the served recipe's head (its pooling, C and augmentation; fitted on
TESS + RAVDESS) on that block, exported as a model file; then every file is timed round-robin
in one run (``benchmarks/inference.py``: forward p50 at batch 1, forward + saliency, windows/s
at batch 16, 2 threads) beside the baseline file. Accuracy per depth is the grouped-CV
validation UAR over the training speakers (``RUN/config.json``'s table: no test data). The
int8 row is the chosen depth with ``torch.ao.quantization.quantize_dynamic`` on its linear
layers: forward only (quantized linears have no backward, so no saliency), and its
agreement with the float model's top class on held-out SAVEE windows.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import warnings
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import inference  # noqa: E402

from train import crosscorpus as cc  # noqa: E402
from train.export import export  # noqa: E402
from train.whisper_train import build_pool  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", action="append", required=True)
    p.add_argument("--encoder", required=True)
    p.add_argument("--run", required=True, type=Path)
    p.add_argument("--baseline", type=Path, default=None, help="another model file to time")
    p.add_argument("--validation", type=Path, default=None,
                   help="a split file whose validation table covers every depth (default: "
                   "RUN/config.json's; e.g. runs/whisper/splits/shipped-...-none.json, the same "
                   "training speakers as the served head)")
    p.add_argument("--savee", default="../shared/data/savee", help="held-out clips for int8")
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = json.loads((args.run / "config.json").read_text())
    choice = cc.Choice(**cfg["choice"])
    val = {}
    table_src = json.loads(args.validation.read_text()) if args.validation else cfg
    for row in table_src["validation"]:
        c = cc.Choice(**row["choice"])
        if (c.pooling, c.c, c.phone_aug) == (choice.pooling, choice.c, choice.phone_aug):
            val[c.block] = row["val_uar"]
    pool = build_pool(args.data, args.encoder, progress=False)
    rows = np.flatnonzero(np.isin(pool.corpus, cfg["trained_on"]))
    tmp = Path(tempfile.mkdtemp(prefix="tradeoff-"))
    files = []
    for block in range(4):
        c = cc.Choice(block, choice.c, choice.phone_aug, choice.pooling)
        head = cc.train_head(pool, rows, c, speaker_norm=False)
        run = tmp / f"blocks{block + 1}"
        run.mkdir()
        np.savez(run / "head.npz", mean=head.mean, std=head.std, weight=head.weight,
                 bias=head.bias)
        (run / "config.json").write_text(json.dumps({
            **cfg, "model": {**cfg["model"], "n_blocks": block + 1}}))
        files.append(export(run, tmp / f"blocks{block + 1}.pt", encoder=args.encoder))
    timed = files + ([args.baseline] if args.baseline else [])
    runs = inference.bench_many(timed, torch.device("cpu"), args.repeats, 16)

    # int8 dynamic quantisation of the chosen depth (forward only).
    from streamer.model import ServedModel
    from train.audio import load_audio
    from train.embeddings import window_of
    from train.export import load_model

    chosen = files[choice.block]
    float_model = load_model(chosen)
    eager_run = tmp / f"blocks{choice.block + 1}"
    from train.export import whisper_from_run

    eager, _ = whisper_from_run(eager_run, json.loads((eager_run / "config.json").read_text()),
                                args.encoder)
    q = torch.ao.quantization.quantize_dynamic(eager.eval(), {torch.nn.Linear},
                                               dtype=torch.qint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        qs = torch.jit.script(q)
    qpath = tmp / "int8.pt"
    qs.save(str(qpath))
    from train.corpus import load_corpora

    savee = load_corpora([f"savee={args.savee}"])[::4]
    waves = torch.from_numpy(np.stack([window_of(load_audio(u.path)) for u in savee]))
    with torch.inference_mode():
        agree = float((float_model(waves).argmax(1) == qs(waves).argmax(1)).float().mean())
    one = waves[:1]

    def q_fwd() -> None:
        with torch.inference_mode():
            qs(one)

    def f_fwd() -> None:
        with torch.inference_mode():
            float_model(one)

    qt, ft = inference._time(q_fwd, args.repeats, torch.device("cpu")), \
        inference._time(f_fwd, args.repeats, torch.device("cpu"))
    table = []
    for block, r in enumerate(runs[:4]):
        table.append({"blocks": block + 1, "val_uar": round(val.get(block, float("nan")), 4),
                      "file_mb": r["file_mb"],
                      "forward_p50_ms": round(r["forward_batch1_ms"]["p50"], 2),
                      "forward_saliency_p50_ms": round(r["forward_gradcam_batch1_ms"]["p50"], 2),
                      "windows_per_s_batch16": round(r["windows_per_s_batch16"], 1)})
    result = {
        "benchmark": "whisper_tradeoff", "machine": platform.platform(),
        "settings": {"threads": args.threads, "repeats": args.repeats,
                     "choice": cfg["choice_label"], "trained_on": cfg["trained_on"],
                     "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")},
        "depths": table,
        "baseline": runs[4] if args.baseline else None,
        "int8": {"blocks": choice.block + 1, "file_mb": round(qpath.stat().st_size / 1e6, 2),
                 "forward_p50_ms": round(float(np.median(qt[0])), 2),
                 "float_forward_p50_ms_same_run": round(float(np.median(ft[0])), 2),
                 "top1_agreement_with_float_on_savee": round(agree, 4),
                 "n_windows": len(savee), "saliency": "not available (no backward)"},
    }
    ServedModel.load(chosen, "cpu")  # the exported depth files are servable
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    d = {r["blocks"]: r for r in table}
    print("whisper_tradeoff: " + "; ".join(
        f"{b} blocks {d[b]['file_mb']} MB fwd {d[b]['forward_p50_ms']} ms +saliency "
        f"{d[b]['forward_saliency_p50_ms']} ms val UAR {100 * d[b]['val_uar']:.1f}"
        for b in d) + f"; int8 fwd {result['int8']['forward_p50_ms']} ms vs float "
        f"{result['int8']['float_forward_p50_ms_same_run']} ms, agreement "
        f"{100 * agree:.1f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
