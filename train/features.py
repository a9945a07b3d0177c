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

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
import torchaudio
from torch import Tensor

from train.audio import SAMPLE_RATE


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


def power_spectrum(spec: Tensor) -> Tensor:
    """``|spec| ** 2`` of a complex STFT, overwriting ``spec`` (callers drop it).

    Squaring the real view in place and adding its two halves is bit-for-bit
    ``real.square() + imag.square()`` but one contiguous pass instead of two strided ones (STFT
    + power of 12 3-s windows, 2 CPU threads: 2.58 -> 1.86 ms), and ~4x cheaper than a complex
    ``abs``.
    """
    parts = torch.view_as_real(spec).square_()
    return parts[..., 0] + parts[..., 1]


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

    Variable lengths: pad the batch with zeros and pass ``lengths`` (samples per row); each
    row's first ``1 + length // hop_length`` frames then equal the unpadded clip's (the STFT
    pads with zeros too) and its ``top_db`` floor comes from those frames only. The frames
    after them are padding, for the caller to drop.
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

    def forward(self, wave: Tensor, lengths: Tensor | None = None) -> Tensor:
        # self.mel's own forward takes |X| ** 2 via a complex abs; power_spectrum is the same
        # value and 4x cheaper on CPU, so its two stages are called here separately.
        stft = self.mel.spectrogram
        spec = torchaudio.functional.spectrogram(
            wave,
            pad=0,
            window=stft.window,
            n_fft=stft.n_fft,
            hop_length=stft.hop_length,
            win_length=stft.win_length,
            power=None,
            normalized=False,
            center=True,
            pad_mode="constant",
            onesided=True,
        )
        mel = self.mel.mel_scale(power_spectrum(spec))
        mask: Tensor | None = None
        if lengths is not None:
            mask = frame_mask(lengths.to(wave.device), mel.shape[-1], stft.hop_length)
        return power_to_db(mel, self.amin, self.top_db, mask).unsqueeze(1)


def frame_mask(lengths: Tensor, frames: int, hop_length: int) -> Tensor:
    """``[B, frames]``, True on each row's own frames: the first ``1 + length // hop_length``
    of a centred STFT, the ones an unpadded clip of that length has."""
    n_frames = torch.div(lengths, hop_length, rounding_mode="floor")
    return torch.arange(frames, device=lengths.device).unsqueeze(0) <= n_frames.unsqueeze(1)


