"""Past sessions: read a daemon's ``sessions/<id>.jsonl`` log (``<id>.jsonl.gz`` once the
daemon has closed it) back into a `Store`, and export predictions as CSV.

The log is one protocol message per line, appended as sent; after a crash its last line may be
partial, so a line that is not JSON is skipped (and counted), never fatal. Explanations are not
kept in memory: only their byte offsets are, and one is read back when the user opens it, so a
long session with an explanation for every window still loads in bounded memory.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dashboard.alerts import AlertEngine
from dashboard.state import Prediction, Store
from streamer import protocol

#: Windows kept per stream when reviewing (about 7 hours at a 0.5 s hop).
REVIEW_MAX_PREDICTIONS = 50_000


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:  # compressed or swept since it was listed
        return 0.0


def _stem(path: Path) -> str:
    """``<id>`` of ``<id>.jsonl`` or ``<id>.jsonl.gz``."""
    return path.name.removesuffix(".gz").removesuffix(".jsonl")


@dataclass
class Session:
    """A session log read back: its store, where each explanation is, and what was skipped."""

    path: Path
    store: Store
    explanation_offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    lines: int = 0
    skipped: list[str] = field(default_factory=list)

    @property
    def session_id(self) -> str:
        for src in self.store.sources.values():
            if src.hello:
                return str(src.hello.get("session_id", _stem(self.path)))
        return _stem(self.path)

    def explanation(self, stream_id: str, seq: int) -> dict[str, Any] | None:
        """The explanation of one window, read from the file on demand."""
        offset = self.explanation_offsets.get((stream_id, seq))
        if offset is None:
            return None
        with protocol.open_log(self.path) as fh:
            fh.seek(offset)
            return json.loads(fh.readline())

    def explained_seqs(self, stream_id: str) -> list[int]:
        return sorted(seq for sid, seq in self.explanation_offsets if sid == stream_id)


def list_sessions(directory: str | Path) -> list[Path]:
    """Session logs in ``directory``, newest first; one per session (the ``.gz`` when a crash
    during compression left both)."""
    d = Path(directory)
    if not d.is_dir():
        return []
    logs = {_stem(p): p for p in [*sorted(d.glob("*.jsonl")), *sorted(d.glob("*.jsonl.gz"))]}
    return sorted(logs.values(), key=_mtime, reverse=True)


def read_session(path: str | Path, alerts: AlertEngine | None = None,
                 max_predictions: int = REVIEW_MAX_PREDICTIONS) -> Session:
    """Read a session log; raises ValueError if the file holds no protocol message at all."""
    path = Path(path)
    source = f"session:{_stem(path)}"
    session = Session(path=path, store=Store(max_predictions=max_predictions,
                                             max_explanations=1, alerts=alerts))
    offset = 0
    with protocol.open_log(path) as fh:
        for number, raw in enumerate(fh, start=1):
            start, offset = offset, offset + len(raw)
            session.lines += 1
            text = raw.strip()
            if not text:
                continue
            try:
                msg = json.loads(text)
                kind = msg.get("type") if isinstance(msg, dict) else None
                if kind == "explanation":
                    # Indexed only; validated when opened (it holds two base64 frames).
                    session.explanation_offsets[(str(msg["stream"]), int(msg["seq"]))] = start
                    continue
                protocol.validate(msg, "server")
                session.store.apply(source, msg)
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                partial = not raw.endswith(b"\n")
                why = "partial last line (the daemon stopped mid-write)" if partial else str(exc)
                session.skipped.append(f"line {number}: {why[:200]}")
    if session.store.messages == 0 and not session.explanation_offsets:
        raise ValueError(f"{path.name} holds no protocol v1 message "
                         f"({len(session.skipped)} unreadable lines)")
    return session


def predictions_csv(predictions: Iterable[Prediction], classes: Sequence[str]) -> str:
    """Predictions as CSV text: one row per window, a probability column per class
    (empty for unvoiced windows, so a spreadsheet does not average silence in)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["stream", "seq", "t_start", "t_end", "wall_time", "voiced", "label",
                     "confidence", "latency_ms", *[f"p_{c}" for c in classes]])
    for p in predictions:
        writer.writerow([
            p.stream, p.seq, f"{p.t_start:.3f}", f"{p.t_end:.3f}", f"{p.wall:.3f}",
            int(p.voiced), p.label or "",
            "" if p.confidence is None else f"{p.confidence:.4f}",
            "" if p.latency_ms is None else f"{p.latency_ms:.1f}",
            *["" if c not in p.probs else f"{p.probs[c]:.4f}" for c in classes],
        ])
    return out.getvalue()
