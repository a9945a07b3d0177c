"""The served Whisper-encoder model: contract, scripting, batching, saliency, export."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from streamer.gradcam import class_activation_maps
from streamer.model import ServedModel
from train.export import ExportError, export, read_card
from train.whisper import WhisperLogMel, load_encoder
from train.whisper_emotion import (
    WhisperEmotion,
    WhisperEmotionConfig,
    block_features,
    build,
    pool,
    voiced_pool,
    voiced_weights,
)

N = 48_000


def _script(m: torch.nn.Module) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.script(m)


def _waves(b: int = 3) -> torch.Tensor:
    """Windows with voiced bursts and silence, so voiced pooling has something to drop."""
    g = torch.Generator().manual_seed(0)
    t = torch.arange(N) / 16_000
    out = []
    for i in range(b):
        tone = sum(torch.sin(2 * torch.pi * k * (150 + 40 * i) * t) / k for k in range(1, 8))
        env = ((t > 0.4 + 0.2 * i) & (t < 2.0 + 0.2 * i)).float()
        out.append(0.2 * tone * env + 1e-4 * torch.randn(N, generator=g))
    return torch.stack(out)


@pytest.fixture(scope="module")
def model(whisper_checkpoint: Path) -> WhisperEmotion:
    m = build(str(whisper_checkpoint), WhisperEmotionConfig(n_blocks=1))
    rng = np.random.default_rng(0)
    m.set_head(rng.normal(0, 0.1, 768), rng.uniform(0.5, 2, 768), rng.normal(0, 0.1, (7, 768)),
               rng.normal(0, 0.1, 7))
    return m


def test_probabilities_and_shapes(model: WhisperEmotion) -> None:
    x = _waves()
    with torch.no_grad():
        p = model(x)
        logits, acts, spec = model.explain(x)
    assert p.shape == (3, 7) and torch.allclose(p.sum(1), torch.ones(3), atol=1e-6)
    assert acts.shape == (3, 384, 1, 150) and spec.shape == (3, 1, 80, 300)


def test_scripted_equals_eager(model: WhisperEmotion) -> None:
    s = _script(model)
    x = _waves()
    with torch.no_grad():
        assert torch.allclose(s(x), model(x), atol=1e-5)
        assert torch.allclose(s.embed(x), model.embed(x), atol=1e-4)


def test_batch_equals_singles(model: WhisperEmotion) -> None:
    x = _waves()
    with torch.no_grad():
        batch = model(x)
        singles = torch.cat([model(x[i:i + 1]) for i in range(3)])
    assert torch.allclose(batch, singles, atol=1e-5)


@pytest.mark.parametrize("shape", [(N,), (1, N - 1), (2, 1, N)])
def test_wrong_shapes_refused(model: WhisperEmotion, shape: tuple[int, ...]) -> None:
    s = _script(model)
    with pytest.raises(ValueError, match="expected"):
        model(torch.zeros(shape))
    with pytest.raises(torch.jit.Error, match="expected"):
        s(torch.zeros(shape))


def test_embed_is_what_training_features_hold(model: WhisperEmotion,
                                              whisper_checkpoint: Path) -> None:
    """The served model pools exactly as train.embeddings did for the head's block."""
    enc = load_encoder(whisper_checkpoint)
    x = _waves()
    with torch.no_grad():
        feats = block_features(enc, WhisperLogMel(), x)  # [B, pooling, block, 768]
        assert torch.allclose(model.embed(x), feats[:, 1, 0], atol=1e-4)


def test_voiced_pooling_drops_silence() -> None:
    states = torch.randn(2, 150, 4)
    every = voiced_pool(states, torch.ones(2, 150))  # population std; pool's is unbiased
    assert torch.allclose(every[:, :4], pool(states)[:, :4], atol=1e-6)
    assert torch.allclose(every[:, 4:] * (150 / 149) ** 0.5, pool(states)[:, 4:], atol=1e-5)
    mel = torch.full((1, 80, 300), -1.0)
    mel[:, :, 100:200] = 1.0  # loud frames 100-199 -> positions 50-99
    w = voiced_weights(mel, 150)
    assert w.sum() == 50 and w[0, 50:100].all()
    only = voiced_pool(states[:1], w)
    assert torch.allclose(only[0, :4], states[0, 50:100].mean(0), atol=1e-5)


def test_saliency_is_a_time_by_frequency_map(model: WhisperEmotion) -> None:
    s = _script(model)
    probs, tgt, cam, _, spec = class_activation_maps(s, _waves(2), method="saliency")
    assert cam.shape == (2, 80, 300) and spec.shape == (2, 80, 300)
    assert float(cam.min()) >= 0 and torch.allclose(cam.amax(dim=(1, 2)), torch.ones(2))
    # the map varies over both axes (which band, which moment)
    assert float(cam.std(dim=1).mean()) > 0 and float(cam.std(dim=2).mean()) > 0


def _run_dir(tmp: Path, encoder: Path, n_blocks: int = 1) -> Path:
    run = tmp / "whisper-run"
    run.mkdir()
    rng = np.random.default_rng(1)
    np.savez(run / "head.npz", mean=rng.normal(0, 1, 768).astype(np.float32),
             std=np.ones(768, np.float32), weight=rng.normal(0, .1, (7, 768)).astype(np.float32),
             bias=np.zeros(7, np.float32))
    cfg = {"kind": "whisper", "model": WhisperEmotionConfig(n_blocks=n_blocks).to_dict(),
           "encoder": str(encoder), "classes": ["angry", "disgust", "fear", "happy", "neutral",
                                                "sad", "surprise"],
           "trained_on": ["tess", "ravdess"], "n_train": 10, "choice_label": "test"}
    (run / "config.json").write_text(json.dumps(cfg))
    summary = [{"protocol": "ravdess-ai", "test": "ravdess", "setting": "4 actor folds",
                "speaker_norm": False, "folds": 4, "classes": ["angry"], "clean_accuracy": 0.5,
                "clean_uar": 0.5, "clean_macro_f1": 0.5, "ulaw_accuracy": 0.4,
                "ulaw_uar": 0.4}]
    (run / "results.json").write_text(json.dumps({"summary": summary}))
    return run


def test_export_and_serve(tmp_path: Path, whisper_checkpoint: Path) -> None:
    path = export(_run_dir(tmp_path, whisper_checkpoint), tmp_path / "w.pt")
    card = read_card(path)
    assert card["explain_method"] == "saliency"
    assert card["features"]["mel_scale"] == "slaney" and card["features"]["n_mels"] == 80
    assert card["metrics"]["ravdess-ai: ravdess (4 actor folds)"]["telephone_accuracy"] == 0.4
    served = ServedModel.load(path, device="cpu")
    p = served.predict(_waves(2).numpy())
    assert p.shape == (2, 7) and np.allclose(p.sum(1), 1, atol=1e-5)
    assert path.stat().st_size < 20e6


def test_export_needs_the_encoder(tmp_path: Path, whisper_checkpoint: Path) -> None:
    run = _run_dir(tmp_path, tmp_path / "missing.pt")
    with pytest.raises(ExportError, match="not found"):
        export(run, tmp_path / "w.pt")
    assert export(run, tmp_path / "w.pt", encoder=whisper_checkpoint).exists()
