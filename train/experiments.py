"""Protocol runner: features -> folds -> training -> metrics -> results.json + report.html.

One run = one model under one protocol on one corpus, in its own directory:

    RUN_DIR/config.json       model name + constructor config, feature config, classes,
                              protocol, seed, epochs, package versions (export reads this)
    RUN_DIR/folds/fold<i>.json  per-fold metrics and per-epoch history (a finished fold is
                              never redone: a killed run resumes from here)
    RUN_DIR/folds/fold<i>.pt    that fold's final weights (torch models)
    RUN_DIR/model.pt          state_dict of the served model: trained on all data when
                              ``final_model`` is set, else a copy of fold 0's weights
    RUN_DIR/results.json      folds + mean/std summary
    RUN_DIR/report.html       self-contained Plotly report

Metrics are computed with scikit-learn. Training accuracy (the model in eval mode on its own
training split after the last epoch) is reported apart from held-out accuracy, because paper 2's
100 % is a training-set figure. No model selection looks at the held-out fold: the last epoch is
the one evaluated.
"""

from __future__ import annotations

import hashlib
import json
import platform
import random
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from train.corpus import EMOTIONS, Utterance, scan_corpus
from train.paper_models import MODELS, build_model, count_parameters, load_init_weights
from train.splits import PROTOCOLS, make_splits

NORMS: tuple[str, ...] = ("fold", "speaker")
_LATE_OPTIONS: dict[str, Any] = {"lr_schedule": "constant", "label_smoothing": 0.0,
                                 "weight_decay": 0.0}


