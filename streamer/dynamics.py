"""Conversation dynamics of a call: who talks, overlaps and interruptions, dead air, speaking
rate, loudness and pitch, from the signal of each side; one ``dynamics`` message per call per
second of call time (``protocol.dynamics``; definitions in docs/protocol.md).

A ``StreamObserver`` (``streamer/observers.py``): its calls run in the daemon's event loop, so
per-chunk work is vectorised numpy (frame energies, the noise floor, and a YIN pitch estimate
on every 5th active frame) and the event logic runs once a second over runs of frames.

**Speech activity is a frame-energy gate with an adaptive noise floor, not the engine's VAD.**
Each side of a call is its own near-field track (headset, handset, one channel of a
recording), where energy separates talk from line noise well. The gate sees a chunk the
moment it arrives, whatever ``--vad`` says (off, energy, silero) and at any model rate, and
reads nothing across threads: silero's scores live behind the VAD thread's lock, which the
event loop would then wait on while that thread scores a block for every stream. What it
gives up: noise that is loud and speech-like (a television behind the caller) counts as talk,
and hold music on a track counts as that side talking.

Streams form a call by ``info["call"]["id"]`` (pushed calls; role from the call info) or by
being the channels of one split-channel source (ids ``<name>:ch<i>``; the call is
``<name>``, roles from ``DynamicsConfig.split_roles``). Streams outside a call get no dynamics:
talk share and interruptions mean nothing for one voice, and a daemon replaying a folder of
files should not log a second message a second per file.
"""

from __future__ import annotations

import bisect
import logging
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from streamer import protocol

log = logging.getLogger("streamer.dynamics")

# --- frames and the activity gate
FRAME_S = 0.02  # analysis frame; every figure is counted in these
MARGIN_DB = 10.0  # talk: a frame this far above the side's noise floor...
ABS_MIN_DB = -55.0  # ...and above this level (dBFS) whatever the floor
FLOOR_INIT_DB = -50.0  # the floor before anything is heard (it falls at once to quieter frames)
FLOOR_MIN_DB = -90.0  # digital silence is clamped here, so the floor stays finite
FLOOR_RISE_DB_PER_S = 2.0  # the floor creeps up this fast when the line gets noisier
GAP_FILL_S = 0.3  # pauses inside a turn up to this long are talk (stops, breaths, word gaps)
# A lone active frame is a click, not talk: talk needs two active frames in a row.

# --- events
INTERRUPT_HELD_S = 0.5  # the interrupted side had been talking at least this long...
INTERRUPT_OVERLAP_S = 0.3  # ...and kept talking at least this long after the cut-in...
INTERRUPT_TALK_S = 1.0  # ...and the interrupter talked at least this long (not an "mm-hm")
# ...and had been quiet at least this long before: resuming one's own turn after a pause is not
# cutting in. (Found on the telephone band, where weak consonants fall under the gate and split
# a turn: without it, the test call counted a turn's continuation as an interruption.)
INTERRUPT_QUIET_S = 1.0
MIN_OVERLAP_S = 0.2  # shorter both-talking stretches are a turn's end meeting the next start

# --- figures over spans of call time
RECENT_S = 120.0  # talk_share_recent
TREND_S = 20.0  # loudness trend, pitch level/variability, speaking rate
DEAD_AIR_S = 10.0
TREND_MIN_TALK_S = 5.0  # talk in the span needed for a loudness trend...
TREND_MIN_POINTS = 3  # ...in at least this many seconds...
TREND_MIN_SPREAD = 0.5  # ...spread over at least this part of trend_s (one loud clip is no trend)
RATE_MIN_TALK_S = 2.0  # talk in the span needed for a speaking rate
PITCH_MIN_ESTIMATES = 10  # voiced pitch estimates in the span (about 1 s of voice)

# --- speaking-rate proxy: syllable-like peaks of the smoothed energy envelope
PEAK_SMOOTH = 3  # frames averaged (60 ms) before looking for peaks
PEAK_HALF = 2  # a peak is the largest within +-2 frames (at most 10 per second)
PEAK_DIP_HALF = 7  # ... and rises PEAK_DB over the lowest point within +-7 frames (140 ms)
PEAK_DB = 4.0

