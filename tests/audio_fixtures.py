"""Odd and broken audio files, generated at test time (numpy + soundfile), so none is committed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf


def tone(seconds: float = 0.5, rate: int = 16_000, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def write_tone(path: Path, seconds: float = 0.2, rate: int = 16_000, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), tone(seconds, rate), rate, **kwargs)
    return path


def _halve(src: Path, dst: Path) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) // 2])
    src.unlink()
    return dst


def make_bad(kind: str, path: Path) -> Path:
    """Write one broken file of ``kind`` at ``path``; see ``BAD_KINDS`` for the kinds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("this is not audio\n" * 20)
    elif kind == "corrupt_header":
        write_tone(path, subtype="PCM_16")
        data = bytearray(path.read_bytes())
        data[20:36] = b"\xff" * 16  # smash the fmt chunk
        path.write_bytes(bytes(data))
    elif kind == "header_only":
        write_tone(path, subtype="PCM_16")
        path.write_bytes(path.read_bytes()[:44])
    elif kind == "truncated_wav":
        _halve(write_tone(path.with_suffix(".tmp.wav"), subtype="PCM_16"), path)
    elif kind == "truncated_flac":
        _halve(write_tone(path.with_suffix(".tmp.flac"), seconds=1.0), path)
    elif kind == "nan":
        wave = tone(0.2)
        wave[100] = np.nan
        sf.write(str(path), wave, 16_000, format="WAV", subtype="FLOAT")
    else:
        raise ValueError(kind)
    return path


# kind -> a fragment of the cause AudioError must give
BAD_KINDS: dict[str, str] = {
    "empty": "empty",
    "text": "not readable as audio",
    "corrupt_header": "not readable as audio",
    "header_only": "no audio samples",
    "truncated_wav": "truncated",
    "truncated_flac": "decoding failed",
    "nan": "NaN",
}
# kinds a header probe (corpus scan) catches without decoding
PROBE_CATCHES = ("empty", "text", "corrupt_header", "header_only", "truncated_wav")
