"""Self-contained HTML reports (Plotly, JS inlined) for one run and for the whole paper table.

A run's report shows the summed confusion matrix over its folds, mean learning curves (train vs
held-out loss and accuracy per epoch), per-fold numbers, and our numbers beside the paper's
Tables 1-4. The table report puts every (model, protocol) row side by side.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

# The papers' published numbers (paper 1: Tables 1-4, 5-fold stratified CV on TESS; paper 2:
# Table 2, training-set accuracy at epoch 100).
PAPER_TABLES: list[dict[str, Any]] = [
    {"table": "P1 Tables 1-2", "model": "cnn", "accuracy": 0.9537, "precision": 0.9530,
     "recall": 0.9530, "f1": 0.9537, "kind": "held-out, 5-fold CV"},
    {"table": "P1 Tables 1-2", "model": "lstm", "accuracy": 0.9857, "precision": 0.9855,
     "recall": 0.9856, "f1": 0.9857, "kind": "held-out, 5-fold CV"},
    {"table": "P1 Tables 1-2", "model": "hybrid", "accuracy": 0.9901, "precision": 0.9930,
     "recall": 0.9929, "f1": 0.9929, "kind": "held-out, 5-fold CV"},
    {"table": "P1 Tables 3-4", "model": "vit", "accuracy": 0.98, "precision": 0.98,
     "recall": 0.98, "f1": 0.98, "kind": "held-out, 5-fold CV, pretrained ViT"},
    {"table": "P1 Tables 3-4", "model": "beit", "accuracy": 0.983, "precision": 0.9831,
     "recall": 0.9830, "f1": 0.9830, "kind": "held-out, 5-fold CV, pretrained BEiT"},
    {"table": "P2 Table 2", "model": "mel-lstm", "accuracy": 1.0, "precision": None,
     "recall": None, "f1": None, "kind": "TRAINING-set accuracy, epoch 100"},
    {"table": "P2 Table 2", "model": "mel-lstm-traditional", "accuracy": 0.4236,
     "precision": None, "recall": None, "f1": None, "kind": "TRAINING-set accuracy, epoch 100"},
]


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.2f} %"


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _page(title: str, parts: Sequence[str]) -> str:
    style = (
        "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;"
        "text-align:right}th{background:#f4f4f4}.note{color:#555;font-size:0.9em}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>"
        + "\n".join(parts)
        + "</body></html>"
    )


def _confusion_figure(cm: list[list[int]], classes: Sequence[str], title: str) -> Any:
    import plotly.graph_objects as go

    arr = np.array(cm)
    fig = go.Figure(
        go.Heatmap(z=arr, x=list(classes), y=list(classes), colorscale="Blues",
                   text=arr, texttemplate="%{text}", hovertemplate="true %{y}, predicted %{x}: "
                   "%{z}<extra></extra>")
    )
    fig.update_layout(title=title, xaxis_title="predicted", yaxis_title="true",
                      yaxis_autorange="reversed", width=560, height=500)
    return fig


def _curves_figure(folds: Sequence[dict[str, Any]], title: str) -> Any | None:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    histories = [f["history"] for f in folds if f.get("history")]
    if not histories:
        return None
    n = min(len(h) for h in histories)
    fig = make_subplots(rows=1, cols=2, subplot_titles=("loss", "accuracy"))
    epochs = list(range(1, n + 1))
    for key, col, colour, dash in (
        ("train_loss", 1, "#1f77b4", None), ("val_loss", 1, "#d62728", "dot"),
        ("train_acc", 2, "#1f77b4", None), ("val_acc", 2, "#d62728", "dot"),
    ):
        if key not in histories[0][0]:
            continue
        mean = np.mean([[h[i][key] for i in range(n)] for h in histories], axis=0)
        label = key.replace("val", "held-out").replace("_", " ")
        fig.add_trace(
            go.Scatter(x=epochs, y=mean, name=label, line={"color": colour, "dash": dash}),
            row=1, col=col,
        )
    fig.update_layout(title=f"{title} (mean over {len(histories)} folds)", height=400)
    fig.update_xaxes(title_text="epoch")
    return fig


def _fig_html(fig: Any, first: bool) -> str:
    # Inline plotly.js once per page so the file works offline (self-contained).
    return fig.to_html(full_html=False, include_plotlyjs=True if first else False)


def paper_rows_html(ours: dict[tuple[str, str], dict[str, Any]] | None = None) -> str:
    """The papers' Tables 1-4 (and paper 2's Table 2) with our cv5 numbers beside them."""
    rows = []
    for p in PAPER_TABLES:
        mine = (ours or {}).get((p["model"], "cv5"))
        rows.append([
            p["table"], p["model"], p["kind"], _pct(p["accuracy"]), _pct(p["f1"]),
            _pct(mine["accuracy_mean"]) if mine else "not run",
            _pct(mine["train_accuracy_mean"]) if mine else "not run",
            _pct(mine["f1_weighted_mean"]) if mine else "not run",
            mine.get("epochs", "") if mine else "",
        ])
    return _table(
        ["source", "model", "paper's figure is", "paper acc", "paper F1", "ours held-out acc",
         "ours train acc", "ours F1 (weighted)", "our epochs"],
        rows,
    )


def write_run_report(results: dict[str, Any], path: str | Path) -> Path:
    """report.html for one run (one model, one protocol)."""
    cfg = results["config"]
    s = results["summary"]
    classes = cfg["classes"]
    title = f"{results['model']} under {results['protocol']}"
    parts = [
        f"<p>Corpus: {html.escape(cfg['run']['data'])} ({cfg['n_utterances']} utterances). "
        f"Device: {html.escape(cfg['device'])}. Epochs: {cfg['run']['epochs']} "
        f"(paper: {cfg['paper']['epochs']}). Normalisation: {cfg['run']['norm']}.</p>",
        "<h2>Summary</h2>",
        _table(
            ["folds", "held-out accuracy", "train accuracy", "precision (w)", "recall (w)",
             "F1 (w)", "train s / fold"],
            [[s["folds"], f"{_pct(s['accuracy_mean'])} ± {100 * s['accuracy_std']:.2f}",
              _pct(s["train_accuracy_mean"]), _pct(s["precision_weighted_mean"]),
              _pct(s["recall_weighted_mean"]), _pct(s["f1_weighted_mean"]),
              f"{s['train_seconds_per_fold']:.1f}"]],
        ),
        "<h2>Per fold</h2>",
        _table(
            ["fold", "n train", "n test", "test speakers", "held-out acc", "train acc", "F1 (w)",
             "seconds"],
            [[f["fold"], f["n_train"], f["n_test"], ", ".join(f["test_speakers"]),
              _pct(f["test"]["accuracy"]), _pct(f["train_accuracy"]),
              _pct(f["test"]["f1_weighted"]), f"{f['train_seconds']:.1f}"]
             for f in results["folds"]],
        ),
    ]
    figs = [_confusion_figure(s["confusion_matrix_total"], classes,
                              "confusion matrix, summed over held-out folds")]
    curves = _curves_figure(results["folds"], "learning curves")
    if curves is not None:
        figs.append(curves)
    parts += [_fig_html(f, i == 0) for i, f in enumerate(figs)]
    row = {
        "accuracy_mean": s["accuracy_mean"], "train_accuracy_mean": s["train_accuracy_mean"],
        "f1_weighted_mean": s["f1_weighted_mean"], "epochs": cfg["run"]["epochs"],
    }
    parts += [
        "<h2>Beside the papers</h2>",
        "<p class='note'>Our column is filled only for a cv5 run (the papers' protocol). "
        "Paper 1's ViT/BEiT were pretrained; ours are small and from scratch unless "
        "--init-weights was given. Paper 2's figures are training-set accuracy.</p>",
        paper_rows_html({(results["model"], results["protocol"]): row}),
        "<h2>Config</h2><pre>" + html.escape(json.dumps(cfg, indent=2, default=str)) + "</pre>",
    ]
    path = Path(path)
    path.write_text(_page(title, parts), encoding="utf-8")
    return path


def write_table_report(rows: Sequence[dict[str, Any]], runs: Sequence[dict[str, Any]],
                       path: str | Path, command: str = "") -> Path:
    """report.html for `train paper`: all rows, the papers' tables, one confusion per run."""
    headers = ["model", "protocol", "folds", "held-out acc", "± std", "train acc", "F1 (w)",
               "paper", "epochs (paper)", "norm", "train s", "device"]
    table = [
        [r["model"], r["protocol"], r["folds"], _pct(r["accuracy_mean"]),
         f"{100 * r['accuracy_std']:.2f}", _pct(r["train_accuracy_mean"]),
         _pct(r["f1_weighted_mean"]), _pct(r["paper_accuracy"]),
         f"{r['epochs']} ({r['paper_epochs']})" if r.get("paper_epochs") else "—",
         r["norm"], r["train_seconds"], r["device"]]
        for r in rows
    ]
    ours = {(r["model"], r["protocol"]): r for r in rows}
    parts = [
        f"<p class='note'>Command: <code>{html.escape(command)}</code></p>" if command else "",
        "<h2>All runs</h2>", _table(headers, table),
        "<h2>The papers' Tables 1-4 beside ours (cv5)</h2>", paper_rows_html(ours),
        "<h2>Confusion matrices (summed over held-out folds)</h2>",
    ]
    for i, res in enumerate(runs):
        fig = _confusion_figure(res["summary"]["confusion_matrix_total"],
                                res["config"]["classes"],
                                f"{res['model']} / {res['protocol']}")
        parts.append(_fig_html(fig, i == 0))
    path = Path(path)
    path.write_text(_page("TESS: the papers' experiments, reproduced", parts), encoding="utf-8")
    return path


