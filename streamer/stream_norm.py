"""Per-stream normalisation: each voice standardised by its own running statistics.

A monitored stream is one voice (one track of a call). Models whose card has ``stream_norm``
(the Whisper-encoder model, ``train/whisper_emotion.py``) export, besides ``forward``:
``embed(wave) -> features``, ``stream_moments(count, sum, sum_sq) -> (mean, std)`` (the
running statistics shrunk towards the training speakers' average, so the first windows lean on
the prior) and ``classify_stream(features, mean, std) -> logits`` (a head trained on features
standardised per speaker). This module keeps the sums per stream and calls those three; the
arithmetic lives in the model file, next to the head it was trained for.

A call is rarely balanced over emotions, and plain running statistics of a caller who is angry
most of the call standardise the anger away. So each emotion weighs the same
(``balanced_moments``): the sums are kept per emotion, each window counted towards the emotions
the model's global head (``classify``) gives it, and the stream's moments are the average of
the per-emotion moments. Chosen on validation speakers of the shipped training side
(``benchmarks/stream_norm.py --validation``, mean over balanced, 70 %-neutral and 70 %-angry
streams: 73.9 % of windows right vs 67.7 % with plain moments).

Only voiced windows update a stream's statistics (the engine never classifies the others),
and each window is classified with the statistics that include it, in seq order, so the result
does not depend on how windows were batched (tested). What it buys and costs (accuracy vs
seconds heard, on balanced and on skewed streams): ``benchmarks/stream_norm.py``.
"""

from __future__ import annotations

import numpy as np
import torch

from streamer.model import ServedModel

METHODS = ("embed", "classify", "stream_moments", "classify_stream", "explain_stream")
#: An emotion heard in n windows weighs n / (n + BALANCE_ALPHA) in a stream's moments, so one
#: stray window does not count as a whole emotion (fixed, not tuned).
BALANCE_ALPHA = 1.0


def balanced_moments(counts: np.ndarray, totals: np.ndarray, squares: np.ndarray,
                     alpha: float = BALANCE_ALPHA) -> tuple[np.ndarray, np.ndarray]:
    """(mean, mean square) [..., D] of a stream with each emotion weighing the same, from its
    per-emotion soft counts [..., C] and sums of features and squares [..., C, D]."""
    w = counts / (counts + alpha)
    per_class = 1.0 / np.maximum(counts, 1e-12)[..., None]
    norm = w.sum(-1)[..., None]
    return ((w[..., None] * totals * per_class).sum(-2) / norm,
            (w[..., None] * squares * per_class).sum(-2) / norm)


def supported(model: ServedModel) -> bool:
    """Whether the model file can normalise per stream (card and methods agree)."""
    return bool(model.card.get("stream_norm")) and all(hasattr(model.module, m) for m in METHODS)


class StreamNorm:
    """Running feature sums per stream; ``predict`` classifies windows with them."""

    def __init__(self, model: ServedModel) -> None:
        if not supported(model):
            raise ValueError(f"{model.path}: the model has no per-stream normalisation "
                             f"(card 'stream_norm' and methods {', '.join(METHODS)})")
        self.model = model
        # per stream: windows seen, and per emotion soft counts [C], sums [C, D], squares [C, D]
        self._sums: dict[str, tuple[int, np.ndarray, np.ndarray, np.ndarray]] = {}

    def windows_seen(self, stream_id: str) -> int:
        return self._sums[stream_id][0] if stream_id in self._sums else 0

    def end_stream(self, stream_id: str) -> None:
        self._sums.pop(stream_id, None)

    def predict(self, stream_ids: list[str], waves: np.ndarray | torch.Tensor
                ) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
        """(probabilities [B, C], mean [B, D], std [B, D]) for windows in arrival order; the
        statistics of row i include windows 0..i of its stream (and the stream's past)."""
        module = self.model.module
        x = self.model._as_batch(waves)
        with torch.inference_mode():
            feats = module.embed(x)
            weights = torch.softmax(module.classify(feats), dim=-1).double().cpu().numpy()
            f = feats.double().cpu().numpy()
            counts = np.empty(len(stream_ids))
            totals = np.empty_like(f)
            squares = np.empty_like(f)
            for i, sid in enumerate(stream_ids):
                n, c, s, sq = self._sums.get(sid) or (
                    0, np.zeros(weights.shape[1]), np.zeros((weights.shape[1], f.shape[1])),
                    np.zeros((weights.shape[1], f.shape[1])))
                w = weights[i][:, None]
                n, c, s, sq = n + 1, c + weights[i], s + w * f[i], sq + w * f[i] * f[i]
                self._sums[sid] = (n, c, s, sq)
                mean, square = balanced_moments(c, s, sq)
                # the model's shrinkage takes sums over n windows: n x the balanced moments
                counts[i], totals[i], squares[i] = n, n * mean, n * square
            mean, std = module.stream_moments(*(torch.from_numpy(a).float().to(feats.device)
                                                for a in (counts, totals, squares)))
            logits = module.classify_stream(feats.float(), mean, std)
            probs = torch.softmax(logits, dim=-1)
        return probs.float().cpu().numpy(), mean.clone(), std.clone()


__all__ = ["BALANCE_ALPHA", "METHODS", "StreamNorm", "balanced_moments", "supported"]
