"""Held-out speakers and corpora: the figures that say whether the served model is worth watching.

Protocols (every figure on people the head never heard; every choice on training-side speakers):
- ``tess-si``: TESS speaker-independent, both directions (train on one actress [+ RAVDESS],
  test on the other).
- ``ravdess-ai``: RAVDESS actor-independent, 4 folds of 6 whole actors (3 male, 3 female);
  training adds TESS.
- ``loco``: leave one corpus out: train on the other corpora, test on the held-out one, on the
  classes both sides have.
- ``shipped``: the shipped recipe (TESS + RAVDESS) tested on SAVEE and URDU, never heard.
Each is scored on clean audio and after the telephone band (8-kHz G.711 mu-law round trip).

The head is a multinomial logistic regression on the pooled features of one encoder block,
standardised; its block and L2 strength (and whether to train with telephone-band copies) are
chosen per outer split by grouped cross-validation over the *training* speakers (3 folds,
groups = speakers), on unweighted average recall. Training weights balance corpora and
classes: every (corpus, class) cell gets the same total weight, so TESS's 2,800 clips do not
outvote RAVDESS's 1,440, nor RAVDESS's 288 neutral clips (calm folded in) its other classes.

``speaker_norm``: each speaker's features standardised over that speaker's own clips, in
training and test (at serving time: over the stream's running statistics). Reported as its own
rows because it needs the test speaker's unlabelled audio.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from train.corpus import EMOTIONS, Utterance

C_GRID = (0.003, 0.01, 0.1)
POOLINGS = ("all", "voiced")  # axis 1 of the features: all positions, voiced positions only
INNER_FOLDS = 3


@dataclass
class Pool:
    """Every clip of every corpus with its features: ``feats[variant]`` [n, pooling, block, 2D]
    (``train.embeddings``)."""

    utts: list[Utterance]
    feats: dict[str, np.ndarray]
    # variant -> speaker -> (features [n, pooling, block, 2D], labels) of that speaker's clips
    # made into one stream (``train.embeddings.embed_stream``); empty: clips only
    streams: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = field(default_factory=dict)
    corpus: np.ndarray = field(init=False)
    speaker: np.ndarray = field(init=False)
    label: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.corpus = np.array([u.corpus for u in self.utts])
        self.speaker = np.array([f"{u.corpus}:{u.speaker}" for u in self.utts])
        self.label = np.array([u.label for u in self.utts], dtype=np.int64)


def balanced_weights(corpus: np.ndarray, label: np.ndarray) -> np.ndarray:
    """Each (corpus, class) cell gets equal total weight; weights average 1."""
    cells = np.char.add(np.char.add(corpus.astype(str), "|"), label.astype(str))
    _, inverse, counts = np.unique(cells, return_inverse=True, return_counts=True)
    w = 1.0 / counts[inverse]
    return (w * len(w) / w.sum()).astype(np.float32)


def stream_weights(corpus: np.ndarray, label: np.ndarray, mix: float, n_clips: int
                   ) -> np.ndarray:
    """Stream windows' weights beside ``n_clips`` clips weighing 1 on average: ``mix`` times the
    clips' total, corpora and classes balanced within the windows' share."""
    return balanced_weights(corpus, label) * mix * n_clips / len(label)


PRIOR_WINDOWS = 5.0  # pseudo-windows of prior statistics per speaker / stream (fixed, not tuned)


def speaker_standardise(x: np.ndarray, speaker: np.ndarray,
                        prior: tuple[np.ndarray, np.ndarray] | None = None,
                        prior_windows: float = PRIOR_WINDOWS) -> np.ndarray:
    """Each speaker's rows standardised by that speaker's statistics: raw, or shrunk towards
    ``prior`` (mean, std) with ``prior_windows`` pseudo-clips -- what a served stream does
    (``WhisperEmotion.stream_moments``), and what keeps a 2-clip speaker (URDU has many) from
    being standardised by two points."""
    out = np.empty_like(x)
    for s in np.unique(speaker):
        rows = speaker == s
        xs = x[rows].astype(np.float64)
        if prior is None:
            mu, sd = xs.mean(axis=0), xs.std(axis=0)
        else:
            m, v = shrunk_moments(np.array([len(xs)]), xs.sum(0)[None], (xs * xs).sum(0)[None],
                                  prior[0], prior[1], prior_windows)
            mu, sd = m[0], v[0]
        out[rows] = (xs - mu) / (sd + 1e-5)
    return out


def shrunk_moments(count: np.ndarray, total: np.ndarray, total_sq: np.ndarray,
                   prior_mean: np.ndarray, prior_std: np.ndarray, prior: float
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Running mean/std of a stream's first ``count`` windows shrunk towards a prior of
    ``prior`` pseudo-windows (numpy twin of ``WhisperEmotion.stream_moments``; tested equal)."""
    k = np.asarray(count, dtype=np.float64)[:, None]
    mean = (total + prior * prior_mean) / (k + prior)
    second = (total_sq + prior * (prior_std**2 + prior_mean**2)) / (k + prior)
    return mean, np.sqrt(np.maximum(second - mean**2, 1e-8))


