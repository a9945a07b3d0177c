"""Shared fixtures: where TESS is, and a small contract-conforming model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TESS_ENV = "EMOTION_MONITOR_TESS"


def tess_path() -> Path:
    return Path(os.environ.get(TESS_ENV, REPO.parent / "shared" / "data" / "tess")).resolve()


@pytest.fixture(scope="session")
def tess_dir() -> Path:
    path = tess_path()
    if not path.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"TESS not found at {path} (set {TESS_ENV}); CI must not skip these tests")
        pytest.skip(f"TESS not found at {path}; set {TESS_ENV} to run corpus tests")
    return path


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.tiny_model import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny.pt")
