"""train.audio: float32 mono at the asked rate, and one clear error for every unusable file."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.audio_fixtures import BAD_KINDS, PROBE_CATCHES, make_bad, tone, write_tone
from train.audio import SAMPLE_RATE, AudioError, load_audio, probe_audio


def _peak_hz(wave: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(wave))
    return float(np.fft.rfftfreq(len(wave), 1 / rate)[spectrum.argmax()])


def test_sample_rate_constant() -> None:
    assert SAMPLE_RATE == 16_000


def test_pcm_wav_at_16k_loads_unchanged(tmp_path: Path) -> None:
    path = write_tone(tmp_path / "a.wav", seconds=0.5, subtype="PCM_16")
    wave = load_audio(path)
    assert wave.dtype == np.float32 and wave.ndim == 1 and wave.shape == (8000,)
    np.testing.assert_allclose(wave, tone(0.5), atol=1e-4)
    assert wave.flags["C_CONTIGUOUS"]


def test_8khz_is_resampled_and_keeps_pitch(tmp_path: Path) -> None:
    path = write_tone(tmp_path / "8k.wav", seconds=1.0, rate=8000)
    wave = load_audio(path)
    assert wave.dtype == np.float32
    assert abs(len(wave) - 16_000) <= 1
    assert abs(_peak_hz(wave, 16_000) - 440.0) < 2.0


def test_other_target_rate(tmp_path: Path) -> None:
    path = write_tone(tmp_path / "a.wav", seconds=1.0, rate=16_000)
    assert abs(len(load_audio(path, sample_rate=8000)) - 8000) <= 1
    with pytest.raises(ValueError):
        load_audio(path, sample_rate=0)


def test_six_channels_are_averaged(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    data = (rng.standard_normal((4000, 6)) * 0.1).astype(np.float32)
    path = tmp_path / "six.wav"
    sf.write(str(path), data, 16_000, subtype="FLOAT")
    wave = load_audio(path)
    assert wave.shape == (4000,)
    np.testing.assert_allclose(wave, data.mean(axis=1), atol=1e-6)


def test_float_wav_keeps_values(tmp_path: Path) -> None:
    data = tone(0.25) * 1.5  # float WAV may exceed [-1, 1]; must not be clipped
    path = tmp_path / "float.wav"
    sf.write(str(path), data, 16_000, subtype="FLOAT")
    np.testing.assert_allclose(load_audio(path), data, atol=1e-7)


def test_aiff_named_wav_is_read_by_content(tmp_path: Path) -> None:
    path = tmp_path / "YAF_germ_angry.wav"
    sf.write(str(path), tone(0.25), 16_000, format="AIFF")
    assert sf.info(str(path)).format == "AIFF"
    np.testing.assert_allclose(load_audio(path), tone(0.25), atol=1e-4)


def test_probe_reads_header_only(tmp_path: Path) -> None:
    path = write_tone(tmp_path / "a.flac", seconds=0.5, rate=24_414)
    info = probe_audio(path)
    assert (info.sample_rate, info.frames, info.channels) == (24_414, 12_207, 1)
    assert info.duration == pytest.approx(0.5, abs=1e-4)


@pytest.mark.parametrize("kind", sorted(BAD_KINDS))
def test_bad_files_raise_audio_error_naming_file_and_cause(tmp_path: Path, kind: str) -> None:
    path = make_bad(kind, tmp_path / f"{kind}.{'flac' if kind.endswith('flac') else 'wav'}")
    with pytest.raises(AudioError) as info:
        load_audio(path)
    err = info.value
    assert err.path == path
    assert BAD_KINDS[kind].lower() in err.cause.lower()
    assert str(path) in str(err)


@pytest.mark.parametrize("kind", PROBE_CATCHES)
def test_probe_catches_header_problems(tmp_path: Path, kind: str) -> None:
    path = make_bad(kind, tmp_path / f"{kind}.wav")
    with pytest.raises(AudioError, match=BAD_KINDS[kind]):
        probe_audio(path)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(AudioError, match="file not found"):
        load_audio(tmp_path / "nope.wav")
    with pytest.raises(AudioError, match="directory"):
        load_audio(tmp_path)


def test_audio_error_pickles() -> None:
    err = pickle.loads(pickle.dumps(AudioError("x.wav", "empty file")))
    assert isinstance(err, AudioError)
    assert (err.path, err.cause) == (Path("x.wav"), "empty file")


@pytest.mark.tess
def test_tess_96k_file_resamples_to_16k(tess_dir: Path) -> None:
    path = tess_dir / "OAF_Fear" / "OAF_food_fear.flac"
    info = probe_audio(path)
    assert info.sample_rate == 96_000
    wave = load_audio(path)
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert abs(len(wave) - round(info.frames * 16_000 / 96_000)) <= 1
    assert np.isfinite(wave).all() and 0 < np.abs(wave).max() <= 1.0
