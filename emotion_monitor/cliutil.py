"""Small helpers every room's CLI module uses, so each subcommand's help looks the same, and
the one definition of where the shipped files (the default model, the example stream) are."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

# The repository root when this package runs from a source checkout (editable install or
# PYTHONPATH); for an installed package it is site-packages, which has no pyproject.toml.
_CHECKOUT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = "models/default.pt"  # as the docs name it: the repository path
EXAMPLE_STREAM = "examples/tess_stream"

# Inference precision (streamer.model.resolve_precision); here so CLI modules stay torch-free.
PRECISIONS = ("auto", "float32", "bfloat16")
PRECISION_HELP = ("numeric precision of the model's bfloat16-capable parts (its card's "
                  "'precision'): auto = bfloat16 on CPUs with native bfloat16 (AVX512-BF16, "
                  "AMX), float32 elsewhere and on CUDA (default auto; benchmarks/precision.py)")


def checkout_root() -> Path | None:
    """The repository root when running from a source checkout, else None (installed)."""
    if (_CHECKOUT / "pyproject.toml").is_file() and (_CHECKOUT / "emotion_monitor").is_dir():
        return _CHECKOUT
    return None


def shipped_path(relative: str) -> Path:
    """A file the project ships (``models/...``, ``examples/...``), found wherever the command
    runs: the checkout's copy when running from a checkout that has it, else the copy installed
    inside the package (pyproject.toml maps ``models/`` and ``examples/`` onto
    ``emotion_monitor/models`` and ``emotion_monitor/examples``). Absolute; when neither
    exists, the place it was expected (so the error names it)."""
    root = checkout_root()
    if root is not None and (root / relative).exists():
        return root / relative
    packaged = Path(str(resources.files("emotion_monitor").joinpath(*relative.split("/"))))
    if packaged.exists() or root is None:
        return packaged
    return root / relative


def default_model_path() -> Path:
    """The default model, ``models/default.pt``: every command's ``--model`` default."""
    return shipped_path(DEFAULT_MODEL)


def example_stream_dir() -> Path:
    """The bundled example stream (``examples/tess_stream``) that ``emotion-monitor demo``
    replays."""
    return shipped_path(EXAMPLE_STREAM)


def model_help(what: str = "model file") -> str:
    """``--model``'s help: the default by its repository name and where it is found here."""
    return f"{what} (default: {DEFAULT_MODEL}, shipped with the package; here %(default)s)"


def add_command(
    sub: Any,
    name: str,
    help: str,
    description: str,
    example: str,
    handler: Callable[[argparse.Namespace], int] | None = None,
) -> argparse.ArgumentParser:
    """Add a subcommand whose --help shows what it does and an example invocation."""
    parser = sub.add_parser(
        name,
        help=help,
        description=description,
        epilog=f"example:\n  {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(help_parser=parser)
    if handler is not None:
        parser.set_defaults(handler=handler)
    return parser
