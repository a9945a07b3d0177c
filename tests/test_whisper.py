"""Whisper's log-mel and encoder in the project == openai-whisper's; the checkpoint loads."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from train.whisper import (
    AudioEncoder,
    EncoderDims,
    WhisperLogMel,
    load_encoder,
    mel_filters,
    read_checkpoint,
)

whisper = pytest.importorskip("whisper")  # openai-whisper: a test-only reference (dev extra)


def _speechlike(n: int, seed: int = 0) -> np.ndarray:
    """A voiced-ish test signal: harmonics with vibrato and an envelope, plus faint noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 16_000
    f0 = 180 + 30 * np.sin(2 * np.pi * 3 * t)
    phase = 2 * np.pi * np.cumsum(f0) / 16_000
    x = sum(np.sin(k * phase) / k for k in range(1, 12)) * (0.5 + 0.5 * np.sin(2 * np.pi * t))
    return (0.1 * x + 0.001 * rng.standard_normal(n)).astype(np.float32)


def test_mel_filters_equal_whisper_asset() -> None:
    ref = whisper.audio.mel_filters("cpu", 80)
    assert torch.allclose(mel_filters(80), ref, atol=1e-7)


@pytest.mark.parametrize("n", [48_000, 16_000 * 30, 12_345])
def test_log_mel_matches_openai_whisper(n: int) -> None:
    x = _speechlike(n)
    ref = whisper.log_mel_spectrogram(torch.from_numpy(x))
    ours = WhisperLogMel()(torch.from_numpy(x)[None])[0]
    assert ours.shape == ref.shape
    assert (ours - ref).abs().max() < 1e-4


def test_log_mel_batch_equals_singles() -> None:
    """Each item is floored at its own maximum: a loud neighbour changes nothing."""
    quiet = _speechlike(48_000, 1) * 0.01
    loud = _speechlike(48_000, 2) * 5
    batch = WhisperLogMel()(torch.from_numpy(np.stack([quiet, loud])))
    single = WhisperLogMel()(torch.from_numpy(quiet)[None])
    assert torch.allclose(batch[0], single[0], atol=1e-6)


def test_log_mel_scripts() -> None:
    m = WhisperLogMel()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        s = torch.jit.script(m)
    x = torch.from_numpy(_speechlike(48_000))[None]
    assert torch.equal(s(x), m(x))


def _reference_encoder(path: Path) -> torch.nn.Module:
    dims, state = read_checkpoint(path)
    ref = whisper.model.AudioEncoder(dims.n_mels, dims.n_audio_ctx, dims.n_audio_state,
                                     dims.n_audio_head, dims.n_audio_layer)
    ckpt = torch.load(path, weights_only=True)
    ref.load_state_dict({k[8:]: v.float() for k, v in ckpt["model_state_dict"].items()})
    return ref.eval()


def test_encoder_matches_openai_whisper(whisper_checkpoint: Path) -> None:
    """30 s of input (the only length Whisper's encoder accepts): every state within 1e-4."""
    ref = _reference_encoder(whisper_checkpoint)
    ours = load_encoder(whisper_checkpoint)
    mel = whisper.log_mel_spectrogram(whisper.pad_or_trim(torch.from_numpy(_speechlike(48_000))))
    with torch.inference_mode():
        a = ref(mel[None])
        b = ours(mel[None])
    assert a.shape == b.shape == (1, 1500, 384)
    assert (a - b).abs().max() < 1e-4


def test_loaded_weights_equal_checkpoint(whisper_checkpoint: Path) -> None:
    ckpt = torch.load(whisper_checkpoint, weights_only=True)
    enc = load_encoder(whisper_checkpoint)
    state = enc.state_dict()
    for key, value in ckpt["model_state_dict"].items():
        assert torch.equal(state[key[len("encoder."):]], value.float()), key


def test_official_full_checkpoint_loads(whisper_checkpoint: Path, tmp_path: Path) -> None:
    """OpenAI's full ``tiny.pt`` layout (decoder keys, text dims) loads through the same path."""
    ckpt = torch.load(whisper_checkpoint, weights_only=True)
    full = {
        "dims": {**ckpt["dims"], "n_vocab": 51865, "n_text_ctx": 448, "n_text_state": 384,
                 "n_text_head": 6, "n_text_layer": 4},
        "model_state_dict": {**ckpt["model_state_dict"],
                             "decoder.token_embedding.weight": torch.zeros(4, 384).half(),
                             "decoder.ln.weight": torch.ones(384).half()},
    }
    torch.save(full, tmp_path / "tiny.pt")
    a = load_encoder(tmp_path / "tiny.pt", n_blocks=2)
    b = load_encoder(whisper_checkpoint, n_blocks=2)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)


def test_truncated_encoder_is_a_prefix(whisper_checkpoint: Path) -> None:
    """Keeping two blocks gives exactly the full encoder's second hidden state."""
    full = load_encoder(whisper_checkpoint)
    two = load_encoder(whisper_checkpoint, n_blocks=2)
    mel = WhisperLogMel()(torch.from_numpy(_speechlike(48_000))[None])
    with torch.inference_mode():
        assert torch.allclose(full.hidden_states(mel)[1], two(mel), atol=1e-6)
        assert two(mel).shape == (1, 150, 384)


def test_bad_checkpoints_are_refused(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_encoder(tmp_path / "missing.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="checkpoint layout"):
        load_encoder(tmp_path / "other.pt")
    torch.save({"dims": {"n_mels": 80}, "model_state_dict": {"decoder.x": torch.zeros(1)}},
               tmp_path / "nodec.pt")
    with pytest.raises(ValueError, match="no 'encoder"):
        load_encoder(tmp_path / "nodec.pt")
    with pytest.raises(ValueError, match="n_blocks"):
        AudioEncoder(EncoderDims(), n_blocks=5)


def test_too_long_input_is_refused() -> None:
    enc = AudioEncoder(EncoderDims(n_audio_ctx=10, n_audio_state=12, n_audio_head=2,
                                   n_audio_layer=1))
    with pytest.raises(ValueError, match="too long"):
        enc(torch.zeros(1, 80, 30))
