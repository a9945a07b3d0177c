"""streamer.model: loading a model file by the contract, and clear errors for bad files."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from streamer.model import ModelError, ServedModel, resolve_device, validate_card


@pytest.fixture(scope="module")
def served(tiny_model_path: Path) -> ServedModel:
    return ServedModel.load(tiny_model_path, device="cpu")


def test_card_fields(served: ServedModel) -> None:
    assert served.classes == ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]
    assert served.sample_rate == 16000
    assert served.window_samples == 48000
    assert served.device == torch.device("cpu")
    assert served.card["name"] == "tiny-test"


def test_predict_matches_module_and_sums_to_one(served: ServedModel) -> None:
    rng = np.random.default_rng(0)
    waves = (rng.standard_normal((3, served.window_samples)) * 0.1).astype(np.float32)
    probs = served.predict(waves)
    assert probs.shape == (3, 7) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    with torch.no_grad():
        direct = served.module(torch.from_numpy(waves)).numpy()
    np.testing.assert_allclose(probs, direct, atol=1e-6)
    # a tensor and a single 1-D window are accepted too
    np.testing.assert_allclose(served.predict(torch.from_numpy(waves[0])), probs[:1], atol=1e-6)


def test_predict_rejects_wrong_length(served: ServedModel) -> None:
    with pytest.raises(ValueError, match="48000"):
        served.predict(np.zeros((1, 16000), dtype=np.float32))


def test_explain_gives_contract_outputs(served: ServedModel) -> None:
    logits, acts, spec = served.explain(np.zeros((2, served.window_samples), np.float32))
    assert logits.shape == (2, 7) and acts.dim() == 4 and spec.dim() == 4
    assert acts.requires_grad


def test_load_silences_jit_deprecation_warnings(tiny_model_path: Path) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ServedModel.load(tiny_model_path, device="cpu")
    assert not [w for w in caught if issubclass(w.category, DeprecationWarning)]


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not found"):
        ServedModel.load(tmp_path / "nope.pt")


def test_not_torchscript(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_text("this is not a model")
    with pytest.raises(ModelError, match="not a TorchScript"):
        ServedModel.load(bad, device="cpu")


def _save_with_card(path: Path, card: object | None) -> Path:
    from tests.tiny_model import TinyModel

    extra = {} if card is None else {"model_card.json": json.dumps(card)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(TinyModel().eval()).save(str(path), _extra_files=extra)
    return path


def test_card_missing_keys(tmp_path: Path) -> None:
    from tests.tiny_model import card

    meta = card()
    del meta["classes"], meta["window_s"]
    path = _save_with_card(tmp_path / "nokeys.pt", meta)
    with pytest.raises(ModelError, match=r"classes.*window_s"):
        ServedModel.load(path, device="cpu")


def test_no_card(tmp_path: Path) -> None:
    path = _save_with_card(tmp_path / "nocard.pt", None)
    with pytest.raises(ModelError, match="no model_card.json"):
        ServedModel.load(path, device="cpu")


def test_validate_card_types() -> None:
    with pytest.raises(ModelError, match="sample_rate"):
        validate_card({"name": "x", "classes": ["a"], "sample_rate": "16k", "window_s": 3.0})
    with pytest.raises(ModelError, match="classes"):
        validate_card({"name": "x", "classes": [], "sample_rate": 16000, "window_s": 3.0})
    ok = {"name": "x", "classes": ["a"], "sample_rate": 16000, "window_s": 3.0}
    assert validate_card({**ok, "display": {"min_confidence": 0.55}})
    for bad in (1.0, -0.1, "0.5", True, None):
        with pytest.raises(ModelError, match="display"):
            validate_card({**ok, "display": {"min_confidence": bad}})
    with pytest.raises(ModelError, match="display"):
        validate_card({**ok, "display": [0.5]})


def test_device_resolution() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ModelError, match="unknown device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match="CUDA is not available"):
            resolve_device("cuda")


def test_cuda_predict_matches_cpu(tiny_model_path: Path, served: ServedModel) -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device here")
    gpu = ServedModel.load(tiny_model_path, device="cuda")
    waves = np.random.default_rng(1).standard_normal((2, 48000)).astype(np.float32) * 0.1
    np.testing.assert_allclose(gpu.predict(waves), served.predict(waves), atol=1e-4)
