"""Uploaded audio on its way from a client's ``replay`` to a ``FileSource``.

Each upload is written to its own file, made by ``tempfile.mkstemp`` (a name nobody else can
have, created exclusively, mode 0600) inside one private directory (``mkdtemp``, 0700) of the
daemon, and removed when its stream ends (the directory at exit). A daemon killed with SIGKILL
cannot clean up, so its directory carries its pid, and the next daemon's first upload removes
the directories of this user whose daemon is gone. The client's name is never
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


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: not ours to judge
        return True
    return True


def sweep_orphans(prefix: str, root: Path) -> list[Path]:
    """Remove the upload directories under ``root`` that a killed daemon left: named
    ``<prefix><pid>-...``, real directories (not links) owned by this user, whose pid is not
    running. Returns what was removed."""
    removed = []
    pattern = re.compile(re.escape(prefix) + r"(\d+)-")
    with contextlib.suppress(OSError), os.scandir(root) as entries:
        for entry in entries:
            m = pattern.match(entry.name)
            if not m or not entry.is_dir(follow_symlinks=False):
                continue
            with contextlib.suppress(OSError):
                if entry.stat(follow_symlinks=False).st_uid != os.getuid() or _alive(
                        int(m.group(1))):
                    continue
                shutil.rmtree(entry.path)
                removed.append(Path(entry.path))
    return removed


class UploadStore:
    """Private temporary files for uploads: ``save`` or ``create`` (blocking: run them off the
    event loop), ``remove`` when the stream ends, ``close`` at exit."""

    def __init__(self, prefix: str = "emotion-monitor-uploads-", root: Path | None = None
                 ) -> None:
        self.prefix = prefix
        self.root = Path(tempfile.gettempdir()) if root is None else Path(root)
        self.directory: Path | None = None
        self.files: set[Path] = set()
        self._lock = threading.Lock()  # saves run in several threads at once

    def create(self, name: str) -> tuple[int, Path]:
        """A new empty private file for an upload named ``name``: its open descriptor (the
        caller writes and closes it; a chunked upload arrives piece by piece) and path."""
        with self._lock:
            if self.directory is None:
                sweep_orphans(self.prefix, self.root)
                self.directory = Path(tempfile.mkdtemp(prefix=f"{self.prefix}{os.getpid()}-",
                                                       dir=self.root))
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
