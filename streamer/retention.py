"""Session logs on a call floor: compression of closed logs and retention (issue 14).

- ``compress(path)``: a closed ``<id>.jsonl`` becomes ``<id>.jsonl.gz`` atomically (written to
  a temporary name, fsynced, renamed, the directory fsynced, and only then the original
  removed), so a crash at any point leaves at least one complete log; if both remain, readers
  prefer the ``.gz`` (``sessionlog.list_sessions``).
- ``sweep(directory, days, keep)``: deletes session logs (``.jsonl``, ``.jsonl.gz``, leftover
  temporaries) and recorded audio (``<id>/*.flac``) last written more than ``days`` ago. A
  running daemon writes its log every second (status), so age alone never picks a live log
  of another daemon sharing the directory; the caller's own session is kept by id anyway.
- ``LogKeeper``: what the daemon does with its log besides appending (the policy of
  ``streamer.logpolicy``, the hourly sweep in a thread, compression at close), so the daemon
  itself grows by a few lines only.
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from streamer.logpolicy import LogPolicy
from streamer.sessionlog import SessionLog, check_session_id

log = logging.getLogger("streamer.retention")

SWEEP_INTERVAL_S = 3600.0
_LOG_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.gz.tmp")


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def compress(path: str | Path, level: int = 6) -> Path:
    """gzip a closed log next to itself; returns the ``.jsonl.gz`` path."""
    path = Path(path)
    final = path.with_name(path.name + ".gz")
    tmp = path.with_name(path.name + ".gz.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with open(fd, "wb") as raw, path.open("rb") as src:
            with gzip.GzipFile(filename=path.name, mode="wb", fileobj=raw,
                               compresslevel=level) as gz:
                shutil.copyfileobj(src, gz, 1 << 20)
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, final)
        _fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    path.unlink()
    _fsync_dir(path.parent)
    return final


def _session_id(name: str) -> str | None:
    for suffix in _LOG_SUFFIXES[::-1]:  # longest first
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    else:
        return None
    try:
        return check_session_id(name)
    except ValueError:
        return None


def sweep(directory: str | Path, days: float, keep: set[str] | frozenset[str] = frozenset(),
          now: float | None = None) -> list[Path]:
    """Delete logs and recordings last modified more than ``days`` ago; returns what went."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    cutoff = (time.time() if now is None else now) - days * 86400.0
    gone: list[Path] = []
    for entry in directory.iterdir():
        try:
            if entry.is_dir() and not entry.is_symlink():  # --record-audio: <id>/*.flac
                if entry.name in keep or _session_id(entry.name + ".jsonl") is None:
                    continue
                for flac in entry.glob("*.flac"):
                    if flac.stat().st_mtime < cutoff:
                        flac.unlink()
                        gone.append(flac)
                with contextlib.suppress(OSError):  # only when nothing else is in it
                    entry.rmdir()
                continue
            sid = _session_id(entry.name)
            if sid is None or sid in keep or not entry.is_file():
                continue
            if entry.stat().st_mtime < cutoff:
                entry.unlink()
                gone.append(entry)
        except FileNotFoundError:  # another daemon compressed or swept it meanwhile
            continue
    return gone


class LogKeeper:
    """The daemon's log policy, retention thread and compression at close, from its config
    (``log_explanations_every``, ``max_session_mb``, ``compress_logs``, ``retain_days``,
    ``sessions_dir``)."""

    def __init__(self, config: Any, session_id: str) -> None:
        mb = config.max_session_mb
        self.policy = LogPolicy(config.log_explanations_every,
                                None if mb is None else max(1, int(mb * 2**20)))
        self.directory = Path(config.sessions_dir)
        self.session_id = session_id
        self.compress = config.compress_logs
        self.retain_days = config.retain_days
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def lines(self, msg: dict, text: str, log_: SessionLog) -> list[str]:
        return self.policy.lines(msg, text, log_.bytes)

    def start(self) -> None:
        """Sweep now (before this session's log exists), then once an hour in a thread."""
        if self.retain_days is None:
            return
        self._sweep()
        self._thread = threading.Thread(target=self._loop, name="retention", daemon=True)
        self._thread.start()

    def _sweep(self) -> None:
        try:
            gone = sweep(self.directory, self.retain_days, {self.session_id})
        except OSError as exc:  # an unreadable directory must not stop the daemon
            log.error("retention sweep of %s failed: %s", self.directory, exc)
            return
        if gone:
            log.info("retention: deleted %d file(s) older than %g days", len(gone),
                     self.retain_days)

    def _loop(self) -> None:
        while not self._stop.wait(SWEEP_INTERVAL_S):
            self._sweep()

    def close(self, log_: SessionLog | None) -> None:
        """Stop the sweep; compress the closed log (blocking: run it in a thread)."""
        self._stop.set()
        if log_ is None or not self.compress or not log_.closed or not log_.path.exists():
            return
        try:
            compress(log_.path)
        except OSError as exc:  # disk full: the plain log stays, and readers read it
            log.error("session log %s left uncompressed: %s", log_.path, exc)
