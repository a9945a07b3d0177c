"""`train whisper` end to end on a few real clips: protocols, final head, export, publish."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from streamer.model import ServedModel
from train.corpus import load_ravdess, load_savee, load_tess
from train.export import export, read_card
from train.whisper_train import main


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory, tess_dir: Path, ravdess_dir: Path,
             savee_dir: Path) -> Path:
    """2 clips per (speaker, emotion): TESS's 2 actresses, 4 RAVDESS actors, 2 SAVEE men."""
    picked = []
    for utts, speakers in ((load_tess(tess_dir), None),
                           (load_ravdess(ravdess_dir), {"Actor_01", "Actor_02", "Actor_03",
                                                        "Actor_04"}),
                           (load_savee(savee_dir), {"DC", "JE"})):
        seen: dict[tuple, int] = {}
        for u in utts:
            if speakers is not None and u.speaker not in speakers:
                continue
            key = (u.speaker, u.emotion)
            if seen.get(key, 0) < 2:
                seen[key] = seen.get(key, 0) + 1
                picked.append(u)
    path = tmp_path_factory.mktemp("data") / "few.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "emotion", "speaker", "corpus", "word"])
        for u in picked:
            w.writerow([u.path, u.emotion, u.speaker, u.corpus, u.word or ""])
    return path


def test_train_whisper_end_to_end(manifest: Path, whisper_checkpoint: Path, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMOTION_MONITOR_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    docs = tmp_path / "docs"
    rc = main(["--data", f"manifest={manifest}", "--encoder", str(whisper_checkpoint),
               "-o", str(out), "--protocols", "tess-si", "loco", "shipped", "--blocks", "1",
               "2", "--final", "tess", "ravdess", "--publish", str(docs), "--quiet"])
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    tests = {(r["protocol"], r["test"], r["speaker_norm"]) for r in results["summary"]}
    assert ("loco", "savee", False) in tests and ("shipped", "savee", True) in tests
    assert results["meta"]["stream_mix"] == [0.0, 1.0]
    for split in results["splits"]:
        # chosen on training speakers only: the choice's block is one offered
        assert split["choice"]["block"] in (0, 1)
        # stream windows are offered wherever there are held-out training speakers to score
        # them on, and never with per-speaker normalisation
        mixes = {r["choice"]["stream_mix"] for r in split["validation"]}
        one_speaker = "TESS only" in split["split"]
        assert mixes == ({0.0} if split["speaker_norm"] or one_speaker else {0.0, 1.0})
        for by_variant in split["tests"].values():
            assert set(by_variant) == {"clean", "ulaw"}
            assert 0.0 <= by_variant["clean"]["accuracy"] <= 1.0
    # the final head, exported and served
    cfg = json.loads((out / "config.json").read_text())
    assert {r["choice"]["stream_mix"] for r in cfg["validation"]} == {0.0, 1.0}
    assert cfg["kind"] == "whisper" and cfg["trained_on"] == ["ravdess", "tess"]
    with np.load(out / "head.npz") as z:
        assert {"weight", "spk_weight", "prior_mean", "site_weight", "site_std"} <= set(z.files)
        site_weight = z["site_weight"]
    model_path = export(out, tmp_path / "m.pt")
    card = read_card(model_path)
    assert card["stream_norm"]["prior_windows"] > 0
    assert card["site_norm"]  # the site head travels in the file for `calibrate`
    assert np.allclose(torch.jit.load(str(model_path)).site_head.weight.detach().numpy(),
                       site_weight)
    assert any(k.startswith("shipped: savee") for k in card["metrics"])
    served = ServedModel.load(model_path, "cpu")
    p = served.predict(np.zeros((1, served.window_samples), np.float32))
    assert p.shape == (1, 7)
    # published docs: table between the markers, json, html
    md = (docs / "crosscorpus.md").read_text()
    assert "| loco | savee (7 classes)" in md
    assert (docs / "crosscorpus.json").exists() and (docs / "crosscorpus.html").exists()
    # a second run resumes from the split files (no refit), same summary
    assert main(["--data", f"manifest={manifest}", "--encoder", str(whisper_checkpoint),
                 "-o", str(out), "--protocols", "tess-si", "loco", "shipped", "--blocks", "1",
                 "2", "--quiet"]) == 0
    again = json.loads((out / "results.json").read_text())
    assert again["summary"] == results["summary"]
