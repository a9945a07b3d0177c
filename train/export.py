"""Turn a trained run (or a module) into a served model file: TorchScript + model card.

The contract (../shared/docs/architecture.md): ``forward(wave[B, N]) -> probabilities[B, C]``,
``explain(wave) -> (logits, activations, spectrogram)``, and ``_extra_files["model_card.json"]``.
Every exported model takes the raw waveform: the feature front-end that trained it
(``train.features``) is scripted in, so training and serving cannot drift apart.

Two kinds of run directory are understood:
- ``kind: streaming`` (``train.streaming_train``): the CNN-LSTM, weights in ``final.pt``.
- ``kind: whisper`` (``train.whisper_train``): Whisper-encoder blocks + the fitted linear head
  (``head.npz``), the encoder read from the run's local checkpoint (``--encoder`` overrides).
- ``kind: paper`` (``train.experiments``): the papers' models, ``nn.Sequential(InputNorm, net)``
  weights in ``model.pt``, wrapped here with their front-end (``train.experiments.front_end``)
  and the same reshape step training used (``reshape_features``, a scriptable twin of
  ``train.experiments._shape_output``; a test keeps the two equal).
"""

from __future__ import annotations

import json
import warnings
import zipfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchaudio
from torch import nn

from train.corpus import EMOTIONS
from train.experiments import DELTA_FRAMES
from train.paper_models import IMAGE_SIZE

CARD_NAME = "model_card.json"
REQUIRED_CARD_KEYS = (
    "name", "version", "classes", "sample_rate", "window_s", "features", "architecture",
    "explain_method", "parameters", "training", "metrics", "torch_version", "torchaudio_version",
)
EXPLAIN_METHODS = ("gradcam", "vit-tokens", "saliency")


class ExportError(ValueError):
    """A run directory or module that cannot be exported, with the reason."""


def _script(module: nn.Module) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.script(module)