@dataclass
class RunConfig:
    """Everything that decides a run's numbers (saved as config.json; part of the resume key)."""

    data: str
    model: str
    protocol: str
    epochs: int
    lr: float
    batch_size: int
    seed: int = 0
    k: int = 5
    max_folds: int | None = None
    per_class_limit: int | None = None
    norm: str = "fold"
    model_config: dict[str, Any] = field(default_factory=dict)
    init_weights: str | None = None
    final_model: bool = False
    lr_schedule: str = "constant"  # "constant" (Keras's default, the papers') or "cosine"
    label_smoothing: float = 0.0  # cross-entropy label smoothing (not in the papers)
    weight_decay: float = 0.0  # decoupled (AdamW) weight decay; 0 is plain Adam, the papers'

    def _dict(self) -> dict[str, Any]:
        d = asdict(self)
        # Options added after the first runs leave the key when at their default, so those
        # runs keep their keys (and resume).
        for name, default in _LATE_OPTIONS.items():
            if d[name] == default:
                d.pop(name)
        return d

    def key(self) -> str:
        """Hash of the settings that change fold results (device and paths excluded)."""
        d = self._dict()
        # Fold i's result does not depend on how many folds run, so --max-folds 2 then a full
        # run reuses folds 0-1; the final model is not a fold.
        d.pop("final_model")
        d.pop("max_folds")
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def legacy_key(self) -> str:
        """The key of fold files written before max_folds left the key (still accepted)."""
        d = self._dict()
        d.pop("final_model")
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def resolve_device(device: str) -> torch.device:
    """auto -> cuda when available, else cpu; 'cuda' without a GPU is a clear error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for but torch.cuda.is_available() is False")
    return torch.device(device)


def package_versions() -> dict[str, str]:
    names = ["torch", "torchaudio", "timm", "scikit-learn", "numpy", "librosa", "soxr"]
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# --------------------------------------------------------------------------- data


def select_utterances(utts: Sequence[Utterance], per_class_limit: int | None) -> list[Utterance]:
    """A deterministic subset for tests: the first N per (speaker, emotion) in word order."""
    if not per_class_limit:
        return list(utts)
    groups: dict[tuple[str | None, str], list[Utterance]] = {}
    for u in sorted(utts, key=lambda u: (u.speaker or "", u.emotion, u.word or "", str(u.path))):
        groups.setdefault((u.speaker, u.emotion), []).append(u)
    out = [u for g in groups.values() for u in g[:per_class_limit]]
    return sorted(out, key=lambda u: str(u.path))


def labels_of(utts: Sequence[Utterance]) -> np.ndarray:
    return np.array([EMOTIONS.index(u.emotion) for u in utts], dtype=np.int64)


def speaker_normalise(x: np.ndarray, speakers: Sequence[str | None]) -> np.ndarray:
    """Standardise each speaker's features with that speaker's own mean/std (speaker
    normalisation). Uses no labels; for a test speaker it uses the test audio's statistics
    (transductive, stated in the results)."""
    x = x.astype(np.float32, copy=True)
    spk = np.array([s or "" for s in speakers])
    axes = (0,) if x.ndim == 2 else (0, x.ndim - 1)
    for s in np.unique(spk):
        m = spk == s
        part = x[m]
        mean = part.mean(axis=axes, keepdims=True)
        std = part.std(axis=axes, keepdims=True) + 1e-6
        x[m] = (part - mean) / std
    return x


# --------------------------------------------------------------------------- features

# Fixed window for the spectrogram models: TESS clips are 1.25-2.99 s and the target word is at
# the end, so 3 s covers every clip (zero-padded at the end; longer clips of other corpora are
# cropped to their first 3 s). The 187-vector is a mean over each clip's own length.
WINDOW_S = 3.0
DELTA_FRAMES = 64  # paper 2's segments are 64 x 64 x 3


def front_end(feature: str) -> tuple[nn.Module, int | None, str | None]:
    """The train.features module for a feature kind, its fixed window, and the reshaping we
    apply after it (recorded in config.json so export can do the same)."""
    from train import features
    from train.audio import SAMPLE_RATE

    window = int(WINDOW_S * SAMPLE_RATE)
    if feature == "vector":
        return features.UtteranceVector(), None, None
    if feature == "image":
        # hop 375 over a 3-s window gives 129 frames: paper 1's 128 x 128 image after resize.
        module = features.LogMel(features.LogMelConfig(hop_length=375))
        return module, window, "bilinear resize of [1, 128, 129] to [1, 128, 128]"
    if feature == "delta":
        return (features.DeltaLogMel(), window,
                f"time averaged into {DELTA_FRAMES} equal segments (adaptive avg-pool)")
    raise ValueError(f"unknown feature kind {feature!r}")


def _shape_output(feature: str, x: np.ndarray) -> np.ndarray:
    out = torch.from_numpy(x)
    if feature == "image":
        out = F.interpolate(out, size=(128, 128), mode="bilinear", align_corners=False)
    elif feature == "delta":
        b, c, f, t = out.shape
        out = F.adaptive_avg_pool1d(out.reshape(b, c * f, t), DELTA_FRAMES)
        out = out.reshape(b, c, f, DELTA_FRAMES)
    return np.ascontiguousarray(out.numpy(), dtype=np.float32)


_MEMO: dict[tuple[str, str, tuple[str, ...]], tuple[np.ndarray, np.ndarray, dict]] = {}


def extract_features(
    utts: Sequence[Utterance],
    feature: str,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """(features, kept indices into ``utts``, settings) via train.cache.

    The cache is keyed by the audio files and the front-end settings, so a second run skips
    extraction; unreadable files are left out (``kept``) and named in the log.
    """
    from train.cache import extract_features as cached_extract

    memo_key = (feature, str(cache_dir), tuple(str(u.path) for u in utts))
    if memo_key in _MEMO:  # `train paper` reuses one extraction across protocols
        return _MEMO[memo_key]
    module, window, reshape = front_end(feature)
    fs = cached_extract(utts, module, cache_dir, window_samples=window, progress=progress)
    settings = {**fs.settings, "reshape": reshape, "bad_files": fs.bad_files}
    _MEMO[memo_key] = (_shape_output(feature, fs.features), fs.kept, settings)
    return _MEMO[memo_key]


# --------------------------------------------------------------------------- training


def _augment_images(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Paper 1's random-resized crop on spectrogram images, then resize back to 128x128.

    Mild scales (0.8-1.0 of the area, aspect 0.9-1.1) so the crop keeps most of the bands.
    """
    b, c, h, w = x.shape
    out = torch.empty_like(x)
    for i in range(b):
        area = h * w * (0.8 + 0.2 * torch.rand(1, generator=gen).item())
        ratio = 0.9 + 0.2 * torch.rand(1, generator=gen).item()
        ch = int(round(min(h, (area / ratio) ** 0.5)))
        cw = int(round(min(w, (area * ratio) ** 0.5)))
        top = int(torch.randint(0, h - ch + 1, (1,), generator=gen))
        left = int(torch.randint(0, w - cw + 1, (1,), generator=gen))
        crop = x[i : i + 1, :, top : top + ch, left : left + cw]
        out[i] = F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False)[0]
    return out


def _evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device, batch: int = 256
) -> tuple[float, np.ndarray]:
    """Mean cross-entropy and predicted classes, in eval mode, without gradients."""
    model.eval()
    losses, preds = [], []
    with torch.no_grad():
        for start in range(0, len(x), batch):
            xb = x[start : start + batch].to(device)
            yb = y[start : start + batch].to(device)
            logits = model(xb)
            losses.append(F.cross_entropy(logits, yb, reduction="sum").item())
            preds.append(logits.argmax(1).cpu())
    return sum(losses) / max(1, len(x)), torch.cat(preds).numpy()


