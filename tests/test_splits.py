"""train.splits: each protocol keeps its promise, and the same seed gives the same folds."""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from train.corpus import EMOTIONS, Utterance, load_tess
from train.splits import (
    PROTOCOLS,
    leave_one_speaker_out,
    make_splits,
    stratified_kfold,
    word_disjoint_kfold,
)


def _synthetic(speakers: int = 3, words: int = 12) -> list[Utterance]:
    """TESS-shaped: every speaker says every word in every emotion (no files needed)."""
    return [
        Utterance(Path(f"s{s}_w{w}_{e}.wav"), e, f"s{s}", "synthetic", word=f"w{w}")
        for s in range(speakers)
        for w in range(words)
        for e in EMOTIONS
    ]


UTTS = _synthetic()


def _assert_partition(folds, n: int) -> None:
    """Train and test are disjoint, cover everything, and each item is tested exactly once."""
    tested = np.concatenate([test for _, test in folds])
    assert sorted(tested.tolist()) == list(range(n))
    for train, test in folds:
        assert train.dtype == np.int64 and test.dtype == np.int64
        assert not np.intersect1d(train, test).size
        assert len(train) + len(test) == n
        assert (np.diff(train) > 0).all() and (np.diff(test) > 0).all()


def _same(a, b) -> bool:
    if len(a) != len(b):
        return False
    return all(
        np.array_equal(x[0], y[0]) and np.array_equal(x[1], y[1]) for x, y in zip(a, b, strict=True)
    )


def test_stratified_kfold_partitions_and_stratifies() -> None:
    folds = stratified_kfold(UTTS, k=4, seed=0)
    assert len(folds) == 4
    _assert_partition(folds, len(UTTS))
    for _, test in folds:  # 36 per emotion / 4 folds = 9 of each emotion in every test fold
        assert set(Counter(UTTS[i].emotion for i in test).values()) == {9}


def test_stratified_kfold_is_seeded() -> None:
    assert _same(stratified_kfold(UTTS, 5, seed=1), stratified_kfold(UTTS, 5, seed=1))
    assert not _same(stratified_kfold(UTTS, 5, seed=1), stratified_kfold(UTTS, 5, seed=2))


def test_leave_one_speaker_out() -> None:
    folds = leave_one_speaker_out(UTTS)
    assert len(folds) == 3
    _assert_partition(folds, len(UTTS))
    for i, (train, test) in enumerate(folds):
        test_speakers = {UTTS[j].speaker for j in test}
        assert test_speakers == {f"s{i}"}  # sorted speaker order
        assert not test_speakers & {UTTS[j].speaker for j in train}


def test_word_disjoint_kfold() -> None:
    folds = word_disjoint_kfold(UTTS, k=4, seed=0)
    assert len(folds) == 4
    _assert_partition(folds, len(UTTS))
    for train, test in folds:
        assert not {UTTS[j].word for j in train} & {UTTS[j].word for j in test}
        assert set(Counter(UTTS[j].emotion for j in test)) == set(EMOTIONS)
    assert _same(word_disjoint_kfold(UTTS, 4, seed=3), word_disjoint_kfold(UTTS, 4, seed=3))
    assert not _same(word_disjoint_kfold(UTTS, 4, seed=3), word_disjoint_kfold(UTTS, 4, seed=4))


def test_make_splits_dispatches() -> None:
    assert PROTOCOLS == ("cv5", "speaker-independent", "word-disjoint")
    assert _same(make_splits("cv5", UTTS, seed=7), stratified_kfold(UTTS, 5, 7))
    assert len(make_splits("cv5", UTTS, k=3)) == 3
    assert _same(make_splits("speaker-independent", UTTS), leave_one_speaker_out(UTTS))
    assert _same(make_splits("word-disjoint", UTTS, k=3, seed=2), word_disjoint_kfold(UTTS, 3, 2))
    with pytest.raises(ValueError, match="unknown protocol"):
        make_splits("random", UTTS)


def test_clear_errors() -> None:
    with pytest.raises(ValueError, match="no utterances"):
        stratified_kfold([], 5)
    with pytest.raises(ValueError, match="at least 2"):
        stratified_kfold(UTTS, 1)
    with pytest.raises(ValueError, match="fewer than k"):
        stratified_kfold(UTTS[:14], 5)  # two of each emotion
    no_word = [dataclasses.replace(u, word=None) for u in UTTS]
    with pytest.raises(ValueError, match="have no word"):
        word_disjoint_kfold(no_word, 5)
    with pytest.raises(ValueError, match="distinct words"):
        word_disjoint_kfold(_synthetic(words=3), 5)
    with pytest.raises(ValueError, match="no speaker"):
        leave_one_speaker_out([dataclasses.replace(UTTS[0], speaker=None), *UTTS[1:]])
    with pytest.raises(ValueError, match="at least 2 speakers"):
        leave_one_speaker_out(_synthetic(speakers=1))


@pytest.mark.tess
def test_tess_protocols(tess_dir: Path) -> None:
    utts = load_tess(tess_dir, Counter())  # names only: no audio decoded
    n = len(utts)
    loso = make_splits("speaker-independent", utts)
    assert len(loso) == 2
    _assert_partition(loso, n)
    assert [{utts[i].speaker for i in test} for _, test in loso] == [{"OAF"}, {"YAF"}]
    assert [{utts[i].speaker for i in train} for train, _ in loso] == [{"YAF"}, {"OAF"}]
    words = make_splits("word-disjoint", utts, k=5, seed=0)
    _assert_partition(words, n)
    for train, test in words:
        assert not {utts[i].word for i in train} & {utts[i].word for i in test}
        assert 30 <= len({utts[i].word for i in test}) <= 50
    _assert_partition(make_splits("cv5", utts, seed=0), n)
