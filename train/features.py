"""Feature front-ends: scriptable torch modules on torchaudio, with librosa as the reference.

Every front-end takes ``wave[B, N]`` float32 mono at 16 kHz and runs wherever its input lives
(all constants are registered buffers; nothing in ``forward`` touches numpy), so the module
that makes the training features is the same one ``torch.jit.script`` puts into an exported
model. Settings live in small dataclasses (``dataclasses.asdict`` gives the model card's
feature settings). ``tests/test_features.py`` checks each against librosa on TESS audio.

Conventions shared with librosa (so the numbers mean the same thing):
- STFT: periodic Hann window, ``win_length == n_fft``, ``center=True`` with *zero* padding
  (librosa >= 0.10 pads with zeros; torchaudio's default is reflect, so we set it).
- Mel filterbank: Slaney mel scale with Slaney (area) normalisation, librosa's default.
- dB: ``10 * log10(max(S, amin))`` with ``ref=1``, then clipped at ``top_db`` below the
  utterance's (window's) maximum, as ``librosa.power_to_db``. The maximum is taken per item,
  never across the batch (torchaudio's ``AmplitudeToDB`` on a ``[B, F, T]`` tensor takes it
  across the whole batch, so it is not used).
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torchaudio
from torch import Tensor

SAMPLE_RATE = 16_000


def fix_length(wave: Tensor, n: int) -> Tensor:
    """Zero-pad or crop the last axis to exactly ``n`` samples (as ``librosa.util.fix_length``).

    Pads at the end and crops from the end, so the start of the utterance is kept; the
    spectrogram models take fixed windows.
    """
    length = wave.shape[-1]
    if length > n:
        return wave[..., :n]
    if length < n:
        return F.pad(wave, (0, n - length))
    return wave


def power_to_db(
    power: Tensor, amin: float = 1e-10, top_db: float | None = 80.0, mask: Tensor | None = None
) -> Tensor:
    """``librosa.power_to_db(power, ref=1.0, amin, top_db)`` per item of the batch.

    ``power`` is ``[B, ..., T]``; the ``top_db`` floor is relative to each item's maximum over
    all its other axes. ``mask`` (``[B, T]``, True on real frames) keeps padded frames out of
    that maximum.
    """
    db = 10.0 * torch.log10(torch.clamp(power, min=amin))
    if top_db is not None:
        flat = db
        if mask is not None:
            shape = [mask.shape[0]] + [1] * (db.dim() - 2) + [mask.shape[1]]
            flat = db.masked_fill(~mask.reshape(shape), float("-inf"))
        peak = flat.reshape(flat.shape[0], -1).amax(dim=1)
        floor = (peak - top_db).reshape([db.shape[0]] + [1] * (db.dim() - 1))
        db = torch.maximum(db, floor)
    return db


@dataclass
class LogMelConfig:
    """Log-mel spectrogram settings (recorded in the model card as they are).

    Defaults for 16 kHz speech: ``n_fft=1024`` (64 ms window, 15.6 Hz bins) because 128 Slaney
    mel bands are about 23 Hz apart below 1 kHz, so a 512-point FFT (31 Hz bins) would leave
    some low bands empty; ``hop_length=160`` is the usual 10 ms speech frame rate (a 3-s window
    gives 301 frames); ``f_min=0``/``f_max=8000`` span 0 Hz to Nyquist as librosa's defaults.
    For paper 1's 128 x 128 images over a 3-s window use ``hop_length=375`` (129 frames).
    """

    sample_rate: int = SAMPLE_RATE
    n_fft: int = 1024
    hop_length: int = 160
    n_mels: int = 128
    f_min: float = 0.0
    f_max: float = 8000.0
    amin: float = 1e-10
    top_db: float | None = 80.0

    def frames(self, n_samples: int) -> int:
        """Number of frames for ``n_samples`` samples (centred STFT)."""
        return 1 + n_samples // self.hop_length


class LogMel(torch.nn.Module):
    """``wave[B, N]`` -> log-mel ``[B, 1, n_mels, 1 + N // hop_length]`` in dB.

    Equals ``librosa.power_to_db(librosa.feature.melspectrogram(y, sr, n_fft, hop_length,
    n_mels, fmin, fmax), top_db=top_db)`` per item.
    """

    top_db: float | None

    def __init__(self, config: LogMelConfig | None = None) -> None:
        super().__init__()
        config = config or LogMelConfig()
        self.config = config
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=config.sample_rate,
            n_fft=config.n_fft,
            hop_length=config.hop_length,
            f_min=config.f_min,
            f_max=config.f_max,
            n_mels=config.n_mels,
            power=2.0,
            pad_mode="constant",
            norm="slaney",
            mel_scale="slaney",
        )
        self.amin = config.amin
        self.top_db = config.top_db

    def forward(self, wave: Tensor) -> Tensor:
        return power_to_db(self.mel(wave), self.amin, self.top_db).unsqueeze(1)
