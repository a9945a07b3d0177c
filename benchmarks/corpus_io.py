"""How long the corpus layer takes on TESS: a header scan, and load_audio per file.

Prints JSON (machine, settings, medians and p95s) and a one-line summary.
    .venv/bin/python benchmarks/corpus_io.py [TESS_DIR] [--files 100] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train.audio import load_audio  # noqa: E402
from train.corpus import scan_corpus  # noqa: E402


def main() -> None:
    default = Path(__file__).resolve().parents[2] / "shared" / "data" / "tess"
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("tess", nargs="?", type=Path, default=default)
    p.add_argument("--files", type=int, default=100, help="files decoded with load_audio")
    p.add_argument("--repeats", type=int, default=3, help="header scans timed")
    args = p.parse_args()

    scans = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        scan = scan_corpus(args.tess, progress=False)
        scans.append(time.perf_counter() - t0)
    rng = np.random.default_rng(0)
    picks = sorted(rng.choice(len(scan.utterances), args.files, replace=False))
    paths = [scan.utterances[i].path for i in picks]
    paths.append(next(u.path for u in scan.utterances if u.path.name == "OAF_food_fear.flac"))
    per_file = []
    for path in paths:
        t0 = time.perf_counter()
        load_audio(path)
        per_file.append((time.perf_counter() - t0) * 1000)
    result = {
        "machine": {"platform": platform.platform(),
                    "cpu": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(), "python": platform.python_version()},
        "settings": {"corpus": str(args.tess), "files_scanned": len(scan.utterances),
                     "scan_repeats": args.repeats, "files_loaded": len(paths),
                     "target_rate": 16000, "resampler": "soxr HQ"},
        "scan_s": {"median": float(np.median(scans)), "p95": float(np.percentile(scans, 95))},
        "load_audio_ms": {"median": float(np.median(per_file)),
                          "p95": float(np.percentile(per_file, 95)), "max": float(max(per_file))},
    }  # fmt: skip
    print(json.dumps(result, indent=2))
    scan_s, load_ms = result["scan_s"], result["load_audio_ms"]
    print(
        f"summary: header scan of {len(scan.utterances)} TESS files {scan_s['median']:.2f} s "
        f"(median of {args.repeats}); load_audio (FLAC 24.4/96 kHz -> 16 kHz) median "
        f"{load_ms['median']:.2f} ms, p95 {load_ms['p95']:.2f} ms"
    )


if __name__ == "__main__":
    main()
