"""Durable session logs: every broadcast message appended to ``sessions/<session-id>.jsonl``.

Durability policy (also in docs/protocol.md): each message is written as one whole line with a
single ``os.write`` on an unbuffered append-only descriptor the moment it is sent, so it is in
the OS page cache at once and survives a crash or SIGKILL of the daemon (at most a partial last
line is lost, and :func:`read_session` skips it). ``sync()`` fsyncs; the daemon calls it once a
second (in a worker thread, so the event loop never waits on the disk), when a stream ends and
at exit, so a power loss costs at most about a second. Files are never rewritten while open;
when the daemon closes a session its log is gzip-compressed to ``<id>.jsonl.gz``
(``streamer.retention``), and every reader here takes either form.

A session id names one log, once: a ``SessionLog`` for an id whose log already exists (plain or
compressed) raises ``FileExistsError`` instead of appending a second ``hello`` whose ``seq``
restart (``emotion-monitor stream --session-id`` refuses it at start-up, exit code 2).

``AudioRecorder`` (``--record-audio``, off by default because call and therapy audio is
sensitive) writes each stream's audio as FLAC next to the log.
"""

from __future__ import annotations

import csv
import json
import os
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from streamer.protocol import open_log

_ID_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def new_session_id() -> str:
    """Sortable and unique: UTC start time plus 6 random hex digits."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(3)


def check_session_id(session_id: str) -> str:
    """A session id is a file name: letters, digits, "-" and "_" only (no paths)."""
    if not session_id or any(c not in _ID_CHARS for c in session_id):
        raise ValueError(f"invalid session id {session_id!r}")
    return session_id


def existing_log(directory: str | Path, session_id: str) -> Path | None:
    """The log already written under ``session_id`` (``.jsonl`` or ``.jsonl.gz``), if any."""
    directory = Path(directory)
    for suffix in (".jsonl", ".jsonl.gz"):
        path = directory / f"{check_session_id(session_id)}{suffix}"
        if path.exists():
            return path
    return None


class SessionLog:
    """Append-only JSONL writer; one ``append`` = one ``os.write`` of one complete line.
    Refuses (``FileExistsError``) a session id that already has a log."""

    def __init__(self, directory: str | Path, session_id: str) -> None:
        self.directory = Path(directory)
        self.session_id = check_session_id(session_id)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / f"{session_id}.jsonl"
        old = existing_log(self.directory, session_id)
        if old is not None:
            raise FileExistsError(f"session {session_id!r} already has a log ({old}); "
                                  "choose another --session-id")
        # O_APPEND: every write lands at the end even if something else appends; never truncated.
        # O_EXCL: two daemons started with one id at once cannot share a file either.
        self._fd: int | None = os.open(
            self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        self._lock = threading.Lock()  # append() and sync() may come from different threads
        self.lines = 0
        self.bytes = 0  # written by this writer (what --max-session-mb counts)

    def append(self, text: str) -> None:
        """Write one message (its wire text, no newline inside) as a line."""
        if "\n" in text:
            raise ValueError("a log line cannot contain a newline")
        data = (text + "\n").encode("utf-8")
        with self._lock:
            if self._fd is None:
                raise ValueError(f"session log {self.path} is closed")
            view = memoryview(data)
            while view:  # os.write may write less than asked (rare on regular files)
                view = view[os.write(self._fd, view):]
            self.lines += 1
            self.bytes += len(data)

    def sync(self) -> None:
        """fsync: from here on the lines survive a power loss too."""
        with self._lock:
            fd = self._fd
        if fd is not None:
            try:
                os.fsync(fd)
            except OSError:  # closed between the lock and the fsync: close() synced already
                pass

    def close(self) -> None:
        with self._lock:
            fd, self._fd = self._fd, None
        if fd is not None:
            os.fsync(fd)
            os.close(fd)

    @property
    def closed(self) -> bool:
        return self._fd is None


@dataclass
class SessionRead:
    messages: list[dict]
    partial_last_line: bool  # a crash cut the last line; it was skipped
    bad_lines: int  # complete lines that were not JSON objects (should be 0)


def session_id_of(path: str | Path) -> str:
    """``<id>`` of ``<id>.jsonl`` or ``<id>.jsonl.gz``."""
    name = Path(path).name
    for suffix in (".jsonl.gz", ".jsonl"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return Path(path).stem


def read_session(path: str | Path) -> SessionRead:
    """Read a session log (plain or ``.gz``); a final line without its newline (cut by a
    crash) is skipped."""
    with open_log(path) as fh:
        raw = fh.read()
    lines = raw.split(b"\n")
    partial = lines[-1] != b""  # a complete file ends with "\n", leaving an empty tail
    messages: list[dict] = []
    bad = 0
    for line in lines[:-1]:
        if not line.strip():
            continue
        try:
            msg = json.loads(line)
        except ValueError:
            bad += 1
            continue
        if isinstance(msg, dict):
            messages.append(msg)
        else:
            bad += 1
    return SessionRead(messages, partial, bad)


def session_path(directory: str | Path, session_id: str) -> Path:
    """The log of ``session_id`` (a unique prefix is enough), compressed or not."""
    directory = Path(directory)
    for suffix in (".jsonl.gz", ".jsonl"):
        exact = directory / f"{check_session_id(session_id)}{suffix}"
        if exact.is_file():
            return exact
    matches = [p for p in list_sessions(directory) if p.name.startswith(session_id)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise FileNotFoundError(f"no session {session_id!r} in {directory}")
    raise FileNotFoundError(f"{session_id!r} matches {len(matches)} sessions; give more of it")


def summarize(path: str | Path) -> dict[str, Any]:
    """What ``sessions list/show`` prints: model, streams, counts, label distribution."""
    read = read_session(path)
    msgs = read.messages
    hello = next((m for m in msgs if m.get("type") == "hello"), {})
    preds = [m for m in msgs if m.get("type") == "prediction"]
    streams: dict[str, dict[str, Any]] = {}
    for m in preds:
        s = streams.setdefault(m["stream"], {"windows": 0, "voiced": 0, "labels": {},
                                             "t_end": 0.0})
        s["windows"] += 1
        s["t_end"] = max(s["t_end"], m["t_end"])
        if m.get("voiced"):
            s["voiced"] += 1
            s["labels"][m["label"]] = s["labels"].get(m["label"], 0) + 1
    walls = [m["wall_time"] for m in msgs if isinstance(m.get("wall_time"), (int, float))]
    return {
        "session_id": session_id_of(path),
        "path": str(path),
        "model": (hello.get("model") or {}).get("name"),
        "started": min(walls) if walls else None,
        "ended": max(walls) if walls else None,
        "messages": len(msgs),
        "predictions": len(preds),
        "explanations": sum(m.get("type") == "explanation" for m in msgs),
        "errors": [m.get("message") for m in msgs if m.get("type") == "error"],
        "streams": streams,
        "partial_last_line": read.partial_last_line,
    }


def list_sessions(directory: str | Path) -> list[Path]:
    """One log per session, by id; the ``.gz`` when a crash mid-compression left both."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    logs: dict[str, Path] = {}
    for path in sorted(directory.glob("*.jsonl")) + sorted(directory.glob("*.jsonl.gz")):
        logs[session_id_of(path)] = path  # the .gz comes second and wins
    return [logs[k] for k in sorted(logs)]


