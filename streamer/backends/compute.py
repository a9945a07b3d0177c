"""What a Serve replica (and the daemon's local fallback) does with a chunk of voiced windows:
one batched forward for the probabilities, one batched Grad-CAM for the rows asked for.

The same calls as ``streamer.engine.Engine`` (``ServedModel.predict``,
``gradcam.explain_windows(metrics=False)``, ``gradcam.explanation_payload``), so a window gives
the same messages whichever side of the wire computed it.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np

from streamer.backends.wire import Chunk
from streamer.model import ServedModel

log = logging.getLogger(__name__)


def file_sha256(path: str | Path) -> str:
    """The model file's identity: replicas and daemons compare it, the card carries it."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class Compute:
    """Predictions and explanation messages for chunks of windows, with one loaded model."""

    def __init__(self, model: ServedModel, sha256: str, max_batch: int = 64,
                 explain_drops: bool = False) -> None:
        self.model = model
        self.sha256 = sha256
        self.max_batch = max(1, max_batch)
        self.explain_drops = explain_drops
        self.identity = {"name": str(model.card.get("name", "")),
                         "version": str(model.card.get("version", "")), "sha256": sha256}

    def warmup(self) -> None:
        """The TorchScript executor's first calls are slow (see ``Engine.warmup``)."""
        zeros = np.zeros((2, self.model.window_samples), dtype=np.float32)
        for _ in range(2):
            self.run(Chunk(zeros, ["warmup", "warmup"], [0, 1], [0]))

    def run(self, chunk: Chunk) -> tuple[np.ndarray, list[dict], int]:
        """(probabilities ``[B, C]`` (``[0, C]`` unless ``chunk.predict``), explanation messages
        of ``chunk.explain`` in order, number of failed explanations). An explanation failure
        costs the explanations only."""
        probs = np.concatenate([self.model.predict(chunk.waves[lo:lo + self.max_batch])
                                for lo in range(0, chunk.n, self.max_batch)]) \
            if chunk.n and chunk.predict else np.zeros((0, len(self.model.classes)), np.float32)
        msgs: list[dict] = []
        errors = 0
        for lo in range(0, len(chunk.explain), self.max_batch):
            rows = chunk.explain[lo:lo + self.max_batch]
            try:
                msgs += self._explain(chunk, rows)
            except Exception:
                errors += len(rows)
                log.exception("Grad-CAM failed for %d window(s); predictions were sent",
                              len(rows))
        return probs, msgs, errors

    def _explain(self, chunk: Chunk, rows: list[int]) -> list[dict]:
        from streamer import gradcam

        expls = gradcam.explain_windows(self.model, chunk.waves[rows],
                                        metrics=self.explain_drops)
        return [gradcam.explanation_payload(e, chunk.streams[i], chunk.seqs[i], self.model.card)
                for e, i in zip(expls, rows, strict=True)]