def load_model(path: str | Path) -> torch.jit.ScriptModule:
    """torch.jit.load without the DeprecationWarning noise (CPU)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.load(str(path), map_location="cpu")


def read_card(path: str | Path) -> dict:
    """The model card of a model file (read from the zip, no TorchScript load) or a .json."""
    path = Path(path)
    if not path.exists():
        raise ExportError(f"{path}: no such file")
    if path.suffix == ".json":
        return json.loads(path.read_text())
    if not zipfile.is_zipfile(path):
        raise ExportError(f"{path}: not a TorchScript model file (not a zip archive)")
    with zipfile.ZipFile(path) as zf:
        names = [n for n in zf.namelist() if n.endswith(f"/extra/{CARD_NAME}")]
        if not names:
            raise ExportError(f"{path}: the file has no {CARD_NAME} (not exported by this tool?)")
        return json.loads(zf.read(names[0]).decode())


def validate_card(card: dict) -> dict:
    missing = [k for k in REQUIRED_CARD_KEYS if k not in card]
    if missing:
        raise ExportError(f"model card lacks {missing}")
    if card["explain_method"] not in EXPLAIN_METHODS:
        raise ExportError(f"explain_method must be one of {EXPLAIN_METHODS}")
    return card


def save_model(module: nn.Module, path: str | Path, card: dict,
               check_input: torch.Tensor | None = None) -> Path:
    """Script ``module`` (eval mode, CPU), check scripted == eager, save with the card.

    Also writes ``<name>.card.json`` next to the file (the same card, for people and the
    dashboard). Returns the model path.
    """
    module = module.cpu().eval()
    card = dict(card)
    card.setdefault("parameters", sum(p.numel() for p in module.parameters()))
    card.setdefault("torch_version", torch.__version__)
    card.setdefault("torchaudio_version", torchaudio.__version__)
    card.setdefault("exported_at", datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    validate_card(card)
    scripted = _script(module)
    n = int(round(card["sample_rate"] * card["window_s"]))
    x = check_input if check_input is not None else 0.05 * torch.randn(
        2, n, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        eager, script = module(x), scripted(x)
    if not torch.allclose(eager, script, atol=1e-5):
        raise ExportError(f"scripted and eager outputs differ by {(eager - script).abs().max()}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = json.dumps(card, indent=1)
    scripted.save(str(path), _extra_files={CARD_NAME: blob})
    path.with_suffix(".card.json").write_text(blob + "\n")
    return path


# ---------------------------------------------------------------- streaming runs

EXPECTED_FOLDS = {"cv5": 5, "speaker-independent": 2, "word-disjoint": 5}


def _fold_summaries(run_dir: Path) -> dict:
    """Per-protocol summaries from the per-fold files (the source of truth, even mid-run)."""
    from train.streaming_train import summarize

    out = {}
    for pdir in sorted((run_dir / "folds").glob("*")):
        folds = [json.loads(p.read_text()) for p in sorted(pdir.glob("*.json"))]
        if folds:
            out[pdir.name] = summarize(pdir.name, folds)
    return out


def _streaming_metrics(metrics: dict) -> dict:
    out: dict[str, Any] = {}
    for name, m in metrics.items():
        expected = EXPECTED_FOLDS.get(name)
        entry = {"protocol": name, "folds": m["n_folds"],
                 "complete": expected is None or m["n_folds"] >= expected,
                 "accuracy_mean": m["accuracy"]["mean"], "accuracy_std": m["accuracy"]["std"],
                 "accuracy_folds": m["accuracy"]["folds"], "uar_mean": m["uar"]["mean"]}
        if name == "speaker-independent":
            entry["test_speakers"] = m.get("test_speakers")
        out[name] = entry
        if "stream_accuracy" in m:
            out.setdefault("stream", {})[f"after {name} training"] = {
                "protocol": m["stream_protocol"] + f" (held-out folds of {name})",
                "window_accuracy_mean": m["stream_accuracy"]["mean"],
                "window_accuracy_std": m["stream_accuracy"]["std"],
                "window_accuracy_folds": m["stream_accuracy"]["folds"],
            }
    return out


def streaming_from_run(run_dir: Path) -> tuple[nn.Module, dict]:
    from train.streaming_model import ARCHITECTURE, StreamingCNNLSTM, count_parameters
    from train.streaming_train import read_config

    model_config, train_config, raw = read_config(run_dir)
    weights = run_dir / "final.pt"
    if not weights.exists():
        raise ExportError(f"{run_dir}: no final.pt (train with --final to get the served model)")
    model = StreamingCNNLSTM(model_config)
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    metrics = _fold_summaries(run_dir)
    card = {
        "name": run_dir.name,
        "version": "1.0.0",
        "classes": list(EMOTIONS),
        "sample_rate": model_config.sample_rate,
        "window_s": model_config.window_s,
        "features": {"front_end": "LogMel (train.features), dB, top_db 80, per-window "
                                  "normalisation inside the model",
                     "n_fft": model_config.n_fft, "hop_length": model_config.hop_length,
                     "n_mels": model_config.n_mels, "f_min": model_config.f_min,
                     "f_max": model_config.f_max, "mel_scale": "slaney"},
        "architecture": f"StreamingCNNLSTM: {ARCHITECTURE}",
        "explain_method": "gradcam",
        "explain_layer": "last conv block (after ReLU), [B, "
                         f"{model_config.channels[-1]}, n_mels/8, frames/8]",
        "parameters": count_parameters(model),
        "training": {"corpus": raw.get("corpus"),
                     "protocol": "all utterances (final model); the metrics are the "
                                 "held-out figures of this exact configuration under each "
                                 "protocol (one model per fold)",
                     "epochs": train_config.epochs, "batch_size": train_config.batch_size,
                     "lr": train_config.lr, "seed": train_config.seed,
                     "augmentation": train_config.augment.to_dict()},
        "metrics": _streaming_metrics(metrics),
    }
    return model, card


# ---------------------------------------------------------------- paper runs

def reshape_features(feature: str, x: torch.Tensor, image_size: int = IMAGE_SIZE,
                     delta_frames: int = DELTA_FRAMES) -> torch.Tensor:
    """The reshape paper models were trained with, as TorchScript-able torch code.

    image: bilinear resize of the log-mel to IMAGE_SIZE x IMAGE_SIZE; delta: time averaged
    into DELTA_FRAMES equal segments. ``train.experiments._shape_output`` does the same on
    numpy arrays for training (not scriptable); ``tests/test_export.py`` checks they agree.
    """
    if feature == "image":
        return torch.nn.functional.interpolate(
            x, size=[image_size, image_size], mode="bilinear", align_corners=False)
    if feature == "delta":
        b, c, f, t = x.shape
        pooled = torch.nn.functional.adaptive_avg_pool1d(x.reshape(b, c * f, t), delta_frames)
        return pooled.reshape(b, c, f, delta_frames)
    return x


class WaveServing(nn.Module):
    """What every exported paper model shares: the raw-window check and ``forward`` as the
    softmax of ``explain``'s logits (subclasses define ``explain``)."""

    def __init__(self, front: nn.Module, n_samples: int) -> None:
        super().__init__()
        self.front = front
        self.n_samples = n_samples

    def check_input(self, wave: torch.Tensor) -> None:
        if wave.dim() != 2 or wave.size(1) != self.n_samples:
            raise ValueError(f"expected wave[B, {self.n_samples}], got {list(wave.shape)}")

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        logits, _, _ = self.explain(wave)
        return torch.softmax(logits, dim=-1)


