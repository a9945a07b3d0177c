"""Reading audio for training: one function, one error type.

soundfile (libsndfile) reads by content, not by extension, so TESS's AIFF files named ``.wav``
load like any other; soxr resamples (torchaudio's sinc resampler is ~3000x slower on TESS's
24,414 Hz, see the design note). Every way a file can be unusable ends in ``AudioError`` naming
the file and the cause, so a corpus scan can collect them and go on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

SAMPLE_RATE = 16_000

# libsndfile's header log flags a data chunk longer than the file ("data : 32000 (should be
# 15978)") but then quietly reads what is there; we treat that as truncation.
_SHORT_CHUNK = re.compile(r"^\s*(?:data|SSND)\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)


class AudioError(Exception):
    """An audio file that cannot be used: ``path`` and a human-readable ``cause``."""

    def __init__(self, path: str | Path, cause: str) -> None:
        self.path = Path(path)
        self.cause = cause
        super().__init__(f"{self.path}: {cause}")

    def __reduce__(self):  # keep pickling (multiprocessing) working with two arguments
        return (type(self), (self.path, self.cause))


@dataclass(frozen=True)
class AudioInfo:
    """What a header says about a file (cheap: no samples are decoded)."""

    sample_rate: int
    frames: int
    channels: int
    format: str
    subtype: str

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate if self.sample_rate else 0.0


def _open_error(path: Path, exc: Exception) -> AudioError:
    if not path.exists():
        return AudioError(path, "file not found")
    if path.is_dir():
        return AudioError(path, "is a directory, not an audio file")
    if path.stat().st_size == 0:
        return AudioError(path, "empty file (0 bytes)")
    message = str(exc).strip() or type(exc).__name__
    # libsndfile's messages start with the path; keep only the reason.
    message = message.replace(f"Error opening {str(path)!r}: ", "")
    return AudioError(path, f"not readable as audio ({message})")


def probe_audio(path: str | Path) -> AudioInfo:
    """Read only the header; raise ``AudioError`` if it is not a usable audio file.

    A corpus scan calls this on every file: it catches missing, empty, non-audio, corrupt-header,
    zero-length and truncated WAV/AIFF files without decoding samples. Truncated compressed
    files (FLAC, OGG) and NaN samples show only when decoding, in ``load_audio``.
    """
    path = Path(path)
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, OSError, ValueError, TypeError) as exc:
        raise _open_error(path, exc) from exc
    if info.samplerate <= 0:
        raise AudioError(path, f"invalid sample rate {info.samplerate}")
    if info.frames <= 0:
        raise AudioError(path, "no audio samples (header says 0 frames)")
    short = _SHORT_CHUNK.search(info.extra_info or "")
    if short and int(short[2]) < int(short[1]):
        raise AudioError(
            path, f"truncated: data chunk says {short[1]} bytes, the file holds {short[2]}"
        )
    return AudioInfo(
        sample_rate=int(info.samplerate),
        frames=int(info.frames),
        channels=int(info.channels),
        format=str(info.format),
        subtype=str(info.subtype),
    )


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Return the file as float32 mono at ``sample_rate`` (channels averaged, soxr HQ).

    Raises ``AudioError`` for missing, empty, non-audio, corrupt, truncated or NaN/Inf-bearing
    files, so callers never train on garbage silently.
    """
    path = Path(path)
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    info = probe_audio(path)
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError, ValueError) as exc:
        reason = str(exc).strip() or type(exc).__name__
        raise AudioError(path, f"decoding failed ({reason})") from exc
    if data.shape[0] == 0:
        raise AudioError(path, "no audio samples")
    if data.shape[0] < info.frames:
        raise AudioError(
            path, f"truncated: header promises {info.frames} frames, only {data.shape[0]} decoded"
        )
    if not np.isfinite(data).all():
        bad = int(np.count_nonzero(~np.isfinite(data)))
        raise AudioError(path, f"contains {bad} NaN/Inf samples")
    mono = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
    if rate != sample_rate:
        mono = soxr.resample(mono, rate, sample_rate, quality="HQ")
    return np.ascontiguousarray(mono, dtype=np.float32)
