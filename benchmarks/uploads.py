"""Measure the daemon under concurrent large uploads (issue 14, item 6): daemon RSS and a
bystander stream's prediction gaps while N clients each upload a large file at once.

Modes:
- chunked (default): each client sends ``--mb`` MiB (default 20) as a chunked upload
  (``upload_start``, binary frames of ``limits.max_chunk_bytes``, ``replay`` by upload id);
- ``--inline``: the legacy path, one ``replay`` frame carrying the largest inline upload the
  daemon allows (``limits.max_upload_bytes``, 4 MiB by default: a ~5.6 MB frame);
  ``--inline-limit-mb 20`` starts the daemon with the old 20 MiB inline limit (~28 MB frames),
  as before chunked uploads existed.

A client refused with ``busy`` (the all-clients in-flight budget) retries after 0.25-0.75 s,
as a client should, until ``--deadline`` s. The bytes are random, so every upload is refused as
``bad_audio`` once received and checked: the figures are the upload path's alone, not 20
streams' inference. Run it by hand (about a minute); prints JSON and a one-line summary:

    .venv/bin/python benchmarks/uploads.py [--clients 20] [--inline [--inline-limit-mb 20]]

The daemon is the CLI (``emotion-monitor stream``) in a child process with the tiny test model,
replaying one TESS file in a loop in real time (the bystander, read by its own process). A
prediction's gap is the time since the bystander's previous one (0.5 s when all is well); its
delay is the receive time minus its ``wall_time`` (when its last sample entered the daemon).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads (the tiny model)

import argparse  # noqa: E402
import asyncio  # noqa: E402
import base64  # noqa: E402
import json  # noqa: E402
import multiprocessing  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from pathlib import Path  # noqa: E402

from websockets.asyncio.client import connect  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streamer import protocol  # noqa: E402
from tests.streamer_harness import DaemonProcess, tess_files  # noqa: E402


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def machine() -> dict:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text()
                .splitlines() if ln.startswith("model name")), platform.processor())
    mem = next((int(ln.split()[1]) // 1024 for ln in Path("/proc/meminfo").read_text()
                .splitlines() if ln.startswith("MemTotal")), None)
    return {"platform": platform.platform(), "cpu": cpu, "cpus": os.cpu_count(),
            "memory_mb": mem, "python": platform.python_version()}


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


async def _answer(ws, ref: str, timeout: float = 120) -> dict:
    """The reply to request ``ref``, or a ``busy`` refusal (an inline frame refused unread has
    no ref)."""
    while True:
        msg = json.loads(await asyncio.wait_for(ws.recv(), timeout))
        if msg["type"] == "error" and (msg.get("ref") == ref or
                                       (msg["code"] == "busy" and "ref" not in msg)):
            return msg
        if msg["type"] == "ack" and msg.get("ref") == ref:
            return msg


async def uploader(url: str, data: bytes, frame: str | None, deadline: float,
                   stats: Counter) -> tuple[str, float]:
    """One client: its final outcome and how long it took, busy retries included."""
    t0 = time.monotonic()
    async with connect(url, max_size=None, open_timeout=60, close_timeout=5) as ws:
        hello = json.loads(await ws.recv())
        chunk = hello["limits"].get("max_chunk_bytes", 0)
        while True:
            if frame is not None:  # inline: the whole file in one replay frame
                await ws.send(frame)
                reply = await _answer(ws, "up")
            else:
                reply = await _answer_chunked(ws, data, chunk)
            if reply["type"] == "error" and reply["code"] == "busy" \
                    and time.monotonic() < deadline:
                stats["busy"] += 1
                await asyncio.sleep(random.uniform(0.25, 0.75))
                continue
            outcome = reply["type"] if reply["type"] == "ack" else reply["code"]
            return outcome, time.monotonic() - t0


async def _answer_chunked(ws, data: bytes, chunk: int) -> dict:
    await ws.send(protocol.encode(protocol.upload_start("call.wav", len(data), id="start")))
    started = await _answer(ws, "start")
    if started["type"] == "error":
        return started
    for piece in protocol.upload_chunks(data, chunk):
        await ws.send(piece)
    await ws.send(protocol.encode(protocol.replay(upload_id=started["upload_id"], speed=0,
                                                  id="up")))
    return await _answer(ws, "up")


def quantiles(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    q = (statistics.quantiles(values, n=20, method="inclusive") if len(values) >= 2
         else [values[0]] * 19)
    return {"n": len(values), "median": round(statistics.median(values), 3),
            "p95": round(q[18], 3), "max": round(max(values), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--mb", type=float, default=20.0,
                    help="chunked: upload size per client, MiB (default 20)")
    ap.add_argument("--inline", action="store_true",
                    help="legacy inline uploads, each of the largest size the daemon allows")
    ap.add_argument("--inline-limit-mb", type=float, default=None,
                    help="the daemon's --max-inline-upload-mb (default: its own, 4)")
    ap.add_argument("--deadline", type=float, default=120.0,
                    help="seconds a client keeps retrying busy refusals")
    ap.add_argument("--tess", default=os.environ.get("EMOTION_MONITOR_TESS",
                                                     "../shared/data/tess"))
    ap.add_argument("--out", default=None,
                    help="also store the result in this JSON file, under the mode's name")
    args = ap.parse_args()
    from tests.tiny_model import make_tiny_model

    tmp = Path(tempfile.mkdtemp(prefix="upload-probe-"))
    model = make_tiny_model(tmp / "tiny.pt")
    clip = tess_files(Path(args.tess).resolve(), 1)[0]
    limit_mb = max(args.mb, args.inline_limit_mb or 0)
    daemon_args = ["--replay", str(clip), "--loop", "--speed", "1", "--model", str(model),
                   "--device", "cpu", "--vad", "energy", "--explain-every", "0",
                   "--max-upload-mb", f"{limit_mb:g}", "--sessions-dir", str(tmp / "s")]
    if args.inline_limit_mb is not None:
        daemon_args += ["--max-inline-upload-mb", f"{args.inline_limit_mb:g}"]
    load_before = os.getloadavg()
    d = DaemonProcess(daemon_args, cwd=tmp)
    pid = d.proc.pid

    async def limits() -> dict:
        async with connect(d.url, max_size=None) as ws:
            return json.loads(await ws.recv())["limits"]

    lim = asyncio.run(limits())
    mode = "inline" if args.inline else "chunked"
    size = lim["max_upload_bytes"] if args.inline else int(args.mb * 2**20)
    data = os.urandom(size)  # random bytes: refused as bad audio once received
    frame = None
    if args.inline:
        frame = protocol.encode({"type": "replay", "v": "1", "id": "up", "speed": 0,
                                 "upload": {"name": "call.wav",
                                            "data": base64.b64encode(data).decode("ascii")}})
    rss: list[tuple[float, float]] = []
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.is_set():
            rss.append((time.time(), rss_mb(pid)))
            time.sleep(0.1)

    threading.Thread(target=sample, daemon=True).start()
    by = multiprocessing.get_context("spawn").Process(
        target=bystander, args=(d.url, str(tmp / "delays.txt"), 8 + args.deadline + 40))
    by.start()
    stats: Counter = Counter()

    async def run() -> tuple[list, float, float, float]:
        await asyncio.sleep(8)  # warm up: the bystander's stream is in its steady state
        before = rss_mb(pid)
        t0 = time.time()
        deadline = time.monotonic() + args.deadline
        results = await asyncio.gather(*(uploader(d.url, data, frame, deadline, stats)
                                         for _ in range(args.clients)), return_exceptions=True)
        t1 = time.time()
        await asyncio.sleep(10)
        return results, t0, t1, before

    results, t0, t1, before = asyncio.run(run())
    after = rss_mb(pid)
    hwm = rss_mb(pid, "VmHWM")
    sampling.set()
    by.terminate()
    by.join()
    load_after = os.getloadavg()
    d.signal()
    rc, _ = d.wait(60)
    rows = [tuple(map(float, ln.split())) for ln in (tmp / "delays.txt").read_text().split("\n")
            if ln]
    gaps = [(t, t - prev) for (prev, _), (t, _) in zip(rows, rows[1:], strict=False)]
    outcomes = Counter(r[0] if not isinstance(r, BaseException) else type(r).__name__
                       for r in results)
    took = [r[1] for r in results if not isinstance(r, BaseException)]
    peak = max(v for t, v in rss if t >= t0)
    result = {
        "benchmark": "uploads", "mode": mode, "machine": machine(),
        "load_average": {"before": [round(x, 2) for x in load_before],
                         "after": [round(x, 2) for x in load_after]},
        "settings": {"clients": args.clients, "upload_bytes": size,
                     "largest_frame_bytes": len(frame) if frame else lim.get("max_chunk_bytes"),
                     "daemon_limits": lim, "inflight_budget": "4 x max_chunked_upload_bytes "
                     "(daemon default)", "busy_retry_s": [0.25, 0.75],
                     "retry_deadline_s": args.deadline},
        "uploads": {"outcomes": dict(outcomes), "busy_refusals": stats["busy"],
                    "burst_s": round(t1 - t0, 1), "per_client_s": quantiles(took)},
        "daemon_rss_mb": {"before": round(before), "peak": round(peak),
                          "after_10s": round(after), "high_water_mark": round(hwm)},
        "bystander": {
            "gap_s_before": quantiles([g for t, g in gaps if t < t0]),
            "gap_s": quantiles([g for t, g in gaps if t0 <= t <= t1 + 10]),
            "delay_s": quantiles([dl for t, dl in rows if t0 <= t <= t1 + 10]),
            "window": "from the burst's start to 10 s after its end"},
        "daemon_exit_code": rc,
    }
    print(json.dumps(result, indent=2))
    g = result["bystander"]["gap_s"]
    print(f"{mode}: {args.clients} x {size / 2**20:g} MiB "
          f"(largest frame {result['settings']['largest_frame_bytes'] / 1e6:.1f} MB), "
          f"outcomes {dict(outcomes)}, {stats['busy']} busy retries, burst {t1 - t0:.1f} s; "
          f"daemon RSS {before:.0f} -> peak {peak:.0f} MB, {after:.0f} MB 10 s after; "
          f"bystander gap median {g.get('median')} s, p95 {g.get('p95')} s, max "
          f"{g.get('max')} s; load average {load_before[0]:.2f} -> {load_after[0]:.2f} "
          f"on {os.cpu_count()} CPUs")
    if args.out:
        out = Path(args.out)
        runs = json.loads(out.read_text()) if out.exists() else {}
        key = mode if args.inline_limit_mb is None else f"{mode}-{args.inline_limit_mb:g}mib"
        runs[key] = result
        out.write_text(json.dumps(runs, indent=2) + "\n")


if __name__ == "__main__":
    main()
