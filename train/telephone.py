"""The telephone band: what a call centre records, simulated on a 16-kHz clip.

16 kHz -> 8 kHz (soxr) -> 16-bit PCM -> G.711 μ-law (or A-law) -> back -> 16 kHz. The codec is
``streamer.g711``, the one the daemon's ingest decodes with, so training, evaluation and serving
hear the same telephone audio.
"""

from __future__ import annotations

import numpy as np
import soxr

from streamer import g711

PHONE_RATE = 8_000
CODECS = ("ulaw", "alaw")


def telephone_band(wave: np.ndarray, sample_rate: int = 16_000, codec: str = "ulaw"
                   ) -> np.ndarray:
    """``wave`` (float mono at ``sample_rate``) after an 8-kHz G.711 round trip, same length."""
    if codec not in CODECS:
        raise ValueError(f"codec must be one of {CODECS}, got {codec!r}")
    x = np.asarray(wave, dtype=np.float32)
    narrow = soxr.resample(x, sample_rate, PHONE_RATE, quality="HQ")
    pcm = g711.float_to_pcm16(narrow)
    if codec == "ulaw":
        decoded = g711.ulaw_decode(g711.ulaw_encode(pcm))
    else:
        decoded = g711.alaw_decode(g711.alaw_encode(pcm))
    back = soxr.resample(g711.pcm16_to_float(decoded), PHONE_RATE, sample_rate, quality="HQ")
    out = np.zeros_like(x)
    n = min(len(out), len(back))
    out[:n] = back[:n]
    return out


__all__ = ["CODECS", "PHONE_RATE", "telephone_band"]
