"""The served model: a small spectrogram CNN-LSTM that takes a raw 3-s window.

wave [B, 48000] -> LogMel (train.features, scripted in) -> per-utterance normalisation ->
2-D conv blocks over frequency x time -> last conv map [B, K, F', T'] (what Grad-CAM reads) ->
frequency folded into channels -> BiLSTM over time -> attention pooling -> 7 logits.

Per-utterance (instance) normalisation of the log-mel removes gain and most of the channel /
speaker loudness, which matters more than depth on TESS's two speakers. The model is kept
small (about 0.14 M parameters) so that forward + Grad-CAM stays well inside real time on two
CPU threads.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from train.features import LogMel, LogMelConfig, check_window

N_CLASSES = 7


@dataclass(frozen=True)
class StreamingConfig:
    """Everything that defines the architecture (saved with every run, read back by export)."""

    sample_rate: int = 16_000
    window_s: float = 3.0
    n_fft: int = 1024  # 128 mel bands need 15.6-Hz bins (see LogMelConfig)
    hop_length: int = 320  # 20 ms: 151 frames per window; 10 ms cost 25 % more for nothing
    n_mels: int = 128
    f_min: float = 50.0
    f_max: float = 8000.0
    channels: tuple[int, ...] = (8, 16, 32, 48)
    norm: str = "window"  # per-window normalisation: "window" (F x T) or "band" (per mel band)
    pools: int = 2  # 2x2 max-pools after the first blocks: conv map F'=n_mels/8, T'=frames/8
    stem_stride: int = 2  # the first conv halves F and T: 2x cheaper overall, no loss on TESS
    lstm_hidden: int = 64
    dropout: float = 0.3
    n_classes: int = N_CLASSES

    @property
    def n_samples(self) -> int:
        return int(round(self.sample_rate * self.window_s))

    def logmel_config(self) -> LogMelConfig:
        return LogMelConfig(
            n_fft=self.n_fft, hop_length=self.hop_length, n_mels=self.n_mels,
            f_min=self.f_min, f_max=self.f_max, sample_rate=self.sample_rate,
        )

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channels"] = list(self.channels)
        return d

    @staticmethod
    def from_dict(d: dict) -> StreamingConfig:
        d = dict(d)
        d["channels"] = tuple(d["channels"])
        return StreamingConfig(**d)


class MaxPool2x2(nn.Module):
    """``nn.MaxPool2d(2)`` (floor mode) as two elementwise maxima: the same values, since a max
    is exact, and ~10x faster on CPU. Hand-written on purpose: torch 2.11's NCHW max_pool2d
    kernel took 13 ms on a [16, 16, 64, 76] map against 1.3 ms for this (1 thread, measured
    here), a fifth of the served model's whole forward pass."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, : x.size(2) // 2 * 2, : x.size(3) // 2 * 2]
        x = torch.maximum(x[:, :, 0::2], x[:, :, 1::2])
        return torch.maximum(x[:, :, :, 0::2], x[:, :, :, 1::2])


def _block(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(),
    )


class StreamingCNNLSTM(nn.Module):
    """Raw-waveform emotion classifier; ``forward`` -> probabilities, ``explain`` -> CAM inputs."""

    def __init__(self, config: StreamingConfig | None = None) -> None:
        super().__init__()
        config = config or StreamingConfig()
        self.n_samples = config.n_samples
        if config.norm not in ("window", "band"):
            raise ValueError(f"norm must be 'window' or 'band', got {config.norm!r}")
        self.norm = config.norm
        self.front = LogMel(config.logmel_config())
        chans = list(config.channels)
        blocks: list[nn.Module] = []
        c_in = 1
        for i, c in enumerate(chans):
            blocks.append(_block(c_in, c, config.stem_stride if i == 0 else 1))
            if i < config.pools:  # the later blocks keep the resolution Grad-CAM reads
                blocks.append(MaxPool2x2())
            c_in = c
        self.conv = nn.Sequential(*blocks)
        f_out = config.n_mels
        for i in range(len(chans)):
            f_out = (f_out - 1) // config.stem_stride + 1 if i == 0 else f_out
            f_out = f_out // 2 if i < config.pools else f_out
        self.proj = nn.Sequential(
            nn.Dropout(config.dropout), nn.Linear(chans[-1] * f_out, config.lstm_hidden), nn.ReLU()
        )
        self.lstm = nn.LSTM(
            config.lstm_hidden, config.lstm_hidden, batch_first=True, bidirectional=True
        )
        self.attn = nn.Linear(2 * config.lstm_hidden, 1)
        self.head = nn.Sequential(
            nn.Dropout(config.dropout), nn.Linear(2 * config.lstm_hidden, config.n_classes)
        )

    def check_input(self, wave: torch.Tensor) -> None:
        """A clear error for what the streamer or a user might pass by mistake."""
        check_window(wave, self.n_samples)

    def spectrogram(self, wave: torch.Tensor) -> torch.Tensor:
        """Log-mel [B, 1, n_mels, T] exactly as the front-end computes it (for display)."""
        self.check_input(wave)
        return self.front(wave)

    def normalize(self, spec: torch.Tensor) -> torch.Tensor:
        """Per-window normalisation (no statistics from training data, so no speaker's).

        ``window``: zero mean, unit variance over (F, T). ``band``: each mel band's mean over
        time removed first (cepstral-mean-style: takes out the voice's and the channel's
        long-term spectral envelope), then unit variance over (F, T).
        """
        if self.norm == "band":
            centred = spec - spec.mean(dim=3, keepdim=True)
        else:
            centred = spec - spec.mean(dim=(2, 3), keepdim=True)
        std = centred.std(dim=(2, 3), keepdim=True)
        return centred / (std + 1e-5)

    def classify(self, normed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised spectrogram -> (logits, last conv map)."""
        acts = self.conv(normed)
        b, k, f, t = acts.shape
        seq = acts.permute(0, 3, 1, 2).reshape(b, t, k * f)
        h, _ = self.lstm(self.proj(seq))
        w = torch.softmax(self.attn(h), dim=1)
        pooled = (w * h).sum(dim=1)
        return self.head(pooled), acts

    @torch.jit.export
    def explain(self, wave: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logits [B, C], activations [B, K, F', T'], spectrogram [B, 1, F, T])."""
        spec = self.spectrogram(wave)
        logits, acts = self.classify(self.normalize(spec))
        return logits, acts, spec

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        logits, _, _ = self.explain(wave)
        return torch.softmax(logits, dim=-1)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


ARCHITECTURE = (
    "log-mel (scripted) -> per-window normalisation -> 4 conv3x3-BN-ReLU blocks "
    "(strided stem, max-pool between) -> BiLSTM over time -> attention pooling -> linear"
)

__all__ = ["ARCHITECTURE", "StreamingCNNLSTM", "StreamingConfig", "count_parameters"]
