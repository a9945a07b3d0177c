"""`emotion-monitor corpus ...`: look at a corpus before training on it.

Light at import (stdlib only); the handler imports the corpus layer.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from emotion_monitor.cliutil import add_command

# Mirrors train.corpus.CORPORA (kept literal so --help does not import soundfile; a test
# checks they agree).
CORPUS_CHOICES: tuple[str, ...] = (
    "auto",
    "tess",
    "ravdess",
    "cremad",
    "emodb",
    "savee",
    "urdu",
    "manifest",
)


def register(sub: Any) -> None:
    group = add_command(
        sub,
        "corpus",
        help="inspect emotional-speech corpora",
        description="Inspect an emotional-speech corpus (TESS, RAVDESS, CREMA-D, EmoDB, SAVEE, "
        "URDU, or a CSV manifest) before training on it.",
        example="emotion-monitor corpus summarize ../shared/data/tess",
    )
    corpus_sub = group.add_subparsers(dest="corpus_command", metavar="SUBCOMMAND")
    summarize = add_command(
        corpus_sub,
        "summarize",
        help="counts per emotion and speaker, words, durations, sample rates, bad files",
        description="Scan a corpus (file names + audio headers, no decoding) and print what it "
        "holds: files per emotion and speaker, distinct words, duration statistics, sample "
        "rates (listing the files at rare rates), files dropped and why, and unreadable files.",
        example="emotion-monitor corpus summarize ../shared/data/tess --corpus tess --json",
        handler=_summarize,
    )
    summarize.add_argument("path", help="corpus folder, or a CSV manifest (path,emotion[,speaker])")
    summarize.add_argument(
        "--corpus",
        default="auto",
        choices=CORPUS_CHOICES,
        help="which naming scheme to parse (default: auto-detect from the file names)",
    )
    summarize.add_argument("--json", action="store_true", help="print the summary as JSON")


def _summarize(args: argparse.Namespace) -> int:
    from train.corpus import scan_corpus

    try:
        scan = scan_corpus(args.path, corpus=args.corpus)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    summary = scan.summary()
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(format_summary(summary))
    return 0


def _n(count: int, noun: str) -> str:
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


def format_summary(s: dict[str, Any]) -> str:
    """The summary as a short human-readable report."""
    lines = [
        f"{s['corpus']} at {s['root']}: {_n(s['files'], 'file')}, {_n(s['n_emotions'], 'emotion')}"
        f", {_n(s['n_speakers'], 'speaker')}, {_n(s['n_words'], 'word')}",
        "",
        "emotion          files",
        *(f"  {e:<12} {n:>7,}" for e, n in s["emotions"].items()),
        "",
        "speaker          files",
        *(f"  {k:<12} {n:>7,}" for k, n in s["speakers"].items()),
        "",
    ]
    d = s["duration"]
    if d:
        lines.append(
            f"duration: min {d['min_s']:.2f} s, median {d['median_s']:.2f} s, "
            f"mean {d['mean_s']:.2f} s, max {d['max_s']:.2f} s, total {d['total_s'] / 3600:.2f} h"
        )
    rates = s["sample_rates"]
    majority = max(rates, key=lambda r: rates[r]["files"]) if rates else None
    lines.append("sample rates:")
    for rate, info in rates.items():
        n = info["files"]
        line = f"  {int(rate):>7,} Hz  {n:>7,} {'file' if n == 1 else 'files'}"
        if rate != majority and info["paths"]:
            line += ": " + ", ".join(info["paths"])
        lines.append(line)
    lines.append("dropped:" + ("" if s["dropped"] else " none"))
    lines += [f"  {n:>7,}  {reason}" for reason, n in s["dropped"].items()]
    lines.append(f"bad files: {len(s['bad_files']) or 'none'}")
    lines += [f"  {path}: {cause}" for path, cause in s["bad_files"].items()]
    return "\n".join(lines)
