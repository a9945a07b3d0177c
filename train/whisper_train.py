"""Train and evaluate the Whisper-encoder emotion model on several corpora at once.

    python -m train.whisper_train --data tess=../shared/data/tess \
        --data ravdess=../shared/data/ravdess --data savee=../shared/data/savee \
        --data urdu=../shared/data/urdu --encoder ../shared/models/whisper-tiny-encoder.pt \
        --protocols tess-si ravdess-ai loco shipped -o runs/whisper --final tess ravdess

(``emotion-monitor train whisper`` is the same command.) Writes ``OUT/results.json`` (every
split: the choice made on training speakers, its validation table, each test set's accuracy,
UAR, macro-F1, per-class recall and confusion matrix on clean and telephone-band audio),
``OUT/summary.md`` and ``OUT/report.html``. ``--final CORPUS...`` fits the served head on those
corpora (choice again by grouped CV over their speakers) and writes ``OUT/config.json`` +
``OUT/head.npz``, which ``emotion-monitor export OUT -o models/NAME.pt`` turns into a model file.
Splits already in ``OUT/splits/`` are reused, so a killed run resumes.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import zlib
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from train import crosscorpus as cc
from train.audio import load_audio
from train.corpus import EMOTIONS, Utterance, load_corpora
from train.embeddings import VARIANTS, embed_stream, embed_utterances
from train.site_norm import fit_site_head, site_arrays
from train.stream_eval import build_stream, evaluate_stream
from train.whisper_args import add_arguments
from train.whisper_emotion import ARCHITECTURE, WhisperEmotionConfig, build


def is_calm(utt: Utterance) -> bool:
    """A RAVDESS "calm" clip (emotion code 02), which the loader counts as neutral."""
    return utt.corpus == "ravdess" and utt.path.stem.split("-")[2:3] == ["02"]


def build_pool(specs: list[str], encoder: str, progress: bool = True,
               calm: str = "neutral") -> cc.Pool:
    """Load the corpora and their (cached) features for both variants; ``calm="drop"`` leaves
    RAVDESS's calm clips out (features are cached for the whole corpus either way)."""
    utts = load_corpora(specs)
    feats: dict[str, list[np.ndarray]] = {v: [] for v in VARIANTS}
    kept_all: list[np.ndarray] = []
    offset = 0
    for corpus in dict.fromkeys(u.corpus for u in utts):
        part = [u for u in utts if u.corpus == corpus]
        kept_v = None
        for v in VARIANTS:
            f, kept = embed_utterances(part, encoder, v, progress=progress)
            if kept_v is not None and not np.array_equal(kept, kept_v):
                raise RuntimeError(f"{corpus}: variants kept different files")
            kept_v = kept
            feats[v].append(f)
        kept_all.append(kept_v + offset)
        offset += len(part)
    order = [u for corpus in dict.fromkeys(u.corpus for u in utts)
             for u in utts if u.corpus == corpus]
    kept_idx = np.concatenate(kept_all)
    utts = [order[i] for i in kept_idx]
    keep = np.array([calm != "drop" or not is_calm(u) for u in utts])
    return cc.Pool([u for u, k in zip(utts, keep, strict=True) if k],
                   {v: np.concatenate(feats[v])[keep] for v in VARIANTS})


STREAM_TRAIN_HOP = 16_000  # training stream windows every 1 s (the daemon's hop is 0.5 s)


def add_streams(pool: cc.Pool, encoder: str, progress: bool = True) -> None:
    """Each speaker's clips made into one stream, its voiced windows' features for both
    variants (``train.embeddings.embed_stream``, cached): what a head may train on beside the
    clips, and what validation scores it on. Seeded by the speaker's name."""
    speakers = list(dict.fromkeys(pool.speaker.tolist()))
    for v in VARIANTS:
        pool.streams[v] = {}
        for spk in tqdm(speakers, desc=f"speaker streams ({v})", unit="speaker",
                        disable=not progress):
            rows = np.flatnonzero(pool.speaker == spk)
            pool.streams[v][spk] = embed_stream([pool.utts[i] for i in rows], encoder, v,
                                                hop=STREAM_TRAIN_HOP,
                                                seed=zlib.crc32(spk.encode()), progress=False)


