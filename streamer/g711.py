"""G.711 μ-law and A-law, the 8-bit telephone codecs (ITU-T G.711), as numpy lookups.

What a call centre records and what phone platforms stream (Media Streams send 8 kHz μ-law).
Hand-written on purpose: Python's ``audioop`` did this but is deprecated and gone in 3.13, and
no well-kept package offers a vectorised codec; the arithmetic is the reference C code's
(Sun Microsystems' g711.c, as in ``audioop``), and the tests compare every byte value and
every 16-bit sample against ``audioop``.
"""

from __future__ import annotations

import numpy as np

_ULAW_SEG_END = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF], dtype=np.int32)
_ALAW_SEG_END = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF], dtype=np.int32)
_ULAW_BIAS = 0x84
_ULAW_CLIP = 8159  # 14-bit magnitude


def _ulaw_decode_table() -> np.ndarray:
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    t = (((u & 0x0F) << 3) + _ULAW_BIAS) << ((u & 0x70) >> 4)
    return np.where(u & 0x80, _ULAW_BIAS - t, t - _ULAW_BIAS).astype(np.int16)


def _alaw_decode_table() -> np.ndarray:
    a = np.arange(256, dtype=np.int32) ^ 0x55
    t = (a & 0x0F) << 4
    seg = (a & 0x70) >> 4
    t = np.where(seg == 0, t + 8, t + 0x108)
    t = np.where(seg > 1, t << np.maximum(seg - 1, 0), t)
    return np.where(a & 0x80, t, -t).astype(np.int16)


ULAW_TO_LINEAR = _ulaw_decode_table()  # byte -> int16 sample
ALAW_TO_LINEAR = _alaw_decode_table()


def ulaw_encode(pcm: np.ndarray) -> np.ndarray:
    """int16 samples -> μ-law bytes (uint8), as ``audioop.lin2ulaw(x, 2)``."""
    x = np.asarray(pcm, dtype=np.int16).astype(np.int32) >> 2
    mask = np.where(x < 0, 0x7F, 0xFF)
    x = np.minimum(np.abs(x), _ULAW_CLIP) + (_ULAW_BIAS >> 2)
    seg = np.searchsorted(_ULAW_SEG_END, x, side="left")
    uval = (seg << 4) | ((x >> (seg + 1)) & 0x0F)
    return ((np.where(seg >= 8, 0x7F, uval) ^ mask) & 0xFF).astype(np.uint8)


def alaw_encode(pcm: np.ndarray) -> np.ndarray:
    """int16 samples -> A-law bytes (uint8), as ``audioop.lin2alaw(x, 2)``."""
    x = np.asarray(pcm, dtype=np.int16).astype(np.int32) >> 3
    neg = x < 0
    mask = np.where(neg, 0x55, 0xD5)
    x = np.where(neg, -x - 1, x)
    seg = np.searchsorted(_ALAW_SEG_END, x, side="left")
    shift = np.where(seg < 2, 1, seg)
    aval = (seg << 4) | ((x >> shift) & 0x0F)
    return ((np.where(seg >= 8, 0x7F, aval) ^ mask) & 0xFF).astype(np.uint8)


def ulaw_decode(data: bytes | np.ndarray) -> np.ndarray:
    """μ-law bytes -> int16 samples."""
    return ULAW_TO_LINEAR[np.frombuffer(data, dtype=np.uint8) if isinstance(data, bytes)
                          else np.asarray(data, dtype=np.uint8)]


def alaw_decode(data: bytes | np.ndarray) -> np.ndarray:
    """A-law bytes -> int16 samples."""
    return ALAW_TO_LINEAR[np.frombuffer(data, dtype=np.uint8) if isinstance(data, bytes)
                          else np.asarray(data, dtype=np.uint8)]


def float_to_pcm16(x: np.ndarray) -> np.ndarray:
    """float samples in [-1, 1] -> int16 (clipped, rounded), as libsndfile writes PCM_16."""
    return np.clip(np.round(np.asarray(x, dtype=np.float64) * 32768.0), -32768, 32767).astype(
        np.int16)


def pcm16_to_float(x: np.ndarray) -> np.ndarray:
    """int16 -> float32 in [-1, 1)."""
    return np.asarray(x, dtype=np.int16).astype(np.float32) / 32768.0


__all__ = [
    "ALAW_TO_LINEAR", "ULAW_TO_LINEAR", "alaw_decode", "alaw_encode", "float_to_pcm16",
    "pcm16_to_float", "ulaw_decode", "ulaw_encode",
]
