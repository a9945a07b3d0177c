"""A call floor on one daemon: N concurrent two-track calls pushed in real time over the ingest
websocket as a phone platform sends them (Media Streams, 8-kHz G.711 mu-law, 20-ms frames), with
one protocol-v1 client watching every stream (issue #15).

For explanations on every voiced window and on every 4th: the largest N the daemon holds with
nothing dropped and p95 window-to-client latency < 250 ms (N = 1, 2, 4, ... until a level fails,
then bisection), and per call-hour the bytes on the wire (ingest in, protocol v1 out to one
client) and in the session log.

Each call's caller track is TESS clips (one actress), its agent track RAVDESS clips (one actor),
taking turns with short pauses, so both tracks hold speech and silence as a call does. The
daemon runs in its own process (``benchmarks/streaming.py``'s set-up, plus an ingest token);
the pushers and the watching client share this process. Prints JSON and a one-line summary.

    .venv/bin/python benchmarks/call_floor.py [--out results.json] [--quick]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads (architecture note)

import argparse  # noqa: E402
import asyncio  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.streaming import (  # noqa: E402
    _summary,
    cpu_seconds,
    daemon_process,
    machine,
    pick_model,
    serve_until_stopped,
)
from emotion_monitor.cliutil import PRECISIONS  # noqa: E402
from streamer.push import FRAME_MS, _Sender, load_audio, push_call  # noqa: E402

TESS = Path(os.environ.get("EMOTION_MONITOR_TESS", REPO.parent / "shared" / "data" / "tess"))
RAVDESS = Path(os.environ.get("EMOTION_MONITOR_RAVDESS",
                              REPO.parent / "shared" / "data" / "ravdess"))
TOKEN = "call-floor-benchmark"
RATE = 8000  # what the phone network carries
P95_BAR_MS = 250.0
PAUSE_S = (0.3, 1.5)  # between turns


def _serve(opts: dict, ready: Any) -> None:
    """Child process: the daemon with ingest on, warmed up, until SIGTERM."""
    import torch

    torch.set_num_threads(opts["threads"])
    from streamer.daemon import Daemon, DaemonConfig
    from streamer.engine import Engine
    from streamer.ingest import IngestConfig
    from streamer.model import ServedModel
    from streamer.server import ServerConfig
    from streamer.vad import VadConfig

    model = ServedModel.load(opts["model"], device="cpu", precision=opts["precision"])
    engine = Engine(model, vad=VadConfig(), explain_every=opts["explain_every"], max_batch=64)
    engine.warmup()
    cfg = DaemonConfig(
        model_path=opts["model"], precision=opts["precision"], explain_every=opts["explain_every"],
        sessions_dir=opts["sessions"], max_streams=512, max_pending_windows=1024,
        ingest=IngestConfig(token=TOKEN, max_calls=256),
        server=ServerConfig(port=0, max_clients=8, queue_size=100_000))

    serve_until_stopped(Daemon(cfg, [], model=model, engine=engine), ready)


def conversation(seed: int, seconds: float) -> np.ndarray:
    """[frames, 2] float32 at 8 kHz: caller (TESS) and agent (RAVDESS) taking turns."""
    rng = np.random.default_rng(seed)
    caller = sorted(TESS.glob(f"{'OAF' if seed % 2 else 'YAF'}_*/*.flac"))
    actor = f"Actor_{seed % 24 + 1:02d}"
    agent = sorted((RAVDESS / actor).glob("*.flac"))
    out = np.zeros((int(seconds * RATE), 2), np.float32)
    t, side = 0, int(rng.integers(2))
    while t < out.shape[0]:
        pool = caller if side == 0 else agent
        clip = load_audio(pool[int(rng.integers(len(pool)))], RATE)[:, 0]
        n = min(clip.size, out.shape[0] - t)
        out[t:t + n, side] = clip[:n]
        t += n + int(rng.uniform(*PAUSE_S) * RATE)
        side = 1 - side
    return out


def wire_bytes_in(audio: np.ndarray, call_id: str) -> int:
    """Bytes of the Media Streams messages that carry ``audio`` (what push_call sends)."""
    sender = _Sender("media-streams", "twilio", "mulaw", RATE, 2, call_id, {})
    frame = RATE * FRAME_MS // 1000
    n = sum(len(m) for m in sender.opening()) + len(sender.stop())
    for lo in range(0, audio.shape[0], frame):
        n += sum(len(m) for m in sender.media(audio[lo:lo + frame]))
    return n


async def trial(port: int, pid: int, sessions: Path, n_calls: int, seconds: float,
                every: int) -> dict:
    """Push ``n_calls`` calls for ``seconds``; watch every stream as a v1 client."""
    from websockets.asyncio.client import connect

    calls = [conversation(1000 * n_calls + i, seconds) for i in range(n_calls)]
    lat: list[float] = []
    voiced = explanations = wire_bytes = 0
    dropped: dict[str, int] = {}
    ended: set[str] = set()
    started: set[str] = set()
    log_before = sum(f.stat().st_size for f in sessions.rglob("*") if f.is_file())
    url = f"ws://127.0.0.1:{port}/ingest"
    async with connect(f"ws://127.0.0.1:{port}/", max_size=None) as ws:
        assert json.loads(await ws.recv())["type"] == "hello"
        cpu0, t0 = cpu_seconds(pid), time.perf_counter()
        pushes = [asyncio.create_task(push_call(url, audio, RATE, token=TOKEN, fmt="mulaw",
                                                call_id=f"CA{n_calls}x{i}"))
                  for i, audio in enumerate(calls)]

        async def watch() -> None:
            nonlocal voiced, explanations, wire_bytes
            while True:
                text = await ws.recv()
                now = time.time()
                wire_bytes += len(text.encode())
                msg = json.loads(text)
                kind = msg["type"]
                if kind == "prediction":
                    lat.append((now - msg["wall_time"]) * 1000.0)
                    voiced += bool(msg["voiced"])
                elif kind == "explanation":
                    explanations += 1
                elif kind == "stream_started":
                    started.add(msg["stream"]["stream"])
                elif kind == "stream_ended":
                    ended.add(msg["stream"])
                elif kind == "status":
                    for s in msg["streams"]:
                        dropped[s["stream"]] = max(dropped.get(s["stream"], 0),
                                                   s["dropped_windows"])

        watcher = asyncio.create_task(watch())
        results = await asyncio.gather(*pushes, return_exceptions=True)
        wall = time.perf_counter() - t0
        deadline = time.monotonic() + 30
        while (len(ended) < len(started) or not started) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.5)  # a last status
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await watcher
        cpu = cpu_seconds(pid) - cpu0
    failed = [repr(r)[:200] for r in results if isinstance(r, BaseException)]
    ingest_bytes = sum(wire_bytes_in(a, f"CA{n_calls}x{i}") for i, a in enumerate(calls))
    log_bytes = sum(f.stat().st_size for f in sessions.rglob("*") if f.is_file()) - log_before
    call_hours = n_calls * seconds / 3600.0
    n_dropped = int(sum(dropped.values()))
    summary = _summary(lat)
    missing = max(0, voiced // every - explanations - 2 * n_calls)
    ok = bool(not failed and n_dropped == 0 and summary["p95"] is not None
              and summary["p95"] < P95_BAR_MS and missing == 0)
    out = {"calls": n_calls, "streams": len(started), "seconds": seconds,
           "wall_s": round(wall, 1), "predictions": len(lat), "voiced": voiced,
           "explanations": explanations, "explanations_missing": missing,
           "latency_ms": summary, "dropped_windows": n_dropped, "push_failures": failed[:3],
           "daemon_cores_busy": round(cpu / wall, 2) if wall else None,
           "per_call_hour_bytes": {
               "ingest_in": round(ingest_bytes / call_hours),
               "v1_out_one_client": round(wire_bytes / call_hours),
               "session_log": round(log_bytes / call_hours)},
           "ok": ok}
    print(f"calls {n_calls} (explain every {every}): p95 {summary['p95']} ms, dropped "
          f"{n_dropped}, missing explanations {missing} -> {'ok' if ok else 'FAIL'}",
          file=sys.stderr)
    return out


def capacity(port: int, pid: int, sessions: Path, seconds: float, every: int,
             max_calls: int) -> dict:
    levels: list[dict] = []
    n, best, worst = 1, 0, None
    while n <= max_calls:
        levels.append(asyncio.run(trial(port, pid, sessions, n, seconds, every)))
        if not levels[-1]["ok"]:
            worst = n
            break
        best, n = n, n * 2
    while worst is not None and worst - best > 1:
        n = (best + worst) // 2
        levels.append(asyncio.run(trial(port, pid, sessions, n, seconds, every)))
        best, worst = (n, worst) if levels[-1]["ok"] else (best, n)
    return {"explain_every": every, "max_calls_ok": best, "levels": levels}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="model file (default: models/default.pt)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="the daemon's --precision (default auto)")
    p.add_argument("--seconds", type=float, default=40.0, help="length of each trial's calls")
    p.add_argument("--max-calls", type=int, default=64)
    p.add_argument("--every", type=int, nargs="+", default=[1, 4])
    p.add_argument("--quick", action="store_true", help="short trials (a smoke run)")
    p.add_argument("--out")
    args = p.parse_args(argv)
    seconds = 12.0 if args.quick else args.seconds
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        model, model_name = pick_model(Path(tmp), args.model)
        for every in args.every:
            sessions = Path(tmp) / f"sessions-{every}"
            opts = {"model": model, "threads": args.threads, "explain_every": every,
                    "sessions": str(sessions), "precision": args.precision}
            with daemon_process(opts, _serve) as (port, pid):
                results.append(capacity(port, pid, sessions, seconds, every, args.max_calls))
    report = {"benchmark": "call_floor", "machine": machine(args.threads), "model": model_name,
              "settings": {"format": "Media Streams, mu-law 8 kHz, 20-ms frames",
                           "tracks_per_call": 2, "trial_s": seconds, "vad": "silero",
                           "precision": args.precision,
                           "p95_bar_ms": P95_BAR_MS, "hop_s": 0.5},
              "results": results}
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    line = "; ".join(f"explain every {r['explain_every']}: {r['max_calls_ok']} calls "
                     f"({2 * r['max_calls_ok']} streams)" for r in results)
    print(f"call floor on one daemon ({model_name}, precision {args.precision}): {line}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
