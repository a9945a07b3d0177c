"""Frozen Whisper-encoder features of every clip, per block, cached: what the heads train on.

A clip becomes the served model's input first: one 3-s window, the clip centred in it with the
evaluation floor (``train.augment.eval_window``; longer clips are centre-cropped), optionally
through the telephone band (``train.telephone``). Then the encoder runs once and every block's
output is pooled (mean + std over time), so choosing a block costs no second pass.

Cache: one ``.npz`` per (corpus files, variant, encoder checkpoint, settings) under
``$EMOTION_MONITOR_CACHE/embeddings`` (default ``.cache/embeddings``); a changed file, variant
or checkpoint gives a new key.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from train.audio import AudioError, load_audio
from train.augment import eval_window
from train.cache import file_key
from train.corpus import Utterance
from train.telephone import telephone_band
from train.whisper import WhisperLogMel, load_encoder
from train.whisper_emotion import block_features

VARIANTS = ("clean", "ulaw")  # ulaw: after an 8-kHz G.711 mu-law round trip
WINDOW_SAMPLES = 48_000
CACHE_VERSION = 2


def default_cache_dir() -> Path:
    return Path(os.environ.get("EMOTION_MONITOR_CACHE", ".cache")) / "embeddings"


def window_of(wave: np.ndarray, variant: str = "clean", n_samples: int = WINDOW_SAMPLES
              ) -> np.ndarray:
    """The served model's view of a clip: a centred 3-s window, then the variant's channel."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    window = eval_window(torch.from_numpy(np.asarray(wave, dtype=np.float32)), n_samples).numpy()
    return telephone_band(window, codec="ulaw") if variant == "ulaw" else window


def _key(utts: Sequence[Utterance], variant: str, encoder_path: Path) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"variant": variant, "window": WINDOW_SAMPLES, "v": CACHE_VERSION,
                         "encoder": file_key(encoder_path)}).encode())
    for u in utts:
        h.update(file_key(u.path).encode())
    return h.hexdigest()[:20]


def embed_utterances(
    utts: Sequence[Utterance],
    encoder_path: str | Path,
    variant: str = "clean",
    cache_dir: str | Path | None = None,
    batch_size: int = 16,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """(features [n_kept, 2 poolings, n_blocks, 2D] float32, kept indices into ``utts``).

    Unreadable files are left out (their indices are missing from ``kept``) with a warning on
    the progress bar, never an exception: one bad file does not stop a run.
    """
    encoder_path = Path(encoder_path)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = root / f"{variant}-{_key(utts, variant, encoder_path)}.npz"
    if path.exists():
        with np.load(path) as z:
            return z["features"], z["kept"]
    encoder = load_encoder(encoder_path)
    front = WhisperLogMel(encoder.dims.n_mels)
    feats: list[np.ndarray] = []
    kept: list[int] = []
    bad: dict[str, str] = {}
    with torch.inference_mode(), tqdm(total=len(utts), desc=f"whisper features ({variant})",
                                      unit="clip", disable=not progress) as bar:
        for start in range(0, len(utts), batch_size):
            rows, windows = [], []
            for i in range(start, min(start + batch_size, len(utts))):
                try:
                    windows.append(window_of(load_audio(utts[i].path), variant))
                    rows.append(i)
                except AudioError as exc:
                    bad[str(utts[i].path)] = exc.cause
            if windows:
                out = block_features(encoder, front, torch.from_numpy(np.stack(windows)))
                feats.append(out.numpy())
                kept.extend(rows)
            bar.update(min(batch_size, len(utts) - start))
            if bad:
                bar.set_postfix(bad=len(bad))
    features = np.concatenate(feats) if feats else np.zeros((0, 2, 0, 0), np.float32)
    kept_arr = np.asarray(kept, dtype=np.int64)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, features=features, kept=kept_arr)
    tmp.replace(path)
    return features, kept_arr


__all__ = ["VARIANTS", "WINDOW_SAMPLES", "default_cache_dir", "embed_utterances", "window_of"]
