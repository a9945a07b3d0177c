"""Fine-tuning the served encoder's second block on many speakers: does it hear new voices
better than the frozen encoder? (an experiment of issue #13; ``python -m train.whisper_finetune``)

Why only block 2: the served model keeps blocks 1-2. Block 1's output for each clip's 3-s window
(clean and after the telephone round trip) is computed once and cached, so an epoch costs one
block's forward and backward per clip (about 1.6 GFLOP), which fits this 2-core machine; block 1
stays frozen. The head starts from the frozen recipe's logistic regression (same C), so epoch 0
*is* the frozen baseline on the same training speakers, and every later epoch is compared with it.

Choices are made on validation speakers from the training side only (one of
``crosscorpus.inner_folds``' three groups): the epoch with the best mean validation UAR over clean
and telephone audio is the one whose test figures count. Results are one JSON per split in
``--out`` (a finished split is skipped when the command is run again).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from train import crosscorpus as cc
from train.audio import load_audio
from train.cache import file_key
from train.corpus import Utterance, load_corpora
from train.embeddings import VARIANTS, window_of
from train.whisper import WhisperLogMel, load_encoder
from train.whisper_emotion import voiced_pool, voiced_weights

SERVED_C = 0.003  # the shipped recipe's C (chosen on training speakers in crosscorpus)


def block1_states(utts: Sequence[Utterance], encoder_path: str, variant: str,
                  cache_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """Block-1 output [n, T', D] float16 and voiced weights [n, T'] of each clip's window."""
    h = hashlib.sha256(json.dumps([variant, file_key(Path(encoder_path))]).encode())
    for u in utts:
        h.update(file_key(u.path).encode())
    path = cache_dir / f"block1-{variant}-{h.hexdigest()[:16]}.npz"
    if path.exists():
        with np.load(path) as z:
            return z["states"], z["weights"]
    encoder = load_encoder(encoder_path, 1).eval()
    front = WhisperLogMel(encoder.dims.n_mels)
    states, weights = [], []
    batch = 16
    with torch.inference_mode():
        for i in tqdm(range(0, len(utts), batch), desc=f"block 1 ({variant})", unit="batch"):
            waves = torch.from_numpy(np.stack([window_of(load_audio(u.path), variant)
                                               for u in utts[i:i + batch]]))
            mel = front(waves)
            x = encoder(mel)
            states.append(x.to(torch.float16).numpy())
            weights.append(voiced_weights(mel, x.size(1)).to(torch.uint8).numpy())
    out = np.concatenate(states), np.concatenate(weights)
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.savez(path, states=out[0], weights=out[1])
    return out


