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

The stream windows' weight (``MIXES``: 0 = the served clips-only head) is chosen per split by
3-fold grouped CV over the training speakers (``crosscorpus.inner_folds``), on the validation
speakers' own stream windows (UAR): what the monitor is watched on. The 1:1 mix is reported
beside it. Results: JSON in ``--out``.
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
from train.corpus import Utterance, load_corpora
from train.embeddings import embed_stream, embed_utterances

SERVED_C = 0.003
MIXES = (0.0, 0.25, 0.5, 1.0)  # stream windows' total weight relative to the clips'
WINDOW, TRAIN_HOP, TEST_HOP = 48_000, 16_000, 8_000
BLOCK, VOICED = 1, 1  # block 2, voiced pooling: the served recipe's features


def stream_windows(encoder: str, utts: Sequence[Utterance], hop: int, seed: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Pooled features (the served block and pooling) and labels of the voiced windows of
    ``utts`` made into one stream (``train.embeddings.embed_stream``)."""
    feats, labels = embed_stream(utts, encoder, "clean", hop=hop, seed=seed, progress=False)
    return feats[:, VOICED, BLOCK], labels


def fit(clip_x: np.ndarray, clip_y: np.ndarray, clip_corpus: np.ndarray, sx: np.ndarray,
        sy: np.ndarray, s_corpus: np.ndarray, mix: float) -> cc.LinearHead:
    """The served head's fit on clips, plus stream windows weighing ``mix`` times the clips
    (corpora and classes balanced within each part)."""
    cw = cc.balanced_weights(clip_corpus, clip_y)
    if mix == 0 or len(sy) == 0:
        return cc.fit_head(clip_x, clip_y, cw, SERVED_C)
    sw = cc.stream_weights(s_corpus, sy, mix, len(clip_y))
    return cc.fit_head(np.concatenate([clip_x, sx]), np.concatenate([clip_y, sy]),
                       np.concatenate([cw, sw]), SERVED_C)


def choose_mix(pool: cc.Pool, clip_x: np.ndarray, rows: np.ndarray,
               spk_streams: dict[str, tuple[np.ndarray, np.ndarray]]) -> tuple[float, dict]:
    """The mix with the best mean stream-window UAR of held-out training speakers."""
    speakers = pool.speaker[rows]
    table: dict[float, list[float]] = {m: [] for m in MIXES}
    for val_spk in cc.inner_folds(speakers):
        tr = rows[~np.isin(speakers, val_spk)]
        tr_spk = sorted(set(pool.speaker[tr]))
        sx, sy, sc = _streams(spk_streams, tr_spk)
        vx, vy, _ = _streams(spk_streams, sorted(map(str, val_spk)))
        classes = sorted(set(vy.tolist()))
        for m in MIXES:
            head = fit(clip_x[tr], pool.label[tr], pool.corpus[tr], sx, sy, sc, m)
            table[m].append(cc.metrics(vy, cc.predict(head, vx, classes), classes)["uar"])
    means = {m: float(np.mean(v)) for m, v in table.items()}
    return max(means, key=means.get), means


def _streams(spk_streams: dict, speakers: Sequence[str]
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    xs = [spk_streams[s][0] for s in speakers]
    ys = [spk_streams[s][1] for s in speakers]
    corpus = np.concatenate([[s.split(":")[0]] * len(y) for s, y in zip(speakers, ys,
                                                                         strict=True)])
    return np.concatenate(xs), np.concatenate(ys), corpus


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

    # training-side streams: one per speaker (a monitored stream is one speaker)
    train_corpora = ("tess", "ravdess")
    spk_streams: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    speakers = sorted(set(pool.speaker[np.isin(pool.corpus, train_corpora)]))
    for k, spk in enumerate(tqdm(speakers, desc="speaker streams", unit="speaker")):
        rows = np.flatnonzero(pool.speaker == spk)
        spk_streams[spk] = stream_windows(args.encoder, [pool.utts[i] for i in rows],
                                          TRAIN_HOP, seed=k)

    splits = cc.splits(pool, ["ravdess-ai", "shipped"])
    results = []
    for split in splits:
        train_spk = sorted(set(pool.speaker[split.train]))
        cx, cy, cc_ = clip_x[split.train], pool.label[split.train], pool.corpus[split.train]
        sx, sy, sc = _streams(spk_streams, train_spk)
        mix, val = choose_mix(pool, clip_x, split.train, spk_streams)
        heads = {"clips (served)": fit(cx, cy, cc_, sx, sy, sc, 0.0),
                 "clips + stream windows 1:1": fit(cx, cy, cc_, sx, sy, sc, 1.0),
                 f"chosen on validation (mix {mix:g})": fit(cx, cy, cc_, sx, sy, sc, mix)}
        row = {"split": f"{split.protocol}: {split.name}", "n_train_clips": int(len(cy)),
               "n_train_stream_windows": int(len(sy)), "chosen_mix": mix,
               "validation_stream_uar": val, "tests": {}}
        print(f"{row['split']}: mix {mix:g} chosen (validation stream UAR "
              + ", ".join(f"{m:g}: {100 * u:.1f}" for m, u in val.items()) + ")", flush=True)
        for name, rows in split.tests.items():
            classes = sorted(set(cy.tolist()) & set(pool.label[rows].tolist()))
            rows = rows[np.isin(pool.label[rows], classes)]
            tx, ty = stream_windows(args.encoder, [pool.utts[i] for i in rows], TEST_HOP,
                                    seed=0)
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
    args.out.write_text(json.dumps({"c": SERVED_C, "mixes": MIXES,
                                    "train_hop_s": TRAIN_HOP / 16000,
                                    "test_hop_s": TEST_HOP / 16000, "results": results},
                                   indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
