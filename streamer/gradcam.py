"""Grad-CAM (and its stand-ins) from a model file alone, the paper's metrics, the live frame.

Everything here works on the TorchScript module's ``explain(wave) -> (logits, activations,
spectrogram)`` (the model contract): Grad-CAM is plain autograd from the class score to the
returned activations, so there are no hooks and no eager copy of the model. Methods, chosen by
the card's ``explain_method``:

- ``gradcam``: activations are the last 2-D conv map ``[B, K, F', T']``; weights = gradients
  averaged over frequency and time; ReLU of the weighted sum; bilinear upsampling to the
  spectrogram grid; min-max normalisation to [0, 1] (the same steps, in the same order up to
  a linear map, as the ``grad-cam`` package, which the tests cross-check against).
- ``vit-tokens``: activations are the last transformer block's tokens already reshaped to the
  patch grid by the model, so the maths is the same as ``gradcam``.
- ``saliency``: for LSTM / feature-vector models with no spatial map: |d score / d spectrogram|
  (input-gradient saliency, Simonyan et al. 2014), max over channels, smoothed with a Gaussian
  of ``SALIENCY_SIGMA`` (mel bands, frames), normalised to [0, 1]. Raw input gradients are
  speckled (single bright cells), which on screen reads as no map at all; the smoothing turns
  them into regions of the spectrogram (its width chosen with ``benchmarks/faithfulness.py``
  on clips of the shipped model's training corpora: docs/results/crosscorpus.md).

Masking for the confidence drops (why this fill): the model takes a waveform, so a time x
frequency region is removed in the STFT of the waveform (same n_fft / hop as the model's
front-end, so STFT frames and bins line up with the spectrogram's cells) and the waveform is
re-synthesised with the inverse STFT, which is exact for every cell left alone. Zeroing the
region would leave a hole of digital silence that no training input contains (the log-mel of a
zero cell is the log floor, far outside the data), so the drop would measure surprise at the
hole, not loss of evidence. Each masked cell is instead filled from the window's own noise floor:
magnitude = the RMS spectrum of the window's quietest 10 % of (non-silent) frames, random phase;
cells already at or below the floor are left as they are (masking never adds energy, and the
zero padding of a short final window stays zero). We chose this over ROAD's neighbourhood
interpolation because a Grad-CAM focus region often spans the whole window in time (the paper's
0.0-2.97 s boxes) where there is no neighbourhood to interpolate from, and because "replace the
speech in this region by the background the microphone hears anyway" is what masking a region
of an utterance means to a listener.

Frequency axis: rows are mel bands; their Hz are the band centres of the card's mel scale
(``features.mel_scale``; HTK, torchaudio's default, when the card says nothing). Entropy is the
Shannon entropy (nats) of the CAM normalised to sum to one; confidence and drops are
probabilities in [0, 1] (drops are differences; negative means masking raised confidence).
"""

from __future__ import annotations

import contextlib
import io
import math
import warnings
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

METHODS = ("gradcam", "vit-tokens", "saliency")
DEFAULT_THRESHOLD = 0.5
#: Live frames are downsampled to at most this many mel bands x frames (protocol limit).
FRAME_F, FRAME_T = 64, 100
#: The noise floor is the RMS spectrum of this fraction of the window's quietest frames.
NOISE_FLOOR_QUANTILE = 0.1
#: Run the CPU backward with oneDNN off (native LSTM); see class_activation_maps.
CPU_ONEDNN_OFF = False
#: Gaussian smoothing of saliency maps, standard deviation in (mel bands, frames); 0: none.
SALIENCY_SIGMA: tuple[float, float] = (3.0, 8.0)


def gaussian_blur(maps: torch.Tensor, sigma: tuple[float, float]) -> torch.Tensor:
    """``maps`` [B, F, T] blurred by a separable Gaussian (std ``sigma`` in cells per axis,
    kernel +-3 std, edges replicated). Hand-written on purpose: ten lines of conv1d, where
    torchvision's ``gaussian_blur`` would add a dependency the streamer does not have."""
    out = maps.unsqueeze(1)
    for axis, sd in enumerate(sigma):
        if sd <= 0:
            continue
        half = max(1, int(math.ceil(3 * sd)))
        x = torch.arange(-half, half + 1, dtype=out.dtype, device=out.device)
        k = torch.exp(-0.5 * (x / sd) ** 2)
        k = (k / k.sum()).view(1, 1, -1, 1) if axis == 0 else (k / k.sum()).view(1, 1, 1, -1)
        pad = (0, 0, half, half) if axis == 0 else (half, half, 0, 0)
        out = F.conv2d(F.pad(out, pad, mode="replicate"), k)
    return out.squeeze(1)


