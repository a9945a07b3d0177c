"""The protocol runner: every model under every protocol on a small TESS subset, resume,
the CLI, and one real (small) training that must clearly beat chance (1/7)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from train.corpus import EMOTIONS
from train.experiments import (
    default_config,
    resolve_device,
    run_experiment,
    run_settings,
    speaker_normalise,
    table_row,
    train_torch,
)
from train.paper_models import MODELS, build_model
from train.splits import PROTOCOLS

pytestmark = pytest.mark.tess

# 5 words x 7 emotions x 2 speakers = 70 files (6 distinct words: TESS lacks two files),
# enough for two folds of every protocol.
SMOKE_LIMIT = 5


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("features")


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("model", list(MODELS))
def test_smoke_every_model_under_every_protocol(
    model: str, protocol: str, tess_dir: Path, cache_dir: Path, tmp_path: Path
) -> None:
    cfg = default_config(
        tess_dir, model, protocol, epochs=2, per_class_limit=SMOKE_LIMIT, max_folds=2,
        model_config=MODELS[model].tiny, batch_size=16,
    )
    res = run_experiment(cfg, tmp_path / "run", device="cpu", threads=1, cache_dir=cache_dir,
                         progress=False)
    run = tmp_path / "run"
    saved = json.loads((run / "results.json").read_text())
    assert set(saved) == {"model", "protocol", "config", "summary", "folds"}
    assert saved["summary"]["folds"] == len(saved["folds"]) == 2
    for key in ("accuracy_mean", "accuracy_std", "f1_weighted_mean", "train_accuracy_mean",
                "precision_weighted_mean", "recall_weighted_mean", "train_seconds_per_fold"):
        assert key in saved["summary"]
    n_total = 0
    for fold in saved["folds"]:
        cm = np.array(fold["test"]["confusion_matrix"])
        assert cm.shape == (7, 7)
        assert cm.sum() == fold["n_test"] > 0
        assert np.trace(cm) / cm.sum() == pytest.approx(fold["test"]["accuracy"])
        assert set(fold["test"]["per_class"]) == set(EMOTIONS)
        assert 0.0 <= fold["train_accuracy"] <= 1.0
        n_total += fold["n_test"]
        if model == "logreg":
            assert fold["history"] == []
        else:
            assert [h["epoch"] for h in fold["history"]] == [1, 2]
            assert {"train_loss", "train_acc", "val_loss", "val_acc"} <= set(fold["history"][0])
    assert np.array(saved["summary"]["confusion_matrix_total"]).sum() == n_total
    if protocol == "speaker-independent":  # test on one actress, train on the other
        assert [f["test_speakers"] for f in saved["folds"]] == [["OAF"], ["YAF"]]
    html = (run / "report.html").read_text()
    assert "plotly" in html.lower() and "Beside the papers" in html

    config = json.loads((run / "config.json").read_text())
    assert config["model"] == model and config["classes"] == list(EMOTIONS)
    assert config["versions"]["torch"] == torch.__version__.split("+")[0]
    if model != "logreg":  # export rebuilds the model from config.json and loads model.pt
        net = build_model(config["model"], len(config["classes"]), **config["model_config"])
        net.load_state_dict(torch.load(run / "model.pt", weights_only=True))
    row = table_row(res)
    assert row["model"] == model and row["protocol"] == protocol and row["folds"] == 2
    assert row["reduced_epochs"] is (model != "logreg")


@pytest.mark.timeout(120)
def test_a_killed_run_resumes_from_its_finished_folds(
    tess_dir: Path, cache_dir: Path, tmp_path: Path
) -> None:
    cfg = default_config(tess_dir, "logreg", "cv5", per_class_limit=SMOKE_LIMIT, max_folds=2)
    run = tmp_path / "run"
    run_experiment(cfg, run, cache_dir=cache_dir, progress=False, write_report=False)
    fold0 = run / "folds" / "fold0.json"
    record = json.loads(fold0.read_text())
    record["train_seconds"] = 12345.0  # a marker: a recomputed fold would lose it
    fold0.write_text(json.dumps(record))
    (run / "folds" / "fold1.json").unlink()  # as if killed during fold 1
    res = run_experiment(cfg, run, cache_dir=cache_dir, progress=False, write_report=False)
    assert res["folds"][0]["train_seconds"] == 12345.0
    assert (run / "folds" / "fold1.json").exists()
    # --max-folds is not part of the key: a shorter run reuses the finished folds.
    cfg1 = default_config(tess_dir, "logreg", "cv5", per_class_limit=SMOKE_LIMIT, max_folds=1)
    res1 = run_experiment(cfg1, run, cache_dir=cache_dir, progress=False, write_report=False)
    assert [f["train_seconds"] for f in res1["folds"]] == [12345.0]
    # Different settings do not reuse old folds.
    cfg2 = default_config(tess_dir, "logreg", "cv5", per_class_limit=SMOKE_LIMIT, max_folds=2,
                          seed=1)
    res2 = run_experiment(cfg2, run, cache_dir=cache_dir, progress=False, write_report=False)
    assert res2["folds"][0]["train_seconds"] != 12345.0


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_real_training_clearly_beats_chance(tess_dir: Path, cache_dir: Path,
                                            tmp_path: Path) -> None:
    # 20 words x 7 emotions x 2 actresses = 280 files, 2 of 5 stratified folds; chance = 1/7.
    base = dict(per_class_limit=20, max_folds=2)
    lr = run_experiment(default_config(tess_dir, "logreg", "cv5", **base), tmp_path / "lr",
                        cache_dir=cache_dir, progress=False, write_report=False)
    assert lr["summary"]["accuracy_mean"] > 0.6
    # A deep model too: paper 1's CNN (narrower; the LSTMs are too slow for a unit test).
    cnn = run_experiment(
        default_config(tess_dir, "cnn", "cv5", epochs=30, per_class_limit=20, max_folds=1,
                       model_config={"filters": 16, "dense": (64, 32)}),
        tmp_path / "cnn", cache_dir=cache_dir, threads=2, progress=False, write_report=False,
    )
    assert cnn["summary"]["accuracy_mean"] > 0.6
    # The learning curve goes the right way.
    hist = cnn["folds"][0]["history"]
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]


def test_speaker_normalisation_standardises_each_speaker() -> None:
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(5, 2, (50, 4)), rng.normal(-3, 0.5, (50, 4))])
    z = speaker_normalise(x, ["a"] * 50 + ["b"] * 50)
    for part in (z[:50], z[50:]):
        assert np.allclose(part.mean(0), 0, atol=1e-5)
        assert np.allclose(part.std(0), 1, atol=1e-3)
    images = rng.normal(2, 3, (10, 1, 4, 6))
    zi = speaker_normalise(images, ["a"] * 10)
    assert np.allclose(zi.mean(axis=(0, 3)), 0, atol=1e-5)  # per band, over items and time


def test_bad_settings_are_clear_errors(tess_dir: Path) -> None:
    with pytest.raises(ValueError, match="unknown model"):
        default_config(tess_dir, "resnet", "cv5")
    with pytest.raises(ValueError, match="unknown protocol"):
        default_config(tess_dir, "hybrid", "loso")
    with pytest.raises(ValueError, match="unknown norm"):
        default_config(tess_dir, "hybrid", "cv5", norm="global")
    cfg = default_config(tess_dir, "hybrid", "cv5")
    assert (cfg.epochs, cfg.lr, cfg.batch_size) == (50, 1e-3, 32)  # the paper's settings


def test_training_options_beyond_the_papers_recipe(tess_dir: Path) -> None:
    """Options at their default leave the run key alone (old runs still resume); set, they
    change it and appear in the table's settings column."""
    base = default_config(tess_dir, "hybrid", "cv5")
    assert base.key() == default_config(tess_dir, "hybrid", "cv5", label_smoothing=0.0,
                                        weight_decay=0.0, lr_schedule="constant").key()
    assert "label_smoothing" not in base._dict() and "weight_decay" not in base._dict()
    tuned = default_config(tess_dir, "hybrid", "cv5", lr_schedule="cosine", label_smoothing=0.1,
                           weight_decay=0.05, model_config={"bidirectional": True})
    assert len({base.key(), tuned.key()}) == 2
    assert run_settings(asdict(tuned)) == (
        "bidirectional, lr=cosine, label_smoothing=0.1, weight_decay=0.05")
    assert run_settings(asdict(base)) == ""


