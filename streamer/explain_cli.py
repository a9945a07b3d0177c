"""`emotion-monitor explain`: offline Grad-CAM reports for audio files (paper 1, Figs. 7-13).

Light on purpose: torch, matplotlib and Plotly are imported inside the handler.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from emotion_monitor.cliutil import (
    PRECISION_HELP,
    PRECISIONS,
    add_command,
    default_model_path,
    model_help,
)

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".aiff", ".aif", ".mp3")


def register(sub: Any) -> None:
    p = add_command(
        sub, "explain", help="Grad-CAM report for audio files (PNG, HTML and the paper's text)",
        description="Explain a model's prediction for each audio file with Grad-CAM (or the "
                    "model card's explain method): per file a figure (log-mel spectrogram, CAM "
                    "overlay with the focus region, class probabilities) as PNG and interactive "
                    "HTML, and the paper's 'Grad-CAM Analysis for class: ...' text block with "
                    "confidence, max/mean activation, activated area, entropy, focus region and "
                    "the confidence drop after masking it (vs a random region of equal area). "
                    "With --per-class --data DIR: one correctly classified example per emotion "
                    "(like paper 1's Figures 7-13) and an index page. A file shorter than the "
                    "model's window is centred in it; a longer one gives its loudest window.",
        example="emotion-monitor explain ../shared/data/tess/OAF_angry/OAF_back_angry.flac "
                "-o reports/explain\n  emotion-monitor explain --per-class --data "
                "../shared/data/tess -o reports/per-class",
        handler=_explain)
    p.add_argument("files", nargs="*", type=Path, metavar="FILE", help="audio files")
    p.add_argument("--model", type=Path, default=default_model_path(),
                   help=model_help("TorchScript model file"))
    p.add_argument("--class", dest="class_", default=None, metavar="C",
                   help="explain this class (name or index) instead of the predicted one")
    p.add_argument("-o", "--out", type=Path, default=Path("reports/explain"),
                   help="output directory (default reports/explain)")
    p.add_argument("--per-class", action="store_true",
                   help="one correctly classified example per class from --data")
    p.add_argument("--data", type=Path, default=None,
                   help="folder of labelled audio for --per-class (TESS-style names: "
                        "the emotion is the file's last '_' word or its folder). Use files the "
                        "model did not train on: the default model saw all of TESS")
    p.add_argument("--tries", type=int, default=30,
                   help="--per-class: files tried per class before giving up (default 30)")
    p.add_argument("--seed", type=int, default=0, help="order of --per-class candidates, and "
                   "placement of the random control region")
    p.add_argument("--threshold", type=float, default=0.5,
                   help="CAM level of the activated area (default 0.5)")
    p.add_argument("--method", choices=["gradcam", "vit-tokens", "saliency"], default=None,
                   help="override the card's explain_method")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--precision", default="auto", choices=PRECISIONS, help=PRECISION_HELP)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")


def _target(model: Any, class_: str | None) -> int | str | None:
    if class_ is None:
        return None
    if class_.isdigit():
        return int(class_)
    if class_ not in model.classes:
        raise ValueError(f"unknown class {class_!r}; the model's classes are {model.classes}")
    return class_


def _candidates(data: Path, classes: list[str], seed: int) -> dict[str, list[Path]]:
    import numpy as np

    from streamer.explain_report import label_from_name

    if not data.is_dir():
        raise ValueError(f"--data {data}: not a directory")
    by_class: dict[str, list[Path]] = {c: [] for c in classes}
    for f in sorted(data.rglob("*")):
        if f.is_file() and f.suffix.lower() in AUDIO_SUFFIXES:
            label = label_from_name(f)
            if label in by_class:
                by_class[label].append(f)
    rng = np.random.default_rng(seed)
    return {c: [fs[i] for i in rng.permutation(len(fs))] for c, fs in by_class.items()}


def _explain(args: argparse.Namespace) -> int:
    import numpy as np
    import torch
    from tqdm import tqdm

    from streamer.explain_report import load_window, text_block, write_index, write_report
    from streamer.gradcam import explain_windows
    from streamer.model import ModelError, ServedModel

    torch.set_num_threads(max(1, args.threads))
    if not args.files and not args.per_class:
        print("error: give audio FILEs, or --per-class --data DIR", file=sys.stderr)
        return 2
    if args.per_class and args.data is None:
        print("error: --per-class needs --data DIR", file=sys.stderr)
        return 2
    try:
        model = ServedModel.load(args.model, args.device, args.precision)
        target = _target(model, args.class_)
    except (ModelError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    sr, n = model.sample_rate, model.window_samples
    kw = {"explain_method": args.method, "threshold": args.threshold, "seed": args.seed}
    entries: list[dict[str, Any]] = []
    failed = 0

    def report(expl: Any, path: Path, offset: float, heading: str) -> None:
        source = f"{path} (window from {offset:+.2f} s)"
        files = write_report(expl, args.out, f"{len(entries):02d}_{path.stem}", source)
        entries.append({"heading": heading, "files": {k: str(v) for k, v in files.items()},
                        "text": text_block(expl, source), "file": str(path)})

    if args.per_class:
        try:
            cands = _candidates(args.data, model.classes, args.seed)
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        training = model.card.get("training") or {}
        if "tess" in json.dumps(training).lower() and "fold" not in json.dumps(training).lower():
            print(f"note: the card says this model was trained on {training.get('corpus')}; "
                  "examples from the same corpus are not held out", file=sys.stderr)
        for cls in tqdm(model.classes, desc="per class", unit="class"):
            found = None
            for path in cands[cls][:args.tries]:
                try:
                    wave, offset = load_window(path, sr, n)
                except ValueError as err:
                    print(f"skipped: {err}", file=sys.stderr)
                    continue
                expl = explain_windows(model, wave[None], targets=target, **kw)[0]
                if expl.predicted == model.classes.index(cls):
                    found = (expl, path, offset)
                    break
            if found is None:
                print(f"no correctly classified '{cls}' example in the first {args.tries} "
                      f"files of {args.data}", file=sys.stderr)
                failed += 1
                continue
            expl, path, offset = found
            report(expl, path, offset, f"{cls}: {path.name} (true {cls}, predicted "
                   f"{model.classes[expl.predicted]}, {100 * expl.probabilities.max():.1f}%)")
    for path in tqdm(args.files, desc="explain", unit="file", disable=len(args.files) < 2):
        try:
            wave, offset = load_window(path, sr, n)
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            failed += 1
            continue
        expl = explain_windows(model, wave[None], targets=target, **kw)[0]
        report(expl, path, offset, f"{path.name}: explained '{expl.target_name}', predicted "
               f"{model.classes[expl.predicted]} ({100 * float(np.max(expl.probabilities)):.1f}%)")
    if entries:
        title = (f"Grad-CAM reports — model {model.card.get('name', args.model.name)}"
                 + (" — one example per class" if args.per_class else ""))
        index = write_index(entries, args.out / "index.html", title)
        (args.out / "index.json").write_text(json.dumps(entries, indent=1), encoding="utf-8")
        for e in entries:
            print(e["text"])
        print(f"wrote {len(entries)} report(s) to {args.out} (index: {index})")
    return 1 if failed else 0
