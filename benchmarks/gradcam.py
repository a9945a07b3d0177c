"""What Grad-CAM costs per live window on 2 CPU threads (bar: <= 15 ms extra per window).

    .venv/bin/python benchmarks/gradcam.py [--model models/default.pt] [--repeats 60]

The engine classifies every window with ``forward`` and then, for explained windows, calls
``streamer.gradcam.explain_windows``; so the extra cost of an explanation is the whole
``explain_windows`` call. Timed, one window at a time (batch 1, the live case), after warm-up:
- ``forward``: ``ServedModel.predict`` (inference mode) — the prediction the engine makes anyway;
- ``gradcam``: ``explain_windows(metrics=False)`` (explain with autograd + one backward to the
  conv map + upsampling + CAM statistics) — the live explanation's extra cost;
- ``gradcam+drops``: ``explain_windows(metrics=True)`` (plus STFT masking of two regions and one
  batched forward of both) — the paper's confidence drops, live;
- ``payload``: ``explanation_payload`` + JSON encoding (8-bit 64 x 100 frames);
- ``saliency_blur`` / ``saliency_blur_x12``: the Gaussian smoothing of saliency maps
  (``gradcam.gaussian_blur`` at ``SALIENCY_SIGMA``) on one / twelve maps of the model's grid,
  part of the ``gradcam`` figure for saliency models (12: the daemon's batch at 12 streams).
Without ``--model`` (or when it is missing) an untrained streaming CNN-LSTM of the served
architecture is scripted here: the cost does not depend on the weights. Prints JSON (machine,
settings, medians, p95s) and a one-line summary.

Measured here (2026-11-21, 2 threads on a 2-core machine shared with ~8 other jobs, load
average 8): forward median 8.4 ms (min 1.9); Grad-CAM median 54 ms (min 18, CPU 36 ms);
payload 0.7 ms; so the bar (<= 15 ms extra) FAILS at the median and is only approached at the
minimum. Profile of Grad-CAM: the grad-mode conv forward (thnn im2col, kept for backward) and
oneDNN's LSTM backward are the two largest items. With the confidence drops: 176 ms median.

Re-measured once the machine was quiet (load average 2.9), models/default.pt, 2 threads,
OMP_WAIT_POLICY=PASSIVE (what `emotion-monitor` and `make test` now set): forward 5.22 ms,
Grad-CAM 9.76 ms (p95 13.67), payload 1.21 ms -> 11.0 ms extra per window: the bar PASSES.
The first figures above were dominated by OpenMP's spinning waits on an oversubscribed machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from streamer import gradcam as g  # noqa: E402
from streamer import protocol  # noqa: E402
from streamer.model import ServedModel  # noqa: E402


def scripted_default_architecture(path: Path) -> Path:
    """An untrained model of the served architecture (train.streaming_model), for timing."""
    from train.corpus import EMOTIONS
    from train.streaming_model import ARCHITECTURE, StreamingCNNLSTM, StreamingConfig

    cfg = StreamingConfig()
    model = StreamingCNNLSTM(cfg).eval()
    card = {"name": "untrained-streaming-cnn-lstm", "classes": list(EMOTIONS),
            "sample_rate": cfg.sample_rate, "window_s": cfg.window_s,
            "features": {"n_fft": cfg.n_fft, "hop_length": cfg.hop_length, "n_mels": cfg.n_mels,
                         "f_min": cfg.f_min, "f_max": cfg.f_max, "mel_scale": "slaney"},
            "architecture": ARCHITECTURE, "explain_method": "gradcam"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(model).save(str(path), _extra_files={"model_card.json": json.dumps(card)})
    return path


def timeit(fn, repeats: int, warmup: int = 3) -> dict:
    """Wall time (median, p95, min) and CPU time of this process (median; both threads summed).

    On a shared machine the wall times include waiting for a core; the minimum and the CPU
    time are the better estimates of the cost itself, so all are reported.
    """
    for _ in range(warmup):
        fn()
    ms, cpu = [], []
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        ms.append(1000 * (time.perf_counter() - t0))
        cpu.append(1000 * (time.process_time() - c0))
    a = np.asarray(ms)
    return {"median_ms": round(float(np.median(a)), 2),
            "p95_ms": round(float(np.percentile(a, 95)), 2), "min_ms": round(float(a.min()), 2),
            "cpu_median_ms": round(float(np.median(cpu)), 2), "n": repeats}


def _onednn_off(model: ServedModel, wave: np.ndarray) -> None:
    g.CPU_ONEDNN_OFF = True
    try:
        g.explain_windows(model, wave, metrics=False)
    finally:
        g.CPU_ONEDNN_OFF = False


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, default=REPO / "models" / "default.pt")
    p.add_argument("--repeats", type=int, default=60)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    path = args.model
    if not path.exists():
        path = scripted_default_architecture(Path("/tmp") / f"gradcam-bench-{os.getpid()}.pt")
    model = ServedModel.load(path, "cpu")
    rng = np.random.default_rng(args.seed)
    # Speech-like test signal: a harmonic tone with a syllable envelope over a noise floor.
    n, sr = model.window_samples, model.sample_rate
    t = np.arange(n) / sr
    env = np.clip(np.sin(2 * np.pi * 2.5 * t), 0, None)
    wave = (0.2 * env * sum(np.sin(2 * np.pi * 180 * k * t) / k for k in range(1, 6))
            + 0.003 * rng.standard_normal(n)).astype(np.float32)[None]
    expl = g.explain_windows(model, wave)[0]
    maps = torch.rand(12, *expl.cam.shape, generator=torch.Generator().manual_seed(args.seed))

    results = {
        "forward": timeit(lambda: model.predict(wave), args.repeats),
        "gradcam": timeit(lambda: g.explain_windows(model, wave, metrics=False), args.repeats),
        "gradcam_onednn_off": timeit(lambda: _onednn_off(model, wave), args.repeats),
        "gradcam+drops": timeit(lambda: g.explain_windows(model, wave, metrics=True),
                                args.repeats),
        "payload": timeit(lambda: protocol.encode(g.explanation_payload(expl, "s1", 0)),
                          args.repeats),
        "saliency_blur": timeit(lambda: g.gaussian_blur(maps[:1], g.SALIENCY_SIGMA),
                                args.repeats),
        "saliency_blur_x12": timeit(lambda: g.gaussian_blur(maps, g.SALIENCY_SIGMA),
                                    args.repeats),
    }
    payload_bytes = len(protocol.encode(g.explanation_payload(expl, "s1", 0)).encode())
    extra = results["gradcam"]["median_ms"] + results["payload"]["median_ms"]
    out = {
        "benchmark": "gradcam cost per live window",
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpus": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2),
                    "torch": torch.__version__, "threads": torch.get_num_threads()},
        "settings": {"model": str(args.model if args.model.exists() else
                                  "untrained streaming CNN-LSTM (served architecture)"),
                     "batch": 1, "window_samples": n, "spectrogram": list(expl.cam.shape),
                     "method": expl.method, "repeats": args.repeats,
                     "saliency_sigma": list(g.SALIENCY_SIGMA)},
        "results": results,
        "payload_bytes": payload_bytes,
        "extra_ms_per_window": round(extra, 2),
        "bar_ms": 15.0,
        "pass": extra <= 15.0,
    }
    print(json.dumps(out, indent=1))
    print(f"gradcam: forward {results['forward']['median_ms']} ms, +Grad-CAM "
          f"{results['gradcam']['median_ms']} ms (p95 {results['gradcam']['p95_ms']}, min "
          f"{results['gradcam']['min_ms']}, cpu {results['gradcam']['cpu_median_ms']}), +payload "
          f"{results['payload']['median_ms']} ms -> extra {extra:.1f} ms/window "
          f"({'PASS' if out['pass'] else 'FAIL'} <= 15 ms); with confidence drops "
          f"{results['gradcam+drops']['median_ms']} ms; frame {payload_bytes} B; saliency "
          f"smoothing {results['saliency_blur']['median_ms']} ms (12 maps "
          f"{results['saliency_blur_x12']['median_ms']} ms); "
          f"load {out['machine']['load_avg_1m']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
