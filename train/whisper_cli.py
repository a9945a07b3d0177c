"""`emotion-monitor train whisper`: the served Whisper-encoder model on several corpora.

A thin front for ``python -m train.whisper_train`` (its options, defined once there). Light at
import: argparse only until the handler runs.
"""

from __future__ import annotations

import argparse
from typing import Any

from emotion_monitor.cliutil import add_command
from train.experiments_cli import _train_group


def register(sub: Any) -> None:
    from train.whisper_args import add_arguments

    p = add_command(
        _train_group(sub),
        "whisper",
        help="train + evaluate the Whisper-encoder model on held-out speakers and corpora",
        description="Frozen Whisper encoder features of every clip (cached), a linear head "
        "chosen on training speakers, scored on held-out speakers and corpora (clean and "
        "telephone band); --final fits the served head, then `emotion-monitor export RUN -o "
        "models/NAME.pt`.",
        example="emotion-monitor train whisper --data tess=../shared/data/tess "
        "--data ravdess=../shared/data/ravdess --encoder ../shared/models/whisper-tiny-encoder.pt"
        " -o runs/whisper --protocols tess-si ravdess-ai --final tess ravdess",
        handler=_run,
    )
    add_arguments(p)


def _run(args: argparse.Namespace) -> int:
    from train import whisper_train

    return whisper_train.run(args)
