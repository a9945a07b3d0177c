"""What conversation dynamics (streamer/dynamics.py) cost the daemon's event loop.

Replays the synthetic two-speaker TESS call (tests/call_fixture.py), repeated to ``--seconds``,
through ``CallDynamics`` as the daemon does (each side's chunks in turn, a tick per second of
audio) and times every ``audio`` call (per-chunk cost, also per second of stream) and every
``tick``; once with pitch and once without, so pitch's share shows. Prints JSON (machine,
settings, median and p95) and a one-line summary; ``-o`` also writes the JSON.
    .venv/bin/python benchmarks/dynamics.py [--tess DIR] [--seconds 120] [-o FILE]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before anything loads torch

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from unittest import mock  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streamer import dynamics, protocol  # noqa: E402
from tests.call_fixture import RATE, two_speaker_call  # noqa: E402

CHUNKS_S = (0.02, 0.05)  # Media Streams' 20 ms frames; a file replay's 50 ms blocks


def run(audio: np.ndarray, chunk_s: float, pitch: bool) -> dict:
    obs = dynamics.CallDynamics(RATE, dynamics.DynamicsConfig(split_roles=("agent", "caller")))
    ids = ["call:ch0", "call:ch1"]
    for i, sid in enumerate(ids):
        obs.stream_started(protocol.stream_info(sid, "file", "call.wav", 0.0, channel=i))
    chunk = int(chunk_s * RATE)
    per_chunk, ticks, msgs, next_tick = [], [], 0, RATE
    patch = (mock.patch.object(dynamics, "PITCH_EVERY", 10**9) if not pitch
             else mock.patch.object(dynamics, "PITCH_EVERY", dynamics.PITCH_EVERY))
    with patch:
        for lo in range(0, audio.shape[0] - chunk + 1, chunk):
            for i, sid in enumerate(ids):
                x = audio[lo:lo + chunk, i]
                t0 = time.perf_counter()
                obs.audio(sid, x, lo, lo / RATE)
                per_chunk.append(time.perf_counter() - t0)
            if lo + chunk >= next_tick:
                t0 = time.perf_counter()
                msgs += len(obs.tick(lo / RATE))
                ticks.append(time.perf_counter() - t0)
                next_tick += RATE
    per_chunk_us = np.array(per_chunk) * 1e6
    ticks_us = np.array(ticks) * 1e6
    stream_s = len(per_chunk) * chunk_s
    return {
        "chunk_s": chunk_s, "pitch": pitch, "chunks": len(per_chunk), "messages": msgs,
        "audio_us_per_chunk": _stats(per_chunk_us),
        "audio_us_per_stream_s": _stats(per_chunk_us / chunk_s),
        "tick_us_per_call_s": _stats(ticks_us),
        "total_us_per_stream_s": float((per_chunk_us.sum() + ticks_us.sum()) / stream_s),
        # the same without the slowest 1 % of calls: this 2-core box is shared, and a call
        # the scheduler paused for 100 ms would otherwise dominate the sum
        "total_us_per_stream_s_trimmed": float((_trimmed_sum(per_chunk_us)
                                                + _trimmed_sum(ticks_us)) / stream_s),
    }


def _trimmed_sum(x: np.ndarray, keep: float = 0.99) -> float:
    """Sum of the fastest ``keep`` of the calls, scaled back to all of them."""
    fast = np.sort(x)[: max(1, int(len(x) * keep))]
    return float(fast.sum() * len(x) / len(fast))


def _stats(x: np.ndarray) -> dict:
    return {"median": round(float(np.median(x)), 1), "p95": round(float(np.percentile(x, 95)), 1),
            "max": round(float(np.max(x)), 1)}


def main() -> None:
    default = Path(__file__).resolve().parents[2] / "shared" / "data" / "tess"
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tess", type=Path, default=Path(os.environ.get("EMOTION_MONITOR_TESS",
                                                                     default)))
    p.add_argument("--seconds", type=float, default=120.0, help="call length timed")
    p.add_argument("-o", "--output", type=Path, default=None)
    args = p.parse_args()

    call = two_speaker_call(args.tess).audio
    reps = int(np.ceil(args.seconds * RATE / call.shape[0]))
    audio = np.tile(call, (reps, 1))[: int(args.seconds * RATE)]
    runs = [run(audio, c, pitch) for c in CHUNKS_S for pitch in (True, False)]
    result = {
        "machine": {"platform": platform.platform(),
                    "cpu": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(), "python": platform.python_version(),
                    "numpy": np.__version__},
        "settings": {"call": "tests/call_fixture.two_speaker_call, repeated", "sides": 2,
                     "seconds": args.seconds, "sample_rate": RATE, "frame_s": dynamics.FRAME_S,
                     "pitch_every_frames": dynamics.PITCH_EVERY,
                     "timed": "CallDynamics.audio per chunk per side; tick once per second"},
        "runs": runs,
    }
    print(json.dumps(result, indent=2))
    if args.output:
        args.output.write_text(json.dumps(result, indent=2) + "\n")
    r20 = next(r for r in runs if r["chunk_s"] == 0.02 and r["pitch"])
    r20n = next(r for r in runs if r["chunk_s"] == 0.02 and not r["pitch"])
    print(f"dynamics: 20-ms chunks {r20['audio_us_per_chunk']['median']:.0f} us median / "
          f"{r20['audio_us_per_chunk']['p95']:.0f} us p95 per chunk "
          f"({r20['total_us_per_stream_s_trimmed'] / 1000:.2f} ms CPU per stream-second with "
          f"ticks, slowest 1 % of calls left out; "
          f"{r20n['total_us_per_stream_s_trimmed'] / 1000:.2f} ms without pitch); tick "
          f"{r20['tick_us_per_call_s']['median']:.0f} us median per call-second",
          file=sys.stderr)


if __name__ == "__main__":
    main()
