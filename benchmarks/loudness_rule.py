"""Does a loudness alert cry wolf? The two loudness rules of ``dashboard/alerts.py`` on calmly
spoken calls and on the same calls with the caller getting louder.

Calls: ``benchmarks/call_floor.py``'s conversations (caller TESS, agent RAVDESS, taking turns;
8 kHz), 2 minutes each; "rising": the caller's gain ramps up +15 dB/min from 40 s (capped at
+20 dB). Dynamics come from ``streamer.dynamics`` as the daemon computes them
(``tests/test_dynamics.drive``); the rules run in the dashboard's ``Store`` as live.
Reports, per rule: how many normal calls raised it (false alarms) and how many rising calls
did (detections), with when. Prints JSON and a one-line summary.

    .venv/bin/python benchmarks/loudness_rule.py [--calls 8] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import numpy as np
import soxr

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.call_floor import RATE as PHONE_RATE  # noqa: E402
from benchmarks.call_floor import conversation  # noqa: E402
from dashboard.alerts import LouderThanUsual, LoudnessRising  # noqa: E402
from dashboard.state import Store  # noqa: E402
from streamer import protocol  # noqa: E402
from tests.call_fixture import RATE  # noqa: E402
from tests.test_dynamics import drive  # noqa: E402

SECONDS = 120.0
RAMP_FROM_S, RAMP_DB_PER_S, RAMP_MAX_DB = 40.0, 0.25, 20.0
RULES = {"slope (LoudnessRising, 6 dB/min for 5 s)": LoudnessRising("caller"),
         "own baseline (LouderThanUsual, 8 dB for 10 s)": LouderThanUsual("caller")}


def call_audio(seed: int, rising: bool) -> np.ndarray:
    a = conversation(seed, SECONDS)
    if rising:
        t = np.arange(a.shape[0]) / PHONE_RATE
        gain_db = np.clip((t - RAMP_FROM_S) * RAMP_DB_PER_S, 0.0, RAMP_MAX_DB)
        a = a.copy()
        a[:, 0] = np.clip(a[:, 0] * 10 ** (gain_db / 20), -1.0, 1.0)
    return soxr.resample(a, PHONE_RATE, RATE).astype(np.float32)


def first_alert(msgs: list[dict], rule: object) -> float | None:
    store = Store()
    store.alerts.set_rules([rule])
    url = "ws://bench"
    store.apply(url, {"type": "hello", "v": "1", "session_id": "s", "client_id": None,
                      "server": {"name": "x", "version": "0"},
                      "model": {"classes": ["neutral"], "sample_rate": RATE, "window_s": 3.0},
                      "hop_s": 0.5, "explain_every": 0, "streams": [], "limits": {
                          "max_message_bytes": 1, "max_upload_bytes": 1, "queue_size": 1},
                      "wall_time": 0.0})
    for m in msgs:
        m = {**m, "call": "bench"}
        if store.apply(url, m):
            return float(m["t_s"])
    return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=8)
    p.add_argument("--out")
    args = p.parse_args(argv)
    results: dict[str, dict] = {name: {"normal": [], "rising": []} for name in RULES}
    for seed in range(args.calls):
        for kind in ("normal", "rising"):
            msgs = drive(call_audio(seed, kind == "rising"), roles=("caller", "agent"))
            for m in msgs:
                protocol.validate(m, direction="server")
            for name, rule in RULES.items():
                results[name][kind].append(first_alert(msgs, rule))
    report = {"benchmark": "loudness_rule", "machine": {"platform": platform.platform()},
              "settings": {"calls": args.calls, "seconds": SECONDS, "ramp_from_s": RAMP_FROM_S,
                           "ramp_db_per_min": RAMP_DB_PER_S * 60, "ramp_max_db": RAMP_MAX_DB},
              "first_alert_t_s": results,
              "summary": {name: {"false_alarms": sum(t is not None for t in r["normal"]),
                                 "detected": sum(t is not None for t in r["rising"]),
                                 "calls": args.calls} for name, r in results.items()}}
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print("; ".join(f"{name}: {s['false_alarms']}/{s['calls']} calm calls alerted, "
                    f"{s['detected']}/{s['calls']} rising detected"
                    for name, s in report["summary"].items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
