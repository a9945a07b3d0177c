"""`emotion-monitor train run|paper`: reproduce the papers' TESS experiments.

Light at import (stdlib only); the handlers import torch and the experiment runner.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from emotion_monitor.cliutil import add_command

# Mirror train.paper_models.MODELS / train.splits.PROTOCOLS (literal so --help stays light;
# tests/test_experiments.py checks they agree).
MODEL_CHOICES: tuple[str, ...] = (
    "logreg", "cnn", "lstm", "hybrid", "vit", "beit", "mel-lstm", "mel-lstm-traditional",
)
PROTOCOL_CHOICES: tuple[str, ...] = ("cv5", "speaker-independent", "word-disjoint")


def _train_group(sub: Any) -> Any:
    """The `train` group's subparsers, created here or reused if another module made it."""
    if "train" in sub.choices:
        group = sub.choices["train"]
    else:
        group = add_command(
            sub,
            "train",
            help="train and evaluate models on a corpus",
            description="Train and evaluate emotion models: the two papers' experiments on "
            "TESS under three protocols, with reports.",
            example="emotion-monitor train run --data ../shared/data/tess --model hybrid "
            "--protocol cv5",
        )
    for action in group._actions:  # argparse keeps the subparsers action here
        if isinstance(action, argparse._SubParsersAction):
            return action
    return group.add_subparsers(dest="train_command", metavar="SUBCOMMAND")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="corpus folder (e.g. ../shared/data/tess)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    p.add_argument("--threads", type=int, default=2,
                   help="torch CPU threads (default 2: the machine is shared)")
    p.add_argument("--seed", type=int, default=0, help="seed for folds, init and batches")
    p.add_argument("--norm", default="fold", choices=("fold", "speaker"),
                   help="feature standardisation: 'fold' = statistics of the training fold "
                   "(default); 'speaker' = each speaker standardised by its own statistics "
                   "(no labels used; the test speaker's from its unlabelled test audio)")
    p.add_argument("--cache", default=".cache/features",
                   help="feature cache folder (default .cache/features); 'none' disables")
    p.add_argument("--max-folds", type=int, default=None, help="run only the first N folds")
    p.add_argument("--per-class-limit", type=int, default=None,
                   help="use only the first N files per (speaker, emotion): quick checks")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    # Training options beyond the papers' recipe (shown in the table's settings column).
    p.add_argument("--lr-schedule", default="constant", choices=["constant", "cosine"],
                   help="constant (default; Keras's, the papers') or cosine decay to 0")
    p.add_argument("--label-smoothing", type=float, default=0.0,
                   help="cross-entropy label smoothing (default 0, the papers')")
    p.add_argument("--weight-decay", type=float, default=0.0,
                   help="AdamW decoupled weight decay (default 0: plain Adam, the papers')")


def _training_options(args: argparse.Namespace) -> dict[str, Any]:
    return {"lr_schedule": args.lr_schedule, "label_smoothing": args.label_smoothing,
            "weight_decay": args.weight_decay}


