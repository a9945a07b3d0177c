"""Whisper's audio front-end and encoder, scriptable, loaded from a local checkpoint.

Mirrors openai/whisper's ``audio.py`` (log-mel) and ``model.py`` (``AudioEncoder``) so that
OpenAI's checkpoints load unchanged, with three differences that serving needs:

- the log-mel is computed per item of a batch (Whisper floors each *call* at max - 8 dB; a
  batch must not let one window's loudness change another's features);
- the encoder takes any input length up to 30 s: the positional embedding is sliced to the
  input (Whisper pads every input to 30 s, 10x the compute for a 3-s window);
- ``n_blocks`` keeps only the first blocks (what the emotion head reads), so a smaller model
  ships and runs.

Nothing is downloaded: ``load_encoder(path)`` reads OpenAI's layout (``{"dims": ...,
"model_state_dict": ...}``, the encoder-only file in ``../shared/models`` or the official full
``tiny.pt``, whose ``decoder.*`` keys are ignored).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

# Whisper's audio constants (openai/whisper audio.py).
SAMPLE_RATE = 16_000
N_FFT = 400
HOP_LENGTH = 160
N_MELS = 80
N_AUDIO_CTX = 1500  # positions after the stride-2 conv: 30 s
LOG_FLOOR_DB = 8.0  # log10 units below each item's maximum


def mel_filters(n_mels: int = N_MELS) -> torch.Tensor:
    """The Slaney mel filterbank Whisper ships in ``mel_filters.npz`` ([n_mels, 201]).

    Whisper made that file with ``librosa.filters.mel(sr=16000, n_fft=400, n_mels=80)``; the
    same call here avoids shipping a data file (tested equal to Whisper's within float32).
    """
    import librosa

    fb = librosa.filters.mel(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=n_mels)
    return torch.from_numpy(fb).float()


class WhisperLogMel(nn.Module):
    """``whisper.log_mel_spectrogram`` for a batch: wave [B, N] -> [B, n_mels, N // 160].

    Per item: |STFT|^2 (Hann 400, hop 160, centred, reflect padding, last frame dropped as
    Whisper does), mel, log10 clamped at 1e-10, floored at the item's max - 8, (x + 4) / 4.
    """

    def __init__(self, n_mels: int = N_MELS) -> None:
        super().__init__()
        self.n_fft = N_FFT
        self.hop_length = HOP_LENGTH
        self.floor = LOG_FLOOR_DB
        self.register_buffer("window", torch.hann_window(N_FFT), persistent=False)
        self.register_buffer("filters", mel_filters(n_mels), persistent=False)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        stft = torch.stft(wave, self.n_fft, self.hop_length, window=self.window,
                          return_complex=True)
        power = torch.view_as_real(stft[..., :-1]).pow(2).sum(-1)
        mel = torch.matmul(self.filters, power)
        log_spec = torch.clamp(mel, min=1e-10).log10()
        peak = log_spec.amax(dim=(1, 2), keepdim=True)
        log_spec = torch.maximum(log_spec, peak - self.floor)
        return (log_spec + 4.0) / 4.0


@dataclass(frozen=True)
class EncoderDims:
    """The audio half of Whisper's ``ModelDimensions`` (tiny: 80, 1500, 384, 6, 4)."""

    n_mels: int = N_MELS
    n_audio_ctx: int = N_AUDIO_CTX
    n_audio_state: int = 384
    n_audio_head: int = 6
    n_audio_layer: int = 4


class MultiHeadAttention(nn.Module):
    """Whisper's self-attention (key without bias).

    Written out (softmax(q k^T / sqrt(d)) v) rather than ``F.scaled_dot_product_attention``
    on purpose: at a window's 150 positions the CPU flash kernel's backward in bfloat16 cost
    more than the whole attention written out (saliency of 12 windows 147 vs 121 ms, 2
    threads); float32 is the same either way (``benchmarks/precision.py``).
    """

    def __init__(self, n_state: int, n_head: int) -> None:
        super().__init__()
        self.n_head = n_head
        self.scale = (n_state // n_head) ** -0.5
        self.query = nn.Linear(n_state, n_state)
        self.key = nn.Linear(n_state, n_state, bias=False)
        self.value = nn.Linear(n_state, n_state)
        self.out = nn.Linear(n_state, n_state)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        h = self.n_head
        q = self.query(x).view(b, t, h, d // h).transpose(1, 2)
        k = self.key(x).view(b, t, h, d // h).transpose(1, 2)
        v = self.value(x).view(b, t, h, d // h).transpose(1, 2)
        w = torch.softmax(torch.matmul(q, k.transpose(-1, -2)) * self.scale, dim=-1)
        return self.out(torch.matmul(w, v).transpose(1, 2).reshape(b, t, d))


class ResidualAttentionBlock(nn.Module):
    """Pre-norm transformer block, Whisper's names (``attn_ln``, ``mlp.0``, ``mlp.2``)."""

    def __init__(self, n_state: int, n_head: int) -> None:
        super().__init__()
        self.attn = MultiHeadAttention(n_state, n_head)
        self.attn_ln = nn.LayerNorm(n_state)
        self.mlp = nn.Sequential(
            nn.Linear(n_state, 4 * n_state), nn.GELU(), nn.Linear(4 * n_state, n_state)
        )
        self.mlp_ln = nn.LayerNorm(n_state)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_ln(x))
        return x + self.mlp(self.mlp_ln(x))


class AudioEncoder(nn.Module):
    """Whisper's ``AudioEncoder``: log-mel [B, n_mels, T] -> states [B, T // 2, n_state].

    ``n_blocks`` < n_audio_layer keeps the first blocks only; ``ln_post`` belongs to the last
    block's output, so it is applied only when every block is kept (``final_norm``).
    """

    def __init__(self, dims: EncoderDims, n_blocks: int | None = None) -> None:
        super().__init__()
        n_blocks = dims.n_audio_layer if n_blocks is None else n_blocks
        if not 1 <= n_blocks <= dims.n_audio_layer:
            raise ValueError(f"n_blocks must be 1..{dims.n_audio_layer}, got {n_blocks}")
        self.dims = dims
        self.conv1 = nn.Conv1d(dims.n_mels, dims.n_audio_state, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(
            dims.n_audio_state, dims.n_audio_state, kernel_size=3, stride=2, padding=1
        )
        self.register_buffer("positional_embedding", sinusoids(dims.n_audio_ctx,
                                                               dims.n_audio_state))
        self.blocks = nn.ModuleList(
            ResidualAttentionBlock(dims.n_audio_state, dims.n_audio_head) for _ in range(n_blocks)
        )
        self.final_norm = n_blocks == dims.n_audio_layer
        self.ln_post = nn.LayerNorm(dims.n_audio_state)

    def stem(self, mel: torch.Tensor) -> torch.Tensor:
        """Convolutions + positions: [B, n_mels, T] -> [B, T', n_state] (T' = ceil(T / 2))."""
        x = F.gelu(self.conv1(mel))
        x = F.gelu(self.conv2(x)).permute(0, 2, 1)
        if x.size(1) > self.positional_embedding.size(0):
            raise ValueError(
                f"input too long: {x.size(1)} positions, the encoder has "
                f"{self.positional_embedding.size(0)} (30 s)"
            )
        return x + self.positional_embedding[: x.size(1)]

    def hidden_states(self, mel: torch.Tensor) -> list[torch.Tensor]:
        """The output of every kept block (block 1 first), for probing which block to read."""
        x = self.stem(mel)
        out: list[torch.Tensor] = []
        for block in self.blocks:
            x = block(x)
            out.append(x)
        return out

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        x = self.stem(mel)
        for block in self.blocks:
            x = block(x)
        if self.final_norm:
            x = self.ln_post(x)
        return x


def sinusoids(length: int, channels: int, max_timescale: float = 10_000.0) -> torch.Tensor:
    """Whisper's sinusoidal positional embedding (used until the checkpoint's replaces it)."""
    inc = math.log(max_timescale) / (channels // 2 - 1)
    inv = torch.exp(-inc * torch.arange(channels // 2, dtype=torch.float32))
    scaled = torch.arange(length, dtype=torch.float32)[:, None] * inv[None, :]
    return torch.cat([torch.sin(scaled), torch.cos(scaled)], dim=1)


def read_checkpoint(path: str | Path) -> tuple[EncoderDims, dict[str, torch.Tensor]]:
    """(dims, encoder state dict without the ``encoder.`` prefix, float32) from OpenAI's layout.

    Accepts the full official checkpoint (decoder keys ignored) or an encoder-only one.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Whisper checkpoint not found: {path}")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or "dims" not in ckpt or "model_state_dict" not in ckpt:
        raise ValueError(
            f"{path} is not in OpenAI Whisper's checkpoint layout "
            "(a dict with 'dims' and 'model_state_dict')"
        )
    fields = EncoderDims.__dataclass_fields__
    dims = EncoderDims(**{k: int(v) for k, v in ckpt["dims"].items() if k in fields})
    state = {
        k[len("encoder."):]: v.float()
        for k, v in ckpt["model_state_dict"].items()
        if k.startswith("encoder.")
    }
    if not state:
        raise ValueError(f"{path} has no 'encoder.*' weights")
    return dims, state


def load_encoder(path: str | Path, n_blocks: int | None = None) -> AudioEncoder:
    """An ``AudioEncoder`` with the checkpoint's weights, first ``n_blocks`` blocks kept."""
    dims, state = read_checkpoint(path)
    enc = AudioEncoder(dims, n_blocks)
    keep = len(enc.blocks)
    state = {
        k: v for k, v in state.items()
        if not k.startswith("blocks.") or int(k.split(".")[1]) < keep
    }
    missing, unexpected = enc.load_state_dict(state, strict=False)
    if unexpected or (missing and set(missing) != {"ln_post.weight", "ln_post.bias"}):
        raise ValueError(f"{path}: checkpoint does not fit the encoder "
                         f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    return enc.eval()


__all__ = [
    "AudioEncoder", "EncoderDims", "HOP_LENGTH", "N_FFT", "N_MELS", "SAMPLE_RATE",
    "WhisperLogMel", "load_encoder", "mel_filters", "read_checkpoint", "sinusoids",
]