class Tail(nn.Module):
    """Block 2, voiced mean + std pooling, standardiser and linear head: what gets trained."""

    def __init__(self, block: nn.Module, mean: np.ndarray, std: np.ndarray,
                 weight: np.ndarray, bias: np.ndarray) -> None:
        super().__init__()
        self.block = block
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32))
        self.head = nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            self.head.weight.copy_(torch.as_tensor(weight))
            self.head.bias.copy_(torch.as_tensor(bias))

    def pooled(self, h1: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return voiced_pool(self.block(h1), w)

    def forward(self, h1: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return self.head((self.pooled(h1, w) - self.mean) / self.std)


def _batches(rows: np.ndarray, size: int) -> list[np.ndarray]:
    return [rows[i:i + size] for i in range(0, len(rows), size)]


def _inputs(data: dict, variant: str, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    states, weights = data[variant]
    return (torch.from_numpy(states[rows].astype(np.float32)),
            torch.from_numpy(weights[rows].astype(np.float32)))


def pooled_features(tail: Tail, data: dict, variant: str, rows: np.ndarray) -> np.ndarray:
    tail.eval()
    out = []
    with torch.inference_mode():
        for b in _batches(rows, 64):
            out.append(tail.pooled(*_inputs(data, variant, b)).numpy())
    return np.concatenate(out)


def score(tail: Tail, data: dict, pool: cc.Pool, rows: np.ndarray, classes: list[int]) -> dict:
    """``crosscorpus.metrics`` on clean and telephone audio, predictions restricted to
    ``classes`` (the classes the training side and the test set share)."""
    out = {}
    for variant in VARIANTS:
        feats = pooled_features(tail, data, variant, rows)
        with torch.no_grad():
            logits = tail.head((torch.from_numpy(feats) - tail.mean) / tail.std).numpy()
        allowed = np.full(logits.shape[1], -np.inf)
        allowed[classes] = 0.0
        out[variant] = cc.metrics(pool.label[rows], np.argmax(logits + allowed, axis=1),
                                  classes)
    return out


def run_split(pool: cc.Pool, data: dict, split: cc.Split, encoder_path: str, epochs: int,
              lr_block: float, lr_head: float, seed: int) -> dict:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    val_speakers = cc.inner_folds(pool.speaker[split.train])[0]
    val = split.train[np.isin(pool.speaker[split.train], val_speakers)]
    train = split.train[~np.isin(pool.speaker[split.train], val_speakers)]
    block = copy.deepcopy(load_encoder(encoder_path, 2).blocks[1])
    # Head init: the frozen recipe (standardise, weighted logistic regression, clean + phone).
    probe = Tail(block, np.zeros(768), np.ones(768), np.zeros((7, 768), np.float32),
                 np.zeros(7, np.float32))
    x = np.concatenate([pooled_features(probe, data, v, train) for v in VARIANTS])
    y = np.concatenate([pool.label[train]] * 2)
    w = np.concatenate([cc.balanced_weights(pool.corpus[train], pool.label[train])] * 2)
    head = cc.fit_head(x, y, w, SERVED_C)
    tail = Tail(block, head.mean, head.std, head.weight.astype(np.float32),
                head.bias.astype(np.float32))
    train_classes = sorted(set(pool.label[train].tolist()))
    weights = torch.from_numpy(cc.balanced_weights(pool.corpus[train], pool.label[train])
                               ).float()
    opt = torch.optim.AdamW([{"params": tail.block.parameters(), "lr": lr_block},
                             {"params": tail.head.parameters(), "lr": lr_head}],
                            weight_decay=0.01)
    history = []

    def evaluate(epoch: int, loss: float | None, seconds: float) -> None:
        val_scores = score(tail, data, pool, val, sorted(set(pool.label[val].tolist())))
        tests = {}
        for name, rows in split.tests.items():
            classes = sorted(set(train_classes) & set(pool.label[rows].tolist()))
            tests[name] = score(tail, data, pool, rows, classes)
        history.append({"epoch": epoch, "loss": loss, "seconds": seconds,
                        "val_uar": float(np.mean([val_scores[v]["uar"] for v in VARIANTS])),
                        "val": val_scores, "tests": tests})
        line = ", ".join(f"{n} {100 * t['clean']['accuracy']:.1f}/"
                         f"{100 * t['clean']['uar']:.1f}" for n, t in tests.items())
        print(f"  epoch {epoch}: val UAR {100 * history[-1]['val_uar']:.1f} %; test acc/UAR "
              f"{line} %", flush=True)

    evaluate(0, None, 0.0)
    for epoch in range(1, epochs + 1):
        tail.train()
        t0 = time.time()
        order = rng.permutation(len(train))
        losses = []
        for b in tqdm(_batches(order, 32), desc=f"epoch {epoch}", unit="batch", leave=False):
            rows = train[b]
            variant = VARIANTS[int(rng.integers(len(VARIANTS)))]
            h1, wv = _inputs(data, variant, rows)
            logits = tail(h1, wv)
            loss = (F.cross_entropy(logits, torch.from_numpy(pool.label[rows]),
                                    reduction="none") * weights[b]).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        evaluate(epoch, float(np.mean(losses)), time.time() - t0)
    best = max(history, key=lambda r: r["val_uar"])
    return {"protocol": split.protocol, "split": split.name, "n_train": int(len(train)),
            "n_val": int(len(val)), "val_speakers": sorted(map(str, val_speakers)),
            "chosen_epoch": best["epoch"], "lr_block": lr_block, "lr_head": lr_head,
            "seed": seed, "history": history}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", nargs="+", required=True, help="NAME=PATH of each corpus")
    p.add_argument("--encoder", required=True)
    p.add_argument("--splits", nargs="+", default=["shipped", "ravdess-ai:0", "tess-si:1"],
                   help="PROTOCOL or PROTOCOL:INDEX of crosscorpus.splits")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--lr-block", type=float, default=3e-5)
    p.add_argument("--lr-head", type=float, default=3e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cache", type=Path, default=Path(".cache/finetune"))
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    utts = load_corpora(args.data)  # RAVDESS calm counts as neutral, as in the served recipe
    data = {v: block1_states(utts, args.encoder, v, args.cache) for v in VARIANTS}
    pool = cc.Pool(utts, {})
    args.out.mkdir(parents=True, exist_ok=True)
    for spec in args.splits:
        protocol, _, index = spec.partition(":")
        found = [s for s in cc.splits(pool, [protocol]) if s.protocol == protocol]
        chosen = [found[int(index)]] if index else found
        for split in chosen:
            name = f"{protocol}-{found.index(split)}-lr{args.lr_block:g}-s{args.seed}.json"
            path = args.out / name
            if path.exists():
                continue
            print(f"{protocol}: {split.name}", flush=True)
            result = run_split(pool, data, split, args.encoder, args.epochs, args.lr_block,
                               args.lr_head, args.seed)
            path.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
