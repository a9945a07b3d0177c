"""Train and evaluate the streaming CNN-LSTM (the served model).

    python -m train.streaming_train ../shared/data/tess --out runs/streaming/default \
        --protocols cv5 speaker-independent word-disjoint --final

Decodes the corpus once to 16 kHz (cached under ``.cache/``) and augments on the fly
(``train.augment``): the utterance at a random offset in the 3-s window, a noise floor,
additive noise at random SNRs, random gain, speed perturbation and SpecAugment. Every fold is
evaluated on its held-out clips (centred in the window) and, for cv5 and speaker-independent,
under the stream protocol (``train.stream_eval``). Results are written per fold as they come,
so an interrupted run resumes where it stopped. ``--final`` then trains on everything and
saves the weights that ``emotion-monitor export`` turns into a model file.

Run directory layout (read by ``train.export``):
    config.json              {"kind": "streaming", "model": {...}, "train": {...}, "corpus": ...}
    folds/<protocol>/<i>.json  per-fold metrics (resume marker)
    metrics.json             per-protocol mean/std and per-fold figures
    final.pt                 state_dict of the model trained on all data (with --final)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from train.audio import SAMPLE_RATE, load_audio
from train.augment import AugmentConfig, augment_clip, eval_window, spec_augment
from train.corpus import EMOTIONS, Utterance, scan_corpus
from train.splits import make_splits
from train.stream_eval import build_stream, evaluate_stream
from train.streaming_model import StreamingCNNLSTM, StreamingConfig

CACHE_DIR = Path(".cache") / "waveforms"
STREAM_PROTOCOLS = ("cv5", "speaker-independent")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 8
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 1e-3
    label_smoothing: float = 0.05
    seed: int = 0
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["augment"] = self.augment.to_dict()
        return d

    @staticmethod
    def from_dict(d: dict) -> TrainConfig:
        d = dict(d)
        aug = {k: tuple(v) if isinstance(v, list) else v for k, v in d.pop("augment", {}).items()}
        return TrainConfig(augment=AugmentConfig(**aug), **d)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but torch sees no CUDA device")
    return torch.device(name)


def load_clips(utts: list[Utterance], cache_dir: Path = CACHE_DIR) -> list[torch.Tensor]:
    """Decode every utterance to 16-kHz float32 once; later runs read one cached file."""
    ident = hashlib.sha1()
    for u in utts:
        st = Path(u.path).stat()
        ident.update(f"{Path(u.path).resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    cache = cache_dir / f"{ident.hexdigest()[:16]}-{SAMPLE_RATE}.pt"
    if cache.exists():
        return [w.float() for w in torch.load(cache)]
    clips = [torch.from_numpy(load_audio(u.path, SAMPLE_RATE)).float()
             for u in tqdm(utts, desc="decoding audio", unit="file")]
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp")
    torch.save([c.half() for c in clips], tmp)
    tmp.replace(cache)
    return clips


def make_batch(clips: list[torch.Tensor], idx: list[int], n_samples: int, aug: AugmentConfig,
               gen: torch.Generator) -> torch.Tensor:
    return torch.stack([augment_clip(clips[i], n_samples, aug, gen) for i in idx])


def train_model(
    clips: list[torch.Tensor],
    labels: list[int],
    model_config: StreamingConfig,
    cfg: TrainConfig,
    device: torch.device = torch.device("cpu"),
    desc: str = "train",
    progress: bool = True,
) -> StreamingCNNLSTM:
    """Train a fresh model on (clips, labels) with on-the-fly augmentation."""
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    model = StreamingCNNLSTM(model_config).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(clips) / cfg.batch_size)
    total = max(1, cfg.epochs * steps_per_epoch)
    warm = max(1, total // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(  # linear warm-up, then cosine decay
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1.0 + math.cos(math.pi * s / total))
    )
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    y_all = torch.tensor(labels, dtype=torch.long)
    bar = tqdm(total=cfg.epochs * steps_per_epoch, desc=desc, unit="batch", disable=not progress,
               leave=False)
    for _epoch in range(cfg.epochs):
        model.train()
        order = torch.randperm(len(clips), generator=gen).tolist()
        running = 0.0
        for b in range(steps_per_epoch):
            idx = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            wave = make_batch(clips, idx, model_config.n_samples, cfg.augment, gen).to(device)
            y = y_all[idx].to(device)
            normed = model.normalize(model.spectrogram(wave))
            normed = spec_augment(normed.cpu(), cfg.augment, gen).to(device)
            logits, _ = model.classify(normed)
            loss = loss_fn(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            running = 0.9 * running + 0.1 * loss.item() if b else loss.item()
            bar.set_postfix(epoch=_epoch + 1, loss=f"{running:.3f}")
            bar.update(1)
    bar.close()
    return model.eval()


def predict_clips(model: nn.Module, clips: list[torch.Tensor], n_samples: int,
                  device: torch.device, batch_size: int = 64) -> torch.Tensor:
    """Class predictions for clips centred in the window (the per-clip protocols)."""
    preds = []
    model.eval()
    with torch.no_grad():
        for i in range(0, len(clips), batch_size):
            wave = torch.stack([eval_window(c, n_samples, seed=i + j)
                                for j, c in enumerate(clips[i:i + batch_size])])
            preds.append(model(wave.to(device)).argmax(dim=1).cpu())
    return torch.cat(preds)


def clip_metrics(pred: torch.Tensor, y: torch.Tensor, n_classes: int) -> dict:
    confusion = np.zeros((n_classes, n_classes), dtype=int)
    for t, p in zip(y.tolist(), pred.tolist(), strict=True):
        confusion[t, p] += 1
    recall = confusion.diagonal() / confusion.sum(axis=1).clip(min=1)
    return {"accuracy": float((pred == y).float().mean()), "uar": float(recall.mean()),
            "n": int(y.numel()), "confusion": confusion.tolist()}


def run_protocol(
    protocol: str, utts: list[Utterance], clips: list[torch.Tensor], model_config: StreamingConfig,
    cfg: TrainConfig, out: Path, device: torch.device, k: int = 5, max_folds: int | None = None,
    only_folds: list[int] | None = None, stream_clips: int | None = 600,
) -> dict:
    """Train and evaluate every fold of ``protocol``; resumes from ``out/folds``."""
    labels = [EMOTIONS.index(u.emotion) for u in utts]
    splits = make_splits(protocol, utts, k=k, seed=cfg.seed)
    if max_folds is not None:
        splits = splits[:max_folds]
    fold_dir = out / "folds" / protocol
    fold_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for i, (tr, te) in enumerate(splits):
        path = fold_dir / f"{i}.json"
        if path.exists():
            results.append(json.loads(path.read_text()))
            continue
        if only_folds is not None and i not in only_folds:
            continue
        t0 = time.time()
        model = train_model([clips[j] for j in tr], [labels[j] for j in tr], model_config, cfg,
                            device, desc=f"{protocol} fold {i + 1}/{len(splits)}")
        torch.save(model.cpu().state_dict(), fold_dir / f"{i}.pt")
        model.to(device)
        te_clips = [clips[j] for j in te]
        y = torch.tensor([labels[j] for j in te])
        res = {"fold": i, "n_train": len(tr), "n_test": len(te),
               "test_speakers": sorted({str(utts[j].speaker) for j in te}),
               "clip": clip_metrics(predict_clips(model, te_clips, model_config.n_samples, device),
                                    y, len(EMOTIONS))}
        if protocol in STREAM_PROTOCOLS:
            pick = list(range(len(te_clips)))
            if stream_clips is not None and len(pick) > stream_clips:  # keeps the eval short
                gen = torch.Generator().manual_seed(cfg.seed + i)
                pick = sorted(torch.randperm(len(pick), generator=gen)[:stream_clips].tolist())
            stream = build_stream([te_clips[j] for j in pick], [int(y[j]) for j in pick],
                                  seed=cfg.seed + i)
            res["stream_clips"] = len(pick)
            res["stream"] = evaluate_stream(
                lambda w, m=model: m(w.to(device)).cpu(), stream, len(EMOTIONS))
        res["seconds"] = round(time.time() - t0, 1)
        path.write_text(json.dumps(res, indent=1))
        tqdm.write(f"{protocol} fold {i + 1}: clip acc {res['clip']['accuracy']:.4f}"
                   + (f", stream acc {res['stream']['accuracy']:.4f}" if "stream" in res else ""))
        results.append(res)
    return summarize(protocol, results)


def summarize(protocol: str, results: list[dict]) -> dict:
    def stats(values: list[float]) -> dict:
        a = np.asarray(values)
        return {"mean": float(a.mean()), "std": float(a.std()), "folds": [float(v) for v in a]}

    summary = {"protocol": protocol, "n_folds": len(results),
               "test_speakers": [r.get("test_speakers") for r in results],
               "accuracy": stats([r["clip"]["accuracy"] for r in results]),
               "uar": stats([r["clip"]["uar"] for r in results])}
    if all("stream" in r for r in results) and results:
        summary["stream_accuracy"] = stats([r["stream"]["accuracy"] for r in results])
        summary["stream_protocol"] = results[0]["stream"]["protocol"]
    return summary


def write_config(out: Path, model_config: StreamingConfig, cfg: TrainConfig, corpus: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(
        {"kind": "streaming", "model": model_config.to_dict(), "train": cfg.to_dict(),
         "corpus": corpus}, indent=1))


def read_config(run_dir: Path) -> tuple[StreamingConfig, TrainConfig, dict]:
    raw = json.loads((Path(run_dir) / "config.json").read_text())
    return StreamingConfig.from_dict(raw["model"]), TrainConfig.from_dict(raw["train"]), raw


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m train.streaming_train",
        description="Train and evaluate the streaming CNN-LSTM under cv5 / speaker-independent /"
                    " word-disjoint (+ the stream protocol), then optionally train on all data.",
        epilog="example:\n  python -m train.streaming_train ../shared/data/tess --out "
               "runs/streaming/default --protocols cv5 speaker-independent --final",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("corpus", help="corpus folder (TESS or any scan_corpus layout)")
    p.add_argument("--out", required=True, type=Path, help="run directory (resumable)")
    p.add_argument("--protocols", nargs="*", default=["cv5", "speaker-independent"],
                   choices=["cv5", "speaker-independent", "word-disjoint"])
    p.add_argument("--final", action="store_true", help="also train on all data -> final.pt")
    p.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    p.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    p.add_argument("--lr", type=float, default=TrainConfig.lr)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-folds", type=int, default=None, help="only the first N folds (quick)")
    p.add_argument("--folds", type=int, nargs="*", default=None,
                   help="only these fold indices (to split a protocol across processes)")
    p.add_argument("--limit", type=int, default=None, help="only N utterances (smoke tests)")
    p.add_argument("--no-augment", action="store_true", help="train without augmentation")
    p.add_argument("--channels", type=int, nargs="*", default=None)
    p.add_argument("--norm", choices=["window", "band"], default=StreamingConfig.norm,
                   help="per-window normalisation of the log-mel (band: per mel band)")
    p.add_argument("--freq-shift", type=int, default=AugmentConfig.freq_shift,
                   help="augment: random mel-axis shift of up to +-N bins")
    p.add_argument("--speed", type=float, nargs=3, default=None, metavar=("LO", "HI", "P"),
                   help="augment: speed perturbation factor range and probability")
    p.add_argument("--stream-clips", type=int, default=600,
                   help="at most this many held-out clips per fold go into the stream")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (max 2 here)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    scan = scan_corpus(args.corpus, probe=False)
    utts = scan.utterances
    if args.limit:
        rng = np.random.default_rng(args.seed)
        utts = [utts[i] for i in sorted(rng.choice(len(utts), args.limit, replace=False))]
    clips = load_clips(utts)
    model_config = StreamingConfig(norm=args.norm)
    if args.channels:
        model_config = replace(model_config, channels=tuple(args.channels))
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                      augment=AugmentConfig.none() if args.no_augment
                      else AugmentConfig(freq_shift=args.freq_shift,
                                         **({"speed_range": tuple(args.speed[:2]),
                                             "speed_p": args.speed[2]} if args.speed else {})))
    out: Path = args.out
    write_config(out, model_config, cfg, scan.corpus)
    metrics_path = out / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    for protocol in args.protocols:
        metrics[protocol] = run_protocol(protocol, utts, clips, model_config, cfg, out, device,
                                         max_folds=args.max_folds, only_folds=args.folds,
                                         stream_clips=args.stream_clips)
        metrics_path.write_text(json.dumps(metrics, indent=1))
        print(json.dumps({protocol: {k: v for k, v in metrics[protocol].items()
                                     if k != "stream_protocol"}}))
    if args.final and not (out / "final.pt").exists():
        labels = [EMOTIONS.index(u.emotion) for u in utts]
        model = train_model(clips, labels, model_config, cfg, device, desc="final (all data)")
        torch.save(model.cpu().state_dict(), out / "final.pt")
        print(f"saved {out / 'final.pt'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
