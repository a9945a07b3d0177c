"""Waveform and spectrogram augmentation that makes isolated TESS clips look like a live stream.

A TESS clip is 1.25-3 s of speech in digital silence; the streamer feeds 3-s windows cut at
arbitrary points from a noisy microphone. So training places each clip at a random offset in
the window, lays a low noise floor under it (never exact zeros), adds coloured noise at a
random SNR and applies a random gain. A mild speed perturbation (pitch and tempo together)
and SpecAugment masks are the speaker-independence levers: the two TESS speakers differ in
age and pitch, so the model must not key on one voice's formant positions.

All randomness comes from an explicit ``torch.Generator`` so runs are reproducible.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the random transforms; ``none()`` gives the evaluation-time identity."""

    random_offset: bool = True
    speed_range: tuple[float, float] = (0.9, 1.1)  # 1.0 = unchanged; applied with speed_p
    speed_p: float = 0.5
    noise_floor_dbfs: tuple[float, float] = (-80.0, -55.0)  # always-on floor, RMS in dBFS
    noise_p: float = 0.7  # probability of additive noise at a random SNR
    snr_db: tuple[float, float] = (5.0, 35.0)
    gain_db: tuple[float, float] = (-18.0, 6.0)
    freq_masks: int = 2
    freq_mask_width: int = 16  # mel bins, upper bound of each mask
    time_masks: int = 2
    time_mask_width: int = 20  # frames, upper bound of each mask
    freq_shift: int = 0  # random shift of the mel axis by up to +-this many bins (voice pitch)

    @staticmethod
    def none() -> AugmentConfig:
        """No augmentation: utterance centred, floor only so features never see log(0)."""
        return AugmentConfig(
            random_offset=False, speed_p=0.0, noise_floor_dbfs=(-90.0, -90.0), noise_p=0.0,
            gain_db=(0.0, 0.0), freq_masks=0, time_masks=0, freq_shift=0,
        )

    def to_dict(self) -> dict:
        return asdict(self)


def _uniform(gen: torch.Generator, lo: float, hi: float, n: int = 1) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen)


def speed_perturb(wave: torch.Tensor, factor: float) -> torch.Tensor:
    """Resample a 1-D clip by ``factor`` (>1 = faster and higher), by linear interpolation.

    Hand-written on purpose: soxr would be exact but this runs per clip inside the training
    loop, and linear interpolation at +-10 % is inaudible for this purpose.
    """
    if factor == 1.0:
        return wave
    n_out = max(2, int(round(wave.numel() / factor)))
    return torch.nn.functional.interpolate(
        wave.view(1, 1, -1), size=n_out, mode="linear", align_corners=True
    ).view(-1)


def place(wave: torch.Tensor, n_samples: int, offset: int | None) -> tuple[torch.Tensor, int]:
    """Put a 1-D clip into a zero window of ``n_samples`` at ``offset`` (None = centred).

    Clips longer than the window are cropped (centre, or at ``-offset`` when offset < 0).
    Returns the window and the start of the clip inside it (may be negative when cropped).
    """
    out = torch.zeros(n_samples, dtype=torch.float32)
    n = wave.numel()
    start = (n_samples - n) // 2 if offset is None else offset
    src0 = max(0, -start)
    dst0 = max(0, start)
    length = min(n - src0, n_samples - dst0)
    if length > 0:
        out[dst0:dst0 + length] = wave[src0:src0 + length]
    return out, start


def coloured_noise(n: int, exponent: float, gen: torch.Generator) -> torch.Tensor:
    """Unit-RMS noise with power spectrum ~ 1/f**exponent (0 white, 1 pink, 2 brown)."""
    white = torch.randn(n, generator=gen)
    if exponent == 0.0:
        return white
    spec = torch.fft.rfft(white)
    f = torch.arange(spec.numel(), dtype=torch.float32)
    f[0] = 1.0
    spec = spec / f.pow(exponent / 2.0)
    noise = torch.fft.irfft(spec, n=n)
    return noise / noise.pow(2).mean().sqrt().clamp_min(1e-12)


