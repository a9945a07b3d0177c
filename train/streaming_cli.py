"""`emotion-monitor train streaming`: train the served streaming model on your own corpus.

A thin front for ``python -m train.streaming_train`` (which has every knob): the common options
here, defaults left to that module so they are defined once. Light at import.
"""

from __future__ import annotations

import argparse
from typing import Any

from emotion_monitor.cliutil import add_command
from train.experiments_cli import PROTOCOL_CHOICES, _train_group


def register(sub: Any) -> None:
    p = add_command(
        _train_group(sub),
        "streaming",
        help="train the earlier TESS-style streaming CNN-LSTM (served recipe: train whisper)",
        description="Train and evaluate the streaming CNN-LSTM under the chosen protocols (plus "
        "the stream protocol), and with --final train it on all the data; then "
        "`emotion-monitor export RUN_DIR -o models/NAME.pt`. More options: "
        "python -m train.streaming_train --help.",
        example="emotion-monitor train streaming --data ../shared/data/tess "
        "-o runs/streaming/mine --protocols cv5 speaker-independent --final",
        handler=_run,
    )
    p.add_argument("--data", required=True, help="corpus folder (any layout scan_corpus knows)")
    p.add_argument("-o", "--out", required=True, help="run directory (resumable)")
    p.add_argument("--protocols", nargs="*", choices=PROTOCOL_CHOICES, default=None,
                   help="evaluation protocols (default: cv5 speaker-independent)")
    p.add_argument("--final", action="store_true", help="also train on all data -> final model")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--device", default=None, choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)


def _run(args: argparse.Namespace) -> int:
    from train import streaming_train

    argv = [args.data, "--out", args.out]
    if args.protocols is not None:
        argv += ["--protocols", *args.protocols]
    if args.final:
        argv.append("--final")
    for flag in ("epochs", "device", "threads", "seed"):
        value = getattr(args, flag)
        if value is not None:
            argv += [f"--{flag}", str(value)]
    return streaming_train.main(argv)
