"""Cross-corpus protocol machinery: weights, head, metrics, folds with no speaker on both sides."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from train import crosscorpus as cc
from train.corpus import EMOTIONS, Utterance


def _pool(seed: int = 0) -> cc.Pool:
    """Synthetic: 2 TESS speakers, 8 RAVDESS actors, 2 SAVEE; emotion shifts feature 0..6."""
    rng = np.random.default_rng(seed)
    utts, rows = [], []
    spk = ([("tess", s) for s in ("OAF", "YAF")]
           + [("ravdess", f"Actor_{i:02d}") for i in range(1, 9)]
           + [("savee", s) for s in ("DC", "JE")])
    for corpus, s in spk:
        offset = rng.normal(0, 1, 16)  # the voice
        for e in range(7):
            for k in range(6 if corpus != "tess" else 10):
                utts.append(Utterance(Path(f"/{corpus}/{s}_{e}_{k}.wav"), EMOTIONS[e], s, corpus,
                                      word=f"w{k}"))
                x = offset + rng.normal(0, 0.5, 16)
                x[e] += 2.0
                rows.append(x)
    x = np.asarray(rows, np.float32)
    feats = np.stack([x, x], axis=1)[:, :, None, :]  # [n, pooling, block, D]
    return cc.Pool(utts, {"clean": feats, "ulaw": feats + rng.normal(0, 0.1, feats.shape)})


def test_balanced_weights_equalise_corpus_class_cells() -> None:
    corpus = np.array(["a"] * 6 + ["b"] * 2)
    label = np.array([0, 0, 0, 0, 1, 1, 0, 1])
    w = cc.balanced_weights(corpus, label)
    pairs = set(zip(corpus, label, strict=True))
    cells = {(c, y): w[(corpus == c) & (label == y)].sum() for c, y in pairs}
    assert np.allclose(list(cells.values()), list(cells.values())[0])
    assert np.isclose(w.mean(), 1.0)


def test_fit_head_matches_sklearn() -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    pool = _pool()
    x, y = pool.feats["clean"][:, 0, 0], pool.label
    head = cc.fit_head(x, y, np.ones(len(y), np.float32), c=0.1)
    ref = LogisticRegression(C=0.1, max_iter=5000, tol=1e-8).fit(
        StandardScaler().fit_transform(x), y)
    ours = head.logits(x)
    # same objective -> same probabilities (up to solver tolerance)
    p_ours = np.exp(ours - ours.max(1, keepdims=True))
    p_ours /= p_ours.sum(1, keepdims=True)
    p_ref = ref.predict_proba(StandardScaler().fit_transform(x))
    assert np.abs(p_ours - p_ref).max() < 2e-3


def test_absent_class_is_never_predicted() -> None:
    pool = _pool()
    keep = pool.label != 6
    head = cc.fit_head(pool.feats["clean"][keep, 0, 0], pool.label[keep],
                       np.ones(keep.sum(), np.float32), c=1.0)
    pred = cc.predict(head, pool.feats["clean"][:, 0, 0], list(range(7)))
    assert 6 not in set(pred.tolist())


def test_metrics() -> None:
    y = np.array([0, 0, 1, 1, 2, 2])
    p = np.array([0, 1, 1, 1, 2, 0])
    m = cc.metrics(y, p, [0, 1, 2])
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["uar"] == pytest.approx((0.5 + 1 + 0.5) / 3)
    assert m["confusion"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert m["recall"] == {"angry": 0.5, "disgust": 1.0, "fear": 0.5}


def test_ravdess_folds_are_whole_actors_balanced_by_gender() -> None:
    utts = [Utterance(Path(f"/r/{a}_{k}.wav"), "angry", f"Actor_{a:02d}", "ravdess")
            for a in range(1, 25) for k in range(2)]
    pool = cc.Pool(utts, {"clean": np.zeros((48, 1, 1, 2), np.float32)})
    folds = cc.ravdess_actor_folds(pool)
    assert len(folds) == 4
    seen: set[str] = set()
    for rows in folds:
        actors = {int(s.split("_")[-1]) for s in pool.speaker[rows]}
        assert len(actors) == 6 and sum(a % 2 for a in actors) == 3  # 3 male, 3 female
        assert not actors & seen
        seen |= actors
    assert len(seen) == 24


def test_splits_never_share_a_speaker() -> None:
    pool = _pool()
    for split in cc.splits(pool, ["tess-si", "ravdess-ai", "loco", "shipped"]):
        train = set(pool.speaker[split.train])
        for rows in split.tests.values():
            assert not train & set(pool.speaker[rows]), split.name


def test_inner_folds_partition_speakers() -> None:
    speakers = np.array([f"c{i % 3}:s{i}" for i in range(10)])
    folds = cc.inner_folds(speakers)
    flat = np.concatenate(folds)
    assert sorted(flat) == sorted(set(speakers)) and len(flat) == len(set(flat))


def test_run_split_learns_and_speaker_norm_removes_the_voice() -> None:
    pool = _pool()
    split = next(s for s in cc.splits(pool, ["loco"]) if "savee" in s.tests)
    plain = cc.run_split(pool, split, speaker_norm=False, blocks=[0])
    normed = cc.run_split(pool, split, speaker_norm=True, blocks=[0])
    assert plain["tests"]["savee"]["clean"]["accuracy"] > 0.5
    # the synthetic voice offset is removed by per-speaker standardisation
    assert normed["tests"]["savee"]["clean"]["accuracy"] >= plain["tests"]["savee"]["clean"][
        "accuracy"]
    assert set(plain["tests"]["savee"]) == {"clean", "ulaw"}
    rows = cc.summarise([plain, normed])
    assert {r["speaker_norm"] for r in rows} == {False, True}


def _with_streams(pool: cc.Pool, seed: int = 1) -> cc.Pool:
    """Stream windows for every speaker whose emotion shows on features 7..13 instead of 0..6
    (what a clip-trained head cannot know: windows of a stream are not centred clips)."""
    rng = np.random.default_rng(seed)
    for v in ("clean", "ulaw"):
        pool.streams[v] = {}
        for spk in np.unique(pool.speaker):
            y = np.repeat(np.arange(7), 5)
            x = rng.normal(0, 0.5, (len(y), 16)).astype(np.float32)
            x[np.arange(len(y)), 7 + y] += 2.0
            pool.streams[v][str(spk)] = (np.stack([x, x], 1)[:, :, None, :], y)
    return pool


def test_stream_mix_is_chosen_on_validation_streams_and_helps_on_held_out_streams() -> None:
    pool = _with_streams(_pool())
    split = next(s for s in cc.splits(pool, ["loco"]) if "savee" in s.tests)
    choice, table = cc.choose(pool, split.train, False, blocks=[0], poolings=[1],
                              mixes=(0.0, 1.0))
    assert {r["choice"]["stream_mix"] for r in table} == {0.0, 1.0}
    assert choice.stream_mix == 1.0 and "stream windows x1" in choice.label()
    held = ["savee:DC", "savee:JE"]
    scores = {}
    for mix in (0.0, 1.0):
        c = cc.Choice(0, choice.c, choice.phone_aug, 1, mix)
        head = cc.train_head(pool, split.train, c, speaker_norm=False)
        scores[mix] = cc.evaluate_streams(pool, head, held, c, "clean", list(range(7)))
        # the clips are still learnt
        assert cc.evaluate(pool, head, split.tests["savee"], c, False, "clean",
                           list(range(7)))["accuracy"] > 0.6
    assert scores[1.0]["accuracy"] > 0.8 > 0.4 > scores[0.0]["accuracy"]
    assert cc.evaluate_streams(pool, head, ["nobody:X"], c, "clean", list(range(7))) is None


def test_stream_windows_stay_out_of_speaker_norm_and_one_speaker_splits() -> None:
    pool = _with_streams(_pool())
    loco = next(s for s in cc.splits(pool, ["loco"]) if "savee" in s.tests)
    _, table = cc.choose(pool, loco.train, True, blocks=[0], poolings=[1], mixes=(0.0, 1.0))
    assert {r["choice"]["stream_mix"] for r in table} == {0.0}
    one = next(s for s in cc.splits(pool, ["tess-si"]) if "TESS only" in s.name)
    _, table = cc.choose(pool, one.train, False, blocks=[0], poolings=[1], mixes=(0.0, 1.0))
    assert {r["choice"]["stream_mix"] for r in table} == {0.0}
    with pytest.raises(ValueError, match="per-speaker"):
        cc.train_head(pool, loco.train, cc.Choice(0, 0.1, False, 1, 1.0), speaker_norm=True)


# ---------------------------------------------------------------- per-site normalisation

def test_corpus_standardised_pool_standardises_each_corpus_clips_and_windows() -> None:
    from train.site_norm import corpus_standardised_pool, fit_site_head

    pool = _pool()
    rng = np.random.default_rng(3)
    shift = {"tess": 5.0, "ravdess": -3.0, "savee": 0.0}  # a corpus's windows sit elsewhere
    pool.streams = {v: {s: (rng.normal(shift[s.split(":")[0]], 2.0, (5, 2, 1, 16)),
                            np.zeros(5, np.int64))
                        for s in np.unique(pool.speaker)} for v in ("clean", "ulaw")}
    view = corpus_standardised_pool(pool)
    for v in ("clean", "ulaw"):
        for c in np.unique(pool.corpus):
            x = view.feats[v][pool.corpus == c]
            assert np.allclose(x.mean(0), 0, atol=1e-4) and np.allclose(x.std(0), 1, atol=1e-3)
            w = np.concatenate([f for s, (f, _) in view.streams[v].items() if s.startswith(c)])
            assert np.allclose(w.mean(0), 0, atol=1e-4) and np.allclose(w.std(0), 1, atol=1e-3)
        assert set(view.streams[v]) == set(pool.streams[v])
    # the site head trains on the standardised view and reads its dimensions
    rows = np.flatnonzero(np.isin(pool.corpus, ["tess", "ravdess"]))
    head = fit_site_head(pool, rows, cc.Choice(block=0, c=0.1, phone_aug=True, stream_mix=1.0))
    assert head.weight.shape == (len(EMOTIONS), 16)
