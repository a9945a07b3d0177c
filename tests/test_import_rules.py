"""The design's import rules: streamer/ never imports train/, dashboard/ never imports torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

FORBIDDEN = {
    "streamer": {"train"},
    "dashboard": {"torch", "torchaudio", "torchvision", "timm", "train", "librosa"},
    "emotion_monitor": {"torch", "torchaudio", "train", "streamer", "dashboard", "streamlit"},
}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from streamer import protocol` imports the module streamer.protocol.
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("room", sorted(FORBIDDEN))
def test_room_imports_respect_the_design(room: str) -> None:
    files = sorted((REPO / room).rglob("*.py"))
    assert files, f"{room}/ has no Python files"
    offences = []
    for path in files:
        for name in _imports(path):
            top = name.split(".")[0]
            if top in FORBIDDEN[room]:
                offences.append(f"{path.relative_to(REPO)} imports {name}")
            only_protocol = name.startswith("streamer.protocol")
            if room == "dashboard" and top == "streamer" and not only_protocol:
                offences.append(f"{path.relative_to(REPO)} imports {name} (only streamer.protocol)")
    assert not offences, "\n".join(offences)


def test_dashboard_and_protocol_load_without_torch() -> None:
    code = (
        "import sys, streamer.protocol, dashboard.client;"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", "the protocol module or dashboard client pulled in torch"


def test_cli_help_does_not_load_torch() -> None:
    code = (
        "import sys; from emotion_monitor.cli import build_parser; build_parser();"
        "print(','.join(m for m in ('torch', 'streamlit') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"--help imported {out.stdout.strip()}"
