"""Every command and subcommand has --help that says what it does and shows an example."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from emotion_monitor.cli import build_parser


def _walk(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _walk(sub, (*path, name))


COMMANDS = [path for path, _ in _walk(build_parser())]


def test_top_level_lists_commands() -> None:
    assert len(COMMANDS) > 1, "no subcommands registered"


@pytest.mark.parametrize("path", COMMANDS[1:], ids=[" ".join(p) for p in COMMANDS[1:]])
def test_every_command_has_help_with_example(path: tuple[str, ...]) -> None:
    parser = dict(_walk(build_parser()))[path]
    text = parser.format_help()
    assert parser.description, f"{' '.join(path)} has no description"
    assert "example" in text.lower(), f"{' '.join(path)} --help shows no example"


def test_console_script_runs() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "emotion_monitor", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert "emotion-monitor" in out.stdout