def export_csv(path: str | Path, out: IO[str]) -> int:
    """Predictions as CSV, one row per window, a probability column per class; returns rows."""
    msgs = read_session(path).messages
    hello = next((m for m in msgs if m.get("type") == "hello"), {})
    classes = list((hello.get("model") or {}).get("classes") or [])
    preds = [m for m in msgs if m.get("type") == "prediction"]
    for m in preds:  # classes not in the card (should not happen) still get a column
        for k in m.get("probabilities") or {}:
            if k not in classes:
                classes.append(k)
    cols = ["stream", "seq", "t_start", "t_end", "wall_time", "voiced", "label", "confidence",
            "latency_ms"]
    writer = csv.writer(out)
    writer.writerow(cols + [f"p_{c}" for c in classes])
    for m in preds:
        probs = m.get("probabilities") or {}
        writer.writerow([m.get(c) for c in cols] + [probs.get(c, "") for c in classes])
    return len(preds)


#: Call columns of the dynamics CSV, then these for each side as ``s1_<field>``, ``s2_<field>``
#: (sides in the message's order: by channel, then caller before agent).
DYNAMICS_CALL_COLUMNS = ("call", "t_s", "wall_time", "interval_s", "final", "overlap_s",
                         "overlaps", "silence_s", "dead_air", "dead_air_s", "longest_silence_s")
