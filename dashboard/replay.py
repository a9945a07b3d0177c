"""Checks on a file the user hands the dashboard for replay, before any byte goes to a daemon.

The type is checked by the file's own header (magic bytes), not by its name: a renamed text
file is refused here with a clear message instead of costing an upload and a daemon error.
"""

from __future__ import annotations

from pathlib import PurePosixPath

ALLOWED_SUFFIXES = (".wav", ".flac")
DEFAULT_MAX_UPLOAD_BYTES = 20 * 1024 * 1024
SPEEDS = (0.0, 0.5, 1.0, 2.0, 5.0, 10.0)


def audio_kind(data: bytes) -> str | None:
    """'wav' or 'flac' from the header, or None if it is neither."""
    if len(data) >= 12 and data[:4] in (b"RIFF", b"RIFX", b"RF64") and data[8:12] == b"WAVE":
        return "wav"
    if data[:4] == b"fLaC":
        return "flac"
    return None


def check_upload(name: str, data: bytes, max_bytes: int = DEFAULT_MAX_UPLOAD_BYTES) -> str:
    """Return the audio kind of an upload, or raise ValueError saying what is wrong."""
    suffix = PurePosixPath(name.replace("\\", "/")).suffix.lower()
    if suffix not in ALLOWED_SUFFIXES:
        got = suffix or "no extension"
        raise ValueError(f"{name}: only WAV and FLAC files can be replayed (got {got})")
    if not data:
        raise ValueError(f"{name}: the file is empty")
    if len(data) > max_bytes:
        raise ValueError(f"{name}: {len(data) / 2**20:.1f} MiB is over the "
                         f"{max_bytes / 2**20:.0f} MiB upload limit")
    kind = audio_kind(data)
    if kind is None:
        raise ValueError(f"{name}: not a WAV or FLAC file (its header says otherwise)")
    if ("." + kind) != suffix:
        raise ValueError(f"{name}: the name says {suffix[1:].upper()} but the content is "
                         f"{kind.upper()}")
    return kind


def check_path(path: str) -> str:
    """A replay path as the daemon expects it: relative to its allowed directory, no ``..``.

    The daemon enforces this too (resolving symlinks); this only gives a quicker, clearer
    message for the obvious mistakes.
    """
    p = path.strip()
    if not p:
        raise ValueError("give a path")
    parts = PurePosixPath(p.replace("\\", "/")).parts
    if ".." in parts:
        raise ValueError(f"{p}: '..' is not allowed; paths are inside the daemon's allowed "
                         "directory")
    return p
