"""Inference on Ray Serve beside the in-process engine, in one run on one machine.

A local two-node Ray cluster (a head and a worker, separate ``ray start`` processes, one CPU
each) serves ``models/default.pt`` through ``streamer.backends.serve_app`` (the code behind
``emotion-monitor cluster up``); a daemon (its own process, silero VAD, Grad-CAM on every
voiced window) sends its windows there with ``inference=<Serve URL>``, or infers them itself.

For each setting (in-process; Serve with 1 and 2 replicas x batch settings):
1. latency: ``--streams`` real-time streams for ``--trial-s``: a window's last sample in -> its
   prediction at a websocket client, p50/p95, windows delivered per second, dropped windows;
2. throughput: ``--bulk-files`` TESS files replayed as fast as possible (speed 0): windows per
   second from the replay request to the last ``stream_ended``.
Also: predictions through Serve vs in-process on the same windows (max |diff|, bar 1e-5), and
the per-window costs the capacity model in docs/scale.md uses (forward, Grad-CAM, VAD, wire).

The machine is a shared 2-core box: every figure is indicative; compare the ratios within one
run. No GPU here. Prints JSON and a one-line summary.

    .venv/bin/python benchmarks/ray_serve.py [--out benchmarks/results/ray_serve.json] [--quick]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads (any process)
os.environ.setdefault("RAY_AUTH_MODE", "token")  # Ray >= 2.59 `ray start` turns token auth on

import argparse  # noqa: E402
import asyncio  # noqa: E402
import contextlib  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.streaming import (  # noqa: E402
    TESS,
    daemon_process,
    machine,
    make_replay_dirs,
    run_trial,
    serve_until_stopped,
)

SETTINGS = [  # (replicas, max_batch, batch_wait_ms); None = the in-process engine
    None, (1, 8, 5.0), (1, 32, 10.0), (2, 8, 5.0), (2, 32, 10.0)]
EQUAL_WITHIN = 1e-5
THREADS = 1  # torch threads per replica and for the in-process engine: one core each


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------- cluster

@contextlib.contextmanager
def two_node_cluster(tmp: Path) -> Any:
    """``ray start --head`` and ``ray start --address`` (a second node on this machine)."""
    port = _free_port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    common = ["--num-cpus", "1", "--disable-usage-stats"]
    t0 = time.perf_counter()
    subprocess.run(["ray", "start", "--head", f"--port={port}", "--include-dashboard=false",
                    *common], env=env, check=True, capture_output=True)
    try:
        subprocess.run(["ray", "start", f"--address=127.0.0.1:{port}", *common], env=env,
                       check=True, capture_output=True)
        started = time.perf_counter() - t0
        yield f"127.0.0.1:{port}", started
    finally:
        import ray

        ray.shutdown()
        subprocess.run(["ray", "stop"], env=env, capture_output=True)  # the two nodes


def deploy(address: str, model: str, http_port: int, replicas: int, max_batch: int,
           wait_ms: float) -> tuple[str, float]:
    import ray

    from streamer.backends import serve_app

    t0 = time.perf_counter()
    if not ray.is_initialized():
        ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    url = serve_app.up(address, model, serve_app.ReplicaSettings(
        device="cpu", threads=THREADS, max_batch=max_batch, batch_wait_s=wait_ms / 1000.0),
        http_port=http_port, proxy_location="HeadOnly", num_replicas=replicas, num_cpus=1.0)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # an update: until every replica runs the new config
        st = serve_app.status(address)
        reps = st.get("deployments", {}).get(serve_app.DEPLOYMENT_NAME, {}).get("replicas", {})
        if st["status"] == "RUNNING" and reps == {"RUNNING": replicas}:
            break
        time.sleep(1.0)
    return url, time.perf_counter() - t0


# ----------------------------------------------------------------------------- daemon

def _serve(opts: dict, ready: Any) -> None:
    """Child process: a daemon with the default engine or Serve's client, until SIGTERM."""
    import torch

    torch.set_num_threads(THREADS)
    from streamer.backends import RemoteOptions
    from streamer.daemon import Daemon, DaemonConfig
    from streamer.server import ServerConfig

    cfg = DaemonConfig(
        model_path=opts["model"], device="cpu", explain_every=1, vad="silero",
        sessions_dir=opts["sessions"], allowed_dir=opts["allowed"], max_streams=256,
        log_explanations_every=0, inference=opts["inference"],
        remote=RemoteOptions(request_windows=opts["request_windows"]),
        server=ServerConfig(port=0, max_clients=8, queue_size=100_000))

    serve_until_stopped(Daemon(cfg, []), ready)


