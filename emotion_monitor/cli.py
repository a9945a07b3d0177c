"""`emotion-monitor`: the one console script.

Each room owns its subcommands in a light module exposing ``register(subparsers)``; heavy
imports (torch, streamlit, ...) happen inside the handlers, so ``--help`` is instant and the
dashboard's commands never pull in torch.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

# Modules that add subcommands, in the order they appear in --help.
COMMAND_MODULES: tuple[str, ...] = (
    "train.corpus_cli",
    "train.experiments_cli",
    "train.streaming_cli",
    "train.whisper_cli",
    "train.export_cli",
    "streamer.cli",
    "streamer.push_cli",
    "streamer.explain_cli",
    "streamer.calibrate_cli",
    "streamer.cluster_cli",
    "dashboard.cli",
)

EPILOG = """examples:
  emotion-monitor demo                        # the example stream on the live dashboard
  emotion-monitor stream --replay call.wav    # serve predictions for a recording over websockets
  emotion-monitor corpus summarize ../shared/data/tess
  emotion-monitor COMMAND --help              # what each command does, with an example
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="emotion-monitor",
        description="Real-time speech-emotion monitor: stream, explain, train and inspect models.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from emotion_monitor import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # OpenMP's default busy-wait makes 2-thread torch up to 100x slower per window when the
    # cores are shared (measured in benchmarks/inference.py); it must be set before torch loads.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        # A group without a subcommand (e.g. `emotion-monitor corpus`) prints its own help.
        (getattr(args, "help_parser", None) or parser).print_help()
        return 0 if args.command is None else 2
    try:
        return int(handler(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
