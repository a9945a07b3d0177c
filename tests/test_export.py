"""Export: run dir -> TorchScript file with forward/explain and the model card."""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from train.corpus import EMOTIONS
from train.export import (
    ExportError,
    export,
    load_model,
    read_card,
    reshape_features,
)
from train.streaming_model import StreamingCNNLSTM, StreamingConfig
from train.streaming_train import TrainConfig, write_config

TINY = StreamingConfig(channels=(4, 8, 8, 8), lstm_hidden=16)
N = TINY.n_samples


@pytest.fixture(scope="module")
def waves() -> torch.Tensor:
    return 0.1 * torch.randn(3, N, generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def streaming_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, StreamingCNNLSTM]:
    run = tmp_path_factory.mktemp("run") / "tiny-stream"
    torch.manual_seed(0)
    model = StreamingCNNLSTM(TINY).eval()
    write_config(run, TINY, TrainConfig(epochs=1), "tess")
    torch.save(model.state_dict(), run / "final.pt")
    fold = {"clip": {"accuracy": 0.5, "uar": 0.5},
            "stream": {"accuracy": 0.4, "protocol": "stream: test"}}
    (run / "folds" / "cv5").mkdir(parents=True)
    for i in range(2):  # a run stopped after 2 of 5 folds: the card says so
        (run / "folds" / "cv5" / f"{i}.json").write_text(json.dumps(fold))
    return run, model


@pytest.fixture(scope="module")
def exported(streaming_run, tmp_path_factory) -> Path:
    run, _ = streaming_run
    return export(run, tmp_path_factory.mktemp("models") / "tiny.pt")


def test_saved_file_gives_the_same_outputs(streaming_run, exported, waves) -> None:
    _, model = streaming_run
    loaded = load_model(exported)
    with torch.no_grad():
        assert torch.allclose(loaded(waves), model(waves), atol=1e-5)
        for a, b in zip(loaded.explain(waves), model.explain(waves), strict=True):
            assert torch.allclose(a, b, atol=1e-5)
        probs = loaded(waves)
    assert torch.allclose(probs.sum(dim=1), torch.ones(3), atol=1e-5)


def test_card_round_trips(streaming_run, exported) -> None:
    card = read_card(exported)
    extra = {"model_card.json": ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.load(str(exported), _extra_files=extra)
    assert json.loads(extra["model_card.json"]) == card
    assert json.loads(exported.with_suffix(".card.json").read_text()) == card
    assert card["classes"] == list(EMOTIONS)
    assert card["explain_method"] == "gradcam"
    assert card["sample_rate"] == 16000 and card["window_s"] == 3.0
    assert card["features"]["n_mels"] == TINY.n_mels
    assert card["features"]["hop_length"] == TINY.hop_length
    assert card["parameters"] == sum(p.numel() for p in streaming_run[1].parameters())
    assert card["metrics"]["cv5"]["accuracy_mean"] == 0.5
    assert card["metrics"]["cv5"]["folds"] == 2 and not card["metrics"]["cv5"]["complete"]
    assert "stream" in card["metrics"]
    assert card["torch_version"] == torch.__version__


def test_wrong_input_is_a_clear_error(exported) -> None:
    loaded = load_model(exported)
    for shape in [(1, N - 1), (N,)]:
        with pytest.raises(Exception, match="expected"):
            loaded(torch.zeros(shape))


def test_batch_equals_singles_after_load(exported, waves) -> None:
    loaded = load_model(exported)
    with torch.no_grad():
        batch = loaded(waves)
        singles = torch.cat([loaded(waves[i:i + 1]) for i in range(3)])
    assert torch.allclose(batch, singles, atol=1e-5)


def test_bad_sources_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="config.json"):
        export(tmp_path, tmp_path / "x.pt")
    (tmp_path / "config.json").write_text(json.dumps({"kind": "streaming",
                                                      "model": TINY.to_dict(),
                                                      "train": TrainConfig().to_dict()}))
    with pytest.raises(ExportError, match="final.pt"):
        export(tmp_path, tmp_path / "x.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a model")
    with pytest.raises(ExportError, match="not a TorchScript"):
        read_card(junk)


