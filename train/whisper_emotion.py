"""The served emotion model on Whisper's encoder: raw 3-s window -> 7 probabilities.

wave [B, 48000] -> Whisper log-mel [B, 80, 300] -> first ``n_blocks`` encoder blocks (frozen,
pretrained on 680,000 h of speech) -> mean and standard deviation over time -> standardise
(training statistics) -> linear head -> softmax.

Why this shape: a speech encoder trained on many voices separates who speaks from how; the
emotion head on top is a linear model fitted on many speakers, which is what the held-out
speaker and corpus figures in ``docs/results`` measure. Which block, which pooling and the
head's regularisation were chosen on validation speakers from the training side
(``train.crosscorpus``).

The explanation is input-gradient saliency over the log-mel (time x frequency: *which sound*
drove the label), ``explain_method: saliency`` in the card; ``explain`` also returns the
encoder's last states as [B, D, 1, T'] for a time-only Grad-CAM.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from train.features import check_window
from train.whisper import HOP_LENGTH, AudioEncoder, WhisperLogMel, load_encoder

N_CLASSES = 7


@dataclass(frozen=True)
class WhisperEmotionConfig:
    """What defines the model besides its weights (saved with every run, read back by export)."""

    sample_rate: int = 16_000
    window_s: float = 3.0
    n_blocks: int = 2  # encoder blocks kept (chosen on validation speakers)
    pooling: str = "voiced"  # "all" positions or "voiced" ones (chosen likewise)
    n_classes: int = N_CLASSES

    @property
    def n_samples(self) -> int:
        return int(round(self.sample_rate * self.window_s))

    def to_dict(self) -> dict:
        return asdict(self)


VOICED_DB = 30.0  # positions more than this below the window's loudest frame are not pooled


def pool(states: torch.Tensor) -> torch.Tensor:
    """Mean and standard deviation over time: [B, T, D] -> [B, 2D]."""
    return torch.cat([states.mean(dim=1), states.std(dim=1)], dim=1)


def voiced_weights(mel: torch.Tensor, n_positions: int, below_db: float = VOICED_DB
                   ) -> torch.Tensor:
    """[B, T'] 0/1 weights of the encoder positions whose frames are within ``below_db`` of the
    window's loudest frame (Whisper's log-mel is log10 / 4, so 10 dB = 0.25).

    Why: a 3-s window is often part silence (a 2-s TESS clip, a pause in a call); mean-pooling
    the silence dilutes the voice by a different amount in every corpus and stream.
    """
    energy = mel.mean(dim=1)  # [B, T]
    keep = (energy >= energy.amax(dim=1, keepdim=True) - below_db / 40.0).float()
    if keep.size(1) % 2 == 1:
        keep = torch.cat([keep, keep[:, -1:]], dim=1)
    keep = torch.maximum(keep[:, 0::2], keep[:, 1::2])  # the stride-2 conv's pairs of frames
    return keep[:, :n_positions]


def voiced_pool(states: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted mean and standard deviation over time: [B, T, D], [B, T] -> [B, 2D]."""
    w = weights.unsqueeze(2)
    total = w.sum(dim=1).clamp(min=1.0)
    mean = (states * w).sum(dim=1) / total
    var = ((states - mean.unsqueeze(1)) ** 2 * w).sum(dim=1) / total
    return torch.cat([mean, torch.sqrt(var + 1e-8)], dim=1)


def _fill(*pairs: tuple[torch.Tensor, np.ndarray]) -> None:
    """Copy fitted arrays into a model's buffers and parameters (float32, no autograd)."""
    with torch.no_grad():
        for target, value in pairs:
            target.copy_(torch.as_tensor(value, dtype=torch.float32))


