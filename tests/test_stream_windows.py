"""The stream-window probe's feature maker: a speaker's clips become one stream, and every
voiced window gets the served model's pooled features and the stream protocol's label."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from train.audio import load_audio
from train.corpus import load_tess
from train.stream_eval import build_stream, window_labels
from train.stream_windows import TRAIN_HOP, WINDOW, stream_windows
from train.whisper_emotion import WhisperEmotionConfig, build


def test_stream_windows_match_the_stream_protocol(tess_dir: Path,
                                                  whisper_checkpoint: Path) -> None:
    utts = [u for u in load_tess(tess_dir) if u.speaker == "OAF"][:4]
    model = build(str(whisper_checkpoint), WhisperEmotionConfig(n_blocks=2, pooling="voiced"))
    x, y = stream_windows(model, utts, TRAIN_HOP, seed=3, desc="test")
    stream = build_stream([torch.from_numpy(load_audio(u.path)) for u in utts],
                          [u.label for u in utts], seed=3)
    starts, lab = window_labels(stream.labels, 7, WINDOW, TRAIN_HOP)
    keep = lab >= 0
    assert x.shape == (int(keep.sum()), 768) and np.array_equal(y, lab[keep].numpy())
    assert set(y.tolist()) <= {u.label for u in utts} and len(y) >= 4
    with torch.inference_mode():
        first = model.embed(stream.wave[int(starts[keep][0]):][:WINDOW].unsqueeze(0))
    assert np.allclose(x[0], first.numpy()[0], atol=1e-5)