def register(sub: Any) -> None:
    train_sub = _train_group(sub)
    run = add_command(
        train_sub,
        "run",
        help="one model under one protocol -> results.json + report.html",
        description="Train and evaluate one of the papers' models (or the logreg baseline) "
        "under one protocol: 5-fold stratified CV (cv5, the papers'), speaker-independent "
        "(train on one actress, test on the other, both ways) or word-disjoint 5-fold. Writes "
        "RUN_DIR/results.json, report.html, config.json and model.pt; a killed run resumes "
        "from its finished folds.",
        example="emotion-monitor train run --data ../shared/data/tess --model hybrid "
        "--protocol cv5 --epochs 50 -o runs/hybrid-cv5",
        handler=_run,
    )
    run.add_argument("--model", required=True, choices=MODEL_CHOICES)
    run.add_argument("--protocol", default="cv5", choices=PROTOCOL_CHOICES)
    run.add_argument("--epochs", type=int, default=None, help="default: the paper's")
    run.add_argument("--lr", type=float, default=None, help="default: the paper's")
    run.add_argument("--batch-size", type=int, default=None, help="default: 32")
    run.add_argument("--model-config", default=None,
                     help='JSON overrides of the model constructor, e.g. \'{"depth": 6}\'')
    run.add_argument("--init-weights", default=None,
                     help="vit/beit: start from a local checkpoint (state_dict) instead of "
                     "from scratch")
    run.add_argument("--final-model", action="store_true",
                     help="also train on all data and save it as RUN_DIR/model.pt "
                     "(default: model.pt is fold 0's model)")
    run.add_argument("-o", "--out", default=None, help="run folder (default runs/MODEL-PROTOCOL)")
    _common(run)

    paper = add_command(
        train_sub,
        "paper",
        help="the whole table: every model under every protocol",
        description="Run every model under every protocol (skipping runs already finished), "
        "then write OUT/table.json, OUT/README.md and OUT/report.html with our numbers beside "
        "the papers' Tables 1-4. Use --epochs-for to shorten slow models (the table marks such "
        "rows as reduced, not the papers' protocol).",
        example="emotion-monitor train paper --data ../shared/data/tess -o runs/paper "
        "--epochs-for vit=5 --epochs-for beit=5",
        handler=_paper,
    )
    paper.add_argument("--models", default=",".join(MODEL_CHOICES),
                       help="comma-separated (default: all)")
    paper.add_argument("--protocols", default=",".join(PROTOCOL_CHOICES),
                       help="comma-separated (default: all three)")
    paper.add_argument("--epochs-for", action="append", default=[], metavar="MODEL=N",
                       help="fewer epochs than the paper's for one model (repeatable)")
    paper.add_argument("--batch-size", type=int, default=None,
                       help="batch size for every model of this command (default: the paper's "
                       "or 32)")
    paper.add_argument("--model-config", action="append", default=[], metavar="MODEL=JSON",
                       help="constructor overrides for one model, e.g. "
                       "'hybrid={\"init\": \"keras\"}' (repeatable; shown in the table)")
    paper.add_argument("--publish", default=None, metavar="DIR",
                       help="also write DIR/tess.json and DIR/README.md (e.g. docs/results)")
    paper.add_argument("-o", "--out", default="runs/paper", help="folder for all runs")
    _common(paper)


def _cache(args: argparse.Namespace) -> str | None:
    return None if args.cache in ("", "none") else args.cache


def _run(args: argparse.Namespace) -> int:
    from train.experiments import default_config, run_experiment

    try:
        model_config = json.loads(args.model_config) if args.model_config else {}
        cfg = default_config(
            args.data, args.model, args.protocol, epochs=args.epochs, lr=args.lr,
            batch_size=args.batch_size, seed=args.seed, norm=args.norm,
            max_folds=args.max_folds, per_class_limit=args.per_class_limit,
            model_config=model_config, init_weights=args.init_weights,
            final_model=args.final_model, **_training_options(args),
        )
    except (ValueError, json.JSONDecodeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out or f"runs/{args.model}-{args.protocol}")
    res = run_experiment(cfg, out, device=args.device, threads=args.threads,
                         cache_dir=_cache(args), progress=not args.quiet)
    s = res["summary"]
    print(f"{args.model} / {args.protocol}: held-out accuracy {s['accuracy_mean']:.4f} "
          f"± {s['accuracy_std']:.4f} over {s['folds']} folds (train accuracy "
          f"{s['train_accuracy_mean']:.4f}); weighted F1 {s['f1_weighted_mean']:.4f}")
    print(f"wrote {out / 'results.json'} and {out / 'report.html'}")
    return 0


