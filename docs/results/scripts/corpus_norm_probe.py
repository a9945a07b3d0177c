"""Probe: standardise features per *corpus* (per deployment) instead of per speaker?

Per-speaker normalisation is worth 4-16 points offline but a live stream has only its own
past, dominated by one emotion (crosscorpus.md, "Per-stream normalisation"). A deployment, a
call centre's whole floor, has many voices: its running feature statistics are available
without labels, mix many callers' emotions, and carry what sets the deployment apart from the
training corpora (microphones, rooms, language, the way people talk there). This probe asks
whether standardising each corpus by its own statistics (train: TESS by TESS's, RAVDESS by
RAVDESS's; test: SAVEE by SAVEE's, ...) helps the head hear a new corpus.

Heads: the shipped choice (block 2, voiced pooling, C = 0.003, telephone copies), clips only;
arms "none" (global standardisation, as served), "corpus" (each corpus standardised by its
own mean and std, ``train.crosscorpus``'s per-speaker path with the corpus as the speaker),
and "speaker" for reference. Rule, written before any run: corpus normalisation is worth
building into the daemon if it beats "none" on validation, which here is the training side's
own leave-one-corpus-out (train on TESS, test on RAVDESS, and the reverse; mean UAR, clean +
telephone band). The test figures (TESS + RAVDESS -> SAVEE, URDU; leave one corpus out over the
four) are reported either way. Then, for the shipped head on SAVEE and URDU: how many
unlabelled clips of the new corpus the statistics need (``SITE_CLIPS``, ``DRAWS`` random draws
each), and what a site that is mostly neutral does to them (70 % neutral draws of 100 clips),
with plain moments and with each emotion weighing the same by the global head's soft labels
(``streamer.stream_norm.balanced_moments``, as the per-stream path serves). Last, the same
question with the served recipe's stream windows in training (weight 1, version 3): clips
standardised by their corpus's clip statistics and stream windows by their corpus's window
statistics (per variant: a telephone site's statistics are of telephone audio), against
version 3's recipe, on the same validation and test splits, clips and stream windows. One run:

    .venv/bin/python docs/results/scripts/corpus_norm_probe.py > runs/corpus_norm.log 2>&1

Writes ``runs/corpus_norm/results.json``.
"""

from __future__ import annotations

import dataclasses
import json
import sys

# isort: off
from probe_setup import CHOICE, DATA, ENCODER, REPO  # OMP_WAIT_POLICY first
# isort: on

import numpy as np  # noqa: E402
import torch  # noqa: E402

from streamer.stream_norm import balanced_moments  # noqa: E402
from train import crosscorpus as cc  # noqa: E402
from train.corpus import EMOTIONS  # noqa: E402
from train.site_norm import corpus_standardised_pool  # noqa: E402
from train.whisper_train import add_streams, build_pool  # noqa: E402

OUT = REPO / "runs" / "corpus_norm"
ARMS = ("none", "corpus", "speaker")
SITE_CLIPS = (10, 30, 100)
DRAWS = 10
NEUTRAL = EMOTIONS.index("neutral")


def corpus_view(pool: cc.Pool) -> cc.Pool:
    """The pool with each clip's corpus as its speaker, so the per-speaker path standardises
    per corpus."""
    view = cc.Pool(pool.utts, pool.feats)
    view.speaker = view.corpus.copy()
    return view


def figures(pool: cc.Pool, view: cc.Pool, train: np.ndarray, tests: dict[str, np.ndarray]
            ) -> dict:
    """Per arm and test set: accuracy, UAR and macro-F1, clean and telephone band."""
    train_classes = set(pool.label[train].tolist())
    out: dict = {}
    for arm in ARMS:
        p = view if arm == "corpus" else pool
        norm = arm != "none"
        head = cc.train_head(p, train, CHOICE, speaker_norm=norm)
        out[arm] = {}
        for name, rows in tests.items():
            classes = sorted(train_classes & set(pool.label[rows].tolist()))
            out[arm][name] = {v: {k: cc.evaluate(p, head, rows, CHOICE, norm, v, classes)[k]
                                  for k in ("accuracy", "uar", "macro_f1")}
                              for v in ("clean", "ulaw")}
    return out


