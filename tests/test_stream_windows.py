"""Stream-window features (``train.embeddings.embed_stream``): a speaker's clips become one
stream, and every voiced window gets the encoder's pooled features and the stream protocol's
label -- what the served head trains on beside its clips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from train.audio import load_audio
from train.corpus import load_tess
from train.embeddings import WINDOW_SAMPLES, embed_stream
from train.stream_eval import build_stream, voiced_windows
from train.stream_windows import BLOCK, TRAIN_HOP, VOICED, stream_windows
from train.telephone import telephone_band
from train.whisper_emotion import WhisperEmotionConfig, build


def test_stream_windows_match_the_stream_protocol(tess_dir: Path, whisper_checkpoint: Path,
                                                  tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMOTION_MONITOR_CACHE", str(tmp_path))
    utts = [u for u in load_tess(tess_dir) if u.speaker == "OAF"][:4]
    feats, y = embed_stream(utts, whisper_checkpoint, "clean", hop=TRAIN_HOP, seed=3,
                            progress=False)
    stream = build_stream([torch.from_numpy(load_audio(u.path)) for u in utts],
                          [u.label for u in utts], seed=3)
    starts, lab = voiced_windows(stream, 7, WINDOW_SAMPLES, TRAIN_HOP)
    assert feats.shape == (len(lab), 2, 4, 768) and np.array_equal(y, lab.numpy())
    assert set(y.tolist()) <= {u.label for u in utts} and len(y) >= 4
    # the served model's own embedding of the first window (block 2, voiced pooling)
    model = build(str(whisper_checkpoint), WhisperEmotionConfig(n_blocks=2, pooling="voiced"))
    with torch.inference_mode():
        first = model.embed(stream.wave[int(starts[0]):][:WINDOW_SAMPLES].unsqueeze(0))
    assert np.allclose(feats[0, VOICED, BLOCK], first.numpy()[0], atol=1e-4)
    x, y2 = stream_windows(str(whisper_checkpoint), utts, TRAIN_HOP, seed=3)  # cached now
    assert np.array_equal(x, feats[:, VOICED, BLOCK]) and np.array_equal(y2, y)

    # the telephone band goes over the whole stream, as a recorded call does; same windows
    phone, y3 = embed_stream(utts, whisper_checkpoint, "ulaw", hop=TRAIN_HOP, seed=3,
                             progress=False)
    assert np.array_equal(y3, y) and not np.allclose(phone, feats, atol=1e-3)
    wave = telephone_band(stream.wave.numpy(), codec="ulaw")
    with torch.inference_mode():
        first = model.embed(torch.from_numpy(wave[int(starts[0]):][:WINDOW_SAMPLES])[None])
    assert np.allclose(phone[0, VOICED, BLOCK], first.numpy()[0], atol=1e-4)
    with pytest.raises(ValueError, match="variant"):
        embed_stream(utts, whisper_checkpoint, "alaw")