# --- pitch: YIN on every PITCH_EVERY-th active frame (two frames of signal)
PITCH_EVERY = 5  # 10 estimates per second of talk at most

# Chunks are gathered until this many frames' worth before they are framed (a 20-ms Media
# Streams chunk alone is one frame, and numpy's per-call overhead would dominate); a tick
# takes whatever is gathered, so this adds no lag to the messages.
BATCH_FRAMES = 5
F0_MIN_HZ = 65.0
F0_MAX_HZ = 450.0
YIN_THRESHOLD = 0.2

SEMITONES_PER_OCTAVE = 12.0
MAX_SIDES = 2
_ROLE_ORDER = {"caller": 0, "agent": 1, None: 2}
_CHUNK_WALLS = 256  # per side: (end frame, wall time) of recent chunks, for wall_time


@dataclass(frozen=True)
class DynamicsConfig:
    """What the daemon passes (``DaemonConfig.dead_air_s``, ``split_roles``)."""

    dead_air_s: float = DEAD_AIR_S
    recent_s: float = RECENT_S
    trend_s: float = TREND_S
    split_roles: tuple[str | None, ...] = ()  # role of channel 0, 1 of a split recording

    def __post_init__(self) -> None:
        if self.dead_air_s <= 0 or self.recent_s <= 0 or self.trend_s <= 0:
            raise ValueError("dead_air_s, recent_s and trend_s must be positive")
        bad = [r for r in self.split_roles if r is not None and r not in protocol.CALL_ROLES]
        if bad:
            raise ValueError(f"split roles must be among {protocol.CALL_ROLES}, got {bad}")


def parse_roles(text: str) -> tuple[str | None, ...]:
    """``"agent,caller"`` -> ("agent", "caller"); an empty item or "-" leaves a channel
    without a role. Raises ValueError for anything else."""
    roles = tuple(None if r.strip() in ("", "-") else r.strip() for r in text.split(","))
    DynamicsConfig(split_roles=roles)
    return roles


def split_channel_call(stream: str, channel: Any, roles: Sequence[str | None]
                       ) -> dict[str, Any] | None:
    """The ``call`` block of one channel of a ``--split-channels`` source (``<name>:ch<i>``):
    the recording is the call, the channel its track, ``--split-roles`` its role. None for
    any other stream."""
    if not isinstance(channel, int) or ":ch" not in stream:
        return None
    return {"id": stream.rsplit(":ch", 1)[0], "track": f"ch{channel}",
            "role": roles[channel] if channel < len(roles) else None}


# ----------------------------------------------------------------------------- signal

