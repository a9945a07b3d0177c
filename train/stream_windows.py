"""Does training the head on stream windows help on what the monitor is watched on? (an
experiment of issue #13; ``python -m train.stream_windows``)

The served head trains on one centred 3-s window per clip. The daemon's windows are not like
that: they slide every 0.5 s over a speaker's talk, so most hold the end of one utterance, a
pause and the start of the next. Here each training speaker's clips are concatenated into a
stream (``train.stream_eval.build_stream``: random order, short gaps, a faint noise floor), and
its windows (hop 1 s), labelled with the emotion covering most of their voiced samples, are
added to the clip windows (each half of the total weight; classes and corpora balanced within
each half). Both heads use the served recipe's frozen features (Whisper tiny blocks 1-2, voiced
pooling) and C. Scored on held-out speakers: their clips (centred windows) and the stream
protocol of ``train.whisper_train.stream_accuracy`` (held-out clips as one stream, hop 0.5 s).

One setting (mixing 1:1, the served C), not chosen on validation speakers: a probe of whether
the lever moves anything, not a model to ship. Results: JSON in ``--out``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from train import crosscorpus as cc
from train.audio import load_audio
from train.corpus import EMOTIONS, Utterance, load_corpora
from train.embeddings import embed_utterances
from train.stream_eval import build_stream, window_labels
from train.whisper_emotion import WhisperEmotion, WhisperEmotionConfig, build

SERVED_C = 0.003
WINDOW, TRAIN_HOP, TEST_HOP = 48_000, 16_000, 8_000
BLOCK, VOICED = 1, 1  # block 2, voiced pooling: the served recipe's features


def stream_windows(model: WhisperEmotion, utts: Sequence[Utterance], hop: int, seed: int,
                   desc: str) -> tuple[np.ndarray, np.ndarray]:
    """Pooled features and labels of the voiced windows of ``utts`` made into one stream."""
    clips = [torch.from_numpy(load_audio(u.path)) for u in utts]
    stream = build_stream(clips, [u.label for u in utts], seed=seed)
    starts, lab = window_labels(stream.labels, len(EMOTIONS), WINDOW, hop)
    keep = lab >= 0
    starts, lab = starts[keep].tolist(), lab[keep].numpy()
    feats = []
    with torch.inference_mode():
        for i in tqdm(range(0, len(starts), 32), desc=desc, unit="batch", leave=False):
            batch = torch.stack([stream.wave[s:s + WINDOW] for s in starts[i:i + 32]])
            feats.append(model.embed(batch).numpy())
    return np.concatenate(feats), lab


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", nargs="+", required=True, help="NAME=PATH of each corpus")
    p.add_argument("--encoder", required=True)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    utts = load_corpora(args.data)
    clip_x = np.concatenate([embed_utterances([u for u in utts if u.corpus == c], args.encoder,
                                              "clean")[0][:, VOICED, BLOCK]
                             for c in dict.fromkeys(u.corpus for u in utts)])
    order = [u for c in dict.fromkeys(u.corpus for u in utts) for u in utts if u.corpus == c]
    if len(order) != len(clip_x):
        raise RuntimeError("a file could not be read; this probe needs every clip")
    pool = cc.Pool(order, {})
    model = build(args.encoder, WhisperEmotionConfig(n_blocks=2, pooling="voiced"))

    # training-side streams: one per speaker (a monitored stream is one speaker)
    train_corpora = ("tess", "ravdess")
    spk_streams: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for k, spk in enumerate(sorted(set(pool.speaker[np.isin(pool.corpus, train_corpora)]))):
        rows = np.flatnonzero(pool.speaker == spk)
        spk_streams[spk] = stream_windows(model, [pool.utts[i] for i in rows], TRAIN_HOP,
                                          seed=k, desc=spk)

    splits = [s for s in cc.splits(pool, ["ravdess-ai"])][:1] + cc.splits(pool, ["shipped"])
    results = []
    for split in splits:
        train_spk = sorted(set(pool.speaker[split.train]))
        cx, cy = clip_x[split.train], pool.label[split.train]
        cw = cc.balanced_weights(pool.corpus[split.train], cy)
        sx = np.concatenate([spk_streams[s][0] for s in train_spk])
        sy = np.concatenate([spk_streams[s][1] for s in train_spk])
        s_corpus = np.concatenate([[s.split(":")[0]] * len(spk_streams[s][1])
                                   for s in train_spk])
        sw = cc.balanced_weights(s_corpus, sy) * len(cy) / len(sy)  # each half: equal weight
        heads = {"clips (served)": cc.fit_head(cx, cy, cw, SERVED_C),
                 "clips + stream windows": cc.fit_head(np.concatenate([cx, sx]),
                                                       np.concatenate([cy, sy]),
                                                       np.concatenate([cw, sw]), SERVED_C)}
        row = {"split": f"{split.protocol}: {split.name}", "n_train_clips": int(len(cy)),
               "n_train_stream_windows": int(len(sy)), "tests": {}}
        for name, rows in split.tests.items():
            classes = sorted(set(cy.tolist()) & set(pool.label[rows].tolist()))
            rows = rows[np.isin(pool.label[rows], classes)]
            tx, ty = stream_windows(model, [pool.utts[i] for i in rows], TEST_HOP, seed=0,
                                    desc=f"test {name}")
            row["tests"][name] = {
                head_name: {"clips": cc.metrics(pool.label[rows],
                                                cc.predict(h, clip_x[rows], classes), classes),
                            "stream": cc.metrics(ty, cc.predict(h, tx, classes), classes)}
                for head_name, h in heads.items()}
            for head_name, r in row["tests"][name].items():
                print(f"{row['split']} -> {name}, {head_name}: clips "
                      f"{100 * r['clips']['accuracy']:.1f} %, stream windows "
                      f"{100 * r['stream']['accuracy']:.1f} % ({r['stream']['n']} windows)",
                      flush=True)
        results.append(row)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"c": SERVED_C, "train_hop_s": TRAIN_HOP / 16000,
                                    "test_hop_s": TEST_HOP / 16000, "results": results},
                                   indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
