"""A synthetic two-speaker call with known talk turns, overlaps and silences: real TESS speech
placed at known times on two channels, digital silence elsewhere. Used by
tests/test_dynamics.py and benchmarks/dynamics.py.

Script (seconds; A = channel 0, B = channel 1):

- 1.0      A talks (two clips)                       turn
- 4.8      B answers after a 0.8 s gap               turn, no overlap
- 6.6      A talks (three clips)                     A held the floor 1.4 s when ...
- 8.0      B cuts in (two clips) while A goes on     interruption: B on A
- ~11      both stop; nobody talks for 12 s          dead air (one silence > 10 s)
- 23.0     B talks (two clips)
- 23.8     A says a 0.6 s fragment over B            overlap, not an interruption (too short)
- 27.0     B talks (three clips)
- 28.5     A cuts in (two clips)                     interruption: A on B
- then 3 s of silence to the end.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

RATE = 16000
TRIM_FRAME_S = 0.01
TRIM_BELOW_PEAK_DB = 25.0
TRIM_FLOOR_DB = -50.0
CLIP_GAP_S = 0.1  # between the clips of one utterance (a pause inside a turn)

A_CLIPS = ["OAF_neutral/OAF_back_neutral.flac", "OAF_neutral/OAF_bar_neutral.flac",
           "OAF_neutral/OAF_base_neutral.flac", "OAF_neutral/OAF_bath_neutral.flac",
           "OAF_neutral/OAF_bean_neutral.flac", "OAF_neutral/OAF_beg_neutral.flac",
           "OAF_neutral/OAF_boat_neutral.flac", "OAF_neutral/OAF_bone_neutral.flac"]
B_CLIPS = ["YAF_neutral/YAF_back_neutral.flac", "YAF_neutral/YAF_bar_neutral.flac",
           "YAF_neutral/YAF_base_neutral.flac", "YAF_neutral/YAF_bath_neutral.flac",
           "YAF_neutral/YAF_bean_neutral.flac", "YAF_neutral/YAF_beg_neutral.flac",
           "YAF_neutral/YAF_bite_neutral.flac", "YAF_neutral/YAF_boat_neutral.flac",
           "YAF_neutral/YAF_bone_neutral.flac", "YAF_neutral/YAF_book_neutral.flac"]


def load_clip(path: Path) -> np.ndarray:
    """A TESS clip at 16 kHz, trimmed to its speech (first and last 10-ms frame within 25 dB
    of its loudest frame and above -50 dBFS)."""
    x, sr = sf.read(str(path), dtype="float32")
    if x.ndim > 1:
        x = x.mean(axis=1)
    x = soxr.resample(x, sr, RATE).astype(np.float32)
    n = int(TRIM_FRAME_S * RATE)
    frames = x[: x.size // n * n].reshape(-1, n)
    db = 10 * np.log10(np.mean(frames.astype(np.float64) ** 2, axis=1) + 1e-20)
    keep = np.flatnonzero(db >= max(TRIM_FLOOR_DB, db.max() - TRIM_BELOW_PEAK_DB))
    return x[keep[0] * n:(keep[-1] + 1) * n]


@dataclass
class Call:
    audio: np.ndarray  # [n, 2] float32
    talk: list[list[tuple[float, float]]] = field(default_factory=lambda: [[], []])

    @property
    def duration(self) -> float:
        return self.audio.shape[0] / RATE

    def talk_s(self, side: int) -> float:
        return sum(b - a for a, b in self.talk[side])

    def place(self, side: int, t: float, clips: list[np.ndarray]) -> float:
        """Put ``clips`` (with short pauses between them) on ``side`` from ``t``; its end."""
        pos = int(round(t * RATE))
        for i, clip in enumerate(clips):
            if i:
                pos += int(CLIP_GAP_S * RATE)
            self.audio[pos:pos + clip.size, side] = clip
            pos += clip.size
        self.talk[side].append((t, pos / RATE))
        return pos / RATE


def two_speaker_call(tess_dir: Path) -> Call:
    """The call in this module's docstring, with its talk spans on record."""
    a = [load_clip(tess_dir / f) for f in A_CLIPS]
    b = [load_clip(tess_dir / f) for f in B_CLIPS]
    call = Call(np.zeros((int(40 * RATE), 2), np.float32))
    call.place(0, 1.0, a[0:2])
    call.place(1, 4.8, b[0:1])
    a_end = call.place(0, 6.6, a[2:5])
    b_end = call.place(1, 8.0, b[1:3])
    assert a_end > b_end > 8.0 + 1.0, (a_end, b_end)  # A goes on past B's cut-in
    start = max(a_end, b_end)
    call.place(1, start + 12.0, b[3:5])
    fragment = a[5][: int(0.6 * RATE)]
    call.place(0, start + 12.8, [fragment])
    b_start = start + 16.0
    call.place(1, b_start, b[5:8])
    call.place(0, b_start + 1.5, a[6:8])
    end = max(s[-1][1] for s in call.talk) + 3.0
    call.audio = call.audio[: int(end * RATE)]
    return call


def ramp(tess_dir: Path, seconds: float, db_per_s: float) -> np.ndarray:
    """Continuous talk (TESS clips back to back, short pauses) whose gain changes linearly
    in dB by ``db_per_s``; level around the clips' own in the middle."""
    clips = [load_clip(tess_dir / f) for f in A_CLIPS]
    parts, n, i = [], 0, 0
    while n < seconds * RATE:
        c = clips[i % len(clips)]
        parts += [c, np.zeros(int(CLIP_GAP_S * RATE), np.float32)]
        n += c.size + int(CLIP_GAP_S * RATE)
        i += 1
    x = np.concatenate(parts)[: int(seconds * RATE)]
    t = np.arange(x.size) / RATE
    gain_db = db_per_s * (t - seconds / 2)
    return (x * 10 ** (gain_db / 20)).astype(np.float32)