DYNAMICS_SIDE_COLUMNS = ("stream", "role", "speaking", "talk_s", "talk_share",
                         "talk_share_recent", "interruptions", "loudness_dbfs",
                         "loudness_trend_db_per_min", "pitch_hz", "pitch_var_st", "rate_per_s")
DYNAMICS_MAX_SIDES = 2


def export_dynamics_csv(path: str | Path, out: IO[str]) -> int:
    """The calls' ``dynamics`` messages as CSV, one row per call per second (and the call's
    final partial second); empty cells for null. Returns the number of rows."""
    msgs = [m for m in read_session(path).messages if m.get("type") == "dynamics"]
    writer = csv.writer(out)
    writer.writerow([*DYNAMICS_CALL_COLUMNS, *(f"s{i + 1}_{c}" for i in range(DYNAMICS_MAX_SIDES)
                                               for c in DYNAMICS_SIDE_COLUMNS)])
    for m in msgs:
        row = [_cell(m.get(c, False if c == "final" else None)) for c in DYNAMICS_CALL_COLUMNS]
        sides = list(m.get("sides") or [])[:DYNAMICS_MAX_SIDES]
        sides += [{}] * (DYNAMICS_MAX_SIDES - len(sides))
        row += [_cell(side.get(c)) for side in sides for c in DYNAMICS_SIDE_COLUMNS]
        writer.writerow(row)
    return len(msgs)


def _cell(value: Any) -> Any:
    return "" if value is None else value


class AudioRecorder:
    """``--record-audio``: each stream's audio (model rate, mono) as FLAC in
    ``sessions/<session-id>/<stream>.flac``."""

    def __init__(self, directory: str | Path, session_id: str, sample_rate: int) -> None:
        self.directory = Path(directory) / check_session_id(session_id)
        self.sample_rate = int(sample_rate)
        self._files: dict[str, Any] = {}

    def _file(self, stream_id: str) -> Any:
        import soundfile as sf

        f = self._files.get(stream_id)
        if f is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in stream_id)
            path = self.directory / f"{safe}.flac"
            n = 1
            while path.exists():  # a stream id reused in one session: never overwrite
                n += 1
                path = self.directory / f"{safe}-{n}.flac"
            f = sf.SoundFile(str(path), "w", samplerate=self.sample_rate, channels=1,
                             format="FLAC", subtype="PCM_16")
            self._files[stream_id] = f
        return f

    def write(self, stream_id: str, samples: np.ndarray) -> None:
        self._file(stream_id).write(np.clip(samples, -1.0, 1.0))

    def close_stream(self, stream_id: str) -> None:
        f = self._files.pop(stream_id, None)
        if f is not None:
            f.close()

    def close(self) -> None:
        for sid in list(self._files):
            self.close_stream(sid)

    def paths(self) -> Iterator[Path]:
        return iter(sorted(self.directory.glob("*.flac")))