def train_torch(
    cfg: RunConfig,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray | None,
    y_val: np.ndarray | None,
    device: torch.device,
    seed: int,
    progress: bool = True,
    desc: str = "",
) -> tuple[nn.Module, list[dict[str, float]]]:
    """Adam (AdamW when ``cfg.weight_decay``) + cross-entropy (with ``cfg.label_smoothing``) for
    ``cfg.epochs``; history of train/val loss and accuracy per epoch.

    Train loss/accuracy per epoch are the running figures over the epoch's batches (dropout and
    augmentation on, as Keras reports them); validation figures are on the held-out fold.
    """
    spec = MODELS[cfg.model]
    seed_everything(seed)
    model = build_model(cfg.model, n_classes=len(EMOTIONS), **cfg.model_config)
    xt = torch.from_numpy(np.ascontiguousarray(x_train, dtype=np.float32))
    yt = torch.from_numpy(y_train)
    dims = (0,) if xt.ndim == 2 else (0, xt.ndim - 1)
    model[0].fit(xt, dims)
    if cfg.init_weights:
        load_init_weights(model, cfg.init_weights)
    model.to(device)
    opt = (torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
           if cfg.weight_decay else torch.optim.Adam(model.parameters(), lr=cfg.lr))
    if cfg.lr_schedule not in ("constant", "cosine"):
        raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {cfg.lr_schedule!r}")
    # cosine: lr decays to 0 over the run, stepped per epoch (not in the papers: an option)
    sched = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, cfg.epochs))
             if cfg.lr_schedule == "cosine" else None)
    gen = torch.Generator().manual_seed(seed)
    xv = None if x_val is None else torch.from_numpy(np.ascontiguousarray(x_val, np.float32))
    yv = torch.from_numpy(y_val) if y_val is not None else None
    history: list[dict[str, float]] = []
    bar = tqdm(range(cfg.epochs), desc=desc or "epochs", leave=False, disable=not progress)
    for epoch in bar:
        model.train()
        order = torch.randperm(len(xt), generator=gen)
        total_loss, correct = 0.0, 0
        for start in range(0, len(xt), cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            xb, yb = xt[idx], yt[idx]
            if spec.feature == "image":
                xb = _augment_images(xb, gen)
            xb, yb = xb.to(device), yb.to(device)
            logits = model(xb)
            loss = F.cross_entropy(logits, yb, label_smoothing=cfg.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total_loss += loss.item() * len(idx)
            correct += int((logits.argmax(1) == yb).sum())
        row = {
            "epoch": epoch + 1,
            "train_loss": total_loss / len(xt),
            "train_acc": correct / len(xt),
        }
        if xv is not None and yv is not None:
            vloss, vpred = _evaluate(model, xv, yv, device)
            row["val_loss"] = vloss
            row["val_acc"] = float((vpred == y_val).mean())
        history.append(row)
        if sched is not None:
            sched.step()
        bar.set_postfix({k: round(v, 3) for k, v in row.items() if k != "epoch"})
    return model, history


def train_logreg(cfg: RunConfig, x_train: np.ndarray, y_train: np.ndarray, seed: int) -> Any:
    """Baseline: scikit-learn logistic regression on the standardised 187-vector."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(
        StandardScaler(), LogisticRegression(max_iter=2000, C=cfg.model_config.get("C", 1.0))
    )
    clf.fit(x_train, y_train)
    return clf


def fold_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, Any]:
    """Accuracy, weighted P/R/F1, per-class report and confusion matrix (scikit-learn)."""
    from sklearn.metrics import (
        accuracy_score,
        classification_report,
        confusion_matrix,
        precision_recall_fscore_support,
    )

    labels = list(range(len(EMOTIONS)))
    p, r, f1, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average="weighted", zero_division=0
    )
    report = classification_report(
        y_true, y_pred, labels=labels, target_names=list(EMOTIONS), output_dict=True,
        zero_division=0,
    )
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "precision_weighted": float(p),
        "recall_weighted": float(r),
        "f1_weighted": float(f1),
        "per_class": {name: report[name] for name in EMOTIONS},
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


# --------------------------------------------------------------------------- runs


def default_config(
    data: str | Path,
    model: str,
    protocol: str,
    epochs: int | None = None,
    **overrides: Any,
) -> RunConfig:
    """The paper's settings for ``model`` (epochs, lr, batch) unless overridden."""
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; choose from {', '.join(MODELS)}")
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose from {', '.join(PROTOCOLS)}")
    spec = MODELS[model]
    lr = overrides.pop("lr", None) or spec.lr
    batch = overrides.pop("batch_size", None) or spec.batch_size
    norm = overrides.get("norm", "fold")
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; choose from {', '.join(NORMS)}")
    return RunConfig(
        data=str(Path(data).resolve()),
        model=model,
        protocol=protocol,
        epochs=spec.epochs if epochs is None else int(epochs),
        lr=lr,
        batch_size=batch,
        **overrides,
    )


def _summary(folds: list[dict[str, Any]]) -> dict[str, Any]:
    def stat(key: str) -> tuple[float, float]:
        vals = np.array([f["test"][key] for f in folds], dtype=float)
        return float(vals.mean()), float(vals.std(ddof=1)) if len(vals) > 1 else 0.0

    out: dict[str, Any] = {"folds": len(folds)}
    for key in ("accuracy", "precision_weighted", "recall_weighted", "f1_weighted"):
        out[f"{key}_mean"], out[f"{key}_std"] = stat(key)
    train_acc = np.array([f["train_accuracy"] for f in folds], dtype=float)
    out["train_accuracy_mean"] = float(train_acc.mean())
    out["train_seconds_per_fold"] = float(np.mean([f["train_seconds"] for f in folds]))
    out["train_seconds_total"] = float(np.sum([f["train_seconds"] for f in folds]))
    out["confusion_matrix_total"] = np.sum(
        [np.array(f["test"]["confusion_matrix"]) for f in folds], axis=0
    ).tolist()
    return out


def run_experiment(
    cfg: RunConfig,
    out_dir: str | Path,
    device: str = "auto",
    threads: int | None = 2,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    write_report: bool = True,
) -> dict[str, Any]:
    """Run (or resume) one model under one protocol; returns the results dict it saved."""
    out = Path(out_dir)
    (out / "folds").mkdir(parents=True, exist_ok=True)
    if threads:
        torch.set_num_threads(threads)
    dev = resolve_device(device)
    spec = MODELS[cfg.model]
    key = cfg.key()

    scan = scan_corpus(cfg.data)
    utts = select_utterances(scan.utterances, cfg.per_class_limit)
    if not utts:
        raise ValueError(f"no usable utterances under {cfg.data}")
    x, kept, feature_cfg = extract_features(utts, spec.feature, cache_dir, progress)
    utts = [utts[i] for i in kept]
    y = labels_of(utts)
    if cfg.norm == "speaker":
        x = speaker_normalise(x, [u.speaker for u in utts])
    splits = make_splits(cfg.protocol, utts, k=cfg.k, seed=cfg.seed)
    if cfg.max_folds:
        splits = splits[: cfg.max_folds]

    model_config = {**spec.config, **cfg.model_config}
    config_doc = {
        "kind": "paper",
        "run": asdict(cfg),
        "key": key,
        "model": cfg.model,
        "model_config": model_config,
        "feature": spec.feature,
        "feature_config": feature_cfg,
        "classes": list(EMOTIONS),
        "n_utterances": len(utts),
        "paper": {
            "source": spec.paper,
            "accuracy": spec.paper_accuracy,
            "metrics": spec.paper_metrics,
            "kind": spec.paper_metric_kind,
            "epochs": spec.epochs,
        },
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev)
        if dev.type == "cuda"
        else (platform.processor() or platform.machine()),
        "torch_threads": torch.get_num_threads(),
        "versions": package_versions(),
        "model_file": None if cfg.model == "logreg" else "model.pt",
    }
    (out / "config.json").write_text(json.dumps(config_doc, indent=2, default=str))

    folds: list[dict[str, Any]] = []
    fold_bar = tqdm(
        list(enumerate(splits)), desc=f"{cfg.model}/{cfg.protocol} folds", disable=not progress
    )
    for i, (train_idx, test_idx) in fold_bar:
        path = out / "folds" / f"fold{i}.json"
        if path.exists():
            done = json.loads(path.read_text())
            if done.get("key") in (key, cfg.legacy_key()):
                folds.append(done)
                continue
        t0 = time.perf_counter()
        if cfg.model == "logreg":
            clf = train_logreg(cfg, x[train_idx], y[train_idx], cfg.seed + i)
            history: list[dict[str, float]] = []
            train_pred = clf.predict(x[train_idx])
            test_pred = clf.predict(x[test_idx])
        else:
            model, history = train_torch(
                cfg, x[train_idx], y[train_idx], x[test_idx], y[test_idx], dev, cfg.seed + i,
                progress=progress, desc=f"fold {i} epochs",
            )
            _, train_pred = _evaluate(model, torch.from_numpy(x[train_idx]),
                                      torch.from_numpy(y[train_idx]), dev)
            _, test_pred = _evaluate(model, torch.from_numpy(x[test_idx]),
                                     torch.from_numpy(y[test_idx]), dev)
            torch.save({k: v.cpu() for k, v in model.state_dict().items()},
                       out / "folds" / f"fold{i}.pt")
        seconds = time.perf_counter() - t0
        record = {
            "key": key,
            "fold": i,
            "n_train": int(len(train_idx)),
            "n_test": int(len(test_idx)),
            "test_speakers": sorted({str(utts[j].speaker) for j in test_idx}),
            "train_seconds": seconds,
            "train_accuracy": float((train_pred == y[train_idx]).mean()),
            "test": fold_metrics(y[test_idx], test_pred),
            "history": history,
            "test_paths": [str(utts[j].path) for j in test_idx],
            "test_pred": [EMOTIONS[int(p)] for p in test_pred],
        }
        path.write_text(json.dumps(record, default=float))
        folds.append(record)
        fold_bar.set_postfix(acc=round(record["test"]["accuracy"], 4))

    if cfg.model != "logreg":
        if cfg.final_model:
            model, _ = train_torch(cfg, x, y, None, None, dev, cfg.seed + 1000,
                                   progress=progress, desc="all-data model")
            torch.save({k: v.cpu() for k, v in model.state_dict().items()}, out / "model.pt")
            config_doc["model_trained_on"] = "all utterances"
        else:
            shutil.copyfile(out / "folds" / "fold0.pt", out / "model.pt")
            config_doc["model_trained_on"] = "fold 0 training split"
        config_doc["parameters"] = count_parameters(
            build_model(cfg.model, len(EMOTIONS), **cfg.model_config)
        )
        (out / "config.json").write_text(json.dumps(config_doc, indent=2, default=str))

    results = {
        "model": cfg.model,
        "protocol": cfg.protocol,
        "config": config_doc,
        "summary": _summary(folds),
        "folds": [{k: v for k, v in f.items() if k not in ("test_paths", "test_pred")}
                  for f in folds],
    }
    (out / "results.json").write_text(json.dumps(results, indent=2, default=float))
    if write_report:
        from train.report import write_run_report

        write_run_report(results, out / "report.html")
    return results


def table_row(results: dict[str, Any]) -> dict[str, Any]:
    """One row of docs/results/tess.json from a run's results."""
    cfg = results["config"]
    s = results["summary"]
    paper = cfg["paper"]
    epochs = cfg["run"]["epochs"]
    reduced = cfg["model"] != "logreg" and epochs < paper["epochs"]
    return {
        "model": results["model"],
        "protocol": results["protocol"],
        "folds": s["folds"],
        "accuracy_mean": round(s["accuracy_mean"], 4),
        "accuracy_std": round(s["accuracy_std"], 4),
        "f1_weighted_mean": round(s["f1_weighted_mean"], 4),
        "train_accuracy_mean": round(s["train_accuracy_mean"], 4),
        "paper_accuracy": paper["accuracy"] if results["protocol"] == "cv5" else None,
        "paper_metric": paper["kind"] if paper["accuracy"] is not None else None,
        "epochs": epochs,
        "batch_size": cfg["run"]["batch_size"] or None,
        "paper_epochs": paper["epochs"] if cfg["model"] != "logreg" else None,
        "reduced_epochs": reduced,
        "norm": cfg["run"]["norm"],
        "train_seconds": round(s["train_seconds_total"], 1),
        "train_seconds_per_fold": round(s["train_seconds_per_fold"], 1),
        "device": cfg["device"],
        "settings": run_settings(cfg["run"]),
    }


def run_settings(run: dict[str, Any]) -> str:
    """The run's choices beyond the paper's recipe, for the table ("" when none): model
    overrides (e.g. ``init=keras``, ``bidirectional``) and training options off their default
    (``lr=cosine``, ``label_smoothing=0.1``, ``weight_decay=0.01``)."""
    parts = []
    for key, value in sorted((run.get("model_config") or {}).items()):
        parts.append(key if value is True else f"{key}={value}")
    for key, default in _LATE_OPTIONS.items():
        if run.get(key, default) != default:
            parts.append(f"{'lr' if key == 'lr_schedule' else key}={run[key]}")
    return ", ".join(parts)