def _markdown(summary: list[dict]) -> str:
    lines = [
        "| protocol | test | training | speaker norm | folds | accuracy | UAR | macro-F1 | "
        "telephone accuracy | telephone UAR | drop (points) | stream windows |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in summary:
        stream = r.get("stream_accuracy")
        lines.append(
            f"| {r['protocol']} | {r['test']} ({len(r['classes'])} classes) | {r['setting']} | "
            f"{'per speaker' if r['speaker_norm'] else 'none'} | {r['folds']} | "
            f"{100 * r['clean_accuracy']:.1f} | {100 * r['clean_uar']:.1f} | "
            f"{100 * r['clean_macro_f1']:.1f} | {100 * r['ulaw_accuracy']:.1f} | "
            f"{100 * r['ulaw_uar']:.1f} | {100 * r['phone_drop']:.1f} | "
            f"{'—' if stream is None else f'{100 * stream:.1f}'} |"
        )
    return "\n".join(lines) + "\n"


def write_report(summary: list[dict], path: Path) -> None:
    """Plotly HTML: one confusion matrix per summary row (clean audio), row-normalised."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    rows = [r for r in summary]
    n = len(rows)
    cols = 3
    fig = make_subplots(rows=(n + cols - 1) // cols, cols=cols, subplot_titles=[
        f"{r['protocol']} -> {r['test']}, {r['setting']}, "
        f"{'spk-norm' if r['speaker_norm'] else 'no norm'}: {100 * r['clean_accuracy']:.1f} %"
        for r in rows])
    for i, r in enumerate(rows):
        cm = np.asarray(r["clean_confusion"], dtype=float)
        cm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
        fig.add_trace(go.Heatmap(z=cm, x=r["classes"], y=r["classes"], zmin=0, zmax=1,
                                 colorscale="Blues", showscale=i == 0,
                                 text=np.round(100 * cm).astype(int), texttemplate="%{text}"),
                      row=i // cols + 1, col=i % cols + 1)
        fig.update_yaxes(autorange="reversed", row=i // cols + 1, col=i % cols + 1)
    fig.update_layout(height=330 * ((n + cols - 1) // cols), width=1300,
                      title="Held-out speakers and corpora: recall per true class (rows), %")
    fig.write_html(path, include_plotlyjs="cdn")


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    (out / "splits").mkdir(parents=True, exist_ok=True)
    pool = build_pool(args.data, args.encoder, progress=not args.quiet, calm=args.calm)
    print(f"{len(pool.utts)} clips from {', '.join(sorted(set(pool.corpus)))}", file=sys.stderr)
    mixes = tuple(args.stream_mix)
    if any(mixes):
        add_streams(pool, args.encoder, progress=not args.quiet)
        n = sum(len(y) for _, y in pool.streams["clean"].values())
        print(f"{n} stream windows from {len(pool.streams['clean'])} speakers", file=sys.stderr)
    blocks = [b - 1 for b in args.blocks]
    poolings = {"both": (0, 1), "all": (0,), "voiced": (1,)}[args.pooling]
    norms = {"off": [False], "on": [True], "both": [False, True]}[args.speaker_norm]
    results = []
    todo = [(s, n) for s in cc.splits(pool, args.protocols) for n in norms]
    for i, (split, norm) in enumerate(todo):
        key = f"{split.protocol}-{split.name}-{'spk' if norm else 'none'}"
        file = out / "splits" / ("".join(c if c.isalnum() else "_" for c in key) + ".json")
        if file.exists():
            r = json.loads(file.read_text())
        else:
            t0 = time.time()
            r = cc.run_split(pool, split, norm, blocks, poolings, mixes)
            r["seconds"] = round(time.time() - t0, 1)
            file.write_text(json.dumps(r) + "\n")
            acc = {t: round(100 * v["clean"]["accuracy"], 1) for t, v in r["tests"].items()}
            print(f"[{i + 1}/{len(todo)}] {key}: {r['choice_label']} -> {acc} "
                  f"({r['seconds']} s)", file=sys.stderr, flush=True)
        wants_stream = args.stream is not None and (not args.stream
                                                     or split.protocol in args.stream)
        if wants_stream and not norm and "stream" not in r:
            r["stream"] = stream_accuracy(pool, split, r, args.encoder)
            file.write_text(json.dumps(r) + "\n")
            print(f"    stream: {json.dumps({k: v['accuracy'] for k, v in r['stream'].items()})}",
                  file=sys.stderr, flush=True)
        results.append(r)
    summary = cc.summarise(results)
    meta = {"encoder": str(args.encoder), "data": args.data, "blocks": args.blocks,
            "pooling": args.pooling, "stream_mix": list(mixes),
            "stream_train_hop_s": STREAM_TRAIN_HOP / 16000,
            "ravdess_calm": args.calm,
            "c_grid": list(cc.C_GRID), "inner_folds": cc.INNER_FOLDS,
            "machine": platform.platform(), "torch": torch.__version__,
            "command": " ".join(sys.argv)}
    (out / "results.json").write_text(json.dumps({"meta": meta, "splits": results,
                                                  "summary": summary}, indent=1) + "\n")
    (out / "summary.md").write_text(_markdown(summary))
    write_report(summary, out / "report.html")
    print(_markdown(summary))
    if args.publish:
        publish(out, Path(args.publish), meta, summary)
    if args.final:
        final(pool, args, out, blocks, poolings, mixes)
    return 0


MARK_START, MARK_END = "<!-- crosscorpus-table:start -->", "<!-- crosscorpus-table:end -->"


def publish(out: Path, docs: Path, meta: dict, summary: list[dict]) -> None:
    """Write the table into ``docs/crosscorpus.md`` (between its markers) and the summary
    (with confusion matrices) to ``docs/crosscorpus.json``; copy the HTML report."""
    docs.mkdir(parents=True, exist_ok=True)
    (docs / "crosscorpus.json").write_text(json.dumps({"meta": meta, "summary": summary},
                                                      indent=1) + "\n")
    md = docs / "crosscorpus.md"
    table = f"{MARK_START}\n{_markdown(summary)}{MARK_END}"
    text = (md.read_text() if md.exists()
            else f"# Cross-speaker and cross-corpus results\n\n{table}\n")
    if MARK_START in text and MARK_END in text:
        text = text[:text.index(MARK_START)] + table + text[text.index(MARK_END) + len(MARK_END):]
    md.write_text(text)
    (docs / "crosscorpus.html").write_bytes((out / "report.html").read_bytes())


def stream_accuracy(pool: cc.Pool, split: cc.Split, result: dict, encoder: str) -> dict:
    """The stream protocol (``train.stream_eval``) on each test set of a split: the split's
    head in the served model, the held-out clips concatenated into one stream, 3-s windows
    every 0.5 s, argmax over the classes the test set shares with training."""
    choice = cc.Choice(**result["choice"])
    head = cc.train_head(pool, split.train, choice, speaker_norm=False)
    model = build(encoder, WhisperEmotionConfig(n_blocks=choice.block + 1,
                                                pooling=cc.POOLINGS[choice.pooling]))
    model.set_head(head.mean, head.std, head.weight, head.bias)
    out = {}
    for name, rows in split.tests.items():
        classes = [EMOTIONS.index(c) for c in result["tests"][name]["clean"]["classes"]]
        rows = rows[np.isin(pool.label[rows], classes)]
        clips = [torch.from_numpy(load_audio(pool.utts[i].path)) for i in rows]
        stream = build_stream(clips, pool.label[rows].tolist(), seed=0)
        allowed = torch.full((len(EMOTIONS),), float("-inf"))
        allowed[classes] = 0.0

        def predict(batch: torch.Tensor, allowed: torch.Tensor = allowed) -> torch.Tensor:
            logits, _, _ = model.explain(batch)
            return torch.softmax(logits + allowed, dim=-1)

        r = evaluate_stream(predict, stream, len(EMOTIONS))
        out[name] = {"accuracy": r["accuracy"], "n_windows": r["n_windows"],
                     "protocol": r["protocol"]}
    return out


def final(pool: cc.Pool, args: argparse.Namespace, out: Path, blocks: list[int],
          poolings: tuple[int, ...] = (0, 1), mixes: tuple[float, ...] = (0.0,)) -> None:
    """Fit the served head on ``--final`` corpora; save what export needs."""
    rows = np.flatnonzero(np.isin(pool.corpus, args.final))
    choice, table = cc.choose(pool, rows, speaker_norm=False, blocks=blocks, poolings=poolings,
                              mixes=mixes)
    head = cc.train_head(pool, rows, choice, speaker_norm=False)
    # The per-stream head: same block and pooling (one encoder depth serves both), its own C.
    spk_choice, spk_table = cc.choose(pool, rows, speaker_norm=True, blocks=[choice.block],
                                      poolings=[choice.pooling])
    spk = cc.train_head(pool, rows, spk_choice, speaker_norm=True)
    prior_mean, prior_std = spk.prior
    # The site head (emotion-monitor calibrate): the same choice on corpus-standardised features.
    site = fit_site_head(pool, rows, choice)
    np.savez(out / "head.npz", mean=head.mean, std=head.std, weight=head.weight, bias=head.bias,
             spk_mean=spk.mean, spk_std=spk.std, spk_weight=spk.weight, spk_bias=spk.bias,
             prior_mean=prior_mean, prior_std=prior_std, **site_arrays(site))
    config = WhisperEmotionConfig(n_blocks=choice.block + 1, pooling=cc.POOLINGS[choice.pooling])
    (out / "config.json").write_text(json.dumps({
        "kind": "whisper", "model": config.to_dict(), "encoder": str(Path(args.encoder)),
        "classes": list(EMOTIONS), "choice": asdict(choice), "choice_label": choice.label(),
        "validation": table, "trained_on": sorted(args.final), "n_train": int(len(rows)),
        "stream_choice": asdict(spk_choice), "stream_choice_label": spk_choice.label(),
        "stream_validation": spk_table,
        "architecture": ARCHITECTURE,
        "balancing": "each (corpus, class) cell has equal total weight",
        "stream_windows": None if not choice.stream_mix else {
            "weight_vs_clips": choice.stream_mix,
            "windows": int(sum(len(pool.streams["clean"][s][1])
                               for s in np.unique(pool.speaker[rows]))),
            "how": "each training speaker's clips made into one stream (random order, "
                   "0.2-0.8 s gaps, -65 dBFS floor), a 3-s window every 1 s labelled with the "
                   "emotion covering most of its voiced samples; corpora and classes balanced "
                   "within the windows' share",
        },
    }, indent=1) + "\n")
    print(f"final head: {choice.label()} on {len(rows)} clips of {', '.join(args.final)} "
          f"-> {out / 'head.npz'}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.whisper_train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
