"""What the dashboard costs: one live redraw (copy under the lock, three figures, Plotly JSON)
with a full 10-minute history, the wallboard's tiles for a floor of calls, and ingest
(validate + apply) per message. Redraws and tiles are timed round-robin for each emotion
averaging time constant (``--taus``: 0 = each window, and the dashboard's default).

Prints JSON (machine, settings, medians and p95s) and a one-line summary.
    .venv/bin/python benchmarks/dashboard.py [--streams 1] [--repeats 30] [--calls 100]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import plotly.io as pio  # noqa: E402

from dashboard import figures  # noqa: E402
from dashboard.alerts import SustainedFall, SustainedHigh  # noqa: E402
from dashboard.calls import CallBoard  # noqa: E402
from dashboard.client import Feed  # noqa: E402
from dashboard.smoothing import DEFAULT_TAU_S  # noqa: E402
from dashboard.state import snapshot  # noqa: E402
from tests.call_floor import HOP_S, Floor  # noqa: E402
from tests.test_dashboard_app import URL, explanation, hello, window  # noqa: E402


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--streams", type=int, default=1, help="streams shown at once")
    p.add_argument("--windows", type=int, default=1200, help="history per stream (windows)")
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--calls", type=int, default=100, help="calls on the wallboard's floor")
    p.add_argument("--taus", default=f"0,{DEFAULT_TAU_S:g}",
                   help="averaging time constants to time, seconds (comma-separated)")
    args = p.parse_args()
    taus = [float(t) for t in args.taus.split(",")]

    feed = Feed([URL])
    feed.store.alerts.set_rules([SustainedHigh(), SustainedFall()])
    feed.inject(URL, hello([f"s{i}" for i in range(args.streams)]))
    ingest_pred: list[float] = []
    ingest_expl: list[float] = []
    for seq in range(args.windows):
        for i in range(args.streams):
            label = None if seq % 7 == 0 else ("angry", "happy", "sad")[seq // 40 % 3]
            raw = json.dumps(window(f"s{i}", seq, label, 0.7))
            t0 = time.perf_counter()
            feed._handle(URL, raw)
            ingest_pred.append(time.perf_counter() - t0)
            if label is not None and seq % 4 == 0:
                raw = json.dumps(explanation(f"s{i}", seq, label))
                t0 = time.perf_counter()
                feed._handle(URL, raw)
                ingest_expl.append(time.perf_counter() - t0)

    redraws: dict[float, list[float]] = {t: [] for t in taus}
    size = 0
    for _ in range(args.repeats):
        for tau in taus:
            t0 = time.perf_counter()
            view = snapshot(feed.store)
            size = 0
            for s in view.streams.values():
                for fig in (figures.timeline_figure(s.predictions, view.classes, last_s=600,
                                                    tau_s=tau),
                            figures.distribution_figure(s.counts, view.classes),
                            figures.explanation_figure(s.explanation)):
                    size += len(pio.to_json(fig, validate=False))
            redraws[tau].append(time.perf_counter() - t0)
    redraw = redraws[taus[0]]

    # The wallboard: a floor of calls with 2 minutes of history, then one redraw of the tiles
    # per hop as windows keep coming (each board keeps its own points between redraws).
    floor_feed = Feed([URL])
    floor = Floor(args.calls)
    floor_feed.inject(URL, floor.hello())
    for _ in range(int(120 / HOP_S)):
        for m in floor.tick():
            floor_feed.inject(URL, m)
    boards = {t: CallBoard() for t in taus}
    tiles: dict[float, list[float]] = {t: [] for t in taus}
    for k in range(args.repeats + 5):
        for m in floor.tick():
            floor_feed.inject(URL, m)
        for tau, board in boards.items():
            t0 = time.perf_counter()
            board.tiles(floor_feed.store, tau_s=tau)
            if k >= 5:  # the first redraws fill the boards' caches
                tiles[tau].append(time.perf_counter() - t0)

    # Memory stays bounded. tracemalloc sees only blocks allocated after it starts, so the
    # first interval counts the buffers being refilled; the second is the steady state.
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for seq in range(args.windows, args.windows * 3):
        feed.inject(URL, window("s0", seq, "happy", 0.6))
    mid = tracemalloc.take_snapshot()
    for seq in range(args.windows * 3, args.windows * 5):
        feed.inject(URL, window("s0", seq, "happy", 0.6))
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grow1 = sum(s.size_diff for s in mid.compare_to(before, "filename"))
    grow2 = sum(s.size_diff for s in after.compare_to(mid, "filename"))

    ms = 1000.0
    out = {
        "machine": {"python": platform.python_version(), "cpu": platform.processor() or
                    platform.machine(), "cores": os.cpu_count()},
        "settings": vars(args),
        "redraw_ms": {"median": statistics.median(redraw) * ms, "p95": pct(redraw, 0.95) * ms,
                      "json_bytes": size, "tau_s": taus[0]},
        "redraw_ms_by_tau": {f"{t:g}": {"median": statistics.median(v) * ms,
                                        "p95": pct(v, 0.95) * ms} for t, v in redraws.items()},
        "wallboard_tiles_ms_by_tau": {f"{t:g}": {"median": statistics.median(v) * ms,
                                                 "p95": pct(v, 0.95) * ms, "calls": args.calls}
                                      for t, v in tiles.items()},
        "ingest_prediction_ms": {"median": statistics.median(ingest_pred) * ms,
                                 "p95": pct(ingest_pred, 0.95) * ms},
        "ingest_explanation_ms": {"median": statistics.median(ingest_expl) * ms,
                                  "p95": pct(ingest_expl, 0.95) * ms},
        "memory_growth_bytes": {"windows_1x_to_3x": grow1, "windows_3x_to_5x": grow2},
    }
    print(json.dumps(out, indent=2))
    print(f"redraw p50 {out['redraw_ms']['median']:.1f} ms / p95 {out['redraw_ms']['p95']:.1f} "
          f"ms ({args.streams} stream(s), {args.windows} windows); ingest p50 "
          f"{out['ingest_prediction_ms']['median']:.3f} ms per prediction, "
          f"{out['ingest_explanation_ms']['median']:.2f} ms per explanation; memory growth "
          f"after the buffers fill: {grow2 / 1024:.0f} KiB; averaged over "
          + ", ".join(f"{t:g} s: redraw p50 {out['redraw_ms_by_tau'][f'{t:g}']['median']:.1f} "
                      f"ms, {args.calls} tiles p50 "
                      f"{out['wallboard_tiles_ms_by_tau'][f'{t:g}']['median']:.1f} ms"
                      for t in taus))


if __name__ == "__main__":
    main()
