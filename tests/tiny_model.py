"""A small untrained model that follows the model-file contract, for tests of the streamer,
Grad-CAM and dashboard that must not depend on a trained model.

Deliberately self-contained (torchaudio only): it checks the contract, not train/'s models.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
import torchaudio
from torch import nn

CLASSES = ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]


class TinyModel(nn.Module):
    def __init__(self, sample_rate: int = 16000, window_s: float = 3.0, n_mels: int = 64) -> None:
        super().__init__()
        self.n_samples = int(sample_rate * window_s)
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=sample_rate, n_fft=512, hop_length=160, n_mels=n_mels, f_max=8000.0
        )
        self.conv = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
        )
        self.head = nn.Linear(16, len(CLASSES))

    def _check(self, wave: torch.Tensor) -> None:
        if wave.dim() != 2 or wave.size(1) != self.n_samples:
            raise ValueError(f"expected wave [B, {self.n_samples}], got {list(wave.shape)}")

    @torch.jit.export
    def explain(self, wave: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        self._check(wave)
        spec = torch.log(self.mel(wave) + 1e-6).unsqueeze(1)
        acts = self.conv(spec)
        logits = self.head(acts.mean(dim=(2, 3)))
        return logits, acts, spec

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        logits, _, _ = self.explain(wave)
        return torch.softmax(logits, dim=-1)


def card(n_mels: int = 64) -> dict:
    return {
        "name": "tiny-test",
        "version": "0.0.0",
        "classes": CLASSES,
        "sample_rate": 16000,
        "window_s": 3.0,
        "features": {"n_fft": 512, "hop_length": 160, "n_mels": n_mels, "f_min": 0.0,
                     "f_max": 8000.0},
        "architecture": "tiny untrained CNN (tests only)",
        "explain_method": "gradcam",
        "parameters": 0,
        "training": {"corpus": None, "protocol": None},
        "metrics": {},
        "torch_version": torch.__version__,
        "torchaudio_version": torchaudio.__version__,
    }


def make_tiny_model(path: str | Path, seed: int = 0) -> Path:
    """Script and save a TinyModel with its card; returns the path."""
    torch.manual_seed(seed)
    model = TinyModel().eval()
    meta = card()
    meta["parameters"] = sum(p.numel() for p in model.parameters())
    path = Path(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.script(model)
        scripted.save(str(path), _extra_files={"model_card.json": json.dumps(meta)})
    return path
