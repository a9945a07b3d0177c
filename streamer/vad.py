"""Voice activity per window: which windows hold enough speech to classify.

Two methods, both scoring the stream in fixed frames (32 ms) and caching the scores per stream,
so each sample is scored once however much consecutive windows overlap (a 3 s window with a
0.5 s hop would otherwise be scored six times):

- ``silero`` (default): silero-vad's own "sequence" ONNX model, which ships in its PyPI package
  (``load_silero_vad(sequence=True)``, run by onnxruntime, loaded locally). It is a recurrent
  model: a frame's score depends on the stream's history, so each stream keeps its own LSTM state
  and context. Scoring frames independently was measured to disagree with the stateful scores on
  half the frames of TESS, so we don't. The sequence model scores a block of frames in one call
  with the same per-frame probabilities as stepping the streaming model frame by frame (tested
  within 1e-5; 5e-7 measured on TESS), at ~0.09 ms of CPU per frame against ~0.4 ms for the
  TorchScript model stepped from Python (measured on this 2-core box), and onnxruntime releases
  the GIL while it runs.
  With ``feed``, frames are scored in the background as audio arrives, ahead of the window.
  16 kHz only (the rate the sequence model was exported for); other model rates use ``energy``.
- ``energy``: RMS of each frame above ``energy_db`` dBFS. Microseconds per window and needs no
  model; used when asked for, when silero-vad can't be loaded, or when the model's rate is
  not 16 kHz. Fooled by loud noise, which is why it is not the default.

A window is voiced when the fraction of its frames scored as speech (silero probability >=
``threshold``; energy above ``energy_db``) is at least ``min_voiced``. Zero padding at the end
of a stream counts as unvoiced.
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from streamer.windows import Window

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VadConfig:
    method: str = "silero"  # "silero" | "energy"
    threshold: float = 0.5  # silero speech probability per frame
    min_voiced: float = 0.1  # voiced fraction of a window to classify it
    energy_db: float = -45.0  # energy gate: frame RMS in dBFS

    def __post_init__(self) -> None:
        if self.method not in ("silero", "energy"):
            raise ValueError(f"VAD method must be 'silero' or 'energy', got {self.method!r}")
        if not 0.0 <= self.min_voiced <= 1.0:
            raise ValueError(f"min_voiced must be in [0, 1], got {self.min_voiced}")


# silero's sequence model: 512-sample frames at 16 kHz, each seen with the 64 samples before it
SILERO_RATE = 16000
SILERO_FRAME = 512
SILERO_CONTEXT = 64
SILERO_HIDDEN = 128
SILERO_MAX_FRAMES = 512  # frames per call (16 s): bounds the transient block in memory


def load_silero() -> Any:
    """An onnxruntime session (1 thread, quiet) on silero-vad's bundled sequence model.

    Built here rather than through ``load_silero_vad(sequence=True)`` only to set the session's
    log level (onnxruntime prints graph warnings otherwise). Importing silero_vad calls
    ``torch.set_num_threads(1)`` process-wide; we restore the caller's setting."""
    threads = torch.get_num_threads()
    try:
        import importlib.resources

        import onnxruntime as ort

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            import silero_vad  # noqa: F401  (the package that ships the model file)
        path = importlib.resources.files("silero_vad.data") / "silero_vad_16k_sequence.onnx"
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        return ort.InferenceSession(str(path), sess_options=opts,
                                    providers=["CPUExecutionProvider"])
    finally:
        torch.set_num_threads(threads)


@dataclass
class _StreamState:
    pos: int = 0  # stream index up to which samples were taken into frames
    pending: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    context: np.ndarray | None = None  # silero: the last SILERO_CONTEXT samples framed
    h: np.ndarray | None = None  # silero: LSTM state [1, 1, SILERO_HIDDEN]
    c: np.ndarray | None = None
    # (frame start index, speech score); a minute of frames at most, if windows stop coming
    scores: deque = field(default_factory=lambda: deque(maxlen=2048))
    fed: list[tuple[int, np.ndarray]] = field(default_factory=list)  # not yet framed