class VectorServing(WaveServing):
    """A paper model on the 187-value utterance vector, taking the raw window.

    No time x frequency map exists, so ``explain`` returns the vector itself as the
    "spectrogram" ``[B, 1, 187, 1]`` (rows: MFCC 40, chroma 12, mel 128, contrast 7) on the
    path to the logits: saliency is the gradient of the class score w.r.t. each value.
    """

    def __init__(self, front: nn.Module, net: nn.Module, n_samples: int) -> None:
        super().__init__(front, n_samples)
        self.net = net

    @torch.jit.export
    def explain(self, wave: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        self.check_input(wave)
        vec = self.front(wave)
        spec = vec.reshape(vec.size(0), 1, vec.size(1), 1)
        logits = self.net(spec.reshape(vec.size(0), vec.size(1)))
        return logits, spec, spec


class SpectrogramServing(WaveServing):
    """A paper model on a (delta) log-mel, taking the raw window; saliency on its spectrogram.

    ``explain`` returns the front-end's output ``[B, C, F, T]`` (for paper 2: static, delta,
    delta-delta; channel 0 is the log-mel) before the resize step the model was trained with.
    """

    def __init__(self, front: nn.Module, net: nn.Module, n_samples: int, feature: str) -> None:
        super().__init__(front, n_samples)
        self.net = net
        self.feature = feature

    @torch.jit.export
    def explain(self, wave: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        self.check_input(wave)
        spec = self.front(wave)
        logits = self.net(reshape_features(self.feature, spec))
        return logits, spec, spec


def _to_grid(tokens: torch.Tensor, prefix: int, gh: int, gw: int) -> torch.Tensor:
    """Patch tokens [B, prefix + gh*gw, D] -> grid [B, D, gh, gw] (rows: mel, columns: time)."""
    patches = tokens[:, prefix:]
    return patches.transpose(1, 2).reshape(patches.size(0), patches.size(2), gh, gw)


def _from_grid(tokens: torch.Tensor, grid: torch.Tensor, prefix: int) -> torch.Tensor:
    return torch.cat([tokens[:, :prefix], grid.flatten(2).transpose(1, 2)], dim=1)


class ViTTokenServing(WaveServing):
    """timm ViT on the 128 x 128 log-mel image, taking the raw window.

    ``explain`` returns, as activations, the tokens entering the *last* transformer block
    reshaped to the patch grid ``[B, D, F', T']`` and fed back from that grid, so
    ``autograd.grad(logit, activations)`` is defined (the last block's own output tokens do
    not reach a class-token head). Hand-written on purpose: it is timm's ``forward_features``
    split before the last block; ``tests/test_export.py`` checks it equals the plain forward.
    """

    def __init__(self, front: nn.Module, net: nn.Sequential, n_samples: int) -> None:
        super().__init__(front, n_samples)
        self.norm_in = net[0]
        self.vit = net[1]
        self.prefix = int(self.vit.num_prefix_tokens)
        self.gh, self.gw = (int(g) for g in self.vit.patch_embed.grid_size)
        self.last = len(self.vit.blocks) - 1

    @torch.jit.export
    def explain(self, wave: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        self.check_input(wave)
        spec = self.front(wave)
        x = self.norm_in(reshape_features("image", spec))
        x = self.vit.patch_embed(x)
        x = self.vit._pos_embed(x)
        x = self.vit.patch_drop(x)
        x = self.vit.norm_pre(x)
        grid = x
        i = 0
        for blk in self.vit.blocks:
            if i == self.last:
                grid = _to_grid(x, self.prefix, self.gh, self.gw)
                x = _from_grid(x, grid, self.prefix)
            x = blk(x)
            i += 1
        logits = self.vit.forward_head(self.vit.norm(x))
        return logits, grid, spec


class BeitTokenServing(ViTTokenServing):
    """The same for timm's BEiT (its blocks take the shared relative position bias)."""

    @torch.jit.export
    def explain(self, wave: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        self.check_input(wave)
        spec = self.front(wave)
        x = self.norm_in(reshape_features("image", spec))
        beit = self.vit
        x = beit.patch_embed(x)
        x = torch.cat((beit.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        if beit.pos_embed is not None:
            x = x + beit.pos_embed
        x = beit.pos_drop(x)
        rel_pos_bias = beit.rel_pos_bias() if beit.rel_pos_bias is not None else None
        grid = x
        i = 0
        for blk in beit.blocks:
            if i == self.last:
                grid = _to_grid(x, self.prefix, self.gh, self.gw)
                x = _from_grid(x, grid, self.prefix)
            x = blk(x, shared_rel_pos_bias=rel_pos_bias)
            i += 1
        logits = beit.forward_head(beit.norm(x))
        return logits, grid, spec


def _settings(front: nn.Module) -> dict:
    from dataclasses import asdict, is_dataclass

    cfg = getattr(front, "config", None)
    return asdict(cfg) if cfg is not None and is_dataclass(cfg) else {}


def paper_from_run(run_dir: Path, cfg: dict) -> tuple[nn.Module, dict]:
    from train.experiments import WINDOW_S, front_end
    from train.paper_models import build_model

    name = cfg.get("model")
    if not cfg.get("model_file"):
        raise ExportError(f"{run_dir}: model {name!r} has no torch weights to export")
    if cfg.get("run", {}).get("norm") == "speaker":
        raise ExportError(f"{run_dir}: trained with per-speaker normalisation, which needs the "
                          "speaker's statistics at serving time; retrain with --norm fold")
    weights = run_dir / cfg["model_file"]
    if not weights.exists():
        raise ExportError(f"{run_dir}: {cfg['model_file']} is missing")
    feature = cfg["feature"]
    classes = list(cfg.get("classes") or EMOTIONS)
    net = build_model(name, len(classes), **cfg.get("model_config", {}))
    net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    front, window, reshape_note = front_end(feature)
    fcfg = _settings(front)
    saved = (cfg.get("feature_config") or {}).get("config")
    if saved and any(saved.get(k) != v for k, v in fcfg.items() if k in saved):
        raise ExportError(f"{run_dir}: the run's feature settings {saved} differ from today's "
                          f"{feature!r} front-end {fcfg}; export with the code that trained it")
    sample_rate = int(fcfg.get("sample_rate", 16_000))
    n_samples = int(window or round(WINDOW_S * sample_rate))
    if feature == "vector":
        module: nn.Module = VectorServing(front, net, n_samples)
        method = "saliency"
    elif feature == "delta":
        module = SpectrogramServing(front, net, n_samples, feature)
        method = "saliency"
    elif feature == "image":
        from timm.models.beit import Beit

        wrapper = BeitTokenServing if isinstance(net[1], Beit) else ViTTokenServing
        module = wrapper(front, net, n_samples)
        method = "vit-tokens"
    else:
        raise ExportError(f"{run_dir}: unknown feature kind {feature!r}")
    results_path = run_dir / "results.json"
    summary = json.loads(results_path.read_text()).get("summary", {}) if results_path.exists() \
        else {}
    protocol = cfg.get("run", {}).get("protocol")
    metrics = {}
    if summary:
        metrics[protocol] = {"protocol": protocol, "folds": summary.get("folds"),
                             "accuracy_mean": summary.get("accuracy_mean"),
                             "accuracy_std": summary.get("accuracy_std"),
                             "f1_weighted_mean": summary.get("f1_weighted_mean")}
    card = {
        "name": f"{name}-{protocol}",
        "version": "1.0.0",
        "classes": classes,
        "sample_rate": sample_rate,
        "window_s": WINDOW_S,
        "features": {"front_end": type(front).__name__, "feature": feature,
                     "n_fft": fcfg.get("n_fft"), "hop_length": fcfg.get("hop_length"),
                     "n_mels": fcfg.get("n_mels"), "f_min": fcfg.get("f_min"),
                     "f_max": fcfg.get("f_max"), "mel_scale": "slaney",
                     "reshape": reshape_note,
                     "note": None if window else "the model was trained on vectors averaged over "
                             "each whole clip; served, it averages over the 3-s window"},
        "architecture": f"{name} ({cfg.get('paper', {}).get('source')}): "
                        f"{type(net[1]).__name__} {cfg.get('model_config', {})}",
        "explain_method": method,
        "parameters": sum(p.numel() for p in net.parameters()),
        "training": {"corpus": cfg.get("run", {}).get("data"), "protocol": protocol,
                     "epochs": cfg.get("run", {}).get("epochs"),
                     "trained_on": cfg.get("model_trained_on"), "augmentation": None},
        "metrics": metrics,
    }
    return module, card


# ---------------------------------------------------------------- whisper runs

def _whisper_metrics(results: dict) -> dict:
    """Card metrics from ``results.json``'s summary: one entry per (protocol, test, setting)."""
    out: dict[str, Any] = {}
    for r in results.get("summary", []):
        # per-speaker rows describe --stream-norm (off by default), so they are marked
        key = f"{r['protocol']}: {r['test']} ({r['setting']})" + (
            ", per-speaker norm" if r["speaker_norm"] else "")
        out[key] = {
            "protocol": r["protocol"], "test": r["test"], "training": r["setting"],
            "speaker_norm": r["speaker_norm"], "folds": r["folds"], "classes": r["classes"],
            "accuracy": r["clean_accuracy"], "uar": r["clean_uar"],
            "macro_f1": r["clean_macro_f1"], "telephone_accuracy": r["ulaw_accuracy"],
            "telephone_uar": r["ulaw_uar"],
            "stream_window_accuracy": r.get("stream_accuracy"),
        }
    return out


def whisper_from_run(run_dir: Path, cfg: dict, encoder: str | Path | None = None
                     ) -> tuple[nn.Module, dict]:
    import numpy as np

    from train.crosscorpus import PRIOR_WINDOWS
    from train.whisper import HOP_LENGTH, N_FFT, N_MELS
    from train.whisper_emotion import (
        ARCHITECTURE,
        WhisperEmotionConfig,
        build,
        count_parameters,
    )

    encoder = Path(encoder or cfg["encoder"])
    if not encoder.is_file():
        raise ExportError(f"{run_dir}: Whisper checkpoint {encoder} not found (pass --encoder)")
    head_path = run_dir / "head.npz"
    if not head_path.exists():
        raise ExportError(f"{run_dir}: no head.npz (train with --final to get the served head)")
    config = WhisperEmotionConfig(**cfg["model"])
    model = build(str(encoder), config)
    with np.load(head_path) as z:
        model.set_head(z["mean"], z["std"], z["weight"], z["bias"])
        stream_norm = "spk_weight" in z.files
        if stream_norm:
            model.set_stream_head(z["spk_mean"], z["spk_std"], z["spk_weight"], z["spk_bias"],
                                  z["prior_mean"], z["prior_std"], PRIOR_WINDOWS)
        site_norm = "site_weight" in z.files
        if site_norm:
            model.set_site_head(z["site_mean"], z["site_std"], z["site_weight"], z["site_bias"])
    results_path = run_dir / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    card = {
        "name": run_dir.name,
        "version": "2.0.0",
        "classes": list(cfg.get("classes") or EMOTIONS),
        "sample_rate": config.sample_rate,
        "window_s": config.window_s,
        "features": {"front_end": "Whisper log-mel (train.whisper.WhisperLogMel): log10, "
                                  "floor at each window's max - 8, (x + 4) / 4",
                     "n_fft": N_FFT, "hop_length": HOP_LENGTH, "n_mels": N_MELS,
                     "f_min": 0.0, "f_max": config.sample_rate / 2, "mel_scale": "slaney"},
        "architecture": f"WhisperEmotion: {ARCHITECTURE}; Whisper tiny encoder blocks "
                        f"1-{config.n_blocks} of 4 (MIT, OpenAI), {config.pooling} positions",
        "explain_method": "saliency",
        "explain_layer": "input gradient over the Whisper log-mel [B, 1, 80, 300]",
        "parameters": count_parameters(model),
        "training": {"corpora": cfg.get("trained_on"), "clips": cfg.get("n_train"),
                     "balancing": cfg.get("balancing"), "choice": cfg.get("choice_label"),
                     "stream_windows": cfg.get("stream_windows"),
                     "chosen_on": "grouped cross-validation over the training speakers "
                                  "(3 folds), mean UAR on clean and telephone-band audio "
                                  "(clips, and stream windows where offered)",
                     "encoder": f"Whisper tiny ({encoder.name}), frozen"},
        "metrics": _whisper_metrics(results),
        "stream_norm": {
            "methods": ["stream_moments", "classify_stream", "explain_stream"],
            "prior_windows": PRIOR_WINDOWS,
            "choice": cfg.get("stream_choice_label"),
            "note": "per-stream standardisation of the pooled features by the stream's running "
                    "statistics (voiced windows; the daemon weighs each emotion the same in them, "
                    "streamer/stream_norm.py), shrunk towards the training speakers' average "
                    "with prior_windows pseudo-windows; a second head trained on per-speaker "
                    "standardised features",
        } if stream_norm else None,
        "site_norm": SITE_NORM_CARD if site_norm else None,
        "licence_note": "weights trained on TESS (CC BY-NC-ND 4.0) and RAVDESS (CC BY-NC-SA "
                        "4.0): non-commercial use; Whisper's encoder is MIT",
        **WHISPER_PRECISION,
    }
    return model, card


# The encoder may run in bfloat16 where the CPU has it natively (streamer.model.resolve_precision);
# what that changes is measured by benchmarks/precision.py.
WHISPER_PRECISION = {"precision": {
    "bfloat16": ["encoder"],
    "note": "the runtime may cast these submodules to bfloat16 (--precision auto: CPUs with "
            "AVX512-BF16 or AMX); the log-mel, pooling and head stay float32. Held-out figures "
            "were measured in float32; benchmarks/precision.py compares the two",
}}


SITE_NORM_CARD = {
    "how": "a second head (site_head) trained on features standardised per training corpus "
           "(clips and stream windows, each per variant); `emotion-monitor calibrate` folds a "
           "site's feature statistics, from its unlabelled recordings, into a copy of this file",
    "measured": "docs/results/crosscorpus.md, 'Standardising per corpus'",
}


def whisper_from_file(model_path: Path, encoder: str | Path | None,
                      site_head: str | Path | None = None) -> tuple[nn.Module, dict]:
    """Re-script an exported Whisper model file with the current code: the same weights and
    card (plus what the current exporter adds), checked equal to the old file's output;
    ``site_head`` (an ``.npz`` of ``train.site_norm.site_arrays``) adds or replaces the site
    head."""
    from train.whisper_emotion import WhisperEmotionConfig, build

    card = read_card(model_path)
    if not str(card.get("architecture", "")).startswith("WhisperEmotion"):
        raise ExportError(f"{model_path}: not a WhisperEmotion model file (re-export takes "
                          "those only; other kinds export from their run directory)")
    if encoder is None or not Path(encoder).is_file():
        raise ExportError(f"{model_path}: re-export needs --encoder (the Whisper checkpoint "
                          "that gives the encoder's dimensions)")
    old = load_model(model_path)
    state = {k: v for k, v in old.state_dict().items() if not k.startswith("front.")}
    n_blocks = len({k.split(".")[2] for k in state if k.startswith("encoder.blocks.")})
    config = WhisperEmotionConfig(sample_rate=int(card["sample_rate"]),
                                  window_s=float(card["window_s"]), n_blocks=n_blocks,
                                  pooling="voiced" if old.voiced else "all",
                                  n_classes=len(card["classes"]))
    model = build(str(encoder), config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith("site_") for k in missing):
        raise ExportError(f"{model_path}: weights do not match the current WhisperEmotion "
                          f"(missing {missing}, unexpected {unexpected})")
    model.prior_windows = float(old.prior_windows)
    has_site = card.get("site_norm") is not None or site_head is not None
    if site_head is not None:
        import numpy as np

        with np.load(site_head) as z:
            model.set_site_head(z["site_mean"], z["site_std"], z["site_weight"], z["site_bias"])
    x = 0.05 * torch.randn(4, config.n_samples, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = (model(x) - old(x)).abs().max().item()
    if diff > 1e-4:
        raise ExportError(f"{model_path}: the re-scripted model differs from the file by {diff}")
    kept = {k: v for k, v in card.items() if k not in (
        "torch_version", "torchaudio_version", "exported_at", "parameters")}  # made anew
    return model, {**kept, **WHISPER_PRECISION,
                   "site_norm": SITE_NORM_CARD if has_site else None}


# ---------------------------------------------------------------- display floor

def display_from_confidence(path: str | Path) -> dict:
    """The card's ``display`` block from a confidence probe's results
    (``docs/results/scripts/confidence_probe.py``): the floor below which the dashboard shows
    "uncertain", how it was chosen, and what it did on held-out voices (episodes order)."""
    res = json.loads(Path(path).read_text())
    floor = float(res["chosen_floor"])
    if not 0.0 <= floor < 1.0:
        raise ExportError(f"{path}: chosen_floor must be in [0, 1), got {floor}")
    key = f"{floor:.2f}"
    heldout: dict[str, dict] = {}
    for by_test in res["tests"].values():
        for test, by_order in by_test.items():
            c = by_order["episodes"]
            heldout.setdefault(test, []).append(
                (c["floors"][key]["coverage"], c["floors"][key]["accuracy"], c["accuracy"]))
    return {
        "min_confidence": floor,
        "averaged_over_s": float(res["tau_s"]),
        "chosen_on": (f"validation speakers of the training side (3 grouped folds of TESS + "
                      f"RAVDESS speakers, their stream windows in two orders): the lowest floor "
                      f"whose labels shown were right at least {res['target']:.0%} of the time"),
        "heldout": {test: {"labelled": round(float(np.mean([r[0] for r in rows])), 4),
                           "right_when_labelled": round(float(np.mean([r[1] for r in rows])), 4),
                           "right_without_floor": round(float(np.mean([r[2] for r in rows])), 4),
                           "splits": len(rows)}
                    for test, rows in heldout.items()},
        "note": "held-out voices' stream windows in runs of one emotion (8-16 s), heads of the "
                "same recipe per split; docs/results/crosscorpus.md, 'Saying uncertain'",
    }


# ---------------------------------------------------------------- entry point

def export(source: str | Path | nn.Module, path: str | Path, card: dict | None = None,
           overrides: dict | None = None, encoder: str | Path | None = None,
           site_head: str | Path | None = None) -> Path:
    """Export a run directory (streaming, whisper or paper), a module (with ``card``) or an
    exported Whisper model file (re-scripted with the current code, ``site_head`` added) to
    ``path``; ``encoder`` overrides a whisper run's checkpoint path."""
    if isinstance(source, nn.Module):
        if card is None:
            raise ExportError("exporting a module needs its model card")
        module = source
    elif Path(source).is_file():
        module, card = whisper_from_file(Path(source), encoder, site_head)
    else:
        run_dir = Path(source)
        cfg_path = run_dir / "config.json"
        if not cfg_path.exists():
            raise ExportError(f"{run_dir}: no config.json (not a run directory)")
        cfg = json.loads(cfg_path.read_text())
        kind = cfg.get("kind")
        if kind == "streaming":
            module, card = streaming_from_run(run_dir)
        elif kind == "paper":
            module, card = paper_from_run(run_dir, cfg)
        elif kind == "whisper":
            module, card = whisper_from_run(run_dir, cfg, encoder)
        else:
            raise ExportError(f"{run_dir}: unknown run kind {kind!r}")
    card = {**card, **(overrides or {})}
    return save_model(module, path, card)


__all__ = ["ExportError", "display_from_confidence", "export", "load_model", "read_card",
           "save_model", "validate_card"]