def speaker_prior(x: np.ndarray, speaker: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The training speakers' average per-speaker mean and std (the streams' prior)."""
    spk = np.unique(speaker)
    return (np.mean([x[speaker == s].mean(0) for s in spk], 0),
            np.mean([x[speaker == s].std(0) for s in spk], 0))


@dataclass
class LinearHead:
    """Standardiser + multinomial logistic regression over the canonical classes."""

    mean: np.ndarray
    std: np.ndarray
    weight: np.ndarray  # [C, D]
    bias: np.ndarray  # [C]
    prior: tuple[np.ndarray, np.ndarray] | None = None  # speaker-norm heads: the speakers' prior

    def logits(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.mean) / self.std) @ self.weight.T + self.bias


def fit_head(x: np.ndarray, y: np.ndarray, w: np.ndarray, c: float,
             n_classes: int = len(EMOTIONS), max_iter: int = 300) -> LinearHead:
    """Weighted multinomial logistic regression, sklearn's objective (C * sum loss + |W|^2 / 2),
    solved with L-BFGS in torch (deterministic; ~10x faster than sklearn here on 2 cores).

    Classes absent from training get a bias of -1e4, so they are never predicted.
    """
    mean = x.mean(axis=0)
    std = x.std(axis=0) + 1e-5
    xt = torch.from_numpy(((x - mean) / std).astype(np.float32))
    yt = torch.from_numpy(y)
    wt = torch.from_numpy(w.astype(np.float32))
    present = torch.zeros(n_classes, dtype=torch.bool)
    present[yt.unique()] = True
    weight = torch.zeros(n_classes, xt.shape[1], requires_grad=True)
    bias = torch.zeros(n_classes, requires_grad=True)
    mask = torch.where(present, 0.0, -1e4)
    opt = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, history_size=20,
                            line_search_fn="strong_wolfe", tolerance_grad=1e-6,
                            tolerance_change=1e-9)
    l2 = 1.0 / (2.0 * c * float(wt.sum()))

    def closure() -> torch.Tensor:
        opt.zero_grad()
        logits = xt @ weight.T + bias + mask
        loss = (wt * F.cross_entropy(logits, yt, reduction="none")).sum() / wt.sum()
        loss = loss + l2 * (weight * weight).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return LinearHead(mean.astype(np.float32), std.astype(np.float32),
                      weight.detach().numpy(), (bias + mask).detach().numpy())


def metrics(y: np.ndarray, pred: np.ndarray, classes: Sequence[int]) -> dict:
    """Accuracy, UAR, macro-F1, per-class recall and the confusion matrix over ``classes``."""
    classes = list(classes)
    cm = np.zeros((len(classes), len(classes)), dtype=np.int64)
    index = {c: i for i, c in enumerate(classes)}
    for t, p in zip(y, pred, strict=True):
        cm[index[int(t)], index[int(p)]] += 1
    support = cm.sum(axis=1)
    recall = np.divide(np.diag(cm), support, out=np.zeros(len(classes)), where=support > 0)
    col = cm.sum(axis=0)
    precision = np.divide(np.diag(cm), col, out=np.zeros(len(classes)), where=col > 0)
    f1 = np.divide(2 * precision * recall, precision + recall,
                   out=np.zeros(len(classes)), where=(precision + recall) > 0)
    present = support > 0
    return {
        "n": int(len(y)),
        "accuracy": float((y == pred).mean()) if len(y) else float("nan"),
        "uar": float(recall[present].mean()),
        "macro_f1": float(f1[present].mean()),
        "recall": {EMOTIONS[c]: float(r) for c, r in zip(classes, recall, strict=True)},
        "classes": [EMOTIONS[c] for c in classes],
        "confusion": cm.tolist(),
    }


def predict(head: LinearHead, x: np.ndarray, classes: Sequence[int]) -> np.ndarray:
    """Argmax over ``classes`` only (the classes the test corpus shares with training)."""
    logits = head.logits(x)[:, list(classes)]
    return np.asarray(classes)[logits.argmax(axis=1)]


@dataclass(frozen=True)
class Choice:
    block: int  # 0-based encoder block whose pooled output the head reads
    c: float
    phone_aug: bool  # train on clean + telephone-band copies
    pooling: int = 1  # index into POOLINGS
    stream_mix: float = 0.0  # stream windows' total weight relative to the clips' (0: none)

    def label(self) -> str:
        mix = f", stream windows x{self.stream_mix:g}" if self.stream_mix else ""
        return (f"block {self.block + 1}, {POOLINGS[self.pooling]} positions, C={self.c:g}, "
                f"{'+phone' if self.phone_aug else 'clean'}{mix}")


def _design(pool: Pool, rows: np.ndarray, choice: Choice,
            prior: tuple[np.ndarray, np.ndarray] | None, variants: Sequence[str]
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    xs, ys, cs, ss = [], [], [], []
    for v in variants:
        x = pool.feats[v][rows, choice.pooling, choice.block]
        if prior is not None:
            x = speaker_standardise(x, pool.speaker[rows], prior)
        xs.append(x)
        ys.append(pool.label[rows])
        cs.append(pool.corpus[rows])
        ss.append(pool.speaker[rows])
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(cs), np.concatenate(ss)


def train_head(pool: Pool, rows: np.ndarray, choice: Choice, speaker_norm: bool) -> LinearHead:
    """The head of ``choice`` on ``rows``; with ``speaker_norm`` its features are standardised
    per speaker (shrunk towards the training speakers' prior, which the head keeps for test)."""
    variants = ("clean", "ulaw") if choice.phone_aug else ("clean",)
    prior = speaker_prior(pool.feats["clean"][rows, choice.pooling, choice.block],
                          pool.speaker[rows]) if speaker_norm else None
    x, y, corpus, _ = _design(pool, rows, choice, prior, variants)
    w = balanced_weights(corpus, y)
    if choice.stream_mix > 0:
        if speaker_norm:
            raise ValueError("stream windows are not combined with per-speaker normalisation")
        sx, sy, sc = stream_design(pool, np.unique(pool.speaker[rows]), choice, variants)
        if len(sy):
            sw = stream_weights(sc, sy, choice.stream_mix, len(y))
            x, y, w = np.concatenate([x, sx]), np.concatenate([y, sy]), np.concatenate([w, sw])
    head = fit_head(x, y, w, choice.c)
    head.prior = prior
    return head


def stream_design(pool: Pool, speakers: Sequence[str], choice: Choice,
                  variants: Sequence[str] = ("clean",)
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features, labels, corpus) of the stream windows of ``speakers`` that have them."""
    xs, ys, cs = [], [], []
    for v in variants:
        for spk in speakers:
            if str(spk) in pool.streams.get(v, {}):
                f, lab = pool.streams[v][str(spk)]
                xs.append(f[:, choice.pooling, choice.block])
                ys.append(lab)
                cs.append(np.full(len(lab), str(spk).split(":")[0]))
    if not ys:
        dim = pool.feats["clean"].shape[-1]
        return np.zeros((0, dim), np.float32), np.zeros(0, np.int64), np.zeros(0, str)
    return np.concatenate(xs), np.concatenate(ys).astype(np.int64), np.concatenate(cs)


def evaluate_streams(pool: Pool, head: LinearHead, speakers: Sequence[str], choice: Choice,
                     variant: str, classes: Sequence[int]) -> dict | None:
    """Metrics of ``head`` on the stream windows of ``speakers`` (None: they have none)."""
    x, y, _ = stream_design(pool, speakers, choice, (variant,))
    keep = np.isin(y, list(classes))
    if not keep.any():
        return None
    return metrics(y[keep], predict(head, x[keep], classes), classes)


def evaluate(pool: Pool, head: LinearHead, rows: np.ndarray, choice: Choice, speaker_norm: bool,
             variant: str, classes: Sequence[int]) -> dict:
    rows = rows[np.isin(pool.label[rows], list(classes))]
    x = pool.feats[variant][rows, choice.pooling, choice.block]
    if speaker_norm:
        if head.prior is None:
            raise ValueError("a speaker-norm evaluation needs a head trained with speaker_norm")
        x = speaker_standardise(x, pool.speaker[rows], head.prior)
    return metrics(pool.label[rows], predict(head, x, classes), classes)


def inner_folds(speakers: np.ndarray, k: int = INNER_FOLDS, seed: int = 0) -> list[np.ndarray]:
    """Speakers dealt into ``k`` groups (shuffled, round-robin by corpus so each fold mixes
    corpora); returns the validation speakers of each fold."""
    rng = np.random.default_rng(seed)
    uniq = np.unique(speakers)
    by_corpus: dict[str, list[str]] = {}
    for s in rng.permutation(uniq):
        by_corpus.setdefault(str(s).split(":")[0], []).append(str(s))
    folds: list[list[str]] = [[] for _ in range(k)]
    i = 0
    for corpus in sorted(by_corpus):
        for s in by_corpus[corpus]:
            folds[i % k].append(s)
            i += 1
    return [np.array(f) for f in folds if f]


def choose(pool: Pool, train_rows: np.ndarray, speaker_norm: bool,
           blocks: Sequence[int], c_grid: Sequence[float] = C_GRID,
           phone_options: Sequence[bool] = (False, True),
           poolings: Sequence[int] = (0, 1),
           mixes: Sequence[float] = (0.0,)) -> tuple[Choice, list[dict]]:
    """The (block, C, augmentation, pooling, stream-window mix) with the best mean validation
    UAR, by grouped CV over the training speakers only (over words when there is one).

    The score is the mean UAR over the validation speakers' clips, clean and telephone band,
    and, where the pool has their stream windows, those too (clean and telephone band): the
    monitor is watched on streams. Stream windows are used (in training and scoring) only when
    there are held-out training speakers and no per-speaker normalisation."""
    groups = pool.speaker[train_rows]
    by_speaker = len(np.unique(groups)) >= INNER_FOLDS
    if not by_speaker:
        # One training speaker (TESS-only splits): no held-out speaker exists on the training
        # side, so validate on held-out words instead (the nearest thing it has).
        groups = np.array([f"{pool.speaker[i]}:{pool.utts[i].word or pool.utts[i].text or i}"
                           for i in train_rows])
    use_streams = by_speaker and not speaker_norm and bool(pool.streams)
    if not use_streams:
        mixes = (0.0,)
    folds = inner_folds(groups)
    table = []
    for block, c, phone, pooling, mix in itertools.product(blocks, c_grid, phone_options,
                                                          poolings, mixes):
        choice = Choice(block, c, phone, pooling, mix)
        uars = []
        for val_groups in folds:
            val = np.isin(groups, val_groups)
            head = train_head(pool, train_rows[~val], choice, speaker_norm)
            classes = sorted(set(pool.label[train_rows[val]].tolist()))
            for variant in ("clean", "ulaw"):
                uars.append(evaluate(pool, head, train_rows[val], choice, speaker_norm,
                                     variant, classes)["uar"])
                if use_streams:
                    m = evaluate_streams(pool, head, val_groups, choice, variant, classes)
                    if m is not None:
                        uars.append(m["uar"])
        table.append({"choice": asdict(choice), "val_uar": float(np.mean(uars))})
    best = max(table, key=lambda r: r["val_uar"])
    return Choice(**best["choice"]), table


@dataclass
class Split:
    protocol: str
    name: str
    train: np.ndarray
    tests: dict[str, np.ndarray]  # test-set name -> rows


def ravdess_actor_folds(pool: Pool, k: int = 4) -> list[np.ndarray]:
    """Whole-actor folds, balanced by gender (odd actors male, even female): 3 + 3 per fold."""
    actors = sorted({int(s.split("_")[-1]) for s in pool.speaker[pool.corpus == "ravdess"]})
    male = [a for a in actors if a % 2 == 1]
    female = [a for a in actors if a % 2 == 0]
    folds = []
    for i in range(k):
        members = male[i::k] + female[i::k]
        names = [f"ravdess:Actor_{a:02d}" for a in members]
        folds.append(np.flatnonzero(np.isin(pool.speaker, names)))
    return folds


def splits(pool: Pool, protocols: Sequence[str]) -> list[Split]:
    """The outer splits of each protocol (see the module docstring)."""
    corpus = pool.corpus
    out: list[Split] = []
    idx = np.arange(len(pool.utts))
    if "tess-si" in protocols:
        for test_spk, train_spk in (("tess:OAF", "tess:YAF"), ("tess:YAF", "tess:OAF")):
            test = np.flatnonzero(pool.speaker == test_spk)
            out.append(Split("tess-si", f"{train_spk[5:]}->{test_spk[5:]} (TESS only)",
                             np.flatnonzero(pool.speaker == train_spk), {"tess": test}))
            out.append(Split("tess-si", f"{train_spk[5:]}+RAVDESS->{test_spk[5:]}",
                             np.flatnonzero((pool.speaker == train_spk) | (corpus == "ravdess")),
                             {"tess": test}))
    if "ravdess-ai" in protocols:
        for i, test in enumerate(ravdess_actor_folds(pool)):
            train = np.setdiff1d(idx[np.isin(corpus, ["tess", "ravdess"])], test)
            out.append(Split("ravdess-ai", f"fold {i}", train, {"ravdess": test}))
    if "loco" in protocols:
        for held in sorted(set(corpus.tolist())):
            out.append(Split("loco", f"-> {held}", idx[corpus != held],
                             {held: idx[corpus == held]}))
    if "shipped" in protocols:
        train = idx[np.isin(corpus, ["tess", "ravdess"])]
        tests = {c: idx[corpus == c] for c in ("savee", "urdu") if (corpus == c).any()}
        out.append(Split("shipped", "TESS+RAVDESS -> SAVEE, URDU", train, tests))
    return out


def run_split(pool: Pool, split: Split, speaker_norm: bool, blocks: Sequence[int],
              poolings: Sequence[int] = (0, 1), mixes: Sequence[float] = (0.0,)) -> dict:
    """Choose on training speakers, fit on the whole training side, score each test set."""
    choice, table = choose(pool, split.train, speaker_norm, blocks, poolings=poolings,
                           mixes=mixes)
    head = train_head(pool, split.train, choice, speaker_norm)
    train_classes = set(pool.label[split.train].tolist())
    result = {"protocol": split.protocol, "split": split.name, "speaker_norm": speaker_norm,
              "choice": asdict(choice), "choice_label": choice.label(), "validation": table,
              "n_train": int(len(split.train)),
              "train_corpora": sorted(set(pool.corpus[split.train].tolist())), "tests": {}}
    for name, rows in split.tests.items():
        classes = sorted(train_classes & set(pool.label[rows].tolist()))
        result["tests"][name] = {v: evaluate(pool, head, rows, choice, speaker_norm, v, classes)
                                 for v in ("clean", "ulaw")}
    return result


def summarise(results: list[dict]) -> list[dict]:
    """One row per (protocol, test set, split family, speaker_norm): means over folds."""
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        family = r["split"].split(" (")[0] if r["protocol"] != "tess-si" else (
            "TESS only" if "TESS only" in r["split"] else "+RAVDESS")
        if r["protocol"] in ("ravdess-ai",):
            family = "4 actor folds"
        for test, by_variant in r["tests"].items():
            key = (r["protocol"], test, family, r["speaker_norm"])
            stream = (r.get("stream") or {}).get(test)
            groups.setdefault(key, []).append(
                {**by_variant, "stream": stream["accuracy"] if stream else None})
    rows = []
    for (protocol, test, family, norm), items in groups.items():
        row = {"protocol": protocol, "test": test, "setting": family, "speaker_norm": norm,
               "folds": len(items)}
        for v in ("clean", "ulaw"):
            for m in ("accuracy", "uar", "macro_f1"):
                row[f"{v}_{m}"] = float(np.mean([it[v][m] for it in items]))
            row[f"{v}_confusion"] = np.sum([it[v]["confusion"] for it in items], axis=0).tolist()
            row["classes"] = items[0][v]["classes"]
        row["phone_drop"] = row["clean_accuracy"] - row["ulaw_accuracy"]
        streams = [it["stream"] for it in items if it["stream"] is not None]
        row["stream_accuracy"] = float(np.mean(streams)) if len(streams) == len(items) else None
        rows.append(row)
    return rows


__all__ = [
    "C_GRID", "Choice", "LinearHead", "Pool", "Split", "balanced_weights", "choose", "evaluate",
    "evaluate_streams", "fit_head", "inner_folds", "metrics", "predict", "ravdess_actor_folds",
    "run_split", "PRIOR_WINDOWS", "shrunk_moments", "speaker_prior", "speaker_standardise",
    "splits", "stream_design", "stream_weights", "summarise", "train_head",
]