class NoiseBank:
    """Long unit-RMS white, pink and brown noises to crop from (one FFT per colour, not per clip).

    Generating coloured noise per clip costs an FFT each time; cropping a random 3-s slice of a
    60-s precomputed noise is free and just as random for training purposes.
    """

    EXPONENTS = (0.0, 1.0, 2.0)

    def __init__(self, seconds: float = 60.0, sample_rate: int = 16_000, seed: int = 1234) -> None:
        gen = torch.Generator().manual_seed(seed)
        n = int(seconds * sample_rate)
        self.noises = [coloured_noise(n, e, gen) for e in self.EXPONENTS]

    def crop(self, colour: int, n: int, gen: torch.Generator) -> torch.Tensor:
        noise = self.noises[colour]
        start = int(torch.randint(0, noise.numel() - n + 1, (1,), generator=gen))
        crop = noise[start:start + n]
        return crop / crop.pow(2).mean().sqrt().clamp_min(1e-12)  # exact SNRs (brown drifts)


_BANK: NoiseBank | None = None


def default_bank() -> NoiseBank:
    global _BANK
    if _BANK is None:
        _BANK = NoiseBank()
    return _BANK


def db_to_amp(db: float | torch.Tensor) -> float | torch.Tensor:
    return 10.0 ** (db / 20.0)


def augment_clip(
    clip: torch.Tensor, n_samples: int, config: AugmentConfig, gen: torch.Generator,
    bank: NoiseBank | None = None,
) -> torch.Tensor:
    """One training window from one clip: speed, offset, noise floor, SNR noise, gain."""
    bank = bank or default_bank()
    if config.speed_p > 0 and float(torch.rand(1, generator=gen)) < config.speed_p:
        clip = speed_perturb(clip, float(_uniform(gen, *config.speed_range)))
    if config.random_offset:
        lo = min(0, n_samples - clip.numel())
        hi = max(0, n_samples - clip.numel())
        offset = int(torch.randint(lo, hi + 1, (1,), generator=gen))
    else:
        offset = None
    window, _ = place(clip, n_samples, offset)
    speech_rms = clip.pow(2).mean().sqrt().clamp_min(1e-6)
    floor = db_to_amp(float(_uniform(gen, *config.noise_floor_dbfs)))
    window = window + floor * bank.crop(1, n_samples, gen)
    if config.noise_p > 0 and float(torch.rand(1, generator=gen)) < config.noise_p:
        snr = float(_uniform(gen, *config.snr_db))
        colour = int(torch.randint(0, len(NoiseBank.EXPONENTS), (1,), generator=gen))
        window = window + speech_rms * db_to_amp(-snr) * bank.crop(colour, n_samples, gen)
    gain = db_to_amp(float(_uniform(gen, *config.gain_db)))
    return (window * gain).clamp(-1.0, 1.0)


def spec_augment(spec: torch.Tensor, config: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """SpecAugment masks (and an optional mel-axis shift) on a normalised spectrogram [B,1,F,T].

    Masks and the rows a shift uncovers are filled with 0, the mean after normalisation.
    """
    if config.freq_masks == 0 and config.time_masks == 0 and config.freq_shift == 0:
        return spec
    spec = spec.clone()
    b, _, f, t = spec.shape
    for i in range(b):
        if config.freq_shift:
            k = int(torch.randint(-config.freq_shift, config.freq_shift + 1, (1,), generator=gen))
            if k:
                spec[i] = torch.roll(spec[i], k, dims=1)
                if k > 0:
                    spec[i, :, :k, :] = 0.0
                else:
                    spec[i, :, k:, :] = 0.0
        for _ in range(config.freq_masks):
            w = int(torch.randint(0, config.freq_mask_width + 1, (1,), generator=gen))
            f0 = int(torch.randint(0, max(1, f - w), (1,), generator=gen))
            spec[i, :, f0:f0 + w, :] = 0.0
        for _ in range(config.time_masks):
            w = int(torch.randint(0, config.time_mask_width + 1, (1,), generator=gen))
            t0 = int(torch.randint(0, max(1, t - w), (1,), generator=gen))
            spec[i, :, :, t0:t0 + w] = 0.0
    return spec


def eval_window(clip: torch.Tensor, n_samples: int, floor_dbfs: float = -90.0,
                seed: int = 0) -> torch.Tensor:
    """The evaluation window of a clip: centred, with a fixed faint floor (deterministic)."""
    gen = torch.Generator().manual_seed(seed)
    window, _ = place(clip, n_samples, None)
    return window + db_to_amp(floor_dbfs) * coloured_noise(n_samples, 1.0, gen)


__all__ = [
    "AugmentConfig", "NoiseBank", "augment_clip", "coloured_noise", "eval_window", "place",
    "spec_augment", "speed_perturb",
]