class WhisperEmotion(nn.Module):
    """Whisper encoder + pooled linear head; ``forward`` -> probabilities, ``explain`` -> maps."""

    def __init__(self, encoder: AudioEncoder, config: WhisperEmotionConfig) -> None:
        super().__init__()
        if len(encoder.blocks) != config.n_blocks:
            raise ValueError(f"encoder has {len(encoder.blocks)} blocks, config says "
                             f"{config.n_blocks}")
        if config.pooling not in ("all", "voiced"):
            raise ValueError(f"pooling must be 'all' or 'voiced', got {config.pooling!r}")
        self.n_samples = config.n_samples
        self.voiced = config.pooling == "voiced"
        self.front = WhisperLogMel(encoder.dims.n_mels)
        self.encoder = encoder
        dim = 2 * encoder.dims.n_audio_state
        self.register_buffer("feat_mean", torch.zeros(dim))
        self.register_buffer("feat_std", torch.ones(dim))
        self.head = nn.Linear(dim, config.n_classes)
        # Per-stream normalisation (optional): a second head trained on features standardised
        # per speaker, and the prior its running statistics are shrunk towards.
        self.register_buffer("spk_feat_mean", torch.zeros(dim))
        self.register_buffer("spk_feat_std", torch.ones(dim))
        self.spk_head = nn.Linear(dim, config.n_classes)
        self.register_buffer("prior_mean", torch.zeros(dim))
        self.register_buffer("prior_std", torch.ones(dim))
        self.prior_windows = 5.0
        # Per-site normalisation (optional): a head trained on features standardised per
        # corpus, which `emotion-monitor calibrate` folds with a site's statistics into the
        # head above (streamer/calibrate.py). Not used by any method here.
        self.register_buffer("site_feat_mean", torch.zeros(dim))
        self.register_buffer("site_feat_std", torch.ones(dim))
        self.site_head = nn.Linear(dim, config.n_classes)

    def set_head(self, mean: np.ndarray, std: np.ndarray, weight: np.ndarray,
                 bias: np.ndarray) -> None:
        """Install a fitted standardiser and linear head (e.g. from scikit-learn)."""
        _fill((self.feat_mean, mean), (self.feat_std, std), (self.head.weight, weight),
              (self.head.bias, bias))

    def set_stream_head(self, mean: np.ndarray, std: np.ndarray, weight: np.ndarray,
                        bias: np.ndarray, prior_mean: np.ndarray, prior_std: np.ndarray,
                        prior_windows: float) -> None:
        """Install the per-speaker head and its prior (``classify_stream``)."""
        _fill((self.spk_feat_mean, mean), (self.spk_feat_std, std),
              (self.prior_mean, prior_mean), (self.prior_std, prior_std),
              (self.spk_head.weight, weight), (self.spk_head.bias, bias))
        self.prior_windows = float(prior_windows)

    def set_site_head(self, mean: np.ndarray, std: np.ndarray, weight: np.ndarray,
                      bias: np.ndarray) -> None:
        """Install the per-site head (``train.site_norm``) for ``emotion-monitor calibrate``."""
        _fill((self.site_feat_mean, mean), (self.site_feat_std, std),
              (self.site_head.weight, weight), (self.site_head.bias, bias))

    def check_input(self, wave: torch.Tensor) -> None:
        """A clear error for what the streamer or a user might pass by mistake."""
        check_window(wave, self.n_samples)

    def spectrogram(self, wave: torch.Tensor) -> torch.Tensor:
        """Whisper's log-mel [B, 1, 80, T] (what the dashboard draws and saliency maps)."""
        self.check_input(wave)
        return self.front(wave).unsqueeze(1)

    def states(self, spec: torch.Tensor) -> torch.Tensor:
        """Encoder states [B, T', D] of the kept blocks, float32.

        The encoder runs in its weights' dtype: a runtime may cast it to bfloat16 (the card's
        ``precision``), while the log-mel, pooling and head stay float32.
        """
        x = spec.squeeze(1).to(self.encoder.conv1.weight.dtype)
        return self.encoder(x).to(torch.float32)

    def pooled(self, spec: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        if self.voiced:
            return voiced_pool(states, voiced_weights(spec.squeeze(1), states.size(1)))
        return pool(states)

    @torch.jit.export
    def embed(self, wave: torch.Tensor) -> torch.Tensor:
        """Pooled encoder features [B, 2D] before standardisation (what the head reads)."""
        spec = self.spectrogram(wave)
        return self.pooled(spec, self.states(spec))

    @torch.jit.export
    def classify(self, features: torch.Tensor) -> torch.Tensor:
        """Pooled features [B, 2D] -> logits [B, C]."""
        return self.head((features - self.feat_mean) / self.feat_std)

    @torch.jit.export
    def stream_moments(self, count: torch.Tensor, total: torch.Tensor, total_sq: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """A stream's running mean and std of ``embed`` from its first ``count`` windows
        (sums ``total``, ``total_sq``), shrunk towards the training speakers' average with
        ``prior_windows`` pseudo-windows: [B], [B, 2D], [B, 2D] -> ([B, 2D], [B, 2D])."""
        k = count.to(total.dtype).unsqueeze(1)
        p = self.prior_windows
        mean = (total + p * self.prior_mean) / (k + p)
        second = (total_sq + p * (self.prior_std ** 2 + self.prior_mean ** 2)) / (k + p)
        return mean, torch.sqrt(torch.clamp(second - mean ** 2, min=1e-8))

    @torch.jit.export
    def classify_stream(self, features: torch.Tensor, mean: torch.Tensor, std: torch.Tensor
                        ) -> torch.Tensor:
        """Logits of the per-speaker head: features standardised by the stream's statistics."""
        z = (features - mean) / (std + 1e-5)
        return self.spk_head((z - self.spk_feat_mean) / self.spk_feat_std)

    @torch.jit.export
    def explain_stream(self, wave: torch.Tensor, mean: torch.Tensor, std: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``explain`` through the per-speaker head with the stream's statistics."""
        spec = self.spectrogram(wave)
        states = self.states(spec)
        logits = self.classify_stream(self.pooled(spec, states), mean, std)
        return logits, states.transpose(1, 2).unsqueeze(2), spec

    @torch.jit.export
    def explain(self, wave: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logits [B, C], encoder states [B, D, 1, T'], log-mel [B, 1, 80, T])."""
        spec = self.spectrogram(wave)
        states = self.states(spec)
        logits = self.classify(self.pooled(spec, states))
        return logits, states.transpose(1, 2).unsqueeze(2), spec

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        logits, _, _ = self.explain(wave)
        return torch.softmax(logits, dim=-1)


def build(encoder_path: str, config: WhisperEmotionConfig) -> WhisperEmotion:
    """A model with pretrained encoder blocks and an untrained head.

    The positional embedding is cut to the window's positions (150 of 1,500 for 3 s): the
    model only ever sees one window length, and the file is 2 MB smaller.
    """
    encoder = load_encoder(encoder_path, config.n_blocks)
    n_positions = (config.n_samples // HOP_LENGTH + 1) // 2
    encoder.positional_embedding = encoder.positional_embedding[:n_positions].clone()
    return WhisperEmotion(encoder, config).eval()


def block_features(encoder: AudioEncoder, front: WhisperLogMel, waves: torch.Tensor
                   ) -> torch.Tensor:
    """Pooled features of every kept block at once, both poolings: [B, 2, n_blocks, 2D]
    (index 0: all positions, 1: voiced positions), for choosing a block and a pooling."""
    mel = front(waves)
    hidden = encoder.hidden_states(mel)
    w = voiced_weights(mel, hidden[0].size(1))
    return torch.stack([torch.stack([pool(h) for h in hidden], dim=1),
                        torch.stack([voiced_pool(h, w) for h in hidden], dim=1)], dim=1)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


ARCHITECTURE = (
    "Whisper log-mel (scripted) -> Whisper tiny encoder, first blocks (frozen) -> mean + std "
    "over the (voiced) positions -> standardise -> linear head"
)

__all__ = [
    "ARCHITECTURE", "VOICED_DB", "WhisperEmotion", "WhisperEmotionConfig", "block_features",
    "build", "count_parameters", "pool", "voiced_pool", "voiced_weights",
]