def test_weight_decay_shrinks_weights_and_smoothing_softens_targets(tess_dir: Path) -> None:
    """Same data, seed and epochs: AdamW decay gives a smaller weight norm, and label smoothing
    keeps the training loss above what plain cross-entropy reaches."""
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(len(EMOTIONS)), 12)
    x = rng.normal(0, 1, (len(y), 187)).astype(np.float32) + y[:, None] * 0.5
    tiny = MODELS["cnn"].tiny

    def fit(**opts: float) -> tuple[float, float]:
        cfg = default_config(tess_dir, "cnn", "cv5", epochs=30, model_config=tiny, **opts)
        model, hist = train_torch(cfg, x, y, None, None, torch.device("cpu"), seed=0,
                                  progress=False)
        norm = sum(float(p.detach().pow(2).sum()) for p in model.parameters())
        return norm, hist[-1]["train_loss"]

    plain_norm, plain_loss = fit()
    decay_norm, _ = fit(weight_decay=5.0)  # lr 1e-3: ~0.995 per step
    _, smooth_loss = fit(label_smoothing=0.3)
    assert decay_norm < 0.9 * plain_norm
    assert smooth_loss > plain_loss + 0.1


def test_device_resolution() -> None:
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="cuda"):
            resolve_device("cuda")


