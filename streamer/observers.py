"""What the daemon tells the modules that watch its streams besides the model (conversation
dynamics, and whatever comes next), so each such capability lives in its own module and
``daemon.py`` only calls this one interface.

All four calls run in the daemon's event loop and must not block: an observer does per-chunk
work that costs microseconds, and hands anything heavier to its own thread.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import numpy as np

log = logging.getLogger("streamer.observers")


class StreamObserver(Protocol):
    def stream_started(self, info: dict[str, Any]) -> None:
        """A stream was announced (``protocol.stream_info``, with ``call`` for a call's side)."""

    def audio(self, stream_id: str, samples: np.ndarray, start_sample: int,
              wall_time: float) -> None:
        """Consecutive float32 mono samples at the model's rate, as they arrive."""

    def stream_ended(self, stream_id: str) -> None:
        """The stream's last prediction has been published."""

    def tick(self, wall_time: float) -> list[dict[str, Any]]:
        """Called about once a second, and once more at shutdown after every stream has
        ended; protocol messages to publish."""


class Observers:
    """Fans each call out to every observer; one observer's bug is logged (once per kind of
    call) and never reaches the daemon or the others."""

    def __init__(self, observers: list[StreamObserver] | None = None) -> None:
        self.items: list[StreamObserver] = list(observers or [])
        self._failed: set[tuple[int, str]] = set()

    def _call(self, name: str, *args: Any) -> list[Any]:
        out = []
        for obs in self.items:
            try:
                out.append(getattr(obs, name)(*args))
            except Exception:
                key = (id(obs), name)
                if key not in self._failed:
                    self._failed.add(key)
                    log.exception("%s.%s failed", type(obs).__name__, name)
        return out

    def stream_started(self, info: dict[str, Any]) -> None:
        self._call("stream_started", info)

    def audio(self, stream_id: str, samples: np.ndarray, start_sample: int,
              wall_time: float) -> None:
        if self.items:
            self._call("audio", stream_id, samples, start_sample, wall_time)

    def stream_ended(self, stream_id: str) -> None:
        self._call("stream_ended", stream_id)

    def tick(self, wall_time: float) -> list[dict[str, Any]]:
        return [msg for msgs in self._call("tick", wall_time) for msg in (msgs or [])]
