"""G.711 against Python's audioop (every byte, every sample) and the telephone band."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from streamer import g711
from train.telephone import telephone_band

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    audioop = pytest.importorskip("audioop")  # the reference; in the stdlib up to 3.12

ALL_BYTES = bytes(range(256))
ALL_SAMPLES = np.arange(-32768, 32768, dtype=np.int16)


def test_ulaw_decode_every_byte() -> None:
    ref = np.frombuffer(audioop.ulaw2lin(ALL_BYTES, 2), dtype=np.int16)
    assert np.array_equal(g711.ulaw_decode(ALL_BYTES), ref)


def test_alaw_decode_every_byte() -> None:
    ref = np.frombuffer(audioop.alaw2lin(ALL_BYTES, 2), dtype=np.int16)
    assert np.array_equal(g711.alaw_decode(ALL_BYTES), ref)


def test_ulaw_encode_every_sample() -> None:
    ref = np.frombuffer(audioop.lin2ulaw(ALL_SAMPLES.tobytes(), 2), dtype=np.uint8)
    assert np.array_equal(g711.ulaw_encode(ALL_SAMPLES), ref)


def test_alaw_encode_every_sample() -> None:
    ref = np.frombuffer(audioop.lin2alaw(ALL_SAMPLES.tobytes(), 2), dtype=np.uint8)
    assert np.array_equal(g711.alaw_encode(ALL_SAMPLES), ref)


def test_float_pcm_round_trip() -> None:
    x = np.array([-1.5, -1.0, -0.5, 0.0, 0.5, 0.99997, 1.5], dtype=np.float32)
    pcm = g711.float_to_pcm16(x)
    assert pcm.tolist() == [-32768, -32768, -16384, 0, 16384, 32767, 32767]
    assert np.allclose(g711.pcm16_to_float(pcm)[2:5], [-0.5, 0.0, 0.5])


@pytest.mark.parametrize("codec", ["ulaw", "alaw"])
def test_telephone_band_keeps_speech_band_and_cuts_above_4k(codec: str) -> None:
    sr = 16_000
    t = np.arange(sr) / sr
    low = 0.3 * np.sin(2 * np.pi * 1000 * t)
    high = 0.3 * np.sin(2 * np.pi * 6000 * t)
    out = telephone_band((low + high).astype(np.float32), sr, codec)
    assert out.shape == (sr,) and out.dtype == np.float32
    spec = np.abs(np.fft.rfft(out[2000:-2000] * np.hanning(sr - 4000)))
    freqs = np.fft.rfftfreq(sr - 4000, 1 / sr)
    at = lambda f: spec[np.argmin(np.abs(freqs - f))]  # noqa: E731
    assert at(1000) > 100 * at(6000)  # 6 kHz is gone (8-kHz sampling)
    # The 1-kHz tone survives with G.711's ~38 dB SNR.
    err = out[2000:-2000] - low[2000:-2000]
    assert 10 * np.log10(np.mean(low**2) / np.mean(err**2)) > 25


def test_telephone_band_refuses_unknown_codec() -> None:
    with pytest.raises(ValueError, match="codec"):
        telephone_band(np.zeros(100, np.float32), codec="gsm")