def frame_db(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean square and its level in dBFS of each row of ``frames`` [n, frame]."""
    ms = np.einsum("ij,ij->i", frames, frames, dtype=np.float64) / max(1, frames.shape[1])
    return ms, 10.0 * np.log10(ms + 1e-20)


def noise_floor(db: np.ndarray, start: float, rise: float) -> np.ndarray:
    """``floor[k] = min(db[k], floor[k-1] + rise)`` from ``floor[-1] = start``, vectorised:
    it follows quieter frames at once and creeps up by ``rise`` per frame otherwise."""
    k = np.arange(db.size)
    h = np.minimum.accumulate(np.minimum(db - rise * k, start + rise))
    return h + rise * k


def yin_pitch(windows: np.ndarray, sample_rate: int) -> np.ndarray:
    """F0 (Hz) of each row of ``windows`` [m, 2W] by YIN (difference function over the first
    W samples, cumulative-mean normalised, first dip under ``YIN_THRESHOLD``, parabolic
    interpolation); NaN where no lag is periodic enough (unvoiced)."""
    m, n = windows.shape
    w = n // 2
    tau_min = max(2, int(math.floor(sample_rate / F0_MAX_HZ)))
    tau_max = min(n - w - 1, int(math.ceil(sample_rate / F0_MIN_HZ)))
    out = np.full(m, np.nan)
    if m == 0 or tau_max <= tau_min + 2:
        return out
    x = windows.astype(np.float64)
    size = 1 << int(math.ceil(math.log2(n + w)))
    spec_x = np.fft.rfft(x, size)
    spec_a = np.fft.rfft(x[:, :w], size)
    r = np.fft.irfft(np.conj(spec_a) * spec_x, size)[:, :tau_max + 1]
    cs = np.concatenate([np.zeros((m, 1)), np.cumsum(x * x, axis=1)], axis=1)
    taus = np.arange(tau_max + 1)
    energy = cs[:, taus + w] - cs[:, taus]  # sum of x^2 over [tau, tau + w)
    d = np.maximum(energy[:, :1] + energy - 2.0 * r, 0.0)
    cum = np.cumsum(d[:, 1:], axis=1)
    cmnd = np.ones_like(d)
    cmnd[:, 1:] = d[:, 1:] * taus[1:] / np.maximum(cum, 1e-20)
    for i in range(m):
        row = cmnd[i]
        below = np.flatnonzero(row[tau_min:tau_max] < YIN_THRESHOLD)
        if below.size == 0:
            continue
        t = tau_min + int(below[0])
        while t + 1 < tau_max and row[t + 1] < row[t]:
            t += 1
        a, b, c = row[t - 1], row[t], row[t + 1]
        den = a - 2 * b + c
        shift = 0.5 * (a - c) / den if den > 0 else 0.0
        out[i] = sample_rate / (t + float(np.clip(shift, -1, 1)))
    return out


def smooth_talk(active: np.ndarray, gap: int) -> np.ndarray:
    """Talk from per-frame activity: lone active frames dropped (opening), then pauses of up
    to ``gap`` frames between active frames filled (closing). Exact, not a hangover: talk
    ends on the last active frame. Returns talk for ``active[gap + 1 : -(gap + 1)]``."""
    a = active.astype(bool)
    prev = np.concatenate([[False], a[:-1]])
    nxt = np.concatenate([a[1:], [False]])
    o = a & (prev | nxt)
    c = np.concatenate([[0], np.cumsum(o)])
    idx = np.arange(o.size)
    dil = (c[idx + 1] - c[np.maximum(0, idx - gap)]) > 0  # any(o[i-gap .. i])
    cd = np.concatenate([[0], np.cumsum(dil)])
    lo, hi = gap + 1, o.size - gap - 1
    j = np.arange(lo, hi)
    return (cd[j + gap + 1] - cd[j]) == gap + 1  # all(dil[j .. j+gap])


def syllable_peaks(ms: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Syllable-like peaks among frames ``lo:hi`` of mean squares ``ms`` (the array holds at
    least ``PEAK_DIP_HALF + 1`` frames of context either side)."""
    kernel = np.ones(PEAK_SMOOTH) / PEAK_SMOOTH
    env = 10.0 * np.log10(np.convolve(ms, kernel, mode="same") + 1e-20)
    win_max = sliding_window_view(env, 2 * PEAK_HALF + 1).max(axis=1)
    win_min = sliding_window_view(env, 2 * PEAK_DIP_HALF + 1).min(axis=1)
    i = np.arange(lo, hi)
    return ((env[i] >= win_max[i - PEAK_HALF]) & (env[i] > env[i - 1])
            & (env[i] - win_min[i - PEAK_DIP_HALF] >= PEAK_DB))


# ----------------------------------------------------------------------------- one side

class _Side:
    """One stream's signal: frame energies, the gate, pitch estimates; ``finalize`` hands
    out frames whose talk is decided (``GAP_FILL_S`` plus a frame after they arrived)."""

    def __init__(self, stream: str, role: str | None, order: tuple, offset: int,
                 sample_rate: int, gap: int) -> None:
        self.stream, self.role, self.order, self.offset = stream, role, order, offset
        self.rate = sample_rate
        self.frame = max(1, int(round(FRAME_S * sample_rate)))
        self.gap = gap
        self.ctx = gap + 1  # frames of context either side of what is finalized
        self.pending = np.zeros(0, np.float32)
        self.prev_frame = np.zeros(self.frame, np.float32)
        self.floor = FLOOR_INIT_DB
        self.n = 0  # frames computed
        self.fin = 0  # frames whose talk is final
        self.b0 = -self.ctx  # frame index of buf_active[0] (context before frame 0 is silence)
        self.buf_active = np.zeros(self.ctx, bool)
        self.buf_ms = np.zeros(self.ctx)
        self.pitch: deque[tuple[int, float]] = deque()  # (frame, f0) not yet finalized
        self.walls: deque[tuple[int, float]] = deque(maxlen=_CHUNK_WALLS)
        self.pitch_jobs: list[tuple[np.ndarray, np.ndarray]] = []  # (frames, windows)
        self.inbox: list[np.ndarray] = []  # chunks not framed yet
        self.inbox_n = 0
        self.received = 0  # samples
        self.ended = False
        self.flushed = False
        self.st = _SideStats(q0=offset)  # what the call has made of its frames

    def audio(self, samples: np.ndarray, wall_time: float) -> None:
        """A chunk: kept until ``BATCH_FRAMES`` frames' worth are in, then framed."""
        x = np.asarray(samples, np.float32).reshape(-1)
        self.inbox.append(x)
        self.inbox_n += x.size
        self.received += x.size
        self.walls.append((self.received // self.frame + self.offset, float(wall_time)))
        if self.inbox_n >= BATCH_FRAMES * self.frame:
            self._process()

    def _process(self) -> None:
        """Frame what the inbox holds: energies, the gate, pitch on every 5th active frame."""
        if not self.inbox:
            return
        x = self.inbox[0] if len(self.inbox) == 1 else np.concatenate(self.inbox)
        self.inbox, self.inbox_n = [], 0
        buf = np.concatenate([self.pending, x]) if self.pending.size else x
        n = buf.size // self.frame
        self.pending = buf[n * self.frame:].copy()
        if n == 0:
            return
        frames = buf[:n * self.frame].reshape(n, self.frame)
        ms, db = frame_db(frames)
        rise = FLOOR_RISE_DB_PER_S * FRAME_S
        floor = noise_floor(np.maximum(db, FLOOR_MIN_DB), self.floor, rise)
        self.floor = float(floor[-1])
        active = (db >= floor + MARGIN_DB) & (db >= ABS_MIN_DB)
        k0 = self.n
        self.buf_active = np.concatenate([self.buf_active, active])
        self.buf_ms = np.concatenate([self.buf_ms, ms])
        self.n += n
        picks = np.flatnonzero(active & ((k0 + np.arange(n)) % PITCH_EVERY == 0))
        if picks.size:
            ext = np.concatenate([self.prev_frame, frames.reshape(-1)])
            wins = np.stack([ext[j * self.frame:(j + 2) * self.frame] for j in picks])
            self.pitch_jobs.append((k0 + picks, wins))  # estimated at the tick, in one go
        self.prev_frame = frames[-1].copy()

    def finalize(self) -> tuple[int, np.ndarray, np.ndarray, np.ndarray,
                                list[tuple[int, float]]] | None:
        """Frames newly decided: (first frame, talk, mean square, syllable peak, (frame, F0)
        of the talk frames); None if nothing new. An ended side is decided to its last
        frame."""
        self._process()
        if self.pitch_jobs:
            frames = np.concatenate([k for k, _ in self.pitch_jobs])
            f0s = yin_pitch(np.concatenate([w for _, w in self.pitch_jobs]), self.rate)
            self.pitch.extend((k, f) for k, f in zip(frames.tolist(), f0s.tolist(),
                                                     strict=True) if f == f)  # f == f: not NaN
            self.pitch_jobs = []
        end = self.n if self.ended else self.n - self.ctx
        if end <= self.fin:
            if self.ended:
                self.flushed = True
            return None
        pad = end + self.ctx - self.n  # an ended side: silence after its last frame
        active = self.buf_active[self.fin - self.ctx - self.b0:]
        ms = self.buf_ms[self.fin - self.ctx - self.b0:]
        if pad > 0:
            active = np.concatenate([active, np.zeros(pad, bool)])
            ms = np.concatenate([ms, np.zeros(pad)])
        m = end - self.fin
        active, ms = active[:m + 2 * self.ctx], ms[:m + 2 * self.ctx]
        talk = smooth_talk(active, self.gap)
        peaks = syllable_peaks(ms, self.ctx, self.ctx + m) & talk
        start = self.fin
        f0s = []
        while self.pitch and self.pitch[0][0] < end:
            k, f0 = self.pitch.popleft()
            if k >= start and talk[k - start]:
                f0s.append((k, f0))
        self.fin = end
        keep = self.fin - self.ctx - self.b0
        self.buf_active, self.buf_ms = self.buf_active[keep:], self.buf_ms[keep:]
        self.b0 += keep
        if self.ended:
            self.flushed = True
        return start, talk, ms[self.ctx:self.ctx + m], peaks, f0s

    def wall_at(self, call_frame: int) -> float | None:
        """Wall time of the chunk that carried ``call_frame`` (as predictions report it)."""
        i = bisect.bisect_left(self.walls, (call_frame, -math.inf))
        if i < len(self.walls):
            return self.walls[i][1]
        return self.walls[-1][1] if self.walls else None


@dataclass
class _SideStats:
    """A side's figures as the call has consumed its frames."""

    talk: int = 0  # frames
    interruptions: int = 0
    spurt_start: int | None = None  # call frame where its current talk began
    last_stop: int | None = None  # call frame where its last talk ended
    # this second: talk frames, their summed mean square, syllable peaks
    i_talk: int = 0
    i_ms: float = 0.0
    i_peaks: int = 0
    # per emitted second: (t, level dB or None, talk frames, peaks)
    points: deque = field(default_factory=deque)
    pitch: deque = field(default_factory=deque)  # (t, f0)
    # queue of decided frames not yet consumed by the call, from call frame q0
    q0: int = 0
    q_talk: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    q_ms: np.ndarray = field(default_factory=lambda: np.zeros(0))
    q_peaks: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))


@dataclass
class _Candidate:
    """B started talking over A at ``onset``; an interruption once B has talked
    ``INTERRUPT_TALK_S`` unless A stopped within ``INTERRUPT_OVERLAP_S``."""

    b: int
    a: int
    onset: int


# ----------------------------------------------------------------------------- one call

class _Call:
    def __init__(self, call_id: str, t0_wall: float, config: DynamicsConfig) -> None:
        self.id = call_id
        self.t0_wall = t0_wall
        self.config = config
        self.fps = int(round(1.0 / FRAME_S))
        self.sides: list[_Side] = []
        self.done = 0  # call frames consumed
        self.next_emit = self.fps
        self.last_emit = 0
        self.state = 0  # bit i: side i talking at frame done - 1
        self.silence = 0  # frames of the current silence
        self.longest_silence = 0
        self.dead_air = 0
        self.dead_counted = False
        self.overlap = 0
        self.overlap_run = 0
        self.overlaps = 0
        self.candidates: list[_Candidate] = []
        self.recent: deque[tuple[float, list[int]]] = deque()
        self.finished = False

    @property
    def stats(self) -> list[_SideStats]:
        return [s.st for s in self.sides]

    def add(self, side: _Side) -> None:
        """A side joins; sides are ordered by channel, then role, until frames flow (a side
        joining later goes last, so the joint state's bits keep their meaning)."""
        self.sides.append(side)
        if self.done == 0:
            self.sides.sort(key=lambda s: s.order)

    # -- consuming frames
    def _pull(self) -> int:
        """Move each side's decided frames into its queue; the call frame up to which every
        side is decided (the frontier)."""
        ends = []
        for side, st in zip(self.sides, self.stats, strict=True):
            got = side.finalize()
            if got is not None:
                start, talk, ms, peaks, f0s = got
                if st.q_talk.size == 0:
                    st.q0 = max(st.q0, start + side.offset)
                st.q_talk = np.concatenate([st.q_talk, talk])
                st.q_ms = np.concatenate([st.q_ms, ms])
                st.q_peaks = np.concatenate([st.q_peaks, peaks])
                st.pitch.extend(((k + side.offset) / self.fps, f0) for k, f0 in f0s)
            ends.append(math.inf if side.flushed else st.q0 + st.q_talk.size)
        if all(math.isinf(e) for e in ends):
            return max(st.q0 + st.q_talk.size for st in self.stats)
        return int(min(ends))

    def _take(self, st: _SideStats, a: int, b: int) -> tuple[np.ndarray, ...]:
        """Frames [a, b) of a side's queue (silence where it has none), then dropped."""
        m = b - a
        talk, ms, peaks = np.zeros(m, bool), np.zeros(m), np.zeros(m, bool)
        lo, hi = max(a, st.q0), min(b, st.q0 + st.q_talk.size)
        if hi > lo:
            talk[lo - a:hi - a] = st.q_talk[lo - st.q0:hi - st.q0]
            ms[lo - a:hi - a] = st.q_ms[lo - st.q0:hi - st.q0]
            peaks[lo - a:hi - a] = st.q_peaks[lo - st.q0:hi - st.q0]
        drop = max(0, min(b, st.q0 + st.q_talk.size) - st.q0)
        if drop:
            st.q_talk, st.q_ms, st.q_peaks = st.q_talk[drop:], st.q_ms[drop:], st.q_peaks[drop:]
            st.q0 += drop
        return talk, ms, peaks

    def _consume(self, a: int, b: int) -> None:
        if b <= a:
            return
        joint = np.zeros(b - a, np.int64)
        for i, st in enumerate(self.stats):
            talk, ms, peaks = self._take(st, a, b)
            n = int(talk.sum())
            st.talk += n
            st.i_talk += n
            st.i_ms += float(ms[talk].sum())
            st.i_peaks += int(peaks.sum())
            joint |= talk.astype(np.int64) << i
        cuts = np.flatnonzero(joint[1:] != joint[:-1]) + 1
        for lo, hi in zip(np.concatenate([[0], cuts]), np.concatenate([cuts, [b - a]]),
                          strict=True):
            state = int(joint[lo])
            self._transition(state, a + int(lo))
            self._run(state, int(hi - lo), a + int(hi))
        self.done = b

    def _transition(self, new: int, c: int) -> None:
        """Talk starting and stopping at call frame ``c``."""
        old, self.state = self.state, new
        if old == new:
            return
        f = self.fps
        for i, st in enumerate(self.stats):
            if (old >> i) & 1 and not (new >> i) & 1:  # side i stopped
                st.spurt_start = None
                st.last_stop = c
                for cand in list(self.candidates):
                    if (cand.a == i and c - cand.onset < INTERRUPT_OVERLAP_S * f) or \
                            cand.b == i:  # A yielded at once, or B's was a backchannel
                        self.candidates.remove(cand)
        for i, st in enumerate(self.stats):
            if (new >> i) & 1 and not (old >> i) & 1:  # side i started
                st.spurt_start = c
                if st.last_stop is not None and c - st.last_stop < INTERRUPT_QUIET_S * f:
                    continue  # a pause in its own turn, not a cut-in
                for j, other in enumerate(self.stats):
                    if j != i and (old >> j) & 1 and (new >> j) & 1 and \
                            other.spurt_start is not None and \
                            c - other.spurt_start >= INTERRUPT_HELD_S * f:
                        self.candidates.append(_Candidate(b=i, a=j, onset=c))

    def _run(self, state: int, length: int, end: int) -> None:
        """``length`` frames of one joint state, ending at call frame ``end``."""
        f = self.fps
        if state == 0:
            self.silence += length
            self.longest_silence = max(self.longest_silence, self.silence)
            if not self.dead_counted and self.silence >= self.config.dead_air_s * f:
                self.dead_air += 1
                self.dead_counted = True
        else:
            self.silence, self.dead_counted = 0, False
        both = len(self.stats) == 2 and state == 3
        if both:
            before, self.overlap_run = self.overlap_run, self.overlap_run + length
            if self.overlap_run >= MIN_OVERLAP_S * f:
                self.overlap += length if before >= MIN_OVERLAP_S * f else self.overlap_run
                if before < MIN_OVERLAP_S * f:
                    self.overlaps += 1
        else:
            self.overlap_run = 0
        for cand in list(self.candidates):
            if end - cand.onset >= INTERRUPT_TALK_S * f:  # B still talking (else removed)
                self.stats[cand.b].interruptions += 1
                self.candidates.remove(cand)

    # -- messages
    def step(self, tick_wall: float) -> list[dict]:
        """Consume what every side has decided; a message per whole second reached (and a
        final one once every side has ended)."""
        frontier = self._pull()
        out = []
        while self.next_emit <= frontier:
            self._consume(self.done, self.next_emit)
            out.append(self._message(self.next_emit, tick_wall))
            self.next_emit += self.fps
        if all(s.flushed for s in self.sides):
            self._consume(self.done, frontier)
            if self.done > self.last_emit or not out:
                out.append(self._message(self.done, tick_wall, final=True))
            else:
                out[-1]["final"] = True
            self.finished = True
        return out

    def _message(self, frame: int, tick_wall: float, final: bool = False) -> dict:
        f = self.fps
        t = frame / f
        interval = (frame - self.last_emit) / f
        self.last_emit = frame
        cfg = self.config
        self.recent.append((t, [st.i_talk for st in self.stats]))
        while self.recent and self.recent[0][0] <= t - cfg.recent_s:
            self.recent.popleft()
        recent = [sum(r[1][i] for r in self.recent if i < len(r[1]))
                  for i in range(len(self.stats))]
        total = sum(st.talk for st in self.stats)
        sides = []
        for i, (side, st) in enumerate(zip(self.sides, self.stats, strict=True)):
            level = 10 * math.log10(st.i_ms / st.i_talk + 1e-20) if st.i_talk else None
            st.points.append((t, level, st.i_talk, st.i_peaks))
            while st.points and st.points[0][0] <= t - cfg.trend_s:
                st.points.popleft()
            while st.pitch and st.pitch[0][0] <= t - cfg.trend_s:
                st.pitch.popleft()
            pitch, pitch_var = _pitch_stats([p for tp, p in st.pitch if tp < t])
            sides.append({
                "stream": side.stream, "role": side.role, "speaking": st.i_talk > 0,
                "talk_s": _r(st.talk / f), "talk_share": _r(st.talk / total) if total else None,
                "talk_share_recent": _r(recent[i] / sum(recent)) if sum(recent) else None,
                "interruptions": st.interruptions,
                "loudness_dbfs": _r(level) if level is not None else None,
                "loudness_trend_db_per_min": _r(_trend(st.points, f, cfg.trend_s)),
                "pitch_hz": _r(pitch), "pitch_var_st": _r(pitch_var),
                "rate_per_s": _r(_rate(st.points, f)),
            })
            st.i_talk, st.i_ms, st.i_peaks = 0, 0.0, 0
        walls = [w for w in (s.wall_at(frame) for s in self.sides) if w is not None]
        msg = protocol.dynamics(
            self.id, t, sides, overlap_s=_r(self.overlap / f), overlaps=self.overlaps,
            silence_s=_r(self.silence / f), dead_air=self.dead_air, dead_air_s=cfg.dead_air_s,
            longest_silence_s=_r(self.longest_silence / f), interval_s=max(interval, 1 / f),
            recent_s=cfg.recent_s, trend_s=cfg.trend_s, final=final or None,
            wall_time=min(walls) if walls else tick_wall)
        return msg


def _r(x: float | None, nd: int = 3) -> float | None:
    return None if x is None else round(float(x), nd)


def _trend(points: deque, fps: int, span: float) -> float | None:
    """Talk-weighted least-squares slope of each second's talk level, dB per minute."""
    pts = [(t, lv, n) for t, lv, n, _ in points if lv is not None and n > 0]
    if len(pts) < TREND_MIN_POINTS or sum(n for *_, n in pts) < TREND_MIN_TALK_S * fps:
        return None
    t, lv, w = (np.array(v, float) for v in zip(*pts, strict=True))
    if t[-1] - t[0] < TREND_MIN_SPREAD * span:
        return None
    tm, lm = np.average(t, weights=w), np.average(lv, weights=w)
    var = np.sum(w * (t - tm) ** 2)
    return float(np.sum(w * (t - tm) * (lv - lm)) / var * 60.0) if var > 0 else None


def _rate(points: deque, fps: int) -> float | None:
    talk = sum(n for _, _, n, _ in points)
    if talk < RATE_MIN_TALK_S * fps:
        return None
    return sum(p for *_, p in points) / (talk / fps)


def _pitch_stats(f0s: list[float]) -> tuple[float | None, float | None]:
    """Median F0 (Hz) and the spread (std) of F0 in semitones around it."""
    if len(f0s) < PITCH_MIN_ESTIMATES:
        return None, None
    f = np.asarray(f0s)
    med = float(np.median(f))
    return med, float(np.std(SEMITONES_PER_OCTAVE * np.log2(f / med)))


# ----------------------------------------------------------------------------- the observer

class CallDynamics:
    """The daemon's conversation-dynamics observer (``streamer.observers.StreamObserver``)."""

    def __init__(self, sample_rate: int, config: DynamicsConfig | None = None) -> None:
        self.rate = int(sample_rate)
        self.config = config or DynamicsConfig()
        self.gap = int(round(GAP_FILL_S / FRAME_S))
        self.calls: dict[str, _Call] = {}
        self.sides: dict[str, tuple[_Call, _Side]] = {}

    @classmethod
    def for_daemon(cls, sample_rate: int, config: Any) -> CallDynamics:
        """From ``DaemonConfig`` (``dead_air_s``, ``split_roles``)."""
        return cls(sample_rate, DynamicsConfig(dead_air_s=config.dead_air_s,
                                               split_roles=tuple(config.split_roles)))

    def _membership(self, info: dict[str, Any]) -> tuple[str, str | None, int | None] | None:
        """(call id, role, channel) of a stream that is one side of a call, else None."""
        channel = info.get("channel")
        call = info.get("call") or split_channel_call(str(info.get("stream", "")), channel,
                                                      self.config.split_roles)
        if isinstance(call, dict) and call.get("id"):
            return str(call["id"]), call.get("role"), channel
        return None

    def stream_started(self, info: dict[str, Any]) -> None:
        member = self._membership(info)
        if member is None:
            return
        call_id, role, channel = member
        sid = str(info["stream"])
        started = float(info.get("started_wall") or 0.0)
        call = self.calls.get(call_id)
        if call is None or call.finished:
            call = self.calls[call_id] = _Call(call_id, started, self.config)
        if len(call.sides) >= MAX_SIDES:
            log.warning("call %s: more than %d streams; %s left out of its dynamics", call_id,
                        MAX_SIDES, sid)
            return
        offset = max(0, int(round((started - call.t0_wall) / FRAME_S)))
        order = (channel if isinstance(channel, int) else MAX_SIDES, _ROLE_ORDER.get(role, 2),
                 sid)
        side = _Side(sid, role, order, offset, self.rate, self.gap)
        call.add(side)
        self.sides[sid] = (call, side)

    def audio(self, stream_id: str, samples: np.ndarray, start_sample: int,
              wall_time: float) -> None:
        entry = self.sides.get(stream_id)
        if entry is not None:
            entry[1].audio(samples, wall_time)

    def stream_ended(self, stream_id: str) -> None:
        entry = self.sides.get(stream_id)
        if entry is not None:
            entry[1].ended = True

    def tick(self, wall_time: float) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for call_id, call in list(self.calls.items()):
            out.extend(call.step(wall_time))
            if call.finished:
                del self.calls[call_id]
                for side in call.sides:
                    if self.sides.get(side.stream, (None,))[0] is call:
                        del self.sides[side.stream]
        return out