# ----------------------------------------------------------------------------- mel axes

def hz_to_mel(hz: Any, scale: str = "htk") -> np.ndarray:
    """Hz -> mel on the HTK (2595 log10(1 + f/700)) or Slaney (linear < 1 kHz) scale.

    Hand-written (two lines per scale) because streamer/ may not import librosa; the tests
    check it against ``librosa.mel_frequencies`` and torchaudio's filterbank peaks.
    """
    f = np.asarray(hz, dtype=np.float64)
    if scale == "htk":
        return 2595.0 * np.log10(1.0 + f / 700.0)
    if scale == "slaney":
        f_sp, min_log_hz, logstep = 200.0 / 3, 1000.0, math.log(6.4) / 27.0
        min_log_mel = min_log_hz / f_sp
        return np.where(f >= min_log_hz,
                        min_log_mel + np.log(np.maximum(f, min_log_hz) / min_log_hz) / logstep,
                        f / f_sp)
    raise ValueError(f"unknown mel scale {scale!r} (use 'htk' or 'slaney')")


def mel_to_hz(mel: Any, scale: str = "htk") -> np.ndarray:
    """Inverse of :func:`hz_to_mel`."""
    m = np.asarray(mel, dtype=np.float64)
    if scale == "htk":
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)
    if scale == "slaney":
        f_sp, min_log_hz, logstep = 200.0 / 3, 1000.0, math.log(6.4) / 27.0
        min_log_mel = min_log_hz / f_sp
        return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)),
                        f_sp * m)
    raise ValueError(f"unknown mel scale {scale!r} (use 'htk' or 'slaney')")


def mel_band_centres(n_mels: int, f_min: float, f_max: float, scale: str = "htk") -> np.ndarray:
    """Centre frequency (Hz) of each of ``n_mels`` triangular bands, as torchaudio builds them."""
    pts = np.linspace(hz_to_mel(f_min, scale), hz_to_mel(f_max, scale), n_mels + 2)
    return mel_to_hz(pts[1:-1], scale)


@dataclass(frozen=True)
class SpecGrid:
    """Where each spectrogram cell lies in time and frequency, from the card's feature settings."""

    sample_rate: int
    n_samples: int
    n_fft: int
    hop_length: int
    win_length: int
    mel_scale: str
    times_s: np.ndarray  # [T] centre time of each column
    freqs_hz: np.ndarray  # [F] centre frequency of each row (row 0 = lowest band)

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.freqs_hz), len(self.times_s)


