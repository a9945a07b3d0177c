"""Probe: does training the served head on copies of the training clips heard through other
rooms and microphones help it hear new corpora?

The shipped model calls most of SAVEE's neutral clips fear or angry, and SAVEE and URDU score
*higher* through the telephone band than clean (crosscorpus.md): part of what separates the
corpora is the channel, not the voice. Each TESS and RAVDESS training clip gets two copies
through a random channel (seeded by clip and copy, so the copies are reproducible):

- copy 0, "room": a random equaliser (bass shelf at 200 Hz and treble shelf at 3 kHz, each
  -8..+8 dB, and one peaking band at 300-4000 Hz, -8..+8 dB, Q 1; torchaudio's biquads), then a
  synthetic room: an impulse response of a direct path and an exponentially decaying noise
  tail (RT60 0.2-0.7 s, direct-to-reverberant ratio 0-12 dB; hand-written, the textbook
  model, because no measured impulse responses are in shared/);
- copy 1, "noisy": another random equaliser, then white, pink or brown noise at 5-25 dB SNR
  (the project's ``train.augment`` noise bank).

Each copy keeps the clip's RMS (Whisper's log-mel depends on the level). Fixed recipe as in
``speed_perturb_probe.py`` (block 2, voiced pooling, C = 0.003, telephone copies, clips only in
both arms); validation on the training side's speakers (3 grouped folds, originals only, clean
+ telephone band), then the test figures. One run:

    nohup .venv/bin/python docs/results/scripts/channel_probe.py > runs/channel.log 2>&1 &

Writes ``runs/channel/results.json``; features are cached under ``.cache/embeddings``.
"""

from __future__ import annotations

import math
import sys

# isort: off
from probe_setup import DATA, ENCODER, REPO  # OMP_WAIT_POLICY first
# isort: on

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torchaudio.functional as AF  # noqa: E402
from speed_perturb_probe import augmented, compare, copy_features  # noqa: E402

from train.audio import SAMPLE_RATE  # noqa: E402
from train.augment import db_to_amp, default_bank  # noqa: E402
from train.whisper_train import build_pool  # noqa: E402

OUT = REPO / "runs" / "channel"
SEED = 20261203
COPIES = ("room", "noisy")
EQ_DB = 8.0
RT60_S = (0.2, 0.7)
DRR_DB = (0.0, 12.0)
SNR_DB = (5.0, 25.0)


def equalise(wave: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A random microphone / loudspeaker colour: two shelves and one peaking band."""
    def gain() -> float:
        return float(EQ_DB * (2 * torch.rand(1, generator=gen) - 1))

    centre = float(math.exp(math.log(300) + (math.log(4000) - math.log(300))
                            * torch.rand(1, generator=gen)))
    wave = AF.bass_biquad(wave, SAMPLE_RATE, gain(), central_freq=200.0)
    wave = AF.treble_biquad(wave, SAMPLE_RATE, gain(), central_freq=3000.0)
    return AF.equalizer_biquad(wave, SAMPLE_RATE, centre, gain(), Q=1.0)


def room(wave: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Convolution with a synthetic impulse response: a direct path plus a noise tail decaying
    60 dB over RT60, scaled to a random direct-to-reverberant ratio."""
    rt60 = float(RT60_S[0] + (RT60_S[1] - RT60_S[0]) * torch.rand(1, generator=gen))
    drr = float(DRR_DB[0] + (DRR_DB[1] - DRR_DB[0]) * torch.rand(1, generator=gen))
    n = int(1.2 * rt60 * SAMPLE_RATE)
    t = torch.arange(1, n) / SAMPLE_RATE
    tail = torch.randn(n - 1, generator=gen) * torch.exp(-6.9 * t / rt60)
    tail = tail / tail.pow(2).sum().sqrt() * db_to_amp(-drr)
    ir = torch.cat([torch.ones(1), tail])
    return AF.fftconvolve(wave, ir)


def noisy(wave: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    snr = float(SNR_DB[0] + (SNR_DB[1] - SNR_DB[0]) * torch.rand(1, generator=gen))
    colour = int(torch.randint(0, 3, (1,), generator=gen))
    rms = wave.pow(2).mean().sqrt()
    return wave + rms * db_to_amp(-snr) * default_bank().crop(colour, wave.numel(), gen)


def channel_copy(clip: np.ndarray, copy: int, index: int) -> np.ndarray:
    """Copy ``copy`` (0 room, 1 noisy) of the ``index``-th clip, at the clip's RMS."""
    gen = torch.Generator().manual_seed(SEED + 2 * index + copy)
    wave = torch.from_numpy(np.asarray(clip, dtype=np.float32))
    out = equalise(wave, gen)
    out = room(out, gen) if COPIES[copy] == "room" else noisy(out, gen)
    out = out * wave.pow(2).mean().sqrt() / out.pow(2).mean().sqrt().clamp_min(1e-9)
    return out.clamp(-1.0, 1.0).numpy()


def main() -> int:
    torch.set_num_threads(2)
    base = build_pool(DATA, ENCODER)
    src = np.flatnonzero(np.isin(base.corpus, ["tess", "ravdess"]))
    extra = copy_features(base, src, channel_copy, len(COPIES), "channel",
                          [SEED, EQ_DB, RT60_S, DRR_DB, SNR_DB])
    pool, copy_rows = augmented(base, src, extra)
    compare(base, pool, src, copy_rows, OUT, "channel")
    return 0


if __name__ == "__main__":
    sys.exit(main())