def draws(rng: np.random.Generator, y: np.ndarray, n: int, neutral_share: float | None
          ) -> list[np.ndarray]:
    """``DRAWS`` sets of ``n`` row indices: uniform without replacement, or ``neutral_share``
    neutral and the rest from the other emotions (with replacement)."""
    if neutral_share is None:
        return [rng.choice(len(y), n, replace=False) for _ in range(DRAWS)]
    neutral, other = np.flatnonzero(y == NEUTRAL), np.flatnonzero(y != NEUTRAL)
    k = int(round(neutral_share * n))
    return [np.concatenate([rng.choice(neutral, k), rng.choice(other, n - k)])
            for _ in range(DRAWS)]


def site_statistics(pool: cc.Pool, shipped: np.ndarray, tests: dict[str, np.ndarray]) -> dict:
    """Shipped corpus-norm head on each test corpus standardised by statistics of a few of its
    clips: random draws of n clips, and 70 %-neutral draws of 100 (plain and balanced)."""
    view = corpus_view(pool)
    head = cc.train_head(view, shipped, CHOICE, speaker_norm=True)
    global_head = cc.train_head(pool, shipped, CHOICE, speaker_norm=False)
    rng = np.random.default_rng(0)
    out: dict = {}
    for name, rows in tests.items():
        classes = sorted(set(pool.label[shipped].tolist()) & set(pool.label[rows].tolist()))
        rows = rows[np.isin(pool.label[rows], classes)]
        x = pool.feats["clean"][rows, CHOICE.pooling, CHOICE.block].astype(np.float64)
        y = pool.label[rows]

        def score(mu: np.ndarray, sd: np.ndarray, x: np.ndarray = x, y: np.ndarray = y,
                  classes: list = classes) -> float:
            return cc.metrics(y, cc.predict(head, (x - mu) / (sd + 1e-5), classes),
                              classes)["uar"]

        res = {"all clips": score(x.mean(0), x.std(0))}
        for n in SITE_CLIPS:
            res[f"{n} clips"] = float(np.mean([score(x[d].mean(0), x[d].std(0))
                                               for d in draws(rng, y, n, None)]))
        plain, balanced = [], []
        logits = global_head.logits(x.astype(np.float32))
        probs = np.exp(logits - logits.max(1, keepdims=True))
        probs /= probs.sum(1, keepdims=True)
        for d in draws(rng, y, 100, 0.7):
            xd, pd = x[d], probs[d]
            plain.append(score(xd.mean(0), xd.std(0)))
            mean, square = balanced_moments(pd.sum(0), (pd[:, :, None] * xd[:, None]).sum(0),
                                            (pd[:, :, None] * (xd * xd)[:, None]).sum(0))
            balanced.append(score(mean, np.sqrt(np.maximum(square - mean**2, 1e-8))))
        res["100 clips, 70 % neutral, plain"] = float(np.mean(plain))
        res["100 clips, 70 % neutral, balanced"] = float(np.mean(balanced))
        out[name] = res
    return out


def with_streams(pool: cc.Pool, train: np.ndarray, tests: dict[str, np.ndarray]) -> dict:
    """Version 3's recipe (stream windows x1) on the raw pool and on the corpus-standardised
    one: accuracy and UAR of clips (clean, telephone band) and stream windows per test set."""
    choice = dataclasses.replace(CHOICE, stream_mix=1.0)
    train_classes = set(pool.label[train].tolist())
    out: dict = {}
    for arm, p in (("none", pool), ("corpus", corpus_standardised_pool(pool))):
        head = cc.train_head(p, train, choice, speaker_norm=False)
        out[arm] = {}
        for name, rows in tests.items():
            classes = sorted(train_classes & set(pool.label[rows].tolist()))
            res = {v: cc.evaluate(p, head, rows, choice, False, v, classes)
                   for v in ("clean", "ulaw")}
            res["stream"] = cc.evaluate_streams(p, head, np.unique(pool.speaker[rows]), choice,
                                                "clean", classes)
            out[arm][name] = {f"{v} {k}": m[k] for v, m in res.items()
                              for k in ("accuracy", "uar")}
    return out


