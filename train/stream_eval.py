"""The stream protocol: how well a model does on what the streamer actually feeds it.

Held-out utterances are concatenated in a random (seeded) order with short random gaps, under
a faint noise floor (a microphone never gives digital silence). The streamer's window (3 s)
slides over the result with its hop (0.5 s); each window is scored against the emotion that
covers most of its *voiced* samples, and windows with no voiced sample are skipped (there is
nothing to be right about). Window accuracy is the headline; a window usually straddles two
utterances, so it is lower than per-clip accuracy by construction.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from train.augment import coloured_noise, db_to_amp

FRAME = 400  # 25 ms at 16 kHz: the voiced-activity frame


def voiced_mask(
    clip: torch.Tensor, frame: int = FRAME, threshold_db: float = -35.0
) -> torch.Tensor:
    """Per-sample bool: inside a frame whose energy is within ``threshold_db`` of the loudest.

    TESS clips carry leading and trailing silence; only the speech decides a window's label.
    """
    n = clip.numel()
    n_frames = max(1, (n + frame - 1) // frame)
    padded = torch.nn.functional.pad(clip, (0, n_frames * frame - n))
    energy = padded.view(n_frames, frame).pow(2).mean(dim=1)
    db = 10.0 * torch.log10(energy.clamp_min(1e-12))
    voiced = db >= db.max() + threshold_db
    return voiced.repeat_interleave(frame)[:n]


@dataclass
class Stream:
    """A concatenated stream and its per-sample labels (-1 = gap or unvoiced)."""

    wave: torch.Tensor
    labels: torch.Tensor
    sample_rate: int
    gap_s: tuple[float, float] = (0.2, 0.8)
    floor_dbfs: float = -65.0


def build_stream(
    clips: Sequence[torch.Tensor],
    labels: Sequence[int],
    sample_rate: int = 16_000,
    gap_s: tuple[float, float] = (0.2, 0.8),
    floor_dbfs: float = -65.0,
    seed: int = 0,
    shuffle: bool = True,
) -> Stream:
    """Concatenate clips in a seeded random order (``shuffle=False``: the order given) with
    random gaps, over a pink noise floor."""
    if len(clips) != len(labels) or not clips:
        raise ValueError("build_stream needs as many labels as clips, and at least one clip")
    gen = torch.Generator().manual_seed(seed)
    order = (torch.randperm(len(clips), generator=gen).tolist() if shuffle
             else list(range(len(clips))))
    waves: list[torch.Tensor] = []
    labs: list[torch.Tensor] = []
    for i in order:
        u = float(torch.rand(1, generator=gen))
        gap = int(sample_rate * (gap_s[0] + (gap_s[1] - gap_s[0]) * u))
        waves.append(torch.zeros(gap))
        labs.append(torch.full((gap,), -1, dtype=torch.long))
        clip = clips[i].float()
        lab = torch.full((clip.numel(),), int(labels[i]), dtype=torch.long)
        lab[~voiced_mask(clip)] = -1
        waves.append(clip)
        labs.append(lab)
    wave = torch.cat(waves)
    wave = wave + db_to_amp(floor_dbfs) * coloured_noise(wave.numel(), 1.0, gen)
    return Stream(wave=wave, labels=torch.cat(labs), sample_rate=sample_rate, gap_s=gap_s,
                  floor_dbfs=floor_dbfs)


def window_labels(
    labels: torch.Tensor, n_classes: int, window: int, hop: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Start sample and majority-voiced label of every window (-1 where nothing is voiced)."""
    if labels.numel() < window:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    starts = torch.arange(0, labels.numel() - window + 1, hop)
    # Class counts per block of gcd(window, hop) samples (bincount: no [N, C] one-hot in
    # memory for hour-long streams), then summed over the blocks each window spans.
    block = math.gcd(window, hop)
    n_blocks = labels.numel() // block
    idx = torch.arange(n_blocks * block) // block
    flat = idx * (n_classes + 1) + (labels[: n_blocks * block].clamp_min(-1) + 1)
    per_block = torch.bincount(flat, minlength=n_blocks * (n_classes + 1))
    per_block = per_block.view(n_blocks, n_classes + 1)
    cum = torch.cat([torch.zeros(1, n_classes + 1, dtype=torch.long), per_block.cumsum(0)])
    first = starts // block
    counts = cum[first + window // block] - cum[first]  # [W, C+1]; column 0 = unvoiced
    voiced = counts[:, 1:]
    lab = voiced.argmax(dim=1)
    lab[voiced.sum(dim=1) == 0] = -1
    return starts, lab


def voiced_windows(stream: Stream, n_classes: int, window: int, hop: int
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Start sample and label of every window of ``stream`` with a voiced sample: the windows
    the stream protocol scores (and the stream windows a head may train on)."""
    starts, lab = window_labels(stream.labels, n_classes, window, hop)
    keep = lab >= 0
    return starts[keep], lab[keep]


def evaluate_stream(
    predict: Callable[[torch.Tensor], torch.Tensor],
    stream: Stream,
    n_classes: int,
    window_s: float = 3.0,
    hop_s: float = 0.5,
    batch_size: int = 32,
) -> dict:
    """Window accuracy of ``predict`` (wave [B, N] -> probabilities [B, C]) over a stream."""
    window = int(round(window_s * stream.sample_rate))
    hop = int(round(hop_s * stream.sample_rate))
    starts, lab = voiced_windows(stream, n_classes, window, hop)
    preds: list[torch.Tensor] = []
    with torch.no_grad():
        for i in range(0, starts.numel(), batch_size):
            chunk = starts[i:i + batch_size].tolist()
            batch = torch.stack([stream.wave[s:s + window] for s in chunk])
            preds.append(predict(batch).argmax(dim=1))
    pred = torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long)
    confusion = np.zeros((n_classes, n_classes), dtype=int)
    for t, p in zip(lab.tolist(), pred.tolist(), strict=True):
        confusion[t, p] += 1
    n = int(lab.numel())
    return {
        "protocol": (f"stream: held-out utterances concatenated with {stream.gap_s[0]}-"
                     f"{stream.gap_s[1]} s gaps under a {stream.floor_dbfs} dBFS floor; window "
                     f"{window_s} s, hop {hop_s} s; label = emotion "
                     "covering most of the window's voiced samples"),
        "accuracy": float((pred == lab).float().mean()) if n else float("nan"),
        "n_windows": n,
        "confusion": confusion.tolist(),
    }


__all__ = ["Stream", "build_stream", "evaluate_stream", "voiced_mask", "voiced_windows",
           "window_labels"]