_START, _END = "<!-- results-table:start -->", "<!-- results-table:end -->"


def markdown_table(rows: Sequence[dict[str, Any]], command: str = "") -> str:
    """The results as a markdown table (plus the command that made them)."""
    lines = [
        "| model | protocol | folds | held-out acc (mean ± std) | train acc | weighted F1 "
        "| paper | epochs (paper's) | batch | norm | settings | train s (total) | device |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        folds = str(r["folds"])
        if r["protocol"] != "speaker-independent" and r["folds"] < 5:
            folds += " of 5 **reduced**"
        epochs = "—" if r.get("paper_epochs") is None else (
            f"{r['epochs']} ({r['paper_epochs']})" + (" **reduced**" if r["reduced_epochs"] else "")
        )
        paper = _pct(r["paper_accuracy"])
        if r["paper_accuracy"] is not None and "TRAINING" in (r.get("paper_metric") or ""):
            paper += " (train)"
        lines.append(
            f"| {r['model']} | {r['protocol']} | {folds} | {100 * r['accuracy_mean']:.2f} ± "
            f"{100 * r['accuracy_std']:.2f} | {100 * r['train_accuracy_mean']:.2f} | "
            f"{100 * r['f1_weighted_mean']:.2f} | {paper} | {epochs} | "
            f"{r.get('batch_size') or '—'} | {r['norm']} | {r.get('settings') or '—'} | "
            f"{r['train_seconds']} | {r['device']} |"
        )
    commands = [command] if command else list(dict.fromkeys(
        r["command"] for r in rows if r.get("command")))
    if commands:
        lines += ["", "Made by:", ""] + [f"    {c}" for c in commands]
    return "\n".join(lines)


def write_markdown(rows: Sequence[dict[str, Any]], path: str | Path, command: str = "") -> Path:
    """Write the table into ``path``; if the file exists, replace only the part between the
    results-table markers so hand-written notes around it survive a rerun."""
    path = Path(path)
    block = f"{_START}\n{markdown_table(rows, command)}\n{_END}"
    if path.exists():
        text = path.read_text(encoding="utf-8")
        if _START in text and _END in text:
            head, _, rest = text.partition(_START)
            _, _, tail = rest.partition(_END)
            path.write_text(head + block + tail, encoding="utf-8")
            return path
    path.write_text(f"# Results\n\n{block}\n", encoding="utf-8")
    return path
