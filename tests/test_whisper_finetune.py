"""The fine-tuning experiment's pieces: cached block-1 states + Tail reproduce the served
model's block-2 voiced features (so epoch 0 is the frozen baseline), and training moves only
block 2 and the head."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch

from train.audio import load_audio
from train.corpus import load_tess
from train.embeddings import window_of
from train.whisper import WhisperLogMel, load_encoder
from train.whisper_emotion import block_features
from train.whisper_finetune import Tail, block1_states


def test_tail_on_cached_block1_equals_the_served_block2_features(
        tess_dir: Path, whisper_checkpoint: Path, tmp_path: Path) -> None:
    utts = load_tess(tess_dir)[:3]
    states, weights = block1_states(utts, str(whisper_checkpoint), "clean", tmp_path)
    assert states.shape == (3, 150, 384) and states.dtype == np.float16
    again = block1_states(utts, str(whisper_checkpoint), "clean", tmp_path)  # from the cache
    assert np.array_equal(again[0], states)

    encoder = load_encoder(whisper_checkpoint, 2).eval()
    waves = torch.from_numpy(np.stack([window_of(load_audio(u.path)) for u in utts]))
    with torch.inference_mode():
        served = block_features(encoder, WhisperLogMel(), waves)[:, 1, 1]  # voiced, block 2
    tail = Tail(copy.deepcopy(encoder.blocks[1]), np.zeros(768), np.ones(768),
                np.zeros((7, 768), np.float32), np.zeros(7, np.float32)).eval()
    with torch.inference_mode():
        ours = tail.pooled(torch.from_numpy(states.astype(np.float32)),
                           torch.from_numpy(weights.astype(np.float32)))
    # float16 cache of block 1: close, not bit-equal
    assert torch.allclose(ours, served, atol=0.05, rtol=0.02)
    assert float((ours - served).abs().mean()) < 5e-3

    # one step changes block 2 and the head (a non-zero head, so the block gets a gradient)
    with torch.no_grad():
        tail.head.weight.normal_(0, 0.1)
    opt = torch.optim.SGD(tail.parameters(), lr=0.1)
    before = copy.deepcopy(tail.state_dict())
    tail.train()
    logits = tail(torch.from_numpy(states.astype(np.float32)),
                  torch.from_numpy(weights.astype(np.float32)))
    loss = torch.nn.functional.cross_entropy(logits, torch.zeros(3, dtype=torch.long))
    loss.backward()
    opt.step()
    after = tail.state_dict()
    assert not torch.equal(before["head.weight"], after["head.weight"])
    assert not torch.equal(before["block.mlp.0.weight"], after["block.mlp.0.weight"])
    assert torch.equal(before["mean"], after["mean"])
