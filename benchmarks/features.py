"""The torchaudio front-ends against librosa on TESS: files per second, same settings, one run.

Prints JSON (machine, settings, per-file median and p95 in ms, files/s) and one summary line.
    .venv/bin/python benchmarks/features.py [TESS_DIR] [--files 100] [--threads 2] [--out F]

Each file is decoded once (not timed), then every implementation is timed on it in turn, so a
shared machine's load swings hit all of them alike. torch runs the eager modules one file at a
time (batch 1, as librosa), on CPU with ``--threads`` intra-op threads, and on CUDA when there
is one (synchronised). Then the whole sample through ``train.cache.compute_features`` in
groups of ``--batch`` on CPU (and CUDA), exactly as train/cache.py extracts a corpus (padded
batches with lengths, cut on CPU to its STFT budget). numpy/BLAS get the
same thread count. Four front-ends: ``logmel`` (10-ms frames at natural length, the streaming
model's), and the three ``train paper`` extracts: ``logmel-image`` (the ViT/BEiT input: hop 375
over a fixed 3-s window), ``utterance-vector`` (paper 1's 187 values, natural length) and
``delta-logmel`` (paper 2's three channels over a fixed 3-s window). Windowed front-ends give
librosa the same zero-padded window.
librosa is timed twice for the utterance vector: four independent feature calls on ``y``
(as paper 1 and the parity tests), and with one shared STFT passed as ``S`` (librosa at its
best).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path


def _args() -> argparse.Namespace:
    default = Path(__file__).resolve().parents[2] / "shared" / "data" / "tess"
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("tess", nargs="?", type=Path, default=default)
    p.add_argument("--files", type=int, default=100, help="TESS files timed (seeded sample)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads for torch and numpy")
    p.add_argument("--batch", type=int, default=32,
                   help="batch size of the batched throughput (train/cache.py's default)")
    p.add_argument("--out", type=Path, help="also write the JSON here")
    return p.parse_args()


ARGS = _args()
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_var] = str(ARGS.threads)
# OpenMP threads spin while waiting by default; on a shared, oversubscribed machine (this one:
# 2 cores, load ~15) that made 2-thread torch ~10x slower than 1 thread. Passive waiting is
# the fair setting there; pass OMP_WAIT_POLICY=ACTIVE to measure the default.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import librosa  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torchaudio  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train.audio import SAMPLE_RATE, load_audio  # noqa: E402
from train.cache import CPU_STFT_BYTES, compute_features  # noqa: E402
from train.experiments import front_end  # noqa: E402
from train.features import (  # noqa: E402
    DeltaLogMelConfig,
    LogMel,
    LogMelConfig,
    UtteranceVector,
    UtteranceVectorConfig,
    fix_length,
)

SR = SAMPLE_RATE


def librosa_logmel(c: LogMelConfig):
    def run(y: np.ndarray) -> np.ndarray:
        mel = librosa.feature.melspectrogram(
            y=y, sr=SR, n_fft=c.n_fft, hop_length=c.hop_length, n_mels=c.n_mels,
            fmin=c.f_min, fmax=c.f_max,
        )  # fmt: skip
        return librosa.power_to_db(mel, top_db=c.top_db)

    return run


def librosa_delta(c: DeltaLogMelConfig):
    logmel = librosa_logmel(c)

    def run(y: np.ndarray) -> np.ndarray:
        s = logmel(y)
        d1 = librosa.feature.delta(s, width=c.delta_width, order=1)
        d2 = librosa.feature.delta(s, width=c.delta_width, order=2)
        return np.stack([s, d1, d2])

    return run


def librosa_vector(c: UtteranceVectorConfig, shared_stft: bool):
    kw = {"n_fft": c.n_fft, "hop_length": c.hop_length}
    mel_kw = {"n_mels": c.n_mels, "fmin": c.f_min, "fmax": c.f_max}
    contrast_kw = {"fmin": c.contrast_fmin, "n_bands": c.contrast_bands,
                   "quantile": c.contrast_quantile}  # fmt: skip

    def independent(y: np.ndarray) -> np.ndarray:
        return np.concatenate([
            librosa.feature.mfcc(y=y, sr=SR, n_mfcc=c.n_mfcc, **kw, **mel_kw).mean(1),
            librosa.feature.chroma_stft(y=y, sr=SR, tuning=c.chroma_tuning, **kw).mean(1),
            librosa.feature.melspectrogram(y=y, sr=SR, **kw, **mel_kw).mean(1),
            librosa.feature.spectral_contrast(y=y, sr=SR, **kw, **contrast_kw).mean(1),
        ])  # fmt: skip

    def shared(y: np.ndarray) -> np.ndarray:
        magnitude = np.abs(librosa.stft(y, **kw))
        power = magnitude**2
        mel = librosa.feature.melspectrogram(S=power, sr=SR, **kw, **mel_kw)
        return np.concatenate([
            librosa.feature.mfcc(S=librosa.power_to_db(mel), n_mfcc=c.n_mfcc).mean(1),
            librosa.feature.chroma_stft(S=power, sr=SR, tuning=c.chroma_tuning, **kw).mean(1),
            mel.mean(1),
            librosa.feature.spectral_contrast(S=magnitude, sr=SR, **kw, **contrast_kw).mean(1),
        ])  # fmt: skip

    return shared if shared_stft else independent


def _stats(ms: list[float]) -> dict:
    a = np.asarray(ms)
    return {
        "median_ms": round(float(np.median(a)), 3),
        "p95_ms": round(float(np.percentile(a, 95)), 3),
        "files_per_s": round(float(len(a) / (a.sum() / 1000)), 1),
    }


def _timed(fn, *args) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return (time.perf_counter() - t0) * 1000


def main() -> None:
    torch.set_num_threads(ARGS.threads)
    files = sorted(ARGS.tess.glob("*/*.flac"))
    if not files:
        raise SystemExit(f"no TESS .flac files under {ARGS.tess}")
    rng = np.random.default_rng(0)
    picks = [files[i] for i in sorted(rng.choice(len(files), min(ARGS.files, len(files)),
                                                 replace=False))]  # fmt: skip
    waves = [load_audio(p) for p in picks]
    cuda = torch.cuda.is_available()

    # The image and delta front-ends as `train paper` builds them, with their fixed windows.
    image, image_window, _ = front_end("image")
    delta, delta_window, _ = front_end("delta")
    windows = {"logmel-image": image_window, "delta-logmel": delta_window}
    cfgs = {"logmel": LogMelConfig(), "logmel-image": image.config,
            "utterance-vector": UtteranceVectorConfig(), "delta-logmel": delta.config}
    modules = {"logmel": LogMel(cfgs["logmel"]), "logmel-image": image,
               "utterance-vector": UtteranceVector(cfgs["utterance-vector"]),
               "delta-logmel": delta}  # fmt: skip
    references = {
        "logmel": {"librosa": librosa_logmel(cfgs["logmel"])},
        "logmel-image": {"librosa": librosa_logmel(cfgs["logmel-image"])},
        "utterance-vector": {
            "librosa": librosa_vector(cfgs["utterance-vector"], shared_stft=False),
            "librosa-shared-stft": librosa_vector(cfgs["utterance-vector"], shared_stft=True),
        },
        "delta-logmel": {"librosa": librosa_delta(cfgs["delta-logmel"])},
    }
    gpu_modules = {k: type(m)(m.config).cuda().eval() for k, m in modules.items()} if cuda else {}

    def clip(name: str, y: np.ndarray) -> np.ndarray:
        return fix_length(torch.from_numpy(y), windows[name]).numpy() if name in windows else y

    def torch_cpu(name: str, y: np.ndarray) -> None:
        modules[name](torch.from_numpy(y).unsqueeze(0))

    def torch_cuda(name: str, y: np.ndarray) -> None:
        gpu_modules[name](torch.from_numpy(y).unsqueeze(0).cuda()).cpu()
        torch.cuda.synchronize()

    times: dict[str, dict[str, list[float]]] = {k: {} for k in modules}
    load_before = os.getloadavg()
    with torch.inference_mode():
        for name in modules:  # warm-up: first calls allocate, load FFT plans, compile numba
            y = clip(name, waves[0])
            torch_cpu(name, y)
            if cuda:
                torch_cuda(name, y)
            for ref in references[name].values():
                ref(y)
        for wave in waves:
            for name in modules:
                y = clip(name, wave)
                times[name].setdefault("torchaudio-cpu", []).append(_timed(torch_cpu, name, y))
                if cuda:
                    times[name].setdefault("torchaudio-cuda", []).append(
                        _timed(torch_cuda, name, y)
                    )
                for ref_name, ref in references[name].items():
                    times[name].setdefault(ref_name, []).append(_timed(ref, y))

        # Throughput of the whole sample as train/cache.py extracts a corpus (the vector with
        # lengths, so its means cover each clip's own frames only). librosa has no exact
        # batched path for that (padding would enter its means), so its figure stays per
        # file, as paper 1 and everybody run it.
        batched: dict[str, dict[str, float]] = {"cpu": {}, "cuda": {}}
        for dev, mods in (("cpu", modules), ("cuda", gpu_modules)):
            for name, module in mods.items():
                runs = []
                for _ in range(3 if dev == "cpu" else 1):
                    t0 = time.perf_counter()
                    for start in range(0, len(waves), ARGS.batch):
                        group = waves[start : start + ARGS.batch]
                        compute_features(module, group, torch.device(dev), windows.get(name))
                    if dev == "cuda":
                        torch.cuda.synchronize()
                    runs.append(time.perf_counter() - t0)
                batched[dev][name] = round(len(waves) / float(np.median(runs)), 1)

    results = {name: {impl: _stats(ms) for impl, ms in impls.items()}
               for name, impls in times.items()}  # fmt: skip
    for name, impls in results.items():
        for impl, stats in impls.items():
            if not impl.startswith("torchaudio"):
                stats["torchaudio_cpu_speedup"] = round(
                    stats["median_ms"] / impls["torchaudio-cpu"]["median_ms"], 1
                )
                stats["torchaudio_cpu_batched_speedup"] = round(
                    batched["cpu"][name] / stats["files_per_s"], 1
                )
    report = {
        "machine": {
            "platform": platform.platform(),
            "cpu": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "loadavg_before_after": [round(x, 2) for x in (*load_before, *os.getloadavg())],
            "gpu": torch.cuda.get_device_name(0) if cuda else None,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torchaudio": torchaudio.__version__,
            "librosa": librosa.__version__,
        },
        "settings": {
            "corpus": str(ARGS.tess),
            "files": len(waves),
            "seconds_of_audio": round(sum(len(w) for w in waves) / SR, 1),
            "threads": ARGS.threads,
            "omp_wait_policy": os.environ["OMP_WAIT_POLICY"],
            "torch_batch": 1,
            "batched": ARGS.batch,
            "configs": {k: vars(c) for k, c in cfgs.items()},
            "fixed_window_samples": windows,
            "cpu_stft_budget_bytes": CPU_STFT_BYTES,
            "note": "per-file times exclude decoding/resampling (load_audio), done once",
        },
        "per_file": results,
        "batched_files_per_s": {"cpu": batched["cpu"], "cuda": batched["cuda"] or None},
    }
    text = json.dumps(report, indent=2)
    print(text)
    if ARGS.out:
        ARGS.out.write_text(text + "\n")
    parts = []
    for name, impls in results.items():
        ratio = impls["librosa"]["torchaudio_cpu_speedup"]
        part = (f"{name}: torchaudio {impls['torchaudio-cpu']['files_per_s']:.0f} files/s vs "
                f"librosa {impls['librosa']['files_per_s']:.0f} ({ratio:.1f}x), batched "
                f"{batched['cpu'][name]:.0f} files/s "
                f"({impls['librosa']['torchaudio_cpu_batched_speedup']:.1f}x)")  # fmt: skip
        if "librosa-shared-stft" in impls:
            part += f", vs shared-STFT librosa {impls['librosa-shared-stft']['torchaudio_cpu_speedup']:.1f}x"  # noqa: E501
        if cuda:
            part += f", CUDA {impls['torchaudio-cuda']['files_per_s']:.0f} files/s"
        parts.append(part)
    print(f"CPU {ARGS.threads} threads, {len(waves)} TESS files (median speedup): "
          + "; ".join(parts))  # fmt: skip


if __name__ == "__main__":
    main()