@pytest.mark.timeout(120)
def test_cuda_run(tess_dir: Path, cache_dir: Path, tmp_path: Path) -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device on this machine")
    cfg = default_config(tess_dir, "hybrid", "cv5", epochs=1, per_class_limit=SMOKE_LIMIT,
                         max_folds=1, model_config=MODELS["hybrid"].tiny)
    res = run_experiment(cfg, tmp_path / "run", device="cuda", cache_dir=cache_dir,
                         progress=False, write_report=False)
    assert res["config"]["device"].startswith("cuda")


def test_cli_choices_mirror_the_registries() -> None:
    from train import experiments_cli

    assert experiments_cli.MODEL_CHOICES == tuple(MODELS)
    assert experiments_cli.PROTOCOL_CHOICES == tuple(PROTOCOLS)


@pytest.mark.timeout(180)
def test_cli_run_and_paper_write_results(tess_dir: Path, cache_dir: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    from emotion_monitor.cli import main

    common = ["--data", str(tess_dir), "--per-class-limit", str(SMOKE_LIMIT), "--max-folds", "2",
              "--cache", str(cache_dir), "--quiet"]
    rc = main(["train", "run", "--model", "logreg", "--protocol", "word-disjoint",
               "-o", str(tmp_path / "one"), *common])
    assert rc == 0
    assert "held-out accuracy" in capsys.readouterr().out
    assert (tmp_path / "one" / "results.json").exists()

    pub = tmp_path / "pub"
    pub.mkdir()
    (pub / "README.md").write_text(
        "# R\n\n<!-- results-table:start -->\nSTALE-TABLE\n<!-- results-table:end -->\n\nmy notes\n"
    )
    rc = main(["train", "paper", "--models", "logreg", "--protocols", "cv5,speaker-independent",
               "-o", str(tmp_path / "paper"), "--publish", str(pub), *common])
    assert rc == 0
    rows = json.loads((pub / "tess.json").read_text())
    assert [(r["model"], r["protocol"]) for r in rows] == [
        ("logreg", "cv5"), ("logreg", "speaker-independent")
    ]
    for r in rows:
        assert {"model", "protocol", "folds", "accuracy_mean", "accuracy_std",
                "f1_weighted_mean", "paper_accuracy", "train_seconds", "device"} <= set(r)
    readme = (pub / "README.md").read_text()
    assert "my notes" in readme and "| logreg | cv5 |" in readme and "STALE-TABLE" not in readme
    assert (tmp_path / "paper" / "report.html").exists()

    # A variant (constructor overrides) is a row of its own, labelled with its settings.
    rc = main(["train", "paper", "--models", "logreg", "--protocols", "cv5",
               "--model-config", 'logreg={"C": 0.5}', "-o", str(tmp_path / "paper-c"),
               "--publish", str(pub), *common])
    assert rc == 0
    rows = json.loads((pub / "tess.json").read_text())
    assert [(r["model"], r["protocol"], r["settings"]) for r in rows] == [
        ("logreg", "cv5", ""), ("logreg", "cv5", "C=0.5"), ("logreg", "speaker-independent", "")
    ]
    assert "| C=0.5 |" in (pub / "README.md").read_text()
    assert main(["train", "paper", "--models", "logreg", "--model-config", "logreg=[1]",
                 *common]) == 2

    with pytest.raises(SystemExit):
        main(["train", "run", "--model", "nope", *common])