def _masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``x[B, C, T]`` over the frames where ``mask[B, T]`` is True -> ``[B, C]``."""
    m = mask.to(x.dtype).unsqueeze(1)
    return (x * m).sum(dim=-1) / m.sum(dim=-1).clamp(min=1.0)


@dataclass
class UtteranceVectorConfig:
    """Paper 1's 187-value utterance vector: means of MFCC, chroma, mel and spectral contrast.

    ``n_fft=2048``/``hop_length=512`` are librosa's defaults, which paper 1's feature calls use
    when they pass only ``y`` and ``sr``. ``chroma_tuning`` is fixed (0 = A440): librosa's
    ``chroma_stft`` estimates a tuning offset per utterance by pitch tracking unless given one,
    a data-dependent step we do not reproduce; its filterbank is librosa's own, built once.
    """

    sample_rate: int = SAMPLE_RATE
    n_fft: int = 2048
    hop_length: int = 512
    n_mfcc: int = 40
    n_mels: int = 128
    f_min: float = 0.0
    f_max: float = 8000.0
    n_chroma: int = 12
    chroma_tuning: float = 0.0
    contrast_fmin: float = 200.0
    contrast_bands: int = 6
    contrast_quantile: float = 0.02
    amin: float = 1e-10
    top_db: float = 80.0

    @property
    def size(self) -> int:
        return self.n_mfcc + self.n_chroma + self.n_mels + self.contrast_bands + 1

    def frames(self, n_samples: int) -> int:
        return 1 + n_samples // self.hop_length


def _contrast_bands(config: UtteranceVectorConfig) -> tuple[list[int], list[int], list[int]]:
    """Octave sub-bands of ``librosa.feature.spectral_contrast`` as (start, stop, k) per band.

    Reproduces librosa's band edges exactly: each band ``[f_low, f_high]`` gains the bin below
    it (bands after the first), the last band runs to Nyquist, every band but the last drops its
    top bin, and ``k = max(1, rint(quantile * bins-before-dropping))`` bins are averaged for
    the peak and the valley. Computed once, so ``forward`` only slices contiguous ranges.
    """
    import numpy as np

    sr, n_bands, fmin = config.sample_rate, config.contrast_bands, config.contrast_fmin
    freq = np.fft.rfftfreq(config.n_fft, 1.0 / sr)
    octa = np.zeros(n_bands + 2)
    octa[1:] = fmin * (2.0 ** np.arange(0, n_bands + 1))
    if np.any(octa[:-1] >= 0.5 * sr):
        raise ValueError(
            f"spectral contrast bands exceed Nyquist ({sr / 2} Hz): reduce contrast_fmin or "
            "contrast_bands"
        )
    starts, stops, ks = [], [], []
    for k, (f_low, f_high) in enumerate(zip(octa[:-1], octa[1:], strict=True)):
        band = np.logical_and(freq >= f_low, freq <= f_high)
        idx = np.flatnonzero(band)
        if idx.size == 0:
            raise ValueError(f"spectral contrast band {k} ({f_low}-{f_high} Hz) has no FFT bin")
        if k > 0:
            band[idx[0] - 1] = True
        if k == n_bands:
            band[idx[-1] + 1 :] = True
        where = np.flatnonzero(band)
        start, stop = int(where[0]), int(where[-1]) + 1
        if k < n_bands:
            stop -= 1
        starts.append(start)
        stops.append(stop)
        ks.append(max(int(np.rint(config.contrast_quantile * band.sum())), 1))
    return starts, stops, ks


class UtteranceVector(torch.nn.Module):
    """``wave[B, N]`` (+ optional ``lengths[B]``) -> ``[B, 187]``: MFCC 40, chroma 12, mel 128,
    spectral contrast 7, each averaged over the utterance's frames, in that order.

    Each block equals the frame mean of librosa's feature with the same settings:
    ``mfcc(y, sr, n_mfcc=40)``, ``chroma_stft(y, sr, tuning=chroma_tuning)``,
    ``melspectrogram(y, sr)`` (power, not dB) and ``spectral_contrast(y, sr)``. Chroma and
    contrast are tensor code on the STFT (hand-written on purpose: torchaudio has neither).

    Variable lengths: pad the batch with zeros and pass ``lengths`` (samples per row). Means,
    and the per-utterance dB maxima behind MFCC and contrast, then cover only the first
    ``1 + length // hop_length`` frames: exactly librosa's frames of the unpadded clip,
    because the STFT pads with zeros too. Without ``lengths`` every row is taken as full.
    """

    def __init__(self, config: UtteranceVectorConfig | None = None) -> None:
        super().__init__()
        import librosa

        config = config or UtteranceVectorConfig()
        self.config = config
        self.hop_length = config.hop_length
        self.amin = config.amin
        self.top_db = config.top_db
        self.tiny = float(torch.finfo(torch.float32).tiny)
        self.spectrogram = torchaudio.transforms.Spectrogram(
            n_fft=config.n_fft, hop_length=config.hop_length, power=None, pad_mode="constant"
        )
        mel_fb = torchaudio.functional.melscale_fbanks(
            config.n_fft // 2 + 1,
            config.f_min,
            config.f_max,
            config.n_mels,
            config.sample_rate,
            norm="slaney",
            mel_scale="slaney",
        )  # [freq, n_mels]
        self.register_buffer("mel_fb", mel_fb)
        dct = torchaudio.functional.create_dct(config.n_mfcc, config.n_mels, norm="ortho")
        self.register_buffer("dct", dct)  # [n_mels, n_mfcc]
        chroma_fb = librosa.filters.chroma(
            sr=config.sample_rate,
            n_fft=config.n_fft,
            tuning=config.chroma_tuning,
            n_chroma=config.n_chroma,
        )
        self.register_buffer("chroma_fb", torch.as_tensor(chroma_fb, dtype=torch.float32))
        self.band_starts, self.band_stops, self.band_k = _contrast_bands(config)

    def forward(self, wave: Tensor, lengths: Tensor | None = None) -> Tensor:
        spec = self.spectrogram(wave)  # complex [B, F, T]
        power = power_spectrum(spec)
        magnitude = power.sqrt()
        batch, frames = magnitude.shape[0], magnitude.shape[-1]
        if lengths is None:
            mask = torch.ones(batch, frames, dtype=torch.bool, device=wave.device)
        else:
            mask = frame_mask(lengths.to(wave.device), frames, self.hop_length)

        mel = torch.matmul(power.transpose(1, 2), self.mel_fb).transpose(1, 2)  # [B, M, T]
        mel_db = power_to_db(mel, self.amin, self.top_db, mask)
        mfcc = torch.matmul(mel_db.transpose(1, 2), self.dct).transpose(1, 2)  # [B, C, T]

        chroma = torch.matmul(self.chroma_fb, power)  # [B, 12, T]
        norm = chroma.abs().amax(dim=1, keepdim=True)
        # librosa.util.normalize(norm=inf): frames whose max is below float32's tiny are left as is
        chroma = chroma / torch.where(norm < self.tiny, torch.ones_like(norm), norm)

        contrast = self._contrast(magnitude, mask)
        return torch.cat(
            [
                _masked_mean(mfcc, mask),
                _masked_mean(chroma, mask),
                _masked_mean(mel, mask),
                _masked_mean(contrast, mask),
            ],
            dim=1,
        )

    def _contrast(self, magnitude: Tensor, mask: Tensor) -> Tensor:
        """librosa's spectral contrast on a magnitude STFT -> ``[B, bands + 1, T]``.

        librosa sorts each band and averages its ``k`` lowest (valley) and highest (peak)
        bins; ``topk`` on frequency-contiguous rows picks the same sets, about twice as fast
        as sorting along the strided frequency axis.
        """
        frames_last = magnitude.transpose(1, 2).contiguous()  # [B, T, F]
        peaks: list[Tensor] = []
        valleys: list[Tensor] = []
        for i in range(len(self.band_k)):
            k = self.band_k[i]
            band = frames_last[:, :, self.band_starts[i] : self.band_stops[i]]
            valleys.append(torch.topk(band, k, dim=-1, largest=False).values.mean(dim=-1))
            peaks.append(torch.topk(band, k, dim=-1, largest=True).values.mean(dim=-1))
        peak = power_to_db(torch.stack(peaks, dim=1), self.amin, self.top_db, mask)
        valley = power_to_db(torch.stack(valleys, dim=1), self.amin, self.top_db, mask)
        return peak - valley


@dataclass
class DeltaLogMelConfig(LogMelConfig):
    """Paper 2's three channels: static, delta and delta-delta log-mel, 64 mel bands.

    ``n_fft=512`` (32 ms) and ``hop_length=160`` (10 ms) follow the 25-ms/10-ms framing of the
    work paper 2 takes its three-channel segments from; 64 Slaney bands are ~46 Hz apart at the
    bottom, wider than the 31 Hz FFT bins, so no band is empty. ``delta_width=9`` is
    ``librosa.feature.delta``'s default.
    """

    n_fft: int = 512
    n_mels: int = 64
    delta_width: int = 9


class DeltaLogMel(torch.nn.Module):
    """``wave[B, N]`` -> ``[B, 3, n_mels, T]``: log-mel, its delta and its delta-delta.

    The deltas equal ``librosa.feature.delta(logmel, width, order=1/2)`` *including the edges*:
    librosa's delta is a Savitzky-Golay derivative (``order=2`` is the second derivative of a
    local quadratic, not the delta of the delta) with polynomial-fit ("interp") edges. This is
    linear, so the filter's matrix is taken once from librosa itself (``delta`` of an identity)
    and applied as tensor code: the middle row is the interior kernel, the others the edges.
    ``torchaudio.functional.compute_deltas`` was not used: it only matches order 1 in the
    interior (it replicates edge frames, and its delta-delta differs everywhere). Clips shorter
    than ``delta_width`` frames (librosa refuses them) are edge-replicated up to that length.
    """

    def __init__(self, config: DeltaLogMelConfig | None = None) -> None:
        super().__init__()
        import librosa
        import numpy as np

        config = config or DeltaLogMelConfig()
        if config.delta_width < 3 or config.delta_width % 2 != 1:
            raise ValueError(f"delta_width must be an odd integer >= 3, got {config.delta_width}")
        self.config = config
        base = {f.name: getattr(config, f.name) for f in fields(LogMelConfig)}
        self.logmel = LogMel(LogMelConfig(**base))
        self.width = config.delta_width
        half = config.delta_width // 2
        eye = np.eye(config.delta_width)
        # filter[i, j]: weight of input frame j in output frame i, for a width-long clip
        d1, d2 = (
            torch.as_tensor(
                librosa.feature.delta(eye, width=config.delta_width, order=order, axis=0),
                dtype=torch.float32,
            )
            for order in (1, 2)
        )
        # interior: one 2-channel convolution; edges: small matrices on the first/last frames
        self.register_buffer("kernel", torch.stack([d1[half], d2[half]]).t().contiguous())
        self.register_buffer("left", torch.cat([d1[:half], d2[:half]]).t().contiguous())
        self.register_buffer("right", torch.cat([d1[half + 1 :], d2[half + 1 :]]).t().contiguous())

    def _deltas(self, x: Tensor) -> Tensor:
        """Delta and delta-delta of ``x[R, T]`` along time -> ``[R, 2, T]``."""
        width = self.width
        half = width // 2
        frames = x.shape[-1]
        if frames < width:
            x = torch.cat([x, x[:, -1:].repeat_interleave(width - frames, dim=-1)], dim=-1)
        n = x.shape[-1]
        rows = x.shape[0]
        # sliding windows as one matrix product (much faster on CPU than a 1-channel conv1d)
        windows = x.unfold(-1, width, 1).reshape(-1, width)  # [R * (n - width + 1), width]
        middle = torch.matmul(windows, self.kernel).reshape(rows, n - width + 1, 2).transpose(1, 2)
        left = torch.matmul(x[:, :width], self.left).reshape(rows, 2, half)
        right = torch.matmul(x[:, n - width :], self.right).reshape(rows, 2, half)
        return torch.cat([left, middle, right], dim=-1)[..., :frames]

    def forward(self, wave: Tensor) -> Tensor:
        static = self.logmel(wave)  # [B, 1, M, T]
        batch, mels, frames = static.shape[0], static.shape[2], static.shape[3]
        deltas = self._deltas(static.reshape(batch * mels, frames))
        deltas = deltas.reshape(batch, mels, 2, frames).transpose(1, 2)
        return torch.cat([static, deltas], dim=1)


def check_window(wave: torch.Tensor, n_samples: int) -> None:
    """A clear error for what the streamer or a user might pass a served model by mistake:
    anything but a batch of mono windows ``[B, n_samples]`` (scriptable; TorchScript re-raises
    it as ``torch.jit.Error`` with the same text)."""
    if wave.dim() != 2:
        raise ValueError(
            f"expected a batch of mono windows wave[B, {n_samples}], "
            f"got a tensor of rank {wave.dim()} with shape {list(wave.shape)}"
        )
    if wave.size(1) != n_samples:
        raise ValueError(
            f"expected windows of {n_samples} samples, got {wave.size(1)} "
            f"(shape {list(wave.shape)})"
        )
