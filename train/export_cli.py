"""`emotion-monitor export` and `emotion-monitor models show` (light: torch loads in handlers)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from emotion_monitor.cliutil import add_command


def _export(args: argparse.Namespace) -> int:
    from train.export import ExportError, display_from_confidence, export, read_card

    overrides: dict[str, Any] = {}
    if args.name:
        overrides["name"] = args.name
    if args.version:
        overrides["version"] = args.version
    try:
        if args.confidence:
            overrides["display"] = display_from_confidence(args.confidence)
        path = export(args.run_dir, args.output, overrides=overrides, encoder=args.encoder,
                      site_head=args.site_head)
    except (ExportError, FileNotFoundError, KeyError, ValueError) as err:
        print(f"export failed: {err!s}", file=sys.stderr)
        return 2
    card = read_card(path)
    size = path.stat().st_size / 1e6
    print(f"wrote {path} ({size:.2f} MB, {card['parameters']:,} parameters, "
          f"explain_method={card['explain_method']}) and {path.with_suffix('.card.json')}")
    return 0


def _show(args: argparse.Namespace) -> int:
    from train.export import ExportError, read_card

    try:
        card = read_card(args.file)
    except (ExportError, json.JSONDecodeError) as err:
        print(f"cannot read a model card: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(card, indent=1))
        return 0
    print(f"{card.get('name')} {card.get('version')}  ({args.file})")
    print(f"  classes       {', '.join(card.get('classes', []))}")
    print(f"  input         {card.get('window_s')} s at {card.get('sample_rate')} Hz (raw wave)")
    feats = card.get("features") or {}
    print("  features      " + ", ".join(f"{k}={v}" for k, v in feats.items() if v is not None))
    print(f"  architecture  {card.get('architecture')}")
    print(f"  parameters    {card.get('parameters'):,}")
    print(f"  explain       {card.get('explain_method')}")
    training = card.get("training") or {}
    print("  training      " + ", ".join(f"{k}={v}" for k, v in training.items()
                                         if k != "augmentation" and v is not None))
    for name, m in (card.get("metrics") or {}).items():
        print(f"  metric {name}: {json.dumps(m)}")
    print(f"  made with     torch {card.get('torch_version')}, "
          f"torchaudio {card.get('torchaudio_version')}")
    return 0


def register(sub: Any) -> None:
    p = add_command(
        sub, "export",
        help="export a training run as a TorchScript model file with its model card",
        description="Script a trained run (Whisper-encoder, streaming CNN-LSTM or a paper model) "
                    "with its feature "
                    "front-end, so the file takes the raw 3-s waveform; embeds the model card "
                    "and writes NAME.card.json next to it.",
        example="emotion-monitor export runs/streaming/default -o models/default.pt",
        handler=_export,
    )
    p.add_argument("run_dir", help="run directory (train.streaming_train or `train run`), or "
                   "an exported Whisper model file to re-script with this version's code")
    p.add_argument("-o", "--output", required=True, help="model file to write (models/NAME.pt)")
    p.add_argument("--name", help="model name in the card (default: the run's)")
    p.add_argument("--version", help="model version in the card (default 1.0.0)")
    p.add_argument("--encoder", help="whisper runs: the Whisper checkpoint (default: the one "
                   "the run was trained with)")
    p.add_argument("--confidence", metavar="RESULTS_JSON",
                   help="a confidence probe's results (docs/results/confidence.json): writes the "
                   "card's display floor, below which the dashboard shows \"uncertain\"")
    p.add_argument("--site-head", metavar="NPZ",
                   help="re-exporting a Whisper model file: add this per-site head "
                   "(train.site_norm; docs/results/scripts/site_head.py writes the shipped "
                   "one) so `emotion-monitor calibrate` can fit the file to a site")

    models = add_command(
        sub, "models",
        help="inspect model files",
        description="Inspect exported model files.",
        example="emotion-monitor models show models/default.pt",
    )
    msub = models.add_subparsers(dest="models_command", metavar="COMMAND")
    show = add_command(
        msub, "show",
        help="print a model file's card",
        description="Print the model card embedded in a model file (or a .card.json).",
        example="emotion-monitor models show models/default.pt --json",
        handler=_show,
    )
    show.add_argument("file", help="model file (.pt) or card (.card.json)")
    show.add_argument("--json", action="store_true", help="print the card as JSON")