def disjoint_site(pool: cc.Pool, train: np.ndarray, site: np.ndarray) -> dict:
    """Clips-only heads trained on ``train``; the site's speakers split in two halves (sorted,
    alternating): each half scored (UAR) by the global head, by the corpus-norm head with the
    *other* half's statistics (the calibration never heard the scored voices), and with its
    own (transductive); means over the two halves."""
    head = cc.train_head(corpus_view(pool), train, CHOICE, speaker_norm=True)
    global_head = cc.train_head(pool, train, CHOICE, speaker_norm=False)
    classes = sorted(set(pool.label[train].tolist()) & set(pool.label[site].tolist()))
    site = site[np.isin(pool.label[site], classes)]
    speakers = np.unique(pool.speaker[site])
    halves = [site[np.isin(pool.speaker[site], speakers[i::2])] for i in (0, 1)]
    x = {i: pool.feats["clean"][h, CHOICE.pooling, CHOICE.block].astype(np.float64)
         for i, h in enumerate(halves)}
    out: dict = {"global": [], "other half's statistics": [], "own statistics": []}
    for i in (0, 1):
        y, other = pool.label[halves[i]], x[1 - i]
        out["global"].append(cc.metrics(y, cc.predict(global_head, x[i].astype(np.float32),
                                                       classes), classes)["uar"])
        for key, ref in (("other half's statistics", other), ("own statistics", x[i])):
            z = (x[i] - ref.mean(0)) / (ref.std(0) + 1e-5)
            out[key].append(cc.metrics(y, cc.predict(head, z, classes), classes)["uar"])
    return {k: float(np.mean(v)) for k, v in out.items()} | {
        "speakers": int(len(speakers)), "clips": [int(len(h)) for h in halves]}


def main() -> int:
    torch.set_num_threads(2)
    pool = build_pool(DATA, ENCODER)
    view = corpus_view(pool)
    rows = {c: np.flatnonzero(pool.corpus == c) for c in np.unique(pool.corpus)}
    shipped = np.concatenate([rows["tess"], rows["ravdess"]])
    results: dict = {"validation": {}, "test": {}}
    for a, b in (("tess", "ravdess"), ("ravdess", "tess")):
        results["validation"][f"{a} -> {b}"] = figures(pool, view, rows[a], {b: rows[b]})
    results["test"]["shipped: TESS+RAVDESS -> SAVEE, URDU"] = figures(
        pool, view, shipped, {"savee": rows["savee"], "urdu": rows["urdu"]})
    for held in rows:
        train = np.concatenate([r for c, r in rows.items() if c != held])
        results["test"][f"loco: -> {held}"] = figures(pool, view, train, {held: rows[held]})
    results["site statistics (shipped, clean UAR)"] = site_statistics(
        pool, shipped, {"savee": rows["savee"], "urdu": rows["urdu"]})
    results["speaker-disjoint site statistics (clean UAR)"] = {
        "validation: tess -> ravdess": disjoint_site(pool, rows["tess"], rows["ravdess"]),
        "test: shipped -> urdu": disjoint_site(pool, shipped, rows["urdu"]),
        "test: shipped -> savee": disjoint_site(pool, shipped, rows["savee"])}
    add_streams(pool, ENCODER, progress=False)
    results["with stream windows"] = {
        **{f"validation: {a} -> {b}": with_streams(pool, rows[a], {b: rows[b]})
           for a, b in (("tess", "ravdess"), ("ravdess", "tess"))},
        "test: shipped": with_streams(pool, shipped, {"savee": rows["savee"],
                                                      "urdu": rows["urdu"]})}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "results.json").write_text(json.dumps(results, indent=1))
    for side in ("validation", "test"):
        by_split = results[side]
        for split, arms in by_split.items():
            for test in arms["none"]:
                print(f"{side} | {split} | {test} | " + " | ".join(
                    f"{arm} acc {100 * arms[arm][test]['clean']['accuracy']:.1f} "
                    f"UAR {100 * arms[arm][test]['clean']['uar']:.1f} "
                    f"tel UAR {100 * arms[arm][test]['ulaw']['uar']:.1f}" for arm in ARMS))
    for name, res in results["site statistics (shipped, clean UAR)"].items():
        print(f"site statistics, {name}: " + ", ".join(f"{k} {100 * v:.1f}"
                                                        for k, v in res.items()))
    for split, arms in results["with stream windows"].items():
        for test in arms["none"]:
            print(f"with stream windows | {split} | {test} | " + " | ".join(
                f"{arm} " + " ".join(f"{k} {100 * v:.1f}" for k, v in arms[arm][test].items())
                for arm in arms))
    for split, res in results["speaker-disjoint site statistics (clean UAR)"].items():
        print(f"speaker-disjoint | {split} | " + ", ".join(
            f"{k} {100 * v:.1f}" if isinstance(v, float) else f"{k} {v}" for k, v in res.items()))
    val = {arm: np.mean([r[arm][t][v]["uar"] for r in results["validation"].values()
                         for t in r[arm] for v in ("clean", "ulaw")]) for arm in ARMS}
    print("validation mean UAR (clean + telephone): " + ", ".join(
        f"{arm} {100 * u:.1f}" for arm, u in val.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
