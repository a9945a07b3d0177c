"""bfloat16 inference (streamer.model precision) and re-exporting a Whisper model file."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from streamer import gradcam as g
from streamer.model import ModelError, ServedModel, bfloat16_native, resolve_precision
from tests.test_whisper_model import _run_dir, _waves
from train.export import ExportError, export, read_card

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def whisper_file(whisper_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("prec")
    return export(_run_dir(tmp, whisper_checkpoint), tmp / "w.pt")


def _with_card(src: Path, dst: Path, **changes) -> Path:
    """A copy of a model file whose embedded card has ``changes`` (None deletes a key)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename.endswith("/extra/model_card.json"):
                card = json.loads(data)
                for k, v in changes.items():
                    if v is None:
                        card.pop(k, None)
                    else:
                        card[k] = v
                data = json.dumps(card).encode()
            zout.writestr(item, data)
    return dst


def test_whisper_cards_offer_the_encoder_in_bfloat16(whisper_file: Path) -> None:
    assert read_card(whisper_file)["precision"]["bfloat16"] == ["encoder"]


def test_resolve_precision() -> None:
    offered = {"name": "m", "precision": {"bfloat16": ["encoder"]}}
    assert resolve_precision("float32", offered, CPU) == "float32"
    assert resolve_precision("bfloat16", offered, CPU) == "bfloat16"
    assert resolve_precision("auto", offered, CPU) == (
        "bfloat16" if bfloat16_native(CPU) else "float32")
    assert resolve_precision("auto", {"name": "m"}, CPU) == "float32"
    with pytest.raises(ModelError, match="offers no bfloat16"):
        resolve_precision("bfloat16", {"name": "m"}, CPU)
    with pytest.raises(ModelError, match="unknown precision"):
        resolve_precision("fp8", offered, CPU)


def test_bfloat16_casts_the_encoder_only_and_keeps_outputs_float32(whisper_file: Path) -> None:
    f32 = ServedModel.load(whisper_file, "cpu", "float32")
    b16 = ServedModel.load(whisper_file, "cpu", "bfloat16")
    assert f32.precision == "float32" and b16.precision == "bfloat16"
    assert b16.module.encoder.conv1.weight.dtype == torch.bfloat16
    assert b16.module.head.weight.dtype == torch.float32  # head and standardiser stay float32
    assert b16.module.feat_mean.dtype == torch.float32
    x = _waves(3).numpy()
    p32, p16 = f32.predict(x), b16.predict(x)
    assert p16.dtype == np.float32 and np.allclose(p16.sum(1), 1, atol=1e-5)
    diff = np.abs(p32 - p16).max()
    assert 0 < diff < 0.05  # bfloat16 really ran, and it is close


def test_bfloat16_explanations(whisper_file: Path) -> None:
    f32 = ServedModel.load(whisper_file, "cpu", "float32")
    b16 = ServedModel.load(whisper_file, "cpu", "bfloat16")
    assert g.explain_matches_forward(b16)  # one forward per explained window, as in float32
    x = _waves(2)
    target = f32.predict(x).argmax(1).tolist()
    e32 = g.explain_windows(f32, x, targets=target, metrics=False)
    e16 = g.explain_windows(b16, x, targets=target, metrics=False)
    for a, b in zip(e32, e16, strict=True):
        assert b.cam.dtype == np.float32 and b.cam.shape == a.cam.shape == (80, 300)
        assert np.isfinite(b.cam).all()
        assert np.corrcoef(a.cam.ravel(), b.cam.ravel())[0, 1] > 0.8


def test_models_without_the_offer_stay_float32(tiny_model_path: Path) -> None:
    assert ServedModel.load(tiny_model_path, "cpu").precision == "float32"
    with pytest.raises(ModelError, match="offers no bfloat16"):
        ServedModel.load(tiny_model_path, "cpu", "bfloat16")


@pytest.mark.parametrize("offer, message", [
    ({"bfloat16": "encoder"}, "must be"),
    ("bfloat16", "must be"),
    ({"bfloat16": ["no_such_module"]}, "not in the model"),
])
def test_bad_precision_offers_are_refused(whisper_file: Path, tmp_path: Path, offer,
                                          message: str) -> None:
    bad = _with_card(whisper_file, tmp_path / "bad.pt", precision=offer)
    with pytest.raises(ModelError, match=message):
        ServedModel.load(bad, "cpu", "bfloat16")


def test_reexport_keeps_weights_and_card(whisper_file: Path, whisper_checkpoint: Path,
                                         tmp_path: Path) -> None:
    old = _with_card(whisper_file, tmp_path / "old.pt", precision=None, version="3.0.0")
    assert "precision" not in read_card(old)
    new = export(old, tmp_path / "new.pt", overrides={"version": "3.1.0"},
                 encoder=whisper_checkpoint)
    card, old_card = read_card(new), read_card(old)
    assert card["version"] == "3.1.0" and card["precision"]["bfloat16"] == ["encoder"]
    assert card["metrics"] == old_card["metrics"] and card["classes"] == old_card["classes"]
    x = _waves(3).numpy()
    a = ServedModel.load(old, "cpu").predict(x)
    b = ServedModel.load(new, "cpu", "float32").predict(x)
    assert np.abs(a - b).max() < 1e-5


def test_reexport_refuses_what_it_cannot_rebuild(whisper_file: Path, tiny_model_path: Path,
                                                 tmp_path: Path, whisper_checkpoint: Path
                                                 ) -> None:
    with pytest.raises(ExportError, match="needs --encoder"):
        export(whisper_file, tmp_path / "a.pt")
    tiny = shutil.copy(tiny_model_path, tmp_path / "tiny.pt")
    with pytest.raises(ExportError, match="not a WhisperEmotion"):
        export(Path(tiny), tmp_path / "b.pt", encoder=whisper_checkpoint)


def test_stream_cli_refuses_bfloat16_for_a_model_without_it(tiny_model_path: Path,
                                                            tmp_path: Path) -> None:
    import subprocess
    import sys

    wav = next((Path(__file__).resolve().parents[1] / "examples" / "tess_stream").glob("*.flac"))
    out = subprocess.run(
        [sys.executable, "-m", "emotion_monitor", "stream", "--model", str(tiny_model_path),
         "--precision", "bfloat16", "--replay", str(wav), "--port", "0",
         "--sessions-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "offers no bfloat16" in out.stderr, out.stderr
