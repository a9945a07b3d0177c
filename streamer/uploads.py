"""Uploaded audio on its way from a client's ``replay`` to a ``FileSource``.

Each upload is written to its own file, made by ``tempfile.mkstemp`` (a name nobody else can
have, created exclusively, mode 0600) inside one private directory (``mkdtemp``, 0700) of the
daemon, and removed when its stream ends (the directory at exit). The client's name is never
part of the path: two uploads with the same name cannot share a file, and a 255-character name
cannot make an over-long one. Call audio is sensitive: a file is on disk only while it plays.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import threading
from pathlib import Path


def _suffix(name: str) -> str:
    """The name's extension if it is short and plain (``.wav``), else none: libsndfile reads
    the format from the header, the suffix only helps a human looking at the directory."""
    ext = os.path.splitext(name)[1].lower()
    return ext if re.fullmatch(r"\.[a-z0-9]{1,8}", ext) else ""


class UploadStore:
    """Private temporary files for uploads: ``save`` or ``create`` (blocking: run them off the
    event loop), ``remove`` when the stream ends, ``close`` at exit."""

    def __init__(self, prefix: str = "emotion-monitor-uploads-") -> None:
        self.prefix = prefix
        self.directory: Path | None = None
        self.files: set[Path] = set()
        self._lock = threading.Lock()  # saves run in several threads at once

    def create(self, name: str) -> tuple[int, Path]:
        """A new empty private file for an upload named ``name``: its open descriptor (the
        caller writes and closes it; a chunked upload arrives piece by piece) and path."""
        with self._lock:
            if self.directory is None:
                self.directory = Path(tempfile.mkdtemp(prefix=self.prefix))
            directory = self.directory
        fd, path = tempfile.mkstemp(suffix=_suffix(name), prefix="upload-", dir=directory)
        with self._lock:
            self.files.add(Path(path))
        return fd, Path(path)

    def save(self, name: str, data: bytes) -> Path:
        """Write ``data`` to a new private file; its path."""
        fd, path = self.create(name)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        except BaseException:
            self.remove(path)
            raise
        return path

    def remove(self, path: Path) -> None:
        with self._lock:
            self.files.discard(path)
        with contextlib.suppress(OSError):
            path.unlink()

    def close(self) -> None:
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
        self.files.clear()
