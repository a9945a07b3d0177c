"""Frozen Whisper-encoder features of every clip, per block, cached: what the heads train on.

Two kinds of input: a clip's centred window (``embed_utterances``), and the windows of a
speaker's clips made into one stream (``embed_stream``), which is what the daemon sees.

A clip becomes the served model's input first: one 3-s window, the clip centred in it with the
evaluation floor (``train.augment.eval_window``; longer clips are centre-cropped), optionally
through the telephone band (``train.telephone``). Then the encoder runs once and every block's
output is pooled (mean + std over time), so choosing a block costs no second pass.

Cache: one ``.npz`` per (corpus files, variant, encoder checkpoint, settings) under
``$EMOTION_MONITOR_CACHE/embeddings`` (default ``.cache/embeddings``); a changed file, variant
or checkpoint gives a new key.
"""

from __future__ import annotations

import functools
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
from train.corpus import EMOTIONS, Utterance
from train.stream_eval import build_stream, voiced_windows
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
    encoder, front = _frozen_encoder(str(encoder_path), file_key(encoder_path))
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


@functools.lru_cache(maxsize=2)
def _frozen_encoder(path: str, key: str) -> tuple[torch.nn.Module, WhisperLogMel]:
    """The encoder and its front-end, loaded once per checkpoint (``key``: its file identity)
    rather than once per corpus or speaker stream."""
    encoder = load_encoder(path)
    return encoder, WhisperLogMel(encoder.dims.n_mels)


def _run_encoder(path: Path, waves: list[np.ndarray], desc: str, batch_size: int,
                 progress: bool) -> np.ndarray:
    encoder, front = _frozen_encoder(str(path), file_key(path))
    feats = []
    with torch.inference_mode():
        for i in tqdm(range(0, len(waves), batch_size), desc=desc, unit="batch",
                      disable=not progress, leave=False):
            batch = torch.from_numpy(np.stack(waves[i:i + batch_size]))
            feats.append(block_features(encoder, front, batch).numpy())
    return np.concatenate(feats)


def embed_stream(
    utts: Sequence[Utterance],
    encoder_path: str | Path,
    variant: str = "clean",
    hop: int = 16_000,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    batch_size: int = 16,
    progress: bool = True,
    shuffle: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """(features [n_windows, 2 poolings, n_blocks, 2D], labels [n_windows]) of the voiced 3-s
    windows (every ``hop`` samples) of ``utts`` made into one stream
    (``train.stream_eval.build_stream``, seeded; ``shuffle=False`` keeps ``utts``' order), each
    labelled with the emotion covering most
    of its voiced samples. ``ulaw`` passes the whole stream through the telephone band, as a
    recorded call would. Every clip must be readable (a stream with a hole is another stream).
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    encoder_path = Path(encoder_path)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = _key(utts, f"stream-{variant}-hop{hop}-seed{seed}{'' if shuffle else '-ordered'}",
               encoder_path)
    path = root / f"stream-{variant}-{key}.npz"
    if path.exists():
        with np.load(path) as z:
            return z["features"], z["labels"]
    clips = [torch.from_numpy(load_audio(u.path)) for u in utts]
    stream = build_stream(clips, [u.label for u in utts], seed=seed, shuffle=shuffle)
    wave = stream.wave.numpy()
    if variant == "ulaw":
        wave = telephone_band(wave, codec="ulaw")
    starts, labels = voiced_windows(stream, len(EMOTIONS), WINDOW_SAMPLES, hop)
    waves = [wave[s:s + WINDOW_SAMPLES] for s in starts.tolist()]
    if waves:
        features = _run_encoder(encoder_path, waves, f"stream windows ({variant})", batch_size,
                                progress)
    else:
        features = np.zeros((0, 2, 0, 0), np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, features=features, labels=labels.numpy())
    tmp.replace(path)
    return features, labels.numpy()


__all__ = ["VARIANTS", "WINDOW_SAMPLES", "default_cache_dir", "embed_stream", "embed_utterances",
           "window_of"]