def _paper(args: argparse.Namespace) -> int:
    from train.experiments import default_config, run_experiment, table_row
    from train.report import write_markdown, write_table_report

    models = [m for m in args.models.split(",") if m]
    protocols = [p for p in args.protocols.split(",") if p]
    bad = [m for m in models if m not in MODEL_CHOICES] + [
        p for p in protocols if p not in PROTOCOL_CHOICES
    ]
    if bad:
        print(f"error: unknown model/protocol: {', '.join(bad)}", file=sys.stderr)
        return 2
    epochs_for: dict[str, int] = {}
    for item in args.epochs_for:
        name, _, n = item.partition("=")
        if name not in MODEL_CHOICES or not n.isdigit():
            print(f"error: --epochs-for wants MODEL=N, got {item!r}", file=sys.stderr)
            return 2
        epochs_for[name] = int(n)
    config_for: dict[str, dict[str, Any]] = {}
    for item in args.model_config:
        name, _, text = item.partition("=")
        try:
            config_for[name] = json.loads(text)
        except json.JSONDecodeError as exc:
            print(f"error: --model-config {item!r}: {exc}", file=sys.stderr)
            return 2
        if name not in MODEL_CHOICES or not isinstance(config_for[name], dict):
            print(f"error: --model-config wants MODEL=JSON-object, got {item!r}",
                  file=sys.stderr)
            return 2
    out = Path(args.out)
    command = "emotion-monitor " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    rows, runs = [], []
    for model in models:
        for protocol in protocols:
            cfg = default_config(
                args.data, model, protocol, epochs=epochs_for.get(model), seed=args.seed,
                norm=args.norm, max_folds=args.max_folds, per_class_limit=args.per_class_limit,
                batch_size=args.batch_size, model_config=config_for.get(model, {}),
                **_training_options(args),
            )
            suffix = "" if args.norm == "fold" else f"-{args.norm}-norm"
            res = run_experiment(cfg, out / f"{model}-{protocol}{suffix}", device=args.device,
                                 threads=args.threads, cache_dir=_cache(args),
                                 progress=not args.quiet)
            runs.append(res)
            rows.append({**table_row(res), "command": command})
            _write_table(out, rows, runs, command, args.publish,
                         write_markdown, write_table_report)
            r = rows[-1]
            print(f"{model:22s} {protocol:20s} held-out {r['accuracy_mean']:.4f} "
                  f"± {r['accuracy_std']:.4f}  train {r['train_accuracy_mean']:.4f}", flush=True)
    return 0


def _write_table(out: Path, rows: list[dict[str, Any]], runs: list[dict[str, Any]],
                 command: str, publish: str | None, write_markdown: Any,
                 write_table_report: Any) -> None:
    """Rewritten after every run, so a partial table is always on disk."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.json").write_text(json.dumps(rows, indent=2))
    write_markdown(rows, out / "README.md", command)
    write_table_report(rows, runs, out / "report.html", command)
    if publish:
        # Merge into what is published, so tables made by several commands add up.
        import fcntl  # several `train paper` commands may publish at once

        pub = Path(publish)
        pub.mkdir(parents=True, exist_ok=True)
        table = pub / "tess.json"
        with open(pub / ".tess.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            _merge_publish(table, rows, write_markdown)


def _merge_publish(table: Path, rows: list[dict[str, Any]], write_markdown: Any) -> None:
    old = json.loads(table.read_text()) if table.exists() else []
    # One row per (model, protocol, norm, epochs, batch): a reduced run and a run at the
    # paper's settings both stay; rerunning the same settings replaces its row.
    def ident(r: dict[str, Any]) -> tuple:
        return (r["model"], r["protocol"], r["norm"], r["epochs"], r.get("batch_size"),
                r.get("settings") or "")

    mine = {ident(r) for r in rows}
    merged = [r for r in old if ident(r) not in mine] + rows
    order = {m: i for i, m in enumerate(MODEL_CHOICES)}
    proto = {p: i for i, p in enumerate(PROTOCOL_CHOICES)}
    merged.sort(key=lambda r: (order.get(r["model"], 99), proto.get(r["protocol"], 9),
                               r["norm"], r["epochs"], r.get("settings") or ""))
    table.write_text(json.dumps(merged, indent=2) + "\n")
    write_markdown(merged, table.parent / "README.md")
