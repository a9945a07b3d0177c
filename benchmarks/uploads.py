"""Measure the daemon under concurrent large uploads (issue 14, item 6): daemon RSS and a
bystander stream's prediction delay while N clients each send one ~27 MB upload frame.

Run it by hand (about a minute); prints JSON:

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/uploads.py [--clients 20]

The daemon is the CLI (``emotion-monitor stream``) in a child process with the tiny test model,
replaying one TESS file in a loop in real time (the bystander). Delay of a prediction = the
client's receive time minus the prediction's ``wall_time`` (when its last sample entered the
daemon).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from websockets.asyncio.client import connect

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.streamer_harness import DaemonProcess, tess_files  # noqa: E402


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def bystander(url: str, out: str, seconds: float) -> None:
    """In its own process, so the uploaders' sending never delays its reading."""
    from websockets.sync.client import connect as sync_connect

    end = time.time() + seconds
    with sync_connect(url, max_size=None) as ws, open(out, "w") as f:
        while time.time() < end:
            try:
                msg = json.loads(ws.recv(timeout=1.0))
            except TimeoutError:
                continue
            if msg["type"] == "prediction":
                now = time.time()
                f.write(f"{now} {now - msg['wall_time']}\n")
                f.flush()


async def uploader(url: str, frame: str, replies: list[str]) -> None:
    async with connect(url, max_size=None, open_timeout=60, close_timeout=5) as ws:
        await ws.recv()  # hello
        await ws.send(frame)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            msg = json.loads(await asyncio.wait_for(ws.recv(), 120))
            if msg["type"] == "error" and msg["code"] == "busy":  # refused unread: no ref
                replies.append("busy")
                return
            if msg.get("ref") == "up" and msg["type"] in ("ack", "error"):
                replies.append(msg["type"] if msg["type"] == "ack" else msg["code"])
                return


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--mb", type=float, default=20.0, help="decoded upload size, MiB")
    ap.add_argument("--tess", default=os.environ.get("EMOTION_MONITOR_TESS",
                                                     "../shared/data/tess"))
    args = ap.parse_args()
    from tests.tiny_model import make_tiny_model

    tmp = Path(tempfile.mkdtemp(prefix="upload-probe-"))
    model = make_tiny_model(tmp / "tiny.pt")
    clip = tess_files(Path(args.tess).resolve(), 1)[0]
    d = DaemonProcess(["--replay", str(clip), "--loop", "--speed", "1", "--model", str(model),
                       "--device", "cpu", "--vad", "energy", "--explain-every", "0",
                       "--max-upload-mb", str(args.mb), "--sessions-dir", str(tmp / "s")],
                      cwd=tmp)
    pid = d.proc.pid
    # Random bytes: every upload is refused as bad audio once decoded and checked.
    data = base64.b64encode(os.urandom(int(args.mb * 2**20))).decode("ascii")
    frame = json.dumps({"type": "replay", "v": "1", "id": "up",
                        "upload": {"name": "call.wav", "data": data}, "speed": 0})
    del data
    rss: list[tuple[float, float]] = []
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.is_set():
            rss.append((time.time(), rss_mb(pid)))
            time.sleep(0.1)

    threading.Thread(target=sample, daemon=True).start()

    by = multiprocessing.get_context("spawn").Process(
        target=bystander, args=(d.url, str(tmp / "delays.txt"), 8 + 45 + 10))
    by.start()

    async def run() -> tuple[list, float, float]:
        await asyncio.sleep(8)  # warm up: the bystander's stream is in its steady state
        before = rss_mb(pid)
        t0 = time.time()
        replies: list[str] = []
        results = await asyncio.gather(*(uploader(d.url, frame, replies)
                                         for _ in range(args.clients)), return_exceptions=True)
        t1 = time.time()
        replies += [f"{type(r).__name__}" for r in results if isinstance(r, BaseException)]
        await asyncio.sleep(10)
        print(f"frame {len(frame) / 1e6:.1f} MB x {args.clients} clients, burst "
              f"{t1 - t0:.1f} s; replies: {sorted(set(replies))} "
              f"{ {r: replies.count(r) for r in set(replies)} }")
        return replies, t0, before

    replies, t0, before = asyncio.run(run())
    sampling.set()
    by.terminate()
    by.join()
    delays = [tuple(map(float, ln.split())) for ln in (tmp / "delays.txt").read_text().split("\n")
              if ln]
    after = rss_mb(pid)
    peak = max(v for t, v in rss if t >= t0)
    during = [dl for t, dl in delays if t >= t0]
    base = [dl for t, dl in delays if t < t0]
    q = statistics.quantiles(during, n=20) if len(during) >= 20 else [float("nan")] * 19
    print(f"daemon RSS: before {before:.0f} MB, peak {peak:.0f} MB, 10 s after the burst "
          f"{after:.0f} MB")
    print(f"bystander delay before: median {statistics.median(base) * 1e3:.0f} ms; from the "
          f"burst on ({len(during)} predictions): p95 {q[18] * 1e3:.0f} ms, max "
          f"{max(during) * 1e3:.0f} ms")
    d.signal()
    rc, _ = d.wait(60)
    print(f"daemon exit code {rc}")


if __name__ == "__main__":
    main()
