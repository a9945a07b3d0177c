"""Load a served model file (the contract in the design note) and run it.

A model reaches the streamer only as a TorchScript file with ``forward``, ``explain`` and a
``model_card.json`` extra file; everything the daemon needs (classes, rate, window) is in the card.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from emotion_monitor.cliutil import PRECISIONS
from streamer.card import CardView

CARD_NAME = "model_card.json"  # the card inside a model file (_extra_files)

REQUIRED_CARD_KEYS = ("name", "classes", "sample_rate", "window_s")


class ModelError(Exception):
    """A model file that cannot be served: missing, not TorchScript, or a bad card."""


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` means CUDA when present, else CPU; ``cuda`` without CUDA is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"--device {device} requested but CUDA is not available here")
    if device != "cpu" and not device.startswith("cuda"):
        raise ModelError(f"unknown device {device!r} (use auto, cpu or cuda)")
    return torch.device(device)


def bfloat16_native(device: torch.device) -> bool:
    """Whether this CPU runs bfloat16 matrix products natively (AVX512-BF16 or AMX, through
    oneDNN); elsewhere bfloat16 is emulated and slower than float32. CUDA answers False: the
    GPU path has not been measured in bfloat16, so it stays float32."""
    if device.type != "cpu":
        return False
    try:  # torch 2.11 has no public query; this private op is what torch's own tests use
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, card: dict, device: torch.device) -> str:
    """``auto``: bfloat16 where the card lists submodules that may run in it (``precision``:
    ``{"bfloat16": [...]}``) and :func:`bfloat16_native`; else float32."""
    if precision not in PRECISIONS:
        raise ModelError(f"unknown precision {precision!r} (use {', '.join(PRECISIONS)})")
    offered = bool((card.get("precision") or {}).get("bfloat16"))
    if precision == "bfloat16" and not offered:
        raise ModelError(f"--precision bfloat16: {card.get('name')}'s card offers no bfloat16 "
                         "submodules (only float32)")
    if precision == "auto":
        return "bfloat16" if offered and bfloat16_native(device) else "float32"
    return precision


def validate_card(card: Any, path: Path | str = "<card>") -> dict:
    """Check the keys the streamer relies on; returns the card."""
    if not isinstance(card, dict):
        raise ModelError(f"{path}: model_card.json is not a JSON object")
    missing = [k for k in REQUIRED_CARD_KEYS if k not in card]
    if missing:
        raise ModelError(f"{path}: model card lacks required keys {missing}")
    classes = card["classes"]
    if not (isinstance(classes, list) and classes and all(isinstance(c, str) for c in classes)):
        raise ModelError(f"{path}: card 'classes' must be a non-empty list of names")
    if not (isinstance(card["sample_rate"], int | float) and card["sample_rate"] > 0):
        raise ModelError(f"{path}: card 'sample_rate' must be a positive number")
    if not (isinstance(card["window_s"], int | float) and card["window_s"] > 0):
        raise ModelError(f"{path}: card 'window_s' must be a positive number")
    low = card.get("precision")
    if low is not None and not (isinstance(low, dict) and isinstance(low.get("bfloat16", []), list)
                                and all(isinstance(n, str) for n in low.get("bfloat16", []))):
        raise ModelError(f"{path}: card 'precision' must be {{\"bfloat16\": [submodule names]}}")
    display = card.get("display") or {}
    floor = display.get("min_confidence", 0.0) if isinstance(display, dict) else None
    if isinstance(floor, bool) or not isinstance(floor, int | float) or not 0 <= floor < 1:
        raise ModelError(f"{path}: card 'display' must be {{\"min_confidence\": a number in "
                         "[0, 1)}")
    return card


@dataclass
class ServedModel(CardView):
    """A loaded model file: its TorchScript module, its card, and the device it runs on."""

    module: torch.jit.ScriptModule
    device: torch.device
    path: Path | None = None
    precision: str = "float32"

    @classmethod
    def load(cls, path: str | Path, device: str = "auto", precision: str = "auto"
             ) -> ServedModel:
        """Read a model file and its card; clear ModelError for anything unusable.

        ``precision`` (:func:`resolve_precision`): the card's bfloat16 submodules are cast
        after loading; inputs, probabilities and maps stay float32.
        """
        path = Path(path)
        if not path.is_file():
            raise ModelError(f"model file not found: {path}")
        dev = resolve_device(device)
        extra = {CARD_NAME: ""}
        try:
            # torch.jit.load warns (DeprecationWarning) in torch 2.11; silence it here only.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                module = torch.jit.load(str(path), map_location=dev, _extra_files=extra)
        except Exception as err:  # torch raises RuntimeError/ValueError/zip errors
            raise ModelError(f"{path}: not a TorchScript model file ({err})") from err
        raw = extra[CARD_NAME]
        if not raw:
            raise ModelError(f"{path}: no model_card.json in the file (see the model contract)")
        try:
            card = json.loads(raw)
        except ValueError as err:
            raise ModelError(f"{path}: model_card.json is not valid JSON ({err})") from err
        validate_card(card, path)
        for method in ("forward", "explain"):
            if not hasattr(module, method):
                raise ModelError(f"{path}: the model has no '{method}' method")
        precision = resolve_precision(precision, card, dev)
        if precision == "bfloat16":
            for name in card["precision"]["bfloat16"]:
                sub = getattr(module, name, None)
                if not isinstance(sub, torch.nn.Module):
                    raise ModelError(f"{path}: the card's bfloat16 submodule {name!r} is not in "
                                     "the model")
                sub.to(torch.bfloat16)
        module.eval()
        return cls(module=module, card=card, device=dev, path=path, precision=precision)

    def _as_batch(self, waves: np.ndarray | torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(waves, dtype=torch.float32)
        if x.dim() == 1:
            x = x.unsqueeze(0)
        if x.dim() != 2 or x.size(1) != self.window_samples:
            raise ValueError(f"expected waves [B, {self.window_samples}], got {list(x.shape)}")
        return x.to(self.device, non_blocking=True)

    def predict(self, waves: np.ndarray | torch.Tensor) -> np.ndarray:
        """Class probabilities ``[B, C]`` (float32, card's class order) for windows ``[B, N]``."""
        x = self._as_batch(waves)
        with torch.inference_mode():
            probs = self.module(x)
        return probs.float().cpu().numpy()

    def explain(self, waves: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The contract's ``explain``: (logits, activations, spectrogram), autograd enabled."""
        return self.module.explain(self._as_batch(waves))