class Vad:
    """Voice activity for many streams; ``voiced_fractions(windows)`` for any mix of streams.

    Optionally ``feed`` each stream's samples as they arrive: a background thread then scores
    them every ``interval_s``, so when a window completes only its last few frames are left to
    score and the VAD adds well under a millisecond to its latency instead of a hop's worth
    (16 silero frames). Without ``feed`` everything is scored in
    ``voiced_fractions``. Thread-safe.
    """

    def __init__(self, config: VadConfig, sample_rate: int, interval_s: float = 0.1) -> None:
        self.config = config
        self.sample_rate = int(sample_rate)
        self.method = config.method
        self.interval_s = interval_s
        self._net: Any = None
        if self.method == "silero":
            if self.sample_rate != SILERO_RATE:
                log.warning("silero-vad needs 16 kHz (model rate %s): energy gate used",
                            self.sample_rate)
                self.method = "energy"
            else:
                try:
                    self._net = load_silero()
                except Exception as err:  # a broken install must not stop the daemon
                    log.warning("silero-vad unavailable (%s): energy gate used", err)
                    self.method = "energy"
        self.frame = SILERO_FRAME if self.method == "silero" else int(
            round(0.032 * self.sample_rate))
        self._streams: dict[str, _StreamState] = {}
        self._lock = threading.RLock()
        self._thread: threading.Thread | None = None
        self._inbox: deque[tuple[str, int, np.ndarray]] = deque()
        self._closed = threading.Event()

    # ------------------------------------------------------------------ streams
    def _state(self, stream_id: str, start: int) -> _StreamState:
        st = self._streams.get(stream_id)
        if st is None:
            st = self._streams[stream_id] = _StreamState(pos=start)
        return st

    def end_stream(self, stream_id: str) -> None:
        with self._lock:
            self._streams.pop(stream_id, None)

    def feed(self, stream_id: str, samples: np.ndarray, start_sample: int) -> None:
        """New samples of a stream (``start_sample`` = their index in the stream), to be
        scored in the background before their window is complete. Never blocks: a deque
        append (atomic), drained by whoever scores next."""
        self._inbox.append((stream_id, int(start_sample), samples))
        if self._thread is None and not self._closed.is_set():
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._background, name="vad",
                                                    daemon=True)
                    self._thread.start()

    def _drain(self) -> None:
        """Move fed chunks to their streams (under the lock)."""
        while self._inbox:
            stream_id, start, samples = self._inbox.popleft()
            self._state(stream_id, start).fed.append((start, samples))

    def close(self) -> None:
        """Stop the background thread (if ``feed`` started one)."""
        self._closed.set()
        if self._thread is not None:
            self._thread.join(5)

    def _background(self) -> None:
        while not self._closed.wait(self.interval_s):
            try:
                if not self._inbox:
                    continue
                with self._lock:
                    self._drain()
                    busy = [st for st in self._streams.values() if st.fed]
                    if busy:
                        self._score(busy)
            except Exception:  # the windows' own scoring will report it, if it persists
                log.exception("background VAD scoring failed")

    # ------------------------------------------------------------------ framing
    def _take(self, st: _StreamState, samples: np.ndarray, start: int) -> None:
        """Append the part of ``samples`` (stream index ``start``) not taken in yet."""
        end = start + samples.size
        if start > st.pos:  # a gap (hop > window, dropped audio): restart the history
            st.pos, st.pending = start, st.pending[:0]
            st.context = st.h = st.c = None
        if end > st.pos:
            new = np.asarray(samples[st.pos - start:], dtype=np.float32)
            st.pending = np.concatenate([st.pending, new]) if st.pending.size else new
            st.pos = end

    def _frames(self, st: _StreamState) -> tuple[np.ndarray, np.ndarray]:
        """Whole frames of the pending samples: ([n, frame], their start indices)."""
        for start, samples in st.fed:
            self._take(st, samples, start)
        st.fed.clear()
        n = st.pending.size // self.frame
        first = st.pos - st.pending.size
        frames = st.pending[: n * self.frame].reshape(n, self.frame)
        st.pending = st.pending[n * self.frame:].copy()
        return frames, first + self.frame * np.arange(n)

    def _score(self, states: list[_StreamState]) -> None:
        jobs = [(st, *self._frames(st)) for st in states]
        jobs = [j for j in jobs if len(j[1])]
        if not jobs:
            return
        if self.method == "silero":
            scores = self._score_silero([(st, f) for st, f, _ in jobs])
        else:
            scores = [self._score_energy(f) for _, f, _ in jobs]
        for (st, _, starts), sc in zip(jobs, scores, strict=True):
            st.scores.extend(zip(starts.tolist(), sc.tolist(), strict=True))

    def _score_energy(self, frames: np.ndarray) -> np.ndarray:
        rms = np.sqrt(np.mean(frames.astype(np.float64) ** 2, axis=1) + 1e-20)
        return (20 * np.log10(rms) >= self.config.energy_db).astype(np.float32)

    def _score_silero(self, jobs: list[tuple[_StreamState, np.ndarray]]) -> list[np.ndarray]:
        """Each stream's new frames through the sequence model, a block per call, from the
        stream's own LSTM state and context (what stepping frame by frame would give)."""
        out = []
        for st, frames in jobs:
            if st.h is None or st.c is None or st.context is None:
                st.h = np.zeros((1, 1, SILERO_HIDDEN), np.float32)
                st.c = np.zeros((1, 1, SILERO_HIDDEN), np.float32)
                st.context = np.zeros(SILERO_CONTEXT, np.float32)
            probs = []
            for lo in range(0, len(frames), SILERO_MAX_FRAMES):
                block = frames[lo:lo + SILERO_MAX_FRAMES]
                ctx = np.empty((len(block), SILERO_CONTEXT), np.float32)
                ctx[0] = st.context
                ctx[1:] = block[:-1, -SILERO_CONTEXT:]
                p, st.h, st.c = self._net.run(
                    ["speech_probs", "hn", "cn"],
                    {"input": np.concatenate([ctx, block], axis=1), "h": st.h, "c": st.c})
                st.context = block[-1, -SILERO_CONTEXT:].copy()
                probs.append(np.asarray(p, np.float32).reshape(-1))
            out.append(np.concatenate(probs))
        return out

    # ------------------------------------------------------------------ windows
    def voiced_fractions(self, windows: list[Window]) -> list[float]:
        """Fraction of each window's frames that hold speech (windows of a stream in order)."""
        thr = self.config.threshold if self.method == "silero" else 0.5
        with self._lock:
            self._drain()
            states: dict[str, _StreamState] = {}
            for win in windows:
                st = states[win.stream_id] = self._state(win.stream_id, win.start_sample)
                st.fed.append((win.start_sample, win.samples[:win.n_valid]))
            self._score(list(states.values()))
            result = []
            for win in windows:
                st = self._streams[win.stream_id]
                while st.scores and st.scores[0][0] < win.start_sample:
                    st.scores.popleft()
                end = win.start_sample + win.samples.size
                voiced = sum(1 for start, s in st.scores if start < end and s >= thr)
                result.append(min(1.0, voiced / max(1.0, win.samples.size / self.frame)))
        return result

    def is_voiced(self, fraction: float) -> bool:
        return fraction >= self.config.min_voiced
