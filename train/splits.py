"""Train/test splits for the three evaluation protocols, seeded and deterministic.

- ``cv5``: stratified k-fold over utterances (the papers' random split; the same speakers
  and words appear on both sides, so it flatters a model).
- ``speaker-independent``: leave one speaker out (TESS: train on one actress, test on the other).
- ``word-disjoint``: stratified group k-fold on the spoken word, so no TESS word is on both sides.

Each function returns a list of ``(train_idx, test_idx)`` sorted int64 index arrays into ``utts``.
sklearn does the work; this module adds the label/group vectors and clear errors.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.model_selection import LeaveOneGroupOut, StratifiedGroupKFold, StratifiedKFold

from train.corpus import Utterance, labels

Split = tuple[np.ndarray, np.ndarray]
PROTOCOLS: tuple[str, ...] = ("cv5", "speaker-independent", "word-disjoint")


def _sorted(folds) -> list[Split]:
    return [
        (np.sort(train).astype(np.int64), np.sort(test).astype(np.int64)) for train, test in folds
    ]


def _check(utts: Sequence[Utterance], k: int | None = None) -> np.ndarray:
    if len(utts) == 0:
        raise ValueError("no utterances to split")
    if k is not None and k < 2:
        raise ValueError(f"k must be at least 2, got {k}")
    return np.asarray(labels(utts))


def stratified_kfold(utts: Sequence[Utterance], k: int = 5, seed: int = 0) -> list[Split]:
    """k folds with each emotion's share kept; every utterance is tested exactly once."""
    y = _check(utts, k)
    counts = np.bincount(y)
    smallest = int(counts[counts > 0].min())
    if smallest < k:
        raise ValueError(f"an emotion has only {smallest} utterances, fewer than k={k} folds")
    folds = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    return _sorted(folds.split(np.zeros(len(y)), y))


def leave_one_speaker_out(utts: Sequence[Utterance]) -> list[Split]:
    """One fold per speaker (in sorted speaker order): test on that speaker, train on the rest."""
    y = _check(utts)
    unknown = sum(u.speaker is None for u in utts)
    if unknown:
        raise ValueError(f"{unknown} utterances have no speaker; cannot split by speaker")
    groups = np.asarray([u.speaker for u in utts])
    if len(set(groups)) < 2:
        raise ValueError("leave-one-speaker-out needs at least 2 speakers")
    return _sorted(LeaveOneGroupOut().split(np.zeros(len(y)), y, groups))


def word_disjoint_kfold(utts: Sequence[Utterance], k: int = 5, seed: int = 0) -> list[Split]:
    """k folds grouped by spoken word (stratified by emotion): no word on both sides."""
    y = _check(utts, k)
    unknown = sum(u.word is None for u in utts)
    if unknown:
        raise ValueError(f"{unknown} utterances have no word; word-disjoint needs TESS-like data")
    groups = np.asarray([u.word for u in utts])
    n_words = len(set(groups))
    if n_words < k:
        raise ValueError(f"only {n_words} distinct words, fewer than k={k} folds")
    folds = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    return _sorted(folds.split(np.zeros(len(y)), y, groups))


def make_splits(protocol: str, utts: Sequence[Utterance], k: int = 5, seed: int = 0) -> list[Split]:
    """Splits by protocol name. ``cv5`` is stratified ``k``-fold (k defaults to 5),
    ``word-disjoint`` is ``k``-fold by word, ``speaker-independent`` has one fold per speaker.
    ``seed`` makes the shuffled protocols reproducible."""
    if protocol == "cv5":
        return stratified_kfold(utts, k, seed)
    if protocol == "speaker-independent":
        return leave_one_speaker_out(utts)
    if protocol == "word-disjoint":
        return word_disjoint_kfold(utts, k, seed)
    raise ValueError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
