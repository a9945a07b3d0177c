"""The options of `emotion-monitor train whisper` (stdlib only: the CLI's --help stays light)."""

from __future__ import annotations

import argparse

PROTOCOLS = ("tess-si", "ravdess-ai", "loco", "shipped")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", action="append", required=True, metavar="NAME=PATH",
                   help="a corpus (tess, ravdess, savee, urdu, ...); repeat for several")
    p.add_argument("--encoder", required=True,
                   help="Whisper checkpoint in OpenAI's layout (local file; nothing downloads)")
    p.add_argument("-o", "--out", required=True, help="run directory (resumable)")
    p.add_argument("--protocols", nargs="*", default=list(PROTOCOLS), choices=PROTOCOLS)
    p.add_argument("--speaker-norm", default="both", choices=("off", "on", "both"),
                   help="per-speaker feature standardisation rows (default both)")
    p.add_argument("--blocks", type=int, nargs="+", default=[1, 2, 3, 4],
                   help="encoder blocks the choice may read (1-based; default 1 2 3 4)")
    p.add_argument("--pooling", default="both", choices=("both", "all", "voiced"),
                   help="poolings the choice may use (default both). The served recipe uses "
                   "voiced: stream windows hold silence and utterance edges, and on validation "
                   "speakers voiced pooling scored higher on the stream protocol "
                   "(runs/stream_validation.json, see docs/results/crosscorpus.md)")
    p.add_argument("--stream-mix", type=float, nargs="+", default=[0.0, 1.0], metavar="W",
                   help="weights the choice may give the training speakers' stream windows "
                   "(each speaker's clips made into one stream, a window every 1 s), relative "
                   "to the clips; 0 = clips only (default: 0 1, chosen on validation speakers, "
                   "who are then also scored on their stream windows)")
    p.add_argument("--final", nargs="*", default=None, metavar="CORPUS",
                   help="fit the served head on these corpora (e.g. tess ravdess)")
    p.add_argument("--calm", default="neutral", choices=("neutral", "drop"),
                   help="RAVDESS calm clips: count as neutral (default) or leave out")
    p.add_argument("--stream", nargs="*", default=None, metavar="PROTOCOL",
                   help="also score each split's held-out clips as one stream (3-s windows, "
                   "hop 0.5 s; the stream protocol); optionally only for these protocols")
    p.add_argument("--publish", default=None, metavar="DIR",
                   help="also write the table into DIR/crosscorpus.md (between its markers), "
                   "DIR/crosscorpus.json and DIR/crosscorpus.html (e.g. docs/results)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
