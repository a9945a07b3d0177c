"""What the wallboard costs with N live calls, in a real browser: the dashboard under
``streamlit run`` watching a fake call floor, headless Chromium on ``?view=wallboard``.

The feed is `tests.call_floor.FloorDaemon`: a small websockets server speaking protocol v1
(messages from `streamer.protocol`'s builders; torch-free, no model, no audio) with N calls,
two streams each, a prediction per stream every 0.5 s and a dynamics message per call every
second, plus a status a second. It runs in this process; the dashboard and Chromium are
child processes, so their CPU is measured apart from it.

Per N, over a measuring window after a warm-up:
- redraw: the wallboard component's update in the page (keyed tile update + forced layout),
  timed by its own script (window.__wallboard), median and p95;
- browser main thread per update: Chromium's TaskDuration (DevTools Performance metrics,
  everything the page's main thread did: Streamlit's message handling, React, our script,
  style, layout) divided by the number of updates;
- tile update interval (median, p95, max) and server-to-screen delay (the tiles' build time
  on the server to their render, same clock);
- server build: Python time to build the tiles and their HTML per update;
- CPU %, of one core: Chromium (all its processes, /proc), the dashboard's Python process
  (/proc: its websocket feed ingesting ~5N messages a second, and the redraws), and this
  process (the fake floor and the DevTools driver).

Prints JSON and a one-line summary (also in the JSON); ``--out`` saves the JSON.
    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/wallboard.py [--calls 10 50 100] \
        [--out benchmarks/results/wallboard.json]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before anything could load torch

import argparse  # noqa: E402
import asyncio  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from websockets.asyncio.client import connect  # noqa: E402

from dashboard.wallboard import REFRESH_S  # noqa: E402
from tests.browser import (  # noqa: E402
    DevTools,
    cpu_seconds,
    find_chromium,
    page_websocket,
    process_tree,
)
from tests.call_floor import DYNAMICS_EVERY_S, HOP_S  # noqa: E402
from tests.wallboard_harness import SIZE, STATS_JS, TILES_JS, WallboardRun  # noqa: E402


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def summary(values: list[float]) -> dict[str, float | None]:
    return {"median": statistics.median(values) if values else None, "p95": pct(values, 0.95),
            "max": max(values) if values else None, "n": len(values)}


async def measure(run: WallboardRun, warmup_s: float, window_s: float) -> dict:
    async with connect(await page_websocket(run.devtools_url), max_size=64 * 2**20,
                       open_timeout=20) as ws:
        cdp = DevTools(ws)
        await cdp.call("Emulation.setDeviceMetricsOverride", width=run.size[0],
                       height=run.size[1], deviceScaleFactor=1, mobile=False)
        await cdp.call("Performance.enable")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if len(await cdp.js(TILES_JS) or []) == run.n_calls:
                break
            await asyncio.sleep(0.5)
        else:
            raise RuntimeError(f"{run.n_calls} tiles never appeared:\n{run.output()[-2000:]}")
        await asyncio.sleep(warmup_s)

        browser = process_tree(run.browser_pid)
        server = [run.dashboard_pid]
        metrics0 = await _metrics(cdp)
        cpu0 = (cpu_seconds(browser), cpu_seconds(server), time.process_time())
        renders0 = len(await cdp.js(STATS_JS))
        t0 = time.monotonic()
        await asyncio.sleep(window_s)
        elapsed = time.monotonic() - t0
        browser = process_tree(run.browser_pid)  # renderers may have come and gone
        cpu1 = (cpu_seconds(browser), cpu_seconds(server), time.process_time())
        metrics1 = await _metrics(cdp)
        renders = (await cdp.js(STATS_JS))[renders0:]

    renders = [r for r in renders if r["tiles"] == run.n_calls]
    intervals = [(b["at"] - a["at"]) / 1000.0 for a, b in zip(renders, renders[1:],
                                                               strict=False)]
    task_s = metrics1["TaskDuration"] - metrics0["TaskDuration"]
    busy = {k: round(100.0 * (metrics1[k] - metrics0[k]) / elapsed, 1)
            for k in ("TaskDuration", "ScriptDuration", "LayoutDuration", "RecalcStyleDuration")}
    return {
        "calls": run.n_calls,
        "window_s": round(elapsed, 1),
        "updates": len(renders),
        "redraw_ms": summary([r["ms"] for r in renders]),
        "browser_main_thread_ms_per_update": round(1000.0 * task_s / max(1, len(renders)), 1),
        "browser_main_thread_busy_pct": busy,
        "update_interval_s": summary(intervals),
        "server_to_screen_ms": summary([r["now"] - r["built"] for r in renders]),
        "server_build_ms": summary([r["build_ms"] for r in renders]),
        "tiles_changed_per_update": summary([r["changed"] for r in renders]),
        "cpu_pct_of_one_core": {
            "browser": round(100.0 * (cpu1[0] - cpu0[0]) / elapsed, 1),
            "dashboard_server": round(100.0 * (cpu1[1] - cpu0[1]) / elapsed, 1),
            "floor_and_driver": round(100.0 * (cpu1[2] - cpu0[2]) / elapsed, 1),
        },
        "browser_processes": len(browser),
    }


async def _metrics(cdp: DevTools) -> dict[str, float]:
    res = await cdp.call("Performance.getMetrics")
    return {m["name"]: float(m["value"]) for m in res.get("metrics", [])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, nargs="+", default=[10, 50, 100])
    p.add_argument("--warmup", type=float, default=5.0, help="seconds before measuring")
    p.add_argument("--window", type=float, default=20.0, help="seconds measured per N")
    p.add_argument("--history", type=int, default=120,
                   help="ticks of history a client gets first (120: a full 60-s sparkline)")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = p.parse_args()
    chrome = find_chromium()
    if chrome is None:
        sys.exit("Chromium is not installed (apt-get install chromium)")

    load_at_start = os.getloadavg()
    results = []
    for n in args.calls:
        with tempfile.TemporaryDirectory(prefix="wallboard-bench-") as tmp, \
                WallboardRun(n, history_ticks=args.history, chrome=chrome, workdir=tmp) as run:
            results.append(asyncio.run(measure(run, args.warmup, args.window)))
        r = results[-1]
        print(f"{n} calls: redraw p50 {r['redraw_ms']['median']:.1f} ms, browser "
              f"{r['cpu_pct_of_one_core']['browser']:.0f} % CPU", file=sys.stderr)

    out = {
        "benchmark": "wallboard",
        "machine": {"python": platform.python_version(), "platform": platform.platform(),
                    "cpu": platform.processor() or platform.machine(),
                    "cores": os.cpu_count(), "chromium": chrome,
                    "load_avg_at_start": load_at_start, "load_avg_at_end": os.getloadavg()},
        "settings": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                     "viewport": list(SIZE),
                     "refresh_s": REFRESH_S, "prediction_every_s": HOP_S,
                     "dynamics_every_s": DYNAMICS_EVERY_S, "streams_per_call": 2,
                     "feed": "tests.call_floor.FloorDaemon: fake protocol-v1 daemon, "
                             "torch-free, no model"},
        "results": results,
    }
    out["summary"] = "wallboard: " + "; ".join(
        f"{r['calls']} calls: redraw p50 {r['redraw_ms']['median']:.1f} / p95 "
        f"{r['redraw_ms']['p95']:.1f} ms, main thread {r['browser_main_thread_ms_per_update']:.0f}"
        f" ms/update, update every {r['update_interval_s']['median']:.2f} s, browser "
        f"{r['cpu_pct_of_one_core']['browser']:.0f} % CPU, server "
        f"{r['cpu_pct_of_one_core']['dashboard_server']:.0f} %" for r in results)
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(out["summary"])


if __name__ == "__main__":
    main()
