"""Streaming benchmarks of the capture daemon, measured through a real websocket client.

1. latency: a window's last sample entering the daemon -> its prediction arriving at a
   websocket client (client receive time minus the prediction's ``wall_time``, which the source
   stamps when the window's last sample entered), p50/p95, one stream at real-time pacing, with
   the daemon's defaults (silero VAD, Grad-CAM every window). Bar: p95 <= 50 ms.
2. throughput: one stream replayed as fast as possible (speed 0), hop 0.5 s, Grad-CAM off, in
   multiples of real time (audio seconds / wall seconds from the replay request to
   ``stream_ended``); with silero VAD (the default) and with the energy gate. Bar: >= 100x.
3. concurrency: the most real-time streams the daemon holds with Grad-CAM on every window,
   no dropped windows and p95 latency < 250 ms (N = 1, 2, 4, ... until a level fails, then
   the midpoints). Bar: >= 32.

The daemon runs in its own process (as in production, so the client doesn't share its event
loop), built like ``emotion-monitor stream`` plus an engine warm-up; TESS files are replayed
through the protocol's ``replay`` request from a temporary allowed directory. The model is
``models/default.pt`` when it exists, else the untrained tiny contract model from
``tests/tiny_model.py`` (the JSON says which). Prints JSON and a one-line summary.

    .venv/bin/python benchmarks/streaming.py [--out results.json] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import multiprocessing as mp
import os
import platform
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from emotion_monitor.cliutil import PRECISIONS  # noqa: E402
from streamer import protocol  # noqa: E402

TESS = Path(os.environ.get("EMOTION_MONITOR_TESS", REPO.parent / "shared" / "data" / "tess"))
BARS = {"latency_p95_ms": 50.0, "throughput_x": 100.0, "streams": 32, "streams_p95_ms": 250.0}


# ----------------------------------------------------------------------------- daemon process

def _serve(opts: dict, ready: Any) -> None:
    """Child process: load, warm up, serve until SIGTERM."""
    import torch

    torch.set_num_threads(opts["threads"])
    from streamer.daemon import Daemon, DaemonConfig
    from streamer.engine import Engine
    from streamer.model import ServedModel
    from streamer.server import ServerConfig
    from streamer.vad import VadConfig

    model = ServedModel.load(opts["model"], device=opts["device"], precision=opts["precision"])
    vad = None if opts["vad"] == "off" else VadConfig(method=opts["vad"])
    engine = Engine(model, vad=vad, explain_every=opts["explain_every"], max_batch=64)
    engine.warmup()
    cfg = DaemonConfig(
        model_path=opts["model"], device=opts["device"], precision=opts["precision"],
        hop_s=opts["hop"],
        explain_every=opts["explain_every"], vad=opts["vad"], sessions_dir=opts["sessions"],
        allowed_dir=opts["allowed"], max_streams=256, max_pending_windows=1024,
        server=ServerConfig(port=0, max_clients=8, queue_size=100_000))

    serve_until_stopped(Daemon(cfg, [], model=model, engine=engine), ready)


def serve_until_stopped(daemon: Any, ready: Any) -> None:
    """Run ``daemon`` in this (child) process; its port goes on ``ready`` once it serves."""

    async def main() -> int:
        task = asyncio.create_task(daemon.run())
        await daemon.wait_ready()
        ready.put(daemon.port)
        return await task

    sys.exit(asyncio.run(main()))


@contextlib.contextmanager
def daemon_process(opts: dict, serve: Any = None, timeout: float = 180.0) -> Any:
    """``serve(opts, ready)`` (default: this module's ``_serve``) in a spawned process, which
    puts its port on ``ready``; yields (port, pid); SIGTERM (the daemon's clean shutdown) at the
    end. The other daemon benchmarks pass their own ``serve``."""
    ctx = mp.get_context("spawn")
    ready = ctx.Queue()
    proc = ctx.Process(target=_orphan_safe, args=(serve or _serve, opts, ready, os.getpid()),
                       daemon=True)
    # A SIGTERM to the benchmark (kill, timeout) unwinds through the finally below instead of
    # leaving the daemon running; a SIGKILL cannot, so the child also watches its parent.
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm) if main else None
    proc.start()
    try:
        port = ready.get(timeout=timeout)
        yield port, proc.pid
    finally:
        proc.terminate()  # SIGTERM: the daemon's clean shutdown
        proc.join(30)
        if proc.is_alive():
            proc.kill()
        if main:
            signal.signal(signal.SIGTERM, previous)


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def _orphan_safe(serve: Any, opts: dict, ready: Any, parent: int) -> None:
    """Child entry: ``serve(opts, ready)``, ending itself with SIGTERM (the daemon's clean
    shutdown) once ``parent`` is gone, so a killed benchmark leaves no daemon behind."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()
    serve(opts, ready)


# ----------------------------------------------------------------------------- client

def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc), to tell our cost from the box's load."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


async def run_trial(port: int, pid: int, path: str, n_streams: int, speed: float, loop: bool,
                    duration_s: float | None, stagger_s: float = 0.0) -> dict:
    """Start ``n_streams`` replays of ``path``; collect until ``duration_s`` (or, when None,
    until every stream has ended). Latencies are those received before the trial ends.

    ``stagger_s``: the streams' starts spread evenly over this many seconds (one hop: their
    windows complete at evenly spread moments, as calls that began at independent times do);
    0 starts them back to back, so every stream's windows complete together (the worst case
    for latency: one batch of N windows every hop)."""
    from websockets.asyncio.client import connect

    lat: list[float] = []
    lat_voiced: list[float] = []
    lat_engine: list[float] = []  # the daemon's own latency_ms (until the message was built)
    explanations = 0
    dropped: dict[str, int] = {}
    client_dropped = 0
    ended: dict[str, dict] = {}
    errors: list[str] = []
    streams: list[str] = []
    async with connect(f"ws://127.0.0.1:{port}/", max_size=None, open_timeout=60) as ws:
        hello = json.loads(await ws.recv())
        assert hello["type"] == "hello"
        t_req = time.perf_counter()
        cpu0 = cpu_seconds(pid)
        for i in range(n_streams):
            if i and stagger_s:
                await asyncio.sleep(stagger_s / n_streams)  # no window completes this early
            await ws.send(protocol.encode(protocol.replay(path=path, speed=speed, loop=loop,
                                                          id=f"r{i}")))
        deadline = None if duration_s is None else time.monotonic() + duration_s + 3.0
        while True:
            timeout = 120.0 if deadline is None else deadline - time.monotonic()
            if timeout <= 0:
                break
            try:
                text = await asyncio.wait_for(ws.recv(), timeout)
            except TimeoutError:
                break
            now = time.time()
            msg = json.loads(text)
            kind = msg["type"]
            if kind == "prediction":
                ms = (now - msg["wall_time"]) * 1000.0
                lat.append(ms)
                lat_engine.append(msg["latency_ms"])
                if msg["voiced"]:
                    lat_voiced.append(ms)
            elif kind == "explanation":
                explanations += 1
            elif kind == "status":
                for s in msg["streams"]:
                    dropped[s["stream"]] = max(dropped.get(s["stream"], 0),
                                               s["dropped_windows"])
                client_dropped = max([client_dropped] + [c.get("dropped_messages", 0)
                                                         for c in msg["clients"]])
            elif kind == "ack" and msg.get("stream"):
                streams.append(msg["stream"])
            elif kind == "stream_ended":
                ended[msg["stream"]] = msg
                if duration_s is None and len(ended) >= n_streams:
                    break
            elif kind == "error":
                errors.append(msg["message"])
                if duration_s is None and len(errors) + len(ended) >= n_streams:
                    break
        wall = time.perf_counter() - t_req
        cpu = cpu_seconds(pid) - cpu0
        for sid in streams:
            if sid not in ended:
                await ws.send(protocol.encode(protocol.stop_stream(sid)))
        t_stop = time.monotonic() + 30
        while len(ended) < len(streams) and time.monotonic() < t_stop:  # drain the ends
            with contextlib.suppress(TimeoutError):
                msg = json.loads(await asyncio.wait_for(ws.recv(), 5))
                if msg["type"] == "stream_ended":
                    ended[msg["stream"]] = msg
    audio_s = sum(e["t_end_s"] for e in ended.values())
    return {"streams": n_streams, "speed": speed, "wall_s": wall, "predictions": len(lat),
            "voiced_predictions": len(lat_voiced), "explanations": explanations,
            "latency_ms": _summary(lat), "voiced_latency_ms": _summary(lat_voiced),
            "latency_until_built_ms": _summary(lat_engine),
            "dropped_windows": int(sum(dropped.values())), "client_dropped_messages":
            client_dropped, "errors": errors[:5], "audio_s": audio_s,
            "windows_reported": int(sum(e["windows"] for e in ended.values())),
            "daemon_cpu_s": round(cpu, 2), "daemon_cores_busy": round(cpu / wall, 2),
            "daemon_cpu_ms_per_window": round(1000 * cpu / len(lat), 2) if lat else None,
            # cores the daemon used per stream: 2 / this bounds the streams two idle cores hold
            "daemon_cores_per_stream": round(cpu / wall / n_streams, 4) if wall else None,
            # audio seconds per daemon CPU-second: what one idle core would replay at most
            "audio_s_per_cpu_s": round(audio_s / cpu, 1) if cpu > 0 else None}


def _summary(values: list[float]) -> dict:
    if not values:
        return {"n": 0, "p50": None, "p95": None, "max": None}
    a = np.asarray(values)
    return {"n": int(a.size), "p50": round(float(np.percentile(a, 50)), 2),
            "p95": round(float(np.percentile(a, 95)), 2), "max": round(float(a.max()), 2)}


def _level(port: int, pid: int, n: int, trial_s: float, every: int = 1,
           stagger_s: float = 0.0) -> dict:
    r = asyncio.run(run_trial(port, pid, "rt", n, 1.0, True, trial_s, stagger_s))
    # Grad-CAM on every ``every``-th voiced window: those predictions have their explanation
    # (bar the last one per stream, which may still be on its way when the trial ends)
    r["explanations_missing"] = max(0, (r["voiced_predictions"] // every if every else 0)
                                    - r["explanations"] - n)
    r["explained_fraction"] = (round(r["explanations"] / r["voiced_predictions"], 3)
                               if r["voiced_predictions"] else None)
    r["ok"] = bool(r["dropped_windows"] == 0 and r["latency_ms"]["p95"] is not None
                   and r["latency_ms"]["p95"] < BARS["streams_p95_ms"]
                   and r["explanations_missing"] <= n)
    print(f"streams {n}: p95 {r['latency_ms']['p95']} ms, dropped {r['dropped_windows']}, "
          f"explained {r['explained_fraction']} of voiced windows -> "
          f"{'ok' if r['ok'] else 'FAIL'}", file=sys.stderr)
    return r


def concurrency(port: int, pid: int, trial_s: float, max_streams: int, every: int = 1,
                stagger_s: float = 0.0) -> dict:
    """N = 1, 2, 4, ... until a level fails, then bisect (to within a quarter)."""
    levels: list[dict] = []
    n, best, worst = 1, 0, None
    while n <= max_streams:
        levels.append(_level(port, pid, n, trial_s, every, stagger_s))
        if not levels[-1]["ok"]:
            worst = n
            break
        best, n = n, n * 2
    while worst is not None and worst - best > max(1, best // 4):
        n = (best + worst) // 2
        levels.append(_level(port, pid, n, trial_s, every, stagger_s))
        best, worst = (n, worst) if levels[-1]["ok"] else (best, n)
    # from levels that kept up (an overloaded level does less work per stream)
    per_stream = min([lv["daemon_cores_per_stream"] for lv in levels
                      if lv["ok"] and lv["daemon_cores_per_stream"]] or [9e9])
    return {"vad": "silero", "explain_every": every, "stagger_s": stagger_s,
            "max_streams_ok": best,
            # an upper bound, not a measurement: what the CPU the daemon used would allow on
            # two otherwise idle cores (the shared box gives it a fraction of one)
            "cpu_bound_estimate_streams_on_2_idle_cores": int(2 / per_stream),
            "levels": levels}


# ----------------------------------------------------------------------------- setup

def pick_model(tmp: Path, requested: str | None) -> tuple[str, str]:
    if requested:
        return requested, "given"
    default = REPO / "models" / "default.pt"
    if default.is_file():
        return str(default), "models/default.pt"
    from tests.tiny_model import make_tiny_model

    return str(make_tiny_model(tmp / "tiny.pt")), "tests/tiny_model.py (untrained, tiny)"


def make_replay_dirs(root: Path, n_rt: int, n_bulk: int) -> None:
    """Copy a few TESS files (all seven emotions, both speakers) into the allowed directory:
    ``rt/`` for real-time streams (looped), ``bulk/`` for the speed-0 replay."""
    dirs = sorted(d for d in TESS.iterdir() if d.is_dir())
    files = [sorted(d.glob("*.flac")) for d in dirs]
    picks = [f[i] for i in range(max(n_rt, n_bulk)) for f in files if i < len(f)]
    for name, n in (("rt", n_rt), ("bulk", n_bulk)):
        (root / name).mkdir(parents=True)
        for k, src in enumerate(picks[:n]):
            shutil.copyfile(src, root / name / f"{k:03d}_{src.name}")


def machine(threads: int) -> dict:
    import torch

    return {"platform": platform.platform(), "cpu": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "torch_threads": threads,
            "loadavg_at_start": [round(x, 2) for x in os.getloadavg()]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="model file (default: models/default.pt, else tiny)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="the daemon's --precision (default auto)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads in the daemon (1: on a busy 2-core box two "
                        "OpenMP threads made each small op up to 40x slower)")
    p.add_argument("--latency-s", type=float, default=30.0, help="real-time latency run")
    p.add_argument("--bulk-files", type=int, default=70, help="files in the speed-0 replay")
    p.add_argument("--trial-s", type=float, default=20.0, help="each concurrency level")
    p.add_argument("--max-streams", type=int, default=64)
    p.add_argument("--quick", action="store_true", help="short runs (smoke test)")
    p.add_argument("--only", default="latency,concurrency,throughput",
                   help="comma-separated sections to run")
    p.add_argument("--explain-every", type=int, default=1, metavar="N",
                   help="latency and concurrency runs explain every N-th voiced window "
                   "(default 1: every window)")
    p.add_argument("--stagger", action="store_true",
                   help="concurrency: spread the streams' starts over one hop (calls that began "
                   "at independent times) instead of starting them together (the worst case)")
    p.add_argument("--out", type=Path, help="also write the JSON here")
    args = p.parse_args(argv)
    if args.quick:
        args.latency_s, args.bulk_files, args.trial_s, args.max_streams = 8, 10, 8, 4
    want = set(args.only.split(","))
    tmp = Path(tempfile.mkdtemp(prefix="bench-streaming-"))
    try:
        model, model_name = pick_model(tmp, args.model)
        allowed = tmp / "allowed"
        make_replay_dirs(allowed, n_rt=14, n_bulk=args.bulk_files)
        base = {"model": model, "device": args.device, "precision": args.precision,
                "threads": args.threads, "hop": 0.5,
                "allowed": str(allowed), "sessions": str(tmp / "sessions")}
        result: dict[str, Any] = {
            "machine": machine(args.threads),
            "settings": {"model": model_name, "model_path": model,
                         "model_sha256": hashlib.sha256(Path(model).read_bytes()).hexdigest(),
                         "device": args.device, "precision": args.precision,
                         "hop_s": 0.5, "window_s": 3.0, "replay": "TESS files, 0.5 s gaps",
                         "latency_s": args.latency_s, "bulk_files": args.bulk_files,
                         "trial_s": args.trial_s},
            "bars": BARS,
        }
        if want & {"latency", "concurrency"}:
            every = args.explain_every
            with daemon_process({**base, "vad": "silero", "explain_every": every}) as (port,
                                                                                      pid):
                if "latency" in want:
                    lat = asyncio.run(run_trial(port, pid, "rt", 1, 1.0, True, args.latency_s))
                    result["latency"] = {"vad": "silero", "explain_every": every, **lat}
                    print(f"latency: {lat['latency_ms']}", file=sys.stderr)
                if "concurrency" in want:
                    result["concurrency"] = concurrency(port, pid, args.trial_s,
                                                        args.max_streams, every,
                                                        0.5 if args.stagger else 0.0)
        if "throughput" in want:
            result["throughput"] = {}
            for vad in ("silero", "energy"):
                with daemon_process({**base, "vad": vad, "explain_every": 0}) as (port, pid):
                    r = asyncio.run(run_trial(port, pid, "bulk", 1, 0.0, False, None))
                    r["x_realtime"] = round(r["audio_s"] / r["wall_s"], 1) if r["wall_s"] else None
                    result["throughput"][vad] = r
                    print(f"throughput ({vad} VAD): {r['x_realtime']}x", file=sys.stderr)
        result["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    parts = []
    if "latency" in result:
        parts.append(f"latency p95 {result['latency']['latency_ms']['p95']} ms (bar <= 50)")
    if "throughput" in result:
        tp = result["throughput"]
        parts.append(f"fast replay {tp['silero']['x_realtime']}x silero VAD, "
                     f"{tp['energy']['x_realtime']}x energy VAD (bar >= 100; "
                     f"{tp['energy']['audio_s_per_cpu_s']} audio-s per CPU-s)")
    if "concurrency" in result:
        cc = result["concurrency"]
        parts.append(f"{cc['max_streams_ok']} real-time streams "
                     f"({'staggered' if cc['stagger_s'] else 'started together'}) with "
                     f"Grad-CAM every {cc['explain_every']} window(s) (bar >= 32; "
                     f"CPU-bound estimate {cc['cpu_bound_estimate_streams_on_2_idle_cores']} "
                     f"on 2 idle cores)")
    print(f"streaming ({model_name}, {args.threads} torch thread(s), load "
          f"{result['machine']['loadavg_at_start'][0]} on {os.cpu_count()} cores): "
          + " | ".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
