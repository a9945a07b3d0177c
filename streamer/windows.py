"""Slide fixed-length windows over one stream's audio.

Window length and rate come from the model card, the hop from ``--hop``. Each window carries
its place in stream time (``t_start = seq * hop``) and the wall/monotonic time at which its last
sample entered the daemon, which is where latency is measured from.

End of stream (``flush``): if samples remain that no window has covered yet (or the stream was
shorter than one window, as every TESS clip is), one last window is emitted at the next hop
position, zero-padded to full length; ``n_valid`` says how many of its samples are real. Its
``t_end`` is still ``t_start + window_s`` (nominal), so ``t_start`` always steps by the hop.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Window:
    """One window of one stream, ready for inference."""

    stream_id: str
    seq: int
    t_start: float  # seconds of stream time
    t_end: float
    wall_time: float  # time.time() when its last sample entered the daemon
    arrived: float  # time.perf_counter() at the same moment (for latency_ms)
    samples: np.ndarray  # float32 [window_samples]
    start_sample: int  # index of samples[0] in the stream
    n_valid: int  # real samples (less than len(samples) only for a padded final window)


class Windower:
    """Per-stream sliding window: ``push`` chunks in, get the windows they complete."""

    def __init__(self, stream_id: str, sample_rate: int, window_s: float, hop_s: float) -> None:
        if hop_s <= 0 or window_s <= 0:
            raise ValueError("window_s and hop_s must be positive")
        self.stream_id = stream_id
        self.sample_rate = int(sample_rate)
        self.window_s = float(window_s)
        self.hop_s = float(hop_s)
        self.window_samples = int(round(window_s * sample_rate))
        self.hop_samples = max(1, int(round(hop_s * sample_rate)))
        self.seq = 0  # the next window's seq
        self._buf = np.zeros(0, dtype=np.float32)
        self._buf_start = 0  # stream index of _buf[0]
        self._total = 0  # samples pushed so far
        self._covered = 0  # stream index up to which emitted windows reach
        self._last_wall = 0.0
        self._last_arrived = 0.0

    @property
    def samples_seen(self) -> int:
        return self._total

    def _make(self, samples: np.ndarray, start: int, n_valid: int) -> Window:
        seq = self.seq
        self.seq += 1
        self._covered = start + n_valid
        t_start = start / self.sample_rate
        return Window(
            stream_id=self.stream_id, seq=seq, t_start=t_start, t_end=t_start + self.window_s,
            wall_time=self._last_wall, arrived=self._last_arrived, samples=samples,
            start_sample=start, n_valid=n_valid,
        )

    def push(
        self, chunk: np.ndarray, wall_time: float | None = None, arrived: float | None = None
    ) -> list[Window]:
        """Append a mono float32 chunk; return the windows it completes (maybe none)."""
        chunk = np.asarray(chunk, dtype=np.float32).reshape(-1)
        self._last_wall = time.time() if wall_time is None else wall_time
        self._last_arrived = time.perf_counter() if arrived is None else arrived
        if chunk.size == 0:
            return []
        self._buf = np.concatenate([self._buf, chunk]) if self._buf.size else chunk.copy()
        self._total += chunk.size
        out: list[Window] = []
        while True:
            start = self.seq * self.hop_samples
            if start + self.window_samples > self._total:
                break
            lo = start - self._buf_start
            out.append(self._make(self._buf[lo:lo + self.window_samples].copy(), start,
                                  self.window_samples))
        # Keep only what the next window needs (with hop > window, skip the gap entirely).
        keep_from = min(self.seq * self.hop_samples, self._total)
        if keep_from > self._buf_start:
            self._buf = self._buf[keep_from - self._buf_start:]
            self._buf_start = keep_from
        return out

    def flush(self) -> list[Window]:
        """End of stream: the zero-padded final window if samples remain uncovered."""
        start = self.seq * self.hop_samples
        if self._total <= self._covered or start >= self._total:
            return []
        lo = start - self._buf_start
        valid = self._buf[lo:]
        samples = np.zeros(self.window_samples, dtype=np.float32)
        samples[:valid.size] = valid
        win = self._make(samples, start, int(valid.size))
        self._buf = np.zeros(0, dtype=np.float32)
        self._buf_start = self._total
        return [win]