def spec_grid(card: dict, n_freq: int, n_time: int) -> SpecGrid:
    """The axes of a ``[n_freq, n_time]`` spectrogram made with the card's features.

    Rows are the card's mel bands when ``n_freq == n_mels`` (else ``n_freq`` bands spread over
    the same mel range, e.g. a spectrogram resized for a ViT); columns are STFT frames centred at
    ``t * hop / sr`` when their count matches ``center=True`` framing (else spread evenly).
    """
    sr = int(card["sample_rate"])
    n_samples = int(round(sr * float(card["window_s"])))
    feats = dict(card.get("features") or {})
    n_fft = int(feats.get("n_fft", 512))
    hop = int(feats.get("hop_length", feats.get("hop", n_fft // 4)))
    win = int(feats.get("win_length") or n_fft)
    f_min = float(feats.get("f_min") or 0.0)
    f_max = float(feats.get("f_max") or sr / 2)
    scale = str(feats.get("mel_scale") or "htk")
    freqs = mel_band_centres(n_freq, f_min, f_max, scale)
    if n_time == 1 + n_samples // hop:
        times = np.arange(n_time) * hop / sr
    else:
        times = (np.arange(n_time) + 0.5) * (n_samples / sr) / n_time
    return SpecGrid(sr, n_samples, n_fft, hop, win, scale, times.astype(np.float64),
                    freqs.astype(np.float64))


def infer_mel_scale(module: Any, card: dict) -> str:
    """The card's ``features.mel_scale``; else read off the model's own mel filterbank.

    Cards written before the field existed say nothing, and the project's front-end uses the
    Slaney scale while torchaudio defaults to HTK, so guessing would put every band at the wrong
    Hz. The filterbank buffer (``[n_fft // 2 + 1, n_mels]``) is in the file: its peaks tell.
    """
    feats = card.get("features") or {}
    if feats.get("mel_scale"):
        return str(feats["mel_scale"])
    sr = float(card["sample_rate"])
    n_fft, n_mels = int(feats.get("n_fft", 0)), int(feats.get("n_mels", 0))
    f_min, f_max = float(feats.get("f_min") or 0.0), float(feats.get("f_max") or sr / 2)
    named = getattr(module, "named_buffers", None)
    for _, buf in (named() if named else ()):
        if buf.dim() == 2 and tuple(buf.shape) == (n_fft // 2 + 1, n_mels):
            peaks = buf.detach().float().argmax(dim=0).cpu().numpy() * sr / n_fft
            errs = {s: float(np.abs(peaks - mel_band_centres(n_mels, f_min, f_max, s)).mean())
                    for s in ("htk", "slaney")}
            return min(errs, key=errs.__getitem__)
    return "htk"


# ----------------------------------------------------------------------------- results

@dataclass
class ExplanationMetrics:
    """The paper's per-prediction figures (Figures 7-13), plus the random-region control."""

    confidence: float  # p(target class)
    max_activation: float
    mean_activation: float
    activated_area_pct: float  # % of cells with CAM >= threshold
    entropy: float  # nats, of the CAM normalised to sum 1
    time_focus_range: tuple[float, float] | None  # extent of the activated cells (s)
    freq_focus_range: tuple[float, float] | None  # ... and in Hz (mel-band centres)
    focus_box: tuple[int, int, int, int] | None  # rows r0..r1, cols c0..c1 (inclusive)
    threshold: float = DEFAULT_THRESHOLD
    confidence_drop: float | None = None  # p - p(focus box masked)
    random_drop: float | None = None  # p - p(random box of equal size masked)
    random_box: tuple[int, int, int, int] | None = None

    def wire(self) -> dict:
        """The protocol's ``metrics`` object."""
        def pair(x: tuple[float, float] | None, nd: int) -> list[float] | None:
            return None if x is None else [round(float(x[0]), nd), round(float(x[1]), nd)]

        def num(x: float | None) -> float | None:
            return None if x is None else round(float(x), 6)

        return {
            "confidence": min(1.0, max(0.0, round(float(self.confidence), 6))),
            "max_activation": num(self.max_activation),
            "mean_activation": num(self.mean_activation),
            "activated_area_pct": round(float(self.activated_area_pct), 4),
            "entropy": num(self.entropy),
            "focus_time_s": pair(self.time_focus_range, 3),
            "focus_freq_hz": pair(self.freq_focus_range, 1),
            "confidence_drop": num(self.confidence_drop),
            "random_drop": num(self.random_drop),
            "threshold": float(self.threshold),
        }


@dataclass
class Explanation:
    """One window's explanation: which method, which class, the map and where it lies."""

    method: str
    target: int
    target_name: str
    probabilities: np.ndarray  # [C]
    cam: np.ndarray  # [F, T] float32 in [0, 1]
    spectrogram: np.ndarray  # [F, T] the model's log-mel (channel 0)
    times_s: np.ndarray  # [T]
    freqs_hz: np.ndarray  # [F]
    classes: list[str] = field(default_factory=list)
    raw_max: float = 0.0  # CAM peak before normalisation (0: no positive evidence at all)
    mel_scale: str = "htk"  # the scale freqs_hz was computed on
    metrics: ExplanationMetrics | None = None

    @property
    def predicted(self) -> int:
        return int(np.argmax(self.probabilities))


# ----------------------------------------------------------------------------- maps

def _unpack(model: Any, card: dict | None) -> tuple[Any, dict]:
    """A ServedModel (module + card) or a bare module with ``explain`` plus a card."""
    module = getattr(model, "module", model)
    card = card if card is not None else getattr(model, "card", None)
    if card is None:
        raise ValueError("a bare module needs its card (pass card=...)")
    if not hasattr(module, "explain"):
        raise ValueError("the model has no 'explain' method (see the model contract)")
    return module, card


def _device_of(module: Any) -> torch.device:
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


def _as_waves(waves: Any, n_samples: int, device: torch.device) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(waves) if not torch.is_tensor(waves) else waves,
                        dtype=torch.float32)
    if x.dim() == 1:
        x = x.unsqueeze(0)
    if x.dim() != 2 or x.size(1) != n_samples:
        raise ValueError(f"expected waves [B, {n_samples}] (the card's window), "
                         f"got {list(x.shape)}")
    return x.to(device)


def _resolve_targets(targets: Any, logits: torch.Tensor, classes: Sequence[str]) -> torch.Tensor:
    b = logits.size(0)
    if targets is None:
        return logits.detach().argmax(dim=1)
    items = [targets] * b if isinstance(targets, int | str | np.integer) else list(targets)
    if len(items) != b:
        raise ValueError(f"{len(items)} targets for {b} windows")
    idx = []
    for t in items:
        if isinstance(t, str):
            if t not in classes:
                raise ValueError(f"unknown class {t!r}; the model's classes are {list(classes)}")
            t = classes.index(t)
        t = int(t)
        if not 0 <= t < logits.size(1):
            raise ValueError(f"class index {t} out of range 0..{logits.size(1) - 1}")
        idx.append(t)
    return torch.tensor(idx, dtype=torch.long, device=logits.device)


def _minmax(cam: torch.Tensor) -> torch.Tensor:
    """Per-window min-max normalisation to [0, 1] (an all-equal map becomes all zeros)."""
    flat = cam.flatten(1)
    lo = flat.min(dim=1).values[:, None, None]
    hi = flat.max(dim=1).values[:, None, None]
    # Scale-free (no additive eps): an untrained model's tiny CAMs still reach exactly 1.
    return (cam - lo) / (hi - lo).clamp_min(1e-30)


_FRESH: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _fresh_copy(module: torch.jit.ScriptModule, device: torch.device) -> torch.jit.ScriptModule:
    """A private re-load of a scripted module whose executor state we control (cached)."""
    copy = _FRESH.get(module)
    if copy is None:
        buf = io.BytesIO()
        torch.jit.save(module, buf)
        buf.seek(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            copy = torch.jit.load(buf, map_location=device).eval()
        _FRESH[module] = copy
    return copy


StreamStats = tuple[torch.Tensor, torch.Tensor]  # per-window (mean, std) of stream_norm models


def _call_explain(module: Any, x: torch.Tensor, stream_stats: StreamStats | None) -> tuple:
    """``explain``, or ``explain_stream`` with each window's stream statistics."""
    if stream_stats is None:
        return module.explain(x)
    mean, std = stream_stats
    return module.explain_stream(x, mean.to(x.device, x.dtype), std.to(x.device, x.dtype))


def _backend(waves: torch.Tensor) -> contextlib.AbstractContextManager:
    """The backend flags a map's forward and backward run under.

    CUDA: cuDNN's LSTM has no backward in eval mode, so cuDNN is off for both.
    CPU: oneDNN's LSTM backward (mkldnn_rnn_layer_backward) is the largest single op of
    Grad-CAM on the served CNN-LSTM in profiles; CPU_ONEDNN_OFF swaps in the native LSTM
    (same gradients to 1e-10). Measured here (BiLSTM 64, 23 steps, fwd+bwd, best of 50):
    oneDNN 1.3 ms, native 68 ms, so torch's default (oneDNN on) stays; benchmarks/gradcam.py
    times both.
    """
    if waves.is_cuda:
        return torch.backends.cudnn.flags(enabled=False)
    if CPU_ONEDNN_OFF:
        return torch.backends.mkldnn.flags(enabled=False)
    return contextlib.nullcontext()


class CamPass:
    """One batch's ``explain`` forward with its graph kept, then the backward that makes maps.

    Split in two because the forward's logits are also the batch's prediction (every file
    ``train/`` exports has ``forward() == softmax(explain()'s logits)``; see
    :func:`explain_matches_forward`): a caller that wants both runs the model once and can send
    the prediction before the backward. The graph holds the batch's activations until
    :meth:`maps` (about 10 MB a window for the Whisper model), so keep batches bounded.

    TorchScript caveat (found here, torch 2.11): once the profiling executor has optimised
    ``explain`` (from its second call on), autodiff subgraphs swallow the activations and
    ``autograd.grad(score, activations)`` fails with "not used in the graph". Running
    ``explain`` with ``optimized_execution(False)`` keeps every returned tensor on the graph;
    the cost is the interpreter instead of fused kernels, negligible next to conv/LSTM. A module
    whose map still does not reach the logits is re-loaded once (:func:`_fresh_copy`).
    """

    def __init__(self, module: Any, waves: torch.Tensor, method: str = "gradcam",
                 classes: Sequence[str] = (), stream_stats: StreamStats | None = None) -> None:
        if method not in METHODS:
            raise ValueError(f"unknown explain method {method!r}; use one of {METHODS}")
        if isinstance(module, torch.jit.ScriptModule):
            module = _FRESH.get(module, module)  # a module that needed a fresh copy keeps it
        self.module, self.waves, self.method = module, waves, method
        self.classes, self.stream_stats = list(classes), stream_stats
        self._forward()

    def _forward(self) -> None:
        x = self.waves.detach().requires_grad_(self.method == "saliency")
        with torch.enable_grad(), _backend(self.waves), torch.jit.optimized_execution(False):
            self.logits, self.acts, self.spec = _call_explain(self.module, x, self.stream_stats)
            if self.method != "saliency" and not self.acts.requires_grad:
                # Frozen parameters: make the graph reach the activations through the input.
                x = self.waves.detach().requires_grad_(True)
                self.logits, self.acts, self.spec = _call_explain(self.module, x,
                                                                  self.stream_stats)

    @property
    def probabilities(self) -> torch.Tensor:
        """softmax of the logits ``[B, C]`` (float32, detached): the batch's prediction."""
        return torch.softmax(self.logits.detach().float(), dim=1)

    def _grad(self, tgt: torch.Tensor) -> torch.Tensor | None:
        """The gradient of each window's target logit w.r.t. the map's input (windows are
        independent in eval mode, so the summed score gives per-window gradients)."""
        wrt = self.spec if self.method == "saliency" else self.acts
        if not wrt.requires_grad:
            return None
        score = self.logits.gather(1, tgt[:, None]).sum()
        (grad,) = torch.autograd.grad(score, wrt, allow_unused=True)
        return None if grad is None else grad.detach()

    def maps(self, targets: Any = None
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(targets [B], cam [B, F, T] in [0, 1], raw peak [B], spec [B, F, T]); once per pass
        (the backward frees the graph)."""
        tgt = _resolve_targets(targets, self.logits, self.classes)
        with torch.enable_grad(), _backend(self.waves):
            grad = self._grad(tgt)
            if grad is None and isinstance(self.module, torch.jit.ScriptModule):
                # explain() already ran under the optimising executor elsewhere: a fresh copy.
                self.module = _fresh_copy(self.module, self.waves.device)
                self._forward()
                grad = self._grad(tgt)
            if grad is None:
                what = "spectrogram" if self.method == "saliency" else "activations"
                raise ValueError(f"the {what} that explain() returns do not reach the logits, "
                                 f"so {self.method} has nothing to differentiate (see the model "
                                 "contract)")
            if self.method == "saliency":
                cam = gaussian_blur(grad.abs().amax(dim=1).float(), SALIENCY_SIGMA)
            else:
                weights = grad.mean(dim=(2, 3), keepdim=True)
                cam = F.relu((weights * self.acts.detach()).sum(dim=1, keepdim=True))
                cam = F.interpolate(cam, size=self.spec.shape[-2:], mode="bilinear",
                                    align_corners=False)[:, 0]
        raw = cam.flatten(1).max(dim=1).values
        return tgt, _minmax(cam.float()), raw, self.spec.detach()[:, 0].float()


def class_activation_maps(
    module: Any, waves: torch.Tensor, targets: Any = None, method: str = "gradcam",
    classes: Sequence[str] = (), stream_stats: StreamStats | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(probabilities [B, C], targets [B], cam [B, F, T] in [0, 1], raw peak [B], spec [B, F, T]).

    One batched ``explain`` and one ``autograd.grad`` (:class:`CamPass`). ``stream_stats``:
    each window's stream statistics, for models that normalise per stream
    (``streamer.stream_norm``): the map then explains the label the stream was sent.
    """
    cams = CamPass(module, waves, method, classes, stream_stats)
    tgt, cam, raw, spec = cams.maps(targets)
    return cams.probabilities, tgt, cam, raw, spec


@dataclass
class ExplainPass:
    """:class:`CamPass` with the card: :attr:`probabilities` after the forward, then
    :meth:`finish` for the explanations (see :func:`start_explain`)."""

    module: Any
    cams: CamPass
    card: dict  # with features.mel_scale filled in (infer_mel_scale) when the file omits it

    @property
    def probabilities(self) -> np.ndarray:
        """The batch's prediction ``[B, C]`` (float32), from the explanation's own forward."""
        return self.cams.probabilities.cpu().numpy()

    def finish(self, targets: Any = None, metrics: bool = True,
               threshold: float = DEFAULT_THRESHOLD, seed: int = 0) -> list[Explanation]:
        """The backward and the explanations (see :func:`explain_windows`); once per pass."""
        tgt, cam, raw, spec = self.cams.maps(targets)
        grid = spec_grid(self.card, cam.size(1), cam.size(2))
        classes = self.cams.classes
        probs_np, tgt_np = self.cams.probabilities.cpu().numpy(), tgt.cpu().numpy()
        cam_np, spec_np, raw_np = cam.cpu().numpy(), spec.cpu().numpy(), raw.cpu().numpy()
        out = [
            Explanation(method=self.cams.method, target=int(tgt_np[i]),
                        target_name=classes[int(tgt_np[i])], probabilities=probs_np[i],
                        cam=cam_np[i].astype(np.float32), spectrogram=spec_np[i],
                        times_s=grid.times_s, freqs_hz=grid.freqs_hz, classes=classes,
                        raw_max=float(raw_np[i]), mel_scale=grid.mel_scale)
            for i in range(len(tgt_np))
        ]
        for e in out:
            e.metrics = cam_metrics(e.cam, grid, float(e.probabilities[e.target]), threshold)
        if metrics:
            add_confidence_drops(self.module, self.cams.waves, out, grid, seed=seed)
        return out


def start_explain(model: Any, waves: Any, explain_method: str | None = None,
                  card: dict | None = None, stream_stats: StreamStats | None = None
                  ) -> ExplainPass:
    """The forward half of :func:`explain_windows`: the batch's probabilities are ready before
    the backward runs (the daemon sends them as the windows' predictions first)."""
    module, card = _unpack(model, card)
    feats = dict(card.get("features") or {})
    if not feats.get("mel_scale"):
        card = {**card, "features": {**feats, "mel_scale": infer_mel_scale(module, card)}}
    method = explain_method or card.get("explain_method") or "gradcam"
    n_samples = int(round(float(card["sample_rate"]) * float(card["window_s"])))
    x = _as_waves(waves, n_samples, _device_of(module))
    cams = CamPass(module, x, method, list(card["classes"]), stream_stats)
    return ExplainPass(module, cams, card)


def explain_windows(
    model: Any,
    waves: Any,
    targets: Any = None,
    explain_method: str | None = None,
    card: dict | None = None,
    metrics: bool = True,
    threshold: float = DEFAULT_THRESHOLD,
    seed: int = 0,
    stream_stats: StreamStats | None = None,
) -> list[Explanation]:
    """Explain a batch of windows ``[B, N]``; see docs/architecture.md (streamer section).

    ``targets``: None (each window's predicted class), a class index or name for all, or one
    per window. ``explain_method`` defaults to the card's ``explain_method`` (else gradcam).
    The CAM statistics (confidence, activations, area, entropy, focus region) are always
    computed (numpy on one map, well under a millisecond); ``metrics=True`` adds both confidence
    drops (one more batched forward of 2B masked windows), ``False`` leaves them None (the
    cheapest live path).
    """
    return start_explain(model, waves, explain_method, card, stream_stats).finish(
        targets, metrics, threshold, seed)


#: Largest difference between forward() and softmax(explain()'s logits) that still counts as
#: the same prediction (float32 noise between the optimised and the plain interpreter).
SAME_PREDICTION_ATOL = 1e-4
_MATCHES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def explain_matches_forward(model: Any, card: dict | None = None) -> bool:
    """Whether the model's ``forward`` is the softmax of ``explain``'s logits, checked once per
    module on two fixed noise windows. True for every file ``train/`` exports; the contract
    does not promise it, so a caller that takes predictions from :class:`ExplainPass` asks."""
    module, card = _unpack(model, card)
    if module in _MATCHES:
        return _MATCHES[module]
    n = int(round(float(card["sample_rate"]) * float(card["window_s"])))
    rng = np.random.default_rng(0)
    waves = torch.as_tensor(0.05 * rng.standard_normal((2, n)), dtype=torch.float32)
    waves = waves.to(_device_of(module))
    with torch.inference_mode():
        plain = module(waves).float()
    fused = start_explain(module, waves, card=card).cams.probabilities
    ok = bool(plain.shape == fused.shape
              and (plain - fused).abs().max().item() <= SAME_PREDICTION_ATOL)
    _MATCHES[module] = ok
    return ok


# ----------------------------------------------------------------------------- metrics

def cam_metrics(cam: np.ndarray, grid: SpecGrid, confidence: float,
                threshold: float = DEFAULT_THRESHOLD) -> ExplanationMetrics:
    """Everything but the drops: peak, mean, activated area, entropy and the focus region."""
    cam = np.asarray(cam, dtype=np.float64)
    active = cam >= threshold
    total = cam.sum()
    if total > 0:
        p = cam[cam > 0] / total
        entropy = float(-(p * np.log(p)).sum())
    else:
        entropy = 0.0
    box = None
    t_range = f_range = None
    if active.any():
        rows = np.flatnonzero(active.any(axis=1))
        cols = np.flatnonzero(active.any(axis=0))
        box = (int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1]))
        t_range = (float(grid.times_s[box[2]]), float(grid.times_s[box[3]]))
        f_range = (float(grid.freqs_hz[box[0]]), float(grid.freqs_hz[box[1]]))
    return ExplanationMetrics(
        confidence=float(confidence), max_activation=float(cam.max()),
        mean_activation=float(cam.mean()), activated_area_pct=100.0 * float(active.mean()),
        entropy=entropy, time_focus_range=t_range, freq_focus_range=f_range, focus_box=box,
        threshold=float(threshold))


def box_mask(shape: tuple[int, int], box: tuple[int, int, int, int]) -> np.ndarray:
    """Boolean [F, T] mask of an inclusive (r0, r1, c0, c1) box."""
    m = np.zeros(shape, dtype=bool)
    r0, r1, c0, c1 = box
    m[r0:r1 + 1, c0:c1 + 1] = True
    return m


def random_box_like(shape: tuple[int, int], box: tuple[int, int, int, int],
                    rng: np.random.Generator) -> tuple[int, int, int, int]:
    """A box of the same height and width as ``box``, placed uniformly at random."""
    h, w = box[1] - box[0] + 1, box[3] - box[2] + 1
    r0 = int(rng.integers(0, shape[0] - h + 1))
    c0 = int(rng.integers(0, shape[1] - w + 1))
    return (r0, r0 + h - 1, c0, c0 + w - 1)


def _stft_maps(grid: SpecGrid, n_bins: int, n_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Spectrogram row of each STFT bin (nearest band centre in mel) and column of each frame."""
    bin_hz = np.arange(n_bins) * grid.sample_rate / grid.n_fft
    bin_mel = hz_to_mel(bin_hz, grid.mel_scale)
    row_mel = hz_to_mel(grid.freqs_hz, grid.mel_scale)
    rows = np.abs(bin_mel[:, None] - row_mel[None, :]).argmin(axis=1)
    frame_t = np.arange(n_frames) * grid.hop_length / grid.sample_rate
    cols = np.abs(frame_t[:, None] - grid.times_s[None, :]).argmin(axis=1)
    return rows, cols


def mask_waves(waves: torch.Tensor, cell_masks: Any, grid: SpecGrid, seed: int = 0
               ) -> torch.Tensor:
    """Remove the masked spectrogram cells from each waveform (STFT noise-floor fill; see top).

    ``cell_masks``: bool ``[B, F, T]`` on the spectrogram grid. Unmasked cells are reproduced
    exactly (to float precision) by the inverse STFT.
    """
    masks = torch.as_tensor(np.asarray(cell_masks), dtype=torch.bool)
    window = torch.hann_window(grid.win_length, device=waves.device)
    spec = torch.stft(waves, grid.n_fft, grid.hop_length, grid.win_length, window,
                      center=True, return_complex=True)  # [B, bins, frames]
    mag = spec.abs()
    rows, cols = _stft_maps(grid, spec.size(1), spec.size(2))
    stft_mask = masks[:, torch.as_tensor(rows)][:, :, torch.as_tensor(cols)].to(waves.device)
    # The window's own noise floor: RMS spectrum of its quietest non-silent frames.
    energy = (mag ** 2).sum(dim=1)  # [B, frames]
    floor = torch.zeros(mag.shape[:2], device=waves.device)
    for b in range(waves.size(0)):
        e = energy[b]
        live = e > e.max() * 1e-10
        if not live.any():
            continue
        cut = torch.quantile(e[live], NOISE_FLOOR_QUANTILE)
        quiet = live & (e <= cut)
        floor[b] = mag[b][:, quiet].pow(2).mean(dim=1).sqrt()
    gen = torch.Generator().manual_seed(int(seed))
    phase = (torch.rand(spec.shape, generator=gen) * (2 * math.pi)).to(waves.device)
    fill = torch.polar(floor[:, :, None].expand_as(mag), phase)
    replace = stft_mask & (mag > floor[:, :, None])
    out = torch.istft(torch.where(replace, fill, spec), grid.n_fft, grid.hop_length,
                      grid.win_length, window, center=True, length=waves.size(1))
    return out.to(waves.dtype)


def target_probabilities(module: Any, waves: torch.Tensor, targets: Sequence[int],
                         batch_size: int = 64) -> np.ndarray:
    """p(target) of each window (inference only; cuDNN fine here)."""
    out = []
    with torch.inference_mode():
        for i in range(0, waves.size(0), batch_size):
            probs = module(waves[i:i + batch_size])
            idx = torch.as_tensor(list(targets[i:i + batch_size]), device=probs.device)
            out.append(probs.gather(1, idx[:, None])[:, 0].float().cpu())
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.float32)


def add_confidence_drops(module: Any, waves: torch.Tensor, expls: list[Explanation],
                         grid: SpecGrid, seed: int = 0) -> None:
    """Fill ``confidence_drop`` (focus box masked) and ``random_drop`` (same-size box at a
    random place, seeded) of each explanation, in one batched forward."""
    shape = grid.shape
    masks, rows, targets = [], [], []
    for i, e in enumerate(expls):
        m = e.metrics
        if m is None or m.focus_box is None:
            continue
        rng = np.random.default_rng([int(seed), i])
        m.random_box = random_box_like(shape, m.focus_box, rng)
        masks += [box_mask(shape, m.focus_box), box_mask(shape, m.random_box)]
        rows += [i, i]
        targets += [e.target, e.target]
    if not masks:
        return
    masked = mask_waves(waves[torch.as_tensor(rows, device=waves.device)], np.stack(masks),
                        grid, seed=seed)
    p = target_probabilities(module, masked, targets)
    for k in range(0, len(rows), 2):
        e = expls[rows[k]]
        base = float(e.probabilities[e.target])
        e.metrics.confidence_drop = base - float(p[k])
        e.metrics.random_drop = base - float(p[k + 1])


# ----------------------------------------------------------------------------- live frame

def _pool_axis(values: np.ndarray, n: int) -> np.ndarray:
    t = torch.as_tensor(np.asarray(values, dtype=np.float64))[None, None]
    return F.adaptive_avg_pool1d(t, n)[0, 0].numpy()


def downsample(expl: Explanation, max_f: int = FRAME_F, max_t: int = FRAME_T
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(spectrogram, cam, times_s, freqs_hz) average-pooled to at most max_f x max_t."""
    f, t = expl.cam.shape
    nf, nt = min(f, max_f), min(t, max_t)
    pair = torch.as_tensor(np.stack([expl.spectrogram, expl.cam]), dtype=torch.float32)
    pooled = F.adaptive_avg_pool2d(pair, (nf, nt)).numpy()
    return (pooled[0], pooled[1], _pool_axis(expl.times_s, nt), _pool_axis(expl.freqs_hz, nf))


def explanation_payload(expl: Explanation, stream_id: str, seq: int, card: dict | None = None
                        ) -> dict:
    """The protocol's ``explanation`` message: 8-bit log-mel and CAM (<= 64 x 100, base64).

    ``card`` is accepted for symmetry with the engine's call; the axes travel in ``expl``.
    """
    from streamer import protocol

    if expl.metrics is None:
        raise ValueError("the live frame needs the explanation's metrics (explain_windows)")
    spec, cam, times, freqs = downsample(expl)
    return protocol.explanation(
        stream_id, seq, expl.target_name, expl.method, expl.metrics.wire(),
        protocol.encode_frame(spec, unit="log-mel"),
        protocol.encode_frame(np.clip(cam, 0.0, 1.0), 0.0, 1.0),
        [round(float(x), 4) for x in times], [round(float(x), 1) for x in freqs])


__all__ = [
    "DEFAULT_THRESHOLD", "METHODS", "Explanation", "ExplanationMetrics", "SpecGrid",
    "CamPass", "ExplainPass", "add_confidence_drops", "box_mask", "cam_metrics",
    "class_activation_maps", "downsample", "explain_matches_forward", "explain_windows",
    "explanation_payload", "hz_to_mel", "infer_mel_scale", "mask_waves", "mel_band_centres",
    "mel_to_hz", "random_box_like", "spec_grid", "start_explain", "target_probabilities",
]
