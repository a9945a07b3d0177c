"""Inference for the windows that are ready: VAD, one batched forward, Grad-CAM every N.

Synchronous on purpose: the daemon calls :meth:`Engine.process` in a worker thread, so torch
work never blocks the event loop, and everything that is ready together (several streams, or a
burst from a fast replay) goes through the model as one batch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from streamer import protocol
from streamer.model import ServedModel
from streamer.stream_norm import StreamNorm
from streamer.vad import Vad, VadConfig
from streamer.windows import Window

log = logging.getLogger(__name__)

Message = dict[str, Any]


class Engine:
    """Turns windows into protocol messages: a ``prediction`` for every window (unvoiced ones
    ``voiced: false``, not classified) and an ``explanation`` for every ``explain_every``-th
    voiced window of each stream (0 = never).

    Live explanations carry the CAM metrics (peak, mean, area, entropy, focus region) but
    not the two confidence drops unless ``explain_drops``: the drops need two more forward
    passes per window over masked audio, which measured ~4x the cost of the Grad-CAM itself
    (26 vs 6 ms CPU per window for the tiny model); the protocol sends them as null.

    ``latency_ms`` is measured from ``window.arrived`` (the moment the window's last sample
    entered the daemon) to when its prediction is built, i.e. just before it is handed to the
    server. A batch's predictions are emitted before its Grad-CAM runs; a later batch waits
    for the worker, so Grad-CAM delays predictions only when it can't keep up. An explained
    window's prediction is the softmax of its explanation's own forward (:meth:`fuses`), so
    the model runs once per window, explained or not.
    """

    def __init__(self, model: ServedModel, vad: VadConfig | None = VadConfig(),
                 explain_every: int = 1, max_batch: int = 64, explain_drops: bool = False,
                 stream_norm: bool = False) -> None:
        if explain_every < 0:
            raise ValueError("explain_every must be >= 0")
        self.model = model
        # Per-stream normalisation: off by default. Measured (benchmarks/stream_norm.py, its
        # balanced moments): +8 points after a minute of a stream balanced over emotions, but
        # -1 to -3 points on a stream that is 70 % one emotion, which is what calls are.
        self.norm = StreamNorm(model) if stream_norm else None
        self.vad = Vad(vad, model.sample_rate) if vad is not None else None
        self.explain_every = explain_every
        self.max_batch = max(1, max_batch)
        self.explain_drops = explain_drops
        self._voiced_count: dict[str, int] = {}
        self._fuses: bool | None = None
        self.stats = {"windows": 0, "voiced": 0, "explained": 0, "explain_errors": 0}

    def warmup(self, batch_sizes: tuple[int, ...] = (1, 2, 4)) -> None:
        """Run the model (and Grad-CAM) once on silence before the first real window: the
        TorchScript executor profiles and optimises on its first calls (~0.2 s here), which
        would otherwise land on the first windows' latency."""
        zeros = np.zeros((max(batch_sizes), self.model.window_samples), dtype=np.float32)
        for b in batch_sizes:
            for _ in range(2):
                self.model.predict(zeros[:b])
        stats = None
        if self.norm is not None:  # warm the per-stream path too, then forget the stream
            for b in batch_sizes:
                for _ in range(2):
                    _, mean, std = self.norm.predict(["warmup"] * b, zeros[:b])
            stats = [(mean[0], std[0])]
            self.norm.end_stream("warmup")
        if self.explain_every:  # a failure is logged here and again with real windows
            self.fuses()
            warm = [Window("warmup", 0, 0.0, self.model.window_s, 0.0, 0.0, zeros[0], 0,
                           zeros.shape[1])]
            pending = self._start_explain(warm, stats)
            if pending is not None:
                self._finish_explain(pending, warm)
        self.stats = dict.fromkeys(self.stats, 0)

    def feed(self, stream_id: str, samples: np.ndarray, start_sample: int) -> None:
        """Optional: a stream's samples as they arrive (``start_sample`` = index of
        ``samples[0]`` in the stream). The VAD then scores them in the background, so a
        window's VAD is mostly done when it completes (lower latency). Cheap; call it from
        the event loop for every chunk."""
        if self.vad is not None:
            self.vad.feed(stream_id, samples, start_sample)

    def close(self) -> None:
        """Stop background work (the VAD thread that ``feed`` starts)."""
        if self.vad is not None:
            self.vad.close()

    def end_stream(self, stream_id: str) -> None:
        """Forget a stream's VAD state, explanation counter and normalisation statistics."""
        self._voiced_count.pop(stream_id, None)
        if self.norm is not None:
            self.norm.end_stream(stream_id)
        if self.vad is not None:
            self.vad.end_stream(stream_id)

    def voiced_fractions(self, windows: list[Window]) -> list[float]:
        if self.vad is None:
            return [1.0] * len(windows)
        return self.vad.voiced_fractions(windows)

    def _predict(self, windows: list[Window]) -> tuple[np.ndarray, list | None]:
        """Probabilities, and each window's stream statistics when normalising per stream."""
        out, stats = [], []
        for lo in range(0, len(windows), self.max_batch):
            part = windows[lo:lo + self.max_batch]
            batch = np.stack([w.samples for w in part])
            if self.norm is None:
                out.append(self.model.predict(batch))
                continue
            probs, mean, std = self.norm.predict([w.stream_id for w in part], batch)
            out.append(probs)
            stats += list(zip(mean, std, strict=True))
        probs = np.concatenate(out) if out else np.zeros((0, len(self.model.classes)))
        return probs, (stats if self.norm is not None else None)

    def process(self, windows: list[Window], emit: Callable[[Message], None] | None = None
                ) -> list[Message]:
        """Messages for ``windows`` (any mix of streams; each stream's windows in seq order).

        ``emit``, if given, receives each message as soon as it is built (predictions before
        the Grad-CAM of the same batch), so the caller can send them without waiting. Windows
        go through the model ``max_batch`` voiced windows at a time, so a burst's later
        predictions wait for the earlier part's Grad-CAM (bounded memory: the graph of an
        explained batch is held until its backward).
        """
        if not windows:
            return []
        messages: list[Message] = []

        def out(msg: Message) -> None:
            messages.append(msg)
            if emit is not None:
                emit(msg)

        fractions = self.voiced_fractions(windows)
        voiced = [self.vad.is_voiced(f) if self.vad else True for f in fractions]
        lo, n_voiced = 0, 0
        for i, is_voiced in enumerate(voiced):
            n_voiced += is_voiced
            if n_voiced == self.max_batch or i == len(windows) - 1:
                self._process_part(windows[lo:i + 1], voiced[lo:i + 1], out)
                lo, n_voiced = i + 1, 0
        return messages

    def fuses(self) -> bool:
        """Whether an explained window's prediction comes from its explanation's forward, so
        the model runs once for it, not twice (py-spy, every window explained: the separate
        prediction forward was 24 % of the daemon's CPU). Needs ``forward`` to be the softmax
        of ``explain``'s logits (checked once) and no per-stream normalisation (whose
        statistics must be updated by the prediction before the explanation reads them)."""
        if self._fuses is None:
            from streamer import gradcam

            try:
                self._fuses = self.norm is None and gradcam.explain_matches_forward(self.model)
            except Exception:
                log.exception("explain() failed on a noise window; predictions use forward()")
                self._fuses = False
            if not self._fuses and self.norm is None:
                log.warning("forward() is not softmax(explain()): explained windows run twice")
        return self._fuses

    def _wants_explanation(self, stream_id: str) -> bool:
        n = self._voiced_count.get(stream_id, 0)
        self._voiced_count[stream_id] = n + 1
        return self.explain_every > 0 and n % self.explain_every == 0

    def _process_part(self, windows: list[Window], voiced: list[bool],
                      out: Callable[[Message], None]) -> None:
        vw = [w for w, v in zip(windows, voiced, strict=True) if v]
        wants = [self._wants_explanation(w.stream_id) for w in vw]
        to_explain = [w for w, want in zip(vw, wants, strict=True) if want]
        # Fused: the explained windows' forward (with its graph) is their prediction too.
        pending = self._start_explain(to_explain) if to_explain and self.fuses() else None
        from_fused = [want and pending is not None for want in wants]
        probs, norm_stats = self._predict(
            [w for w, f in zip(vw, from_fused, strict=True) if not f])
        rows = iter(probs)
        fused_rows = iter(pending.probabilities if pending is not None else ())
        classes = self.model.classes
        k = 0
        for win, is_voiced in zip(windows, voiced, strict=True):
            self.stats["windows"] += 1
            row = None
            if is_voiced:
                row = next(fused_rows) if from_fused[k] else next(rows)
                k += 1
                self.stats["voiced"] += 1
            latency = (time.perf_counter() - win.arrived) * 1000.0
            out(protocol.prediction(win.stream_id, win.seq, win.t_start, win.t_end,
                                    win.wall_time, row, latency, classes, voiced=is_voiced))
        if to_explain and not self.fuses():  # not fused: Grad-CAM's own forward now
            stats = None if norm_stats is None else [
                st for st, want in zip(norm_stats, wants, strict=True) if want]
            pending = self._start_explain(to_explain, stats)
        if pending is not None:
            for msg in self._finish_explain(pending, to_explain):
                out(msg)

    def _start_explain(self, windows: list[Window], stats: list | None = None) -> Any:
        """Grad-CAM's forward (``gradcam.ExplainPass``), or None when it fails: a failure
        costs the explanations, not the predictions. ``stats``: each window's (mean, std)
        when normalising per stream."""
        try:
            import torch

            from streamer import gradcam

            stream_stats = None
            if stats:
                stream_stats = (torch.stack([m for m, _ in stats]),
                                torch.stack([s for _, s in stats]))
            return gradcam.start_explain(self.model, np.stack([w.samples for w in windows]),
                                         stream_stats=stream_stats)
        except Exception:
            self.stats["explain_errors"] += 1
            log.exception("Grad-CAM failed for %d window(s); predictions were sent",
                          len(windows))
            return None

    def _finish_explain(self, pending: Any, windows: list[Window]) -> list[Message]:
        """Grad-CAM's backward and the explanation messages (none if it fails)."""
        try:
            from streamer import gradcam

            expls = pending.finish(metrics=self.explain_drops)
            msgs = [gradcam.explanation_payload(e, w.stream_id, w.seq, self.model.card)
                    for e, w in zip(expls, windows, strict=True)]
        except Exception:
            self.stats["explain_errors"] += 1
            log.exception("Grad-CAM failed for %d window(s); predictions were sent",
                          len(windows))
            return []
        self.stats["explained"] += len(msgs)
        return msgs
