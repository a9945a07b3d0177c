"""Small helpers every room's CLI module uses, so each subcommand's help looks the same."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any


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
