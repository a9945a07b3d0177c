"""Per-window latency of a model file: forward, forward + Grad-CAM, and batch throughput.

Loads the TorchScript file alone (as the streamer does) and times, on 3-s windows:
- ``forward`` at batch 1 (p50 / p95, ms),
- ``forward`` + Grad-CAM at batch 1: ``explain`` + ``autograd.grad`` of the top class w.r.t.
  the returned activations + the CAM arithmetic (p50 / p95, ms),
- windows per second of ``forward`` at batch 16,
on the CPU with ``--threads`` threads (default 2), and on CUDA when available.
Prints JSON (machine, settings, medians and p95s) and a one-line summary.

    .venv/bin/python benchmarks/inference.py [models/default.pt ...] [--repeats 50]

Several files are timed round-robin in one run (each repeat cycles through the models), so
their ratios share the machine's load; the JSON adds each file's size.

The CPU here is shared: the figures include whatever else runs; ``cpu_load_1min`` says how busy
the machine was. ``OMP_WAIT_POLICY`` defaults to PASSIVE here (set it to ACTIVE to compare):
with the default spinning policy, two threads on a machine whose other core is busy wait for
each other in every parallel region, and a 5-ms forward took 550 ms (measured, load ~3).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

# Must be set before torch starts its OpenMP pool (see the docstring).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _load(path: Path, device: torch.device, precision: str = "float32"
          ) -> tuple[torch.jit.ScriptModule, dict]:
    """The file as the streamer loads it (``--precision``: the card's bfloat16 submodules)."""
    from streamer.model import ServedModel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        served = ServedModel.load(path, str(device), precision)
    return served.module, served.card


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _gradcam(module: torch.jit.ScriptModule, wave: torch.Tensor, method: str) -> torch.Tensor:
    """One window's CAM, the way streamer/gradcam.py computes it (plain autograd)."""
    cudnn = (torch.backends.cudnn.flags(enabled=False) if wave.is_cuda
             else contextlib.nullcontext())
    with torch.enable_grad(), cudnn, torch.jit.optimized_execution(False):
        x = wave.detach().requires_grad_(method == "saliency")
        logits, acts, spec = module.explain(x)
        target = logits.argmax(dim=1)
        score = logits.gather(1, target[:, None]).sum()
        if method == "saliency":
            (grad,) = torch.autograd.grad(score, spec)
            return grad.abs().amax(dim=1)
        (grad,) = torch.autograd.grad(score, acts)
        cam = F.relu((grad.mean(dim=(2, 3), keepdim=True) * acts).sum(dim=1, keepdim=True))
        return F.interpolate(cam, size=spec.shape[-2:], mode="bilinear", align_corners=False)


def _time(fn, repeats: int, device: torch.device, warmup: int = 5) -> tuple[list, list]:
    """Wall-clock and process-CPU milliseconds per call.

    On a shared, overloaded CPU the wall clock measures the queue as much as the model; the
    process CPU time (all threads together) is what the call costs, so both are reported.
    """
    for _ in range(warmup):
        fn()
    _sync(device)
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        _sync(device)
        wall.append((time.perf_counter() - t0) * 1000.0)
        cpu.append((time.process_time() - c0) * 1000.0)
    return wall, cpu


def _stats(timed: tuple[list, list]) -> dict:
    wall, cpu = timed
    return {"p50": float(np.median(wall)), "p95": float(np.percentile(wall, 95)),
            "cpu_ms_p50": float(np.median(cpu)), "n": len(wall)}


def bench(path: Path, device: torch.device, repeats: int, batch: int) -> dict:
    return bench_many([path], device, repeats, batch)[0]


def _callables(path: Path, device: torch.device, batch: int, precision: str) -> dict:
    module, card = _load(path, device, precision)
    n = int(round(card["sample_rate"] * card["window_s"]))
    method = card.get("explain_method", "gradcam")
    gen = torch.Generator().manual_seed(0)
    one = (0.05 * torch.randn(1, n, generator=gen)).to(device)
    many = (0.05 * torch.randn(batch, n, generator=gen)).to(device)

    def fwd1() -> None:
        with torch.no_grad():
            module(one)

    def cam1() -> None:
        _gradcam(module, one, method)

    def fwd_b() -> None:
        with torch.no_grad():
            module(many)

    return {"fwd1": fwd1, "cam1": cam1, "fwd_b": fwd_b}


def bench_many(paths: list[Path], device: torch.device, repeats: int, batch: int,
               precision: str = "float32") -> list[dict]:
    """Time every model, interleaved: each round runs each model's call once. ``precision``
    (float32, bfloat16, auto, or several comma-separated) times each file at each, one row
    apiece, in the same rounds; bfloat16 only where the card offers it."""
    from streamer.model import resolve_precision
    from train.export import read_card

    cards = {p: read_card(p) for p in paths}  # the zip's card, no TorchScript load
    runs = [(p, pr) for p in paths for pr in precision.split(",")
            if pr != "bfloat16" or (cards[p].get("precision") or {}).get("bfloat16")]
    paths = [p for p, _ in runs]
    calls = [_callables(p, device, batch, pr) for p, pr in runs]
    timed: list[dict[str, tuple[list, list]]] = [{} for _ in paths]
    for name, rounds in (("fwd1", repeats), ("cam1", repeats), ("fwd_b", max(5, repeats // 5))):
        for c in calls:
            for _ in range(2):
                c[name]()
        for t in timed:
            t[name] = ([], [])
        for _ in range(rounds):
            for c, t in zip(calls, timed, strict=True):
                w, cpu = _time(c[name], 1, device, warmup=0)
                t[name][0].extend(w)
                t[name][1].extend(cpu)
    out = []
    for (path, prec), t in zip(runs, timed, strict=True):
        out.append({
            "device": str(device),
            "model": str(path),
            "precision": resolve_precision(prec, cards[path], device),
            "file_mb": round(path.stat().st_size / 1e6, 2),
            "forward_batch1_ms": _stats(t["fwd1"]),
            "forward_gradcam_batch1_ms": _stats(t["cam1"]),
            f"forward_batch{batch}_ms": _stats(t["fwd_b"]),
            f"windows_per_s_batch{batch}": float(batch * 1000.0 / np.median(t["fwd_b"][0])),
        })
    return out


def main() -> None:
    default = Path(__file__).resolve().parents[1] / "models" / "default.pt"
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", nargs="*", type=Path, default=[default])
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--no-cuda", action="store_true")
    p.add_argument("--precision", default="float32", help="float32 | bfloat16 | auto, or "
                   "several comma-separated to time each file at each in one run "
                   "(bfloat16 rows only for files whose card offers it)")
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    from train.export import read_card

    cards = [read_card(m) for m in args.model]
    card = cards[0]
    runs = bench_many(args.model, torch.device("cpu"), args.repeats, args.batch, args.precision)
    if torch.cuda.is_available() and not args.no_cuda:
        runs += bench_many(args.model, torch.device("cuda"), args.repeats, args.batch)
    result = {
        "machine": {"platform": platform.platform(),
                    "cpu": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(), "python": platform.python_version(),
                    "torch": torch.__version__,
                    "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                    "cpu_load_1min": os.getloadavg()[0]},
        "settings": {"models": [str(m) for m in args.model],
                     "names": [c.get("name") for c in cards],
                     "parameters": [c.get("parameters") for c in cards],
                     "explain_methods": [c.get("explain_method") for c in cards],
                     "window_s": card["window_s"], "sample_rate": card["sample_rate"],
                     "cpu_threads": args.threads, "repeats": args.repeats,
                     "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
                     "batch": args.batch},
        "runs": runs,
    }
    print(json.dumps(result, indent=2))
    for r in runs:
        f, g = r["forward_batch1_ms"], r["forward_gradcam_batch1_ms"]
        print(f"{r['model']} ({r['file_mb']} MB) {r['device']} {r['precision']}: "
              f"forward p50 {f['p50']:.1f} ms "
              f"(p95 {f['p95']:.1f}, CPU "
              f"{f['cpu_ms_p50']:.1f}), forward+Grad-CAM p50 {g['p50']:.1f} ms (p95 "
              f"{g['p95']:.1f}, CPU {g['cpu_ms_p50']:.1f}), "
              f"{r[f'windows_per_s_batch{args.batch}']:.0f} windows/s at batch {args.batch} "
              f"[{args.threads} CPU threads, OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}, "
              f"load {result['machine']['cpu_load_1min']:.1f}]")


if __name__ == "__main__":
    main()