# ----------------------------------------------------------------------------- costs

def _ms(fn: Any, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1000.0


def tess_windows(n: int, samples: int) -> np.ndarray:
    """``n`` 3-s windows of TESS speech (files centred, zero-padded)."""
    import soundfile as sf

    files = sorted(TESS.glob("*/*.flac"))[::97][:n]
    out = np.zeros((len(files), samples), dtype=np.float32)
    for i, f in enumerate(files):
        x, _ = sf.read(f, dtype="float32")
        x = x[:samples]
        lo = (samples - x.size) // 2
        out[i, lo:lo + x.size] = x
    return out


def per_window_costs(model_path: str, repeats: int) -> dict:
    """Median wall ms per window in this process, one torch thread: what the capacity model
    multiplies (docs/scale.md)."""
    import torch

    torch.set_num_threads(THREADS)
    from streamer import gradcam
    from streamer.backends.compute import Compute, file_sha256
    from streamer.backends.wire import Chunk, decode_chunk, decode_result, encode_chunk
    from streamer.model import ServedModel
    from streamer.vad import Vad, VadConfig
    from streamer.windows import Windower

    model = ServedModel.load(model_path, "cpu")
    compute = Compute(model, file_sha256(model_path))
    compute.warmup()
    waves = tess_windows(8, model.window_samples)
    b = waves.shape[0]
    out: dict[str, Any] = {"batch": b, "torch_threads": THREADS}
    out["forward_ms_per_window_b1"] = _ms(lambda: model.predict(waves[:1]), repeats)
    out["forward_ms_per_window_b8"] = _ms(lambda: model.predict(waves), repeats) / b
    out["gradcam_ms_per_window_b8"] = _ms(lambda: gradcam.explain_windows(
        model, waves, metrics=False), max(3, repeats // 3)) / b
    chunk = Chunk(waves, ["s"] * b, list(range(b)), list(range(b)))
    probs, expls, _ = compute.run(chunk)
    from streamer.backends.wire import encode_result

    out["wire_request_bytes_per_window"] = len(encode_chunk(chunk)) / b
    result = encode_result(probs, expls, compute.identity)
    out["wire_result_bytes_per_window_explained"] = len(result) / b
    out["wire_codec_ms_per_window"] = _ms(lambda: (decode_chunk(encode_chunk(chunk)),
                                                   decode_result(result, b)), repeats) / b
    # silero VAD as the daemon runs it: a stream's 0.5-s hops, each window scored once
    stream = np.concatenate([np.pad(w, (0, 8000)) for w in waves])
    wdw = Windower("v", model.sample_rate, model.window_s, 0.5)
    windows = wdw.push(stream) + wdw.flush()

    def vad_stream() -> None:
        vad = Vad(VadConfig("silero"), model.sample_rate)
        vad.voiced_fractions(windows)
        vad.close()
    out["vad_silero_ms_per_window"] = _ms(vad_stream, 3) / len(windows)
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in out.items()}


def equality(url: str, model_path: str) -> dict:
    """The same TESS windows through Serve and in this process: max |p_serve - p_local|."""
    from streamer.backends import RemoteOptions
    from streamer.backends.remote import ServeClient
    from streamer.backends.wire import Chunk
    from streamer.model import ServedModel

    model = ServedModel.load(model_path, "cpu")
    waves = tess_windows(16, model.window_samples)
    client = ServeClient(url, RemoteOptions().timeout_s)
    remote = np.concatenate([np.asarray(client.infer(Chunk(
        waves[lo:lo + 8], ["eq"] * 8, list(range(lo, lo + 8)), []))["probs"])
        for lo in range(0, len(waves), 8)])
    diff = float(np.abs(remote - model.predict(waves)).max())
    # the hop: one request of 8 windows (no Grad-CAM) through the proxy vs the same forward
    # here; the difference is the wire + proxy + batching wait (replica and this process
    # compete for the same 2 cores, so both are indicative)
    chunk = Chunk(waves[:8], ["eq"] * 8, list(range(8)), [])
    rt = _ms(lambda: client.infer(chunk), 15)
    here = _ms(lambda: model.predict(waves[:8]), 15)
    card = _ms(client.card, 15)
    return {"windows": int(len(waves)), "max_abs_diff": diff, "ok": diff <= EQUAL_WITHIN,
            "request_8_windows_ms": round(rt, 2), "forward_8_windows_here_ms": round(here, 2),
            "card_round_trip_ms": round(card, 2)}


def _pids(pattern: str) -> list[int]:
    out = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


def _cpu(pids: list[int]) -> float:
    from benchmarks.streaming import cpu_seconds

    return sum(cpu_seconds(p) for p in pids)


def hop_cpu(url: str, model_path: str, requests: int = 40) -> dict:
    """CPU of Serve's HTTP proxy and of the replicas per window: ``requests`` sequential
    requests of 8 windows without Grad-CAM (what the wire and the proxy cost beside the model)."""
    from streamer.backends.remote import ServeClient
    from streamer.backends.wire import Chunk

    waves = tess_windows(8, 48000)
    chunk = Chunk(waves, ["h"] * 8, list(range(8)), [])
    client = ServeClient(url, 60.0)
    for _ in range(3):
        client.infer(chunk)
    proxies, replicas = _pids("ray::ProxyActor"), _pids("ray::ServeReplica")
    p0, r0, t0 = _cpu(proxies), _cpu(replicas), time.perf_counter()
    for _ in range(requests):
        client.infer(chunk)
    wall, n = time.perf_counter() - t0, requests * len(waves)
    return {"requests": requests, "windows_per_request": len(waves),
            "proxy_cpu_ms_per_window": round(1000 * (_cpu(proxies) - p0) / n, 3),
            "replica_cpu_ms_per_window": round(1000 * (_cpu(replicas) - r0) / n, 3),
            "wall_ms_per_request": round(1000 * wall / requests, 2),
            "proxy_processes": len(proxies), "replica_processes": len(replicas)}


# ----------------------------------------------------------------------------- main

def measure(opts: dict, streams: int, trial_s: float) -> dict:
    with daemon_process(opts, _serve, timeout=300) as (port, pid):
        lat = asyncio.run(run_trial(port, pid, "rt", streams, 1.0, True, trial_s))
        bulk = asyncio.run(run_trial(port, pid, "bulk", 1, 0.0, False, None))
    keep = ("predictions", "voiced_predictions", "explanations", "latency_ms",
            "voiced_latency_ms", "dropped_windows", "errors", "daemon_cpu_ms_per_window")
    out = {"latency": {"streams": streams, "trial_s": trial_s,
                       "windows_per_s": round(lat["predictions"] / lat["wall_s"], 1),
                       **{k: lat[k] for k in keep}},
           "throughput": {"windows_per_s": round(bulk["predictions"] / bulk["wall_s"], 1),
                          "voiced_windows_per_s": round(
                              bulk["voiced_predictions"] / bulk["wall_s"], 1),
                          **{k: bulk[k] for k in keep if k != "latency_ms"}}}
    print(f"  latency p95 {lat['latency_ms']['p95']} ms ({streams} streams, dropped "
          f"{lat['dropped_windows']}); throughput {out['throughput']['windows_per_s']} "
          "windows/s", file=sys.stderr)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(REPO / "models" / "default.pt"))
    p.add_argument("--streams", type=int, default=6, help="real-time streams (latency run)")
    p.add_argument("--trial-s", type=float, default=20.0)
    p.add_argument("--bulk-files", type=int, default=28)
    p.add_argument("--request-windows", type=int, default=8)
    p.add_argument("--quick", action="store_true", help="short runs (smoke test)")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    if args.quick:
        args.trial_s, args.bulk_files, args.streams = 6.0, 6, 2
    tmp = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    result: dict[str, Any] = {
        "machine": machine(THREADS),
        "settings": {"model": args.model, "model_sha256": hashlib.sha256(
            Path(args.model).read_bytes()).hexdigest(), "device": "cpu", "gpu": "none here",
            "torch_threads": THREADS, "explain_every": 1, "vad": "silero",
            "streams": args.streams, "trial_s": args.trial_s, "bulk_files": args.bulk_files,
            "request_windows": args.request_windows,
            "cluster": "2 nodes on this machine (ray start --head / --address), 1 CPU each; "
                       "Serve proxy on the head (HeadOnly); replicas num_cpus=1",
            "note": "shared 2-core box: indicative figures; compare ratios within this run"},
        "runs": []}
    try:
        allowed = tmp / "allowed"
        make_replay_dirs(allowed, n_rt=14, n_bulk=args.bulk_files)
        base = {"model": args.model, "allowed": str(allowed), "sessions": str(tmp / "s"),
                "request_windows": args.request_windows}
        print("per-window costs ...", file=sys.stderr)
        result["costs"] = per_window_costs(args.model, 5 if args.quick else 20)
        with two_node_cluster(tmp) as (address, started_s):
            result["cluster_start_s"] = round(started_s, 1)
            http_port = _free_port()
            for setting in SETTINGS:
                if setting is None:
                    print("in-process engine", file=sys.stderr)
                    run = {"inference": "in-process", **measure(
                        {**base, "inference": "local"}, args.streams, args.trial_s)}
                else:
                    replicas, max_batch, wait_ms = setting
                    print(f"serve: {replicas} replica(s), max_batch {max_batch}, wait "
                          f"{wait_ms} ms", file=sys.stderr)
                    url, deploy_s = deploy(address, args.model, http_port, replicas,
                                           max_batch, wait_ms)
                    run = {"inference": "ray-serve", "replicas": replicas,
                           "max_batch": max_batch, "batch_wait_ms": wait_ms,
                           "deploy_s": round(deploy_s, 1),
                           "equality": equality(url, args.model),
                           "hop_cpu": hop_cpu(url, args.model, 10 if args.quick else 40),
                           **measure({**base, "inference": url}, args.streams, args.trial_s)}
                run["loadavg"] = [round(x, 2) for x in os.getloadavg()]
                result["runs"].append(run)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    local = result["runs"][0]
    parts = [f"in-process {local['throughput']['windows_per_s']} w/s, p95 "
             f"{local['latency']['latency_ms']['p95']} ms"]
    for r in result["runs"][1:]:
        parts.append(f"serve r{r['replicas']} b{r['max_batch']} "
                     f"{r['throughput']['windows_per_s']} w/s, p95 "
                     f"{r['latency']['latency_ms']['p95']} ms")
    eq = max(r["equality"]["max_abs_diff"] for r in result["runs"][1:])
    print(f"ray_serve (default.pt, explanations every window, {args.streams} real-time streams;"
          f" load {result['machine']['loadavg_at_start'][0]} on {os.cpu_count()} cores): "
          + " | ".join(parts) + f" | max |p_serve - p_local| {eq:.1e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
