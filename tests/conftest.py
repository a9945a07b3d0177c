"""Shared fixtures: where the shared corpora are, and a small contract-conforming model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# corpus -> (environment variable, display name); default path ../shared/data/<corpus>
CORPUS_ENV: dict[str, tuple[str, str]] = {
    "tess": ("EMOTION_MONITOR_TESS", "TESS"),
    "ravdess": ("EMOTION_MONITOR_RAVDESS", "RAVDESS"),
    "savee": ("EMOTION_MONITOR_SAVEE", "SAVEE"),
    "urdu": ("EMOTION_MONITOR_URDU", "URDU"),
}
TESS_ENV = CORPUS_ENV["tess"][0]


def pytest_configure(config: pytest.Config) -> None:
    # pyproject.toml registers `tess`; the other corpus markers live here, beside their paths.
    for corpus, (env, _) in CORPUS_ENV.items():
        if corpus != "tess":
            config.addinivalue_line(
                "markers", f"{corpus}: needs the shared {corpus} corpus ({env})"
            )


def corpus_path(corpus: str) -> Path:
    env = CORPUS_ENV[corpus][0]
    return Path(os.environ.get(env, REPO.parent / "shared" / "data" / corpus)).resolve()


def tess_path() -> Path:
    return corpus_path("tess")


def _corpus_dir(corpus: str) -> Path:
    """The corpus folder; a missing corpus fails under CI (never a silent skip there)."""
    path = corpus_path(corpus)
    env, name = CORPUS_ENV[corpus]
    if not path.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"{name} not found at {path} (set {env}); CI must not skip these tests")
        pytest.skip(f"{name} not found at {path}; set {env} to run corpus tests")
    return path


@pytest.fixture(scope="session")
def tess_dir() -> Path:
    return _corpus_dir("tess")


@pytest.fixture(scope="session")
def ravdess_dir() -> Path:
    return _corpus_dir("ravdess")


@pytest.fixture(scope="session")
def savee_dir() -> Path:
    return _corpus_dir("savee")


@pytest.fixture(scope="session")
def urdu_dir() -> Path:
    return _corpus_dir("urdu")


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.tiny_model import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny.pt")


WHISPER_ENV = "EMOTION_MONITOR_WHISPER"


def whisper_path() -> Path:
    default = REPO.parent / "shared" / "models" / "whisper-tiny-encoder.pt"
    return Path(os.environ.get(WHISPER_ENV, default)).resolve()


@pytest.fixture(scope="session")
def whisper_checkpoint() -> Path:
    """Whisper tiny's encoder in OpenAI's layout; missing fails under CI, as the corpora do."""
    path = whisper_path()
    if not path.is_file():
        if os.environ.get("CI"):
            pytest.fail(f"Whisper encoder not found at {path} (set {WHISPER_ENV})")
        pytest.skip(f"Whisper encoder not found at {path}; set {WHISPER_ENV}")
    return path