def test_cli_export_and_show(streaming_run, tmp_path: Path, capsys) -> None:
    from emotion_monitor.cli import main

    run, _ = streaming_run
    out = tmp_path / "cli.pt"
    assert main(["export", str(run), "-o", str(out), "--name", "cli-test"]) == 0
    assert read_card(out)["name"] == "cli-test"
    capsys.readouterr()
    assert main(["models", "show", str(out)]) == 0
    text = capsys.readouterr().out
    assert "cli-test" in text and "gradcam" in text and "angry" in text
    assert main(["models", "show", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["name"] == "cli-test"
    assert main(["models", "show", str(tmp_path / "missing.pt")]) == 2


# ---------------------------------------------------------------- paper models

def _paper_run(tmp: Path, name: str) -> tuple[Path, torch.nn.Module]:
    from train.paper_models import MODELS, build_model

    spec = MODELS[name]
    torch.manual_seed(0)
    net = build_model(name, len(EMOTIONS), **spec.tiny).eval()
    run = tmp / f"{name}-cv5"
    run.mkdir(parents=True)
    torch.save(net.state_dict(), run / "model.pt")
    (run / "config.json").write_text(json.dumps({
        "kind": "paper", "model": name, "model_config": spec.tiny, "feature": spec.feature,
        "classes": list(EMOTIONS), "model_file": "model.pt",
        "run": {"protocol": "cv5", "norm": "fold", "data": "tess", "epochs": 1},
        "paper": {"source": spec.paper},
    }))
    return run, net


@pytest.mark.parametrize("name,method", [("cnn", "saliency"), ("mel-lstm", "saliency"),
                                         ("vit", "vit-tokens"), ("beit", "vit-tokens")])
def test_paper_model_export(tmp_path: Path, waves: torch.Tensor, name: str, method: str) -> None:
    from train.experiments import _shape_output, front_end

    run, net = _paper_run(tmp_path, name)
    path = export(run, tmp_path / f"{name}.pt")
    card = read_card(path)
    assert card["explain_method"] == method and card["classes"] == list(EMOTIONS)
    loaded = load_model(path)
    front, _, _ = front_end(card["features"]["feature"])
    with torch.no_grad():
        feats = front(waves)
        if card["features"]["feature"] != "vector":
            feats = torch.from_numpy(_shape_output(card["features"]["feature"], feats.numpy()))
        expected = torch.softmax(net(feats), dim=-1)
        assert torch.allclose(loaded(waves), expected, atol=1e-5)
    with torch.jit.optimized_execution(False):
        logits, acts, spec = loaded.explain(waves.clone().requires_grad_(method == "saliency"))
    wrt = spec if method == "saliency" else acts
    (grad,) = torch.autograd.grad(logits[:, 1].sum(), wrt)
    assert grad.abs().sum() > 0
    if method == "vit-tokens":
        assert acts.dim() == 4 and acts.shape[0] == 3


@pytest.mark.parametrize("feature,shape", [("image", (2, 1, 128, 129)),
                                           ("delta", (2, 3, 64, 301))])
def test_reshape_matches_training(feature: str, shape: tuple[int, ...]) -> None:
    from train.experiments import _shape_output

    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    ours = reshape_features(feature, x).numpy()
    np.testing.assert_allclose(ours, _shape_output(feature, x.numpy()), atol=1e-6)


def test_speaker_normalised_runs_are_refused(tmp_path: Path) -> None:
    run, _ = _paper_run(tmp_path, "cnn")
    cfg = json.loads((run / "config.json").read_text())
    cfg["run"]["norm"] = "speaker"
    (run / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ExportError, match="per-speaker"):
        export(run, tmp_path / "x.pt")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_export_a_real_paper_run(tess_dir, tmp_path: Path) -> None:
    """train.experiments' own run dir (tiny CNN, 1 fold, 1 epoch) exports and serves."""
    from train.experiments import RunConfig, run_experiment
    from train.paper_models import MODELS

    cfg = RunConfig(data=str(tess_dir), model="cnn", protocol="cv5", epochs=1, lr=1e-3,
                    batch_size=8, max_folds=1, per_class_limit=3,
                    model_config=dict(MODELS["cnn"].tiny))
    run_experiment(cfg, tmp_path / "run", device="cpu", threads=1, progress=False,
                   write_report=False)
    path = export(tmp_path / "run", tmp_path / "cnn.pt")
    loaded = load_model(path)
    with torch.no_grad():
        probs = loaded(0.05 * torch.randn(2, 48000))
    assert probs.shape == (2, 7)
    assert torch.allclose(probs.sum(dim=1), torch.ones(2), atol=1e-5)
    assert read_card(path)["metrics"]["cv5"]["folds"] == 1


def _confidence_results(floor: float) -> dict:
    def curve(cov: float, acc: float) -> dict:
        return {"accuracy": 0.6, "auroc": 0.7, "n": 10,
                "floors": {f"{floor:.2f}": {"coverage": cov, "accuracy": acc}}}
    return {"chosen_floor": floor, "tau_s": 1.0, "target": 0.8,
            "tests": {"ravdess-ai: fold 0": {"ravdess": {"episodes": curve(0.5, 0.8),
                                                         "shuffled": curve(0.4, 0.7)}},
                      "ravdess-ai: fold 1": {"ravdess": {"episodes": curve(0.7, 0.9),
                                                         "shuffled": curve(0.4, 0.7)}}}}


def test_the_confidence_floor_goes_into_the_card(streaming_run, tmp_path) -> None:
    """`export --confidence RESULTS`: the probe's chosen floor and its held-out figures
    (episodes order, mean over splits) become the card's display block; a floor outside
    [0, 1) is refused."""
    from train.export_cli import _export

    run, _ = streaming_run
    res = tmp_path / "confidence.json"
    res.write_text(json.dumps(_confidence_results(0.55)))
    out = tmp_path / "m.pt"
    args = argparse.Namespace(run_dir=str(run), output=str(out), name=None, version=None,
                              encoder=None, confidence=str(res), site_head=None)
    assert _export(args) == 0
    display = read_card(out)["display"]
    assert display["min_confidence"] == 0.55 and display["averaged_over_s"] == 1.0
    held = display["heldout"]["ravdess"]
    assert held["labelled"] == pytest.approx(0.6) and held["right_when_labelled"] == 0.85
    assert held["splits"] == 2
    res.write_text(json.dumps(_confidence_results(1.0)))
    assert _export(args) == 2
