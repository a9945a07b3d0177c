"""`emotion-monitor calibrate`: a model file fitted to a site (streamer/calibrate.py).

Light on purpose: torch is imported inside the handler.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from emotion_monitor.cliutil import add_command, default_model_path, model_help


def register(sub: Any) -> None:
    p = add_command(
        sub, "calibrate", help="fit a model file to a site from its unlabelled recordings",
        description="Standardise the model's features by a site's own statistics: the "
                    "daemon's windows and voice detection over recordings of the site (no "
                    "labels; a few dozen utterances are enough), their features' mean and "
                    "standard deviation folded with the model's site head into a new model "
                    "file, served like any other. Needs a model exported with a site head "
                    "(card 'site_norm'; models/default.pt has one). Unreadable files are "
                    "skipped and listed in the new card.",
        example="emotion-monitor calibrate recordings/ -o models/site.pt\n"
                "  emotion-monitor stream --model models/site.pt --replay call.wav",
        handler=_calibrate)
    p.add_argument("recordings", nargs="+", type=Path, metavar="PATH",
                   help="audio files or folders of them (searched recursively)")
    p.add_argument("-o", "--output", type=Path, required=True,
                   help="model file to write (a new file; the model is not changed)")
    p.add_argument("--model", type=Path, default=default_model_path(),
                   help=model_help("TorchScript model file with a site head"))
    p.add_argument("--vad", default="silero", choices=["silero", "energy", "off"],
                   help="voice detection choosing the windows (default silero, as the daemon)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")


def _calibrate(args: argparse.Namespace) -> int:
    import torch

    from streamer.calibrate import CalibrationError, calibrate
    from streamer.model import ModelError
    from streamer.sources import SourceError
    from streamer.vad import VadConfig

    torch.set_num_threads(max(1, args.threads))
    vad = None if args.vad == "off" else VadConfig(method=args.vad)
    try:
        out = calibrate(args.model, args.recordings, args.output, vad=vad)
    except (CalibrationError, ModelError, SourceError) as err:
        print(f"calibrate: {err}", file=sys.stderr)
        return 2
    site = json.loads(out.with_suffix(".card.json").read_text())["site"]
    skipped = site["skipped"]
    print(f"wrote {out} (site head over {site['voiced_windows']} voiced windows of "
          f"{site['files']} file(s)" + (f"; {len(skipped)} skipped: " + ", ".join(
              f"{k} ({v})" for k, v in skipped.items()) if skipped else "") + ")")
    return 0
