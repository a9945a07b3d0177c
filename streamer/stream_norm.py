"""Per-stream normalisation: each voice standardised by its own running statistics.

A monitored stream is one voice (one track of a call). Models whose card has ``stream_norm``
(the Whisper-encoder model, ``train/whisper_emotion.py``) export, besides ``forward``:
``embed(wave) -> features``, ``stream_moments(count, sum, sum_sq) -> (mean, std)`` (the
running statistics shrunk towards the training speakers' average, so the first windows lean on
the prior) and ``classify_stream(features, mean, std) -> logits`` (a head trained on features
standardised per speaker). This module keeps the sums per stream and calls those three; the
arithmetic lives in the model file, next to the head it was trained for.

Only voiced windows update a stream's statistics (the engine never classifies the others),
and each window is classified with the statistics that include it, in seq order, so the result
does not depend on how windows were batched (tested). What it buys and costs (accuracy vs
seconds heard, on balanced and on skewed streams): ``benchmarks/stream_norm.py``.
"""

from __future__ import annotations

import numpy as np
import torch

from streamer.model import ServedModel

METHODS = ("embed", "stream_moments", "classify_stream", "explain_stream")


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
        self._sums: dict[str, tuple[int, torch.Tensor, torch.Tensor]] = {}

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
            feats = module.embed(x).double()
            counts = torch.empty(len(stream_ids), dtype=torch.float64)
            totals = torch.empty_like(feats)
            squares = torch.empty_like(feats)
            for i, sid in enumerate(stream_ids):
                n, s, sq = self._sums.get(sid) or (0, torch.zeros_like(feats[0]),
                                                   torch.zeros_like(feats[0]))
                n, s, sq = n + 1, s + feats[i], sq + feats[i] * feats[i]
                self._sums[sid] = (n, s, sq)
                counts[i], totals[i], squares[i] = n, s, sq
            mean, std = module.stream_moments(counts.float(), totals.float(), squares.float())
            logits = module.classify_stream(feats.float(), mean, std)
            probs = torch.softmax(logits, dim=-1)
        return probs.float().cpu().numpy(), mean.clone(), std.clone()


__all__ = ["METHODS", "StreamNorm", "supported"]
