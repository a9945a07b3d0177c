"""The served Whisper-encoder model: contract, scripting, batching, saliency, export."""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from streamer.gradcam import class_activation_maps
from streamer.model import ServedModel
from train.export import ExportError, export, read_card
from train.whisper import WhisperLogMel, load_encoder
from train.whisper_emotion import (
    WhisperEmotion,
    WhisperEmotionConfig,
    block_features,
    build,
    pool,
    voiced_pool,
    voiced_weights,
)

N = 48_000


def _script(m: torch.nn.Module) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.script(m)


def _waves(b: int = 3) -> torch.Tensor:
    """Windows with voiced bursts and silence, so voiced pooling has something to drop."""
    g = torch.Generator().manual_seed(0)
    t = torch.arange(N) / 16_000
    out = []
    for i in range(b):
        tone = sum(torch.sin(2 * torch.pi * k * (150 + 40 * i) * t) / k for k in range(1, 8))
        env = ((t > 0.4 + 0.2 * i) & (t < 2.0 + 0.2 * i)).float()
        out.append(0.2 * tone * env + 1e-4 * torch.randn(N, generator=g))
    return torch.stack(out)


@pytest.fixture(scope="module")
def model(whisper_checkpoint: Path) -> WhisperEmotion:
    m = build(str(whisper_checkpoint), WhisperEmotionConfig(n_blocks=1))
    rng = np.random.default_rng(0)
    m.set_head(rng.normal(0, 0.1, 768), rng.uniform(0.5, 2, 768), rng.normal(0, 0.1, (7, 768)),
               rng.normal(0, 0.1, 7))
    return m


def test_probabilities_and_shapes(model: WhisperEmotion) -> None:
    x = _waves()
    with torch.no_grad():
        p = model(x)
        logits, acts, spec = model.explain(x)
    assert p.shape == (3, 7) and torch.allclose(p.sum(1), torch.ones(3), atol=1e-6)
    assert acts.shape == (3, 384, 1, 150) and spec.shape == (3, 1, 80, 300)


def test_scripted_equals_eager(model: WhisperEmotion) -> None:
    s = _script(model)
    x = _waves()
    with torch.no_grad():
        assert torch.allclose(s(x), model(x), atol=1e-5)
        assert torch.allclose(s.embed(x), model.embed(x), atol=1e-4)


def test_batch_equals_singles(model: WhisperEmotion) -> None:
    x = _waves()
    with torch.no_grad():
        batch = model(x)
        singles = torch.cat([model(x[i:i + 1]) for i in range(3)])
    assert torch.allclose(batch, singles, atol=1e-5)


@pytest.mark.parametrize("shape", [(N,), (1, N - 1), (2, 1, N)])
def test_wrong_shapes_refused(model: WhisperEmotion, shape: tuple[int, ...]) -> None:
    s = _script(model)
    with pytest.raises(ValueError, match="expected"):
        model(torch.zeros(shape))
    with pytest.raises(torch.jit.Error, match="expected"):
        s(torch.zeros(shape))


def test_embed_is_what_training_features_hold(model: WhisperEmotion,
                                              whisper_checkpoint: Path) -> None:
    """The served model pools exactly as train.embeddings did for the head's block."""
    enc = load_encoder(whisper_checkpoint)
    x = _waves()
    with torch.no_grad():
        feats = block_features(enc, WhisperLogMel(), x)  # [B, pooling, block, 768]
        assert torch.allclose(model.embed(x), feats[:, 1, 0], atol=1e-4)


def test_voiced_pooling_drops_silence() -> None:
    states = torch.randn(2, 150, 4)
    every = voiced_pool(states, torch.ones(2, 150))  # population std; pool's is unbiased
    assert torch.allclose(every[:, :4], pool(states)[:, :4], atol=1e-6)
    assert torch.allclose(every[:, 4:] * (150 / 149) ** 0.5, pool(states)[:, 4:], atol=1e-5)
    mel = torch.full((1, 80, 300), -1.0)
    mel[:, :, 100:200] = 1.0  # loud frames 100-199 -> positions 50-99
    w = voiced_weights(mel, 150)
    assert w.sum() == 50 and w[0, 50:100].all()
    only = voiced_pool(states[:1], w)
    assert torch.allclose(only[0, :4], states[0, 50:100].mean(0), atol=1e-5)


def test_saliency_is_a_time_by_frequency_map(model: WhisperEmotion) -> None:
    s = _script(model)
    probs, tgt, cam, _, spec = class_activation_maps(s, _waves(2), method="saliency")
    assert cam.shape == (2, 80, 300) and spec.shape == (2, 80, 300)
    assert float(cam.min()) >= 0 and torch.allclose(cam.amax(dim=(1, 2)), torch.ones(2))
    # the map varies over both axes (which band, which moment)
    assert float(cam.std(dim=1).mean()) > 0 and float(cam.std(dim=2).mean()) > 0


def _run_dir(tmp: Path, encoder: Path, n_blocks: int = 1) -> Path:
    run = tmp / "whisper-run"
    run.mkdir()
    rng = np.random.default_rng(1)
    np.savez(run / "head.npz", mean=rng.normal(0, 1, 768).astype(np.float32),
             std=np.ones(768, np.float32), weight=rng.normal(0, .1, (7, 768)).astype(np.float32),
             bias=np.zeros(7, np.float32))
    cfg = {"kind": "whisper", "model": WhisperEmotionConfig(n_blocks=n_blocks).to_dict(),
           "encoder": str(encoder), "classes": ["angry", "disgust", "fear", "happy", "neutral",
                                                "sad", "surprise"],
           "trained_on": ["tess", "ravdess"], "n_train": 10, "choice_label": "test"}
    (run / "config.json").write_text(json.dumps(cfg))
    summary = [{"protocol": "ravdess-ai", "test": "ravdess", "setting": "4 actor folds",
                "speaker_norm": False, "folds": 4, "classes": ["angry"], "clean_accuracy": 0.5,
                "clean_uar": 0.5, "clean_macro_f1": 0.5, "ulaw_accuracy": 0.4,
                "ulaw_uar": 0.4}]
    (run / "results.json").write_text(json.dumps({"summary": summary}))
    return run


def test_export_and_serve(tmp_path: Path, whisper_checkpoint: Path) -> None:
    path = export(_run_dir(tmp_path, whisper_checkpoint), tmp_path / "w.pt")
    card = read_card(path)
    assert card["explain_method"] == "saliency"
    assert card["features"]["mel_scale"] == "slaney" and card["features"]["n_mels"] == 80
    assert card["metrics"]["ravdess-ai: ravdess (4 actor folds)"]["telephone_accuracy"] == 0.4
    served = ServedModel.load(path, device="cpu")
    p = served.predict(_waves(2).numpy())
    assert p.shape == (2, 7) and np.allclose(p.sum(1), 1, atol=1e-5)
    assert path.stat().st_size < 20e6


def test_export_needs_the_encoder(tmp_path: Path, whisper_checkpoint: Path) -> None:
    run = _run_dir(tmp_path, tmp_path / "missing.pt")
    with pytest.raises(ExportError, match="not found"):
        export(run, tmp_path / "w.pt")
    assert export(run, tmp_path / "w.pt", encoder=whisper_checkpoint).exists()


# ---------------------------------------------------------------- per-stream normalisation

def _stream_model(tmp: Path, encoder: Path) -> Path:
    run = _run_dir(tmp, encoder)
    rng = np.random.default_rng(2)
    with np.load(run / "head.npz") as z:
        arrays = dict(z)
    arrays.update(spk_mean=np.zeros(768, np.float32), spk_std=np.ones(768, np.float32),
                  spk_weight=rng.normal(0, .3, (7, 768)).astype(np.float32),
                  spk_bias=np.zeros(7, np.float32),
                  prior_mean=rng.normal(0, 1, 768).astype(np.float32),
                  prior_std=rng.uniform(0.5, 2, 768).astype(np.float32))
    np.savez(run / "head.npz", **arrays)
    return export(run, tmp / "stream.pt")


@pytest.fixture(scope="module")
def stream_model(whisper_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory):
    return ServedModel.load(_stream_model(tmp_path_factory.mktemp("sn"), whisper_checkpoint),
                            device="cpu")


def test_stream_moments_equal_the_training_formula(stream_model) -> None:
    from train.crosscorpus import shrunk_moments

    m = stream_model.module
    rng = np.random.default_rng(0)
    count = np.array([1.0, 3.0, 40.0])
    total = rng.normal(0, 5, (3, 768))
    sq = total ** 2 / count[:, None] + rng.uniform(0, 3, (3, 768)) * count[:, None]
    mean, std = m.stream_moments(torch.tensor(count).float(), torch.tensor(total).float(),
                                 torch.tensor(sq).float())
    ref_m, ref_s = shrunk_moments(count, total, sq, m.prior_mean.numpy(), m.prior_std.numpy(),
                                  stream_model.card["stream_norm"]["prior_windows"])
    assert np.allclose(mean.numpy(), ref_m, atol=1e-4) and np.allclose(std.numpy(), ref_s,
                                                                       rtol=1e-4, atol=1e-4)


def test_stream_norm_is_batch_invariant_and_per_stream(stream_model) -> None:
    from streamer.stream_norm import StreamNorm, supported

    assert supported(stream_model)
    x = _waves(3).numpy()
    together = StreamNorm(stream_model)
    p_all, _, _ = together.predict(["a", "b", "a"], x)
    apart = StreamNorm(stream_model)
    p0, _, _ = apart.predict(["a"], x[:1])
    p1, _, _ = apart.predict(["b"], x[1:2])
    p2, _, _ = apart.predict(["a"], x[2:3])
    assert np.allclose(p_all, np.concatenate([p0, p1, p2]), atol=1e-5)
    # stream b's statistics never include a's windows (no data crosses streams)
    alone = StreamNorm(stream_model)
    pb, _, _ = alone.predict(["b"], x[1:2])
    assert np.allclose(pb, p1, atol=1e-5)
    assert together.windows_seen("a") == 2 and together.windows_seen("b") == 1
    together.end_stream("a")
    assert together.windows_seen("a") == 0


def test_balanced_moments_weigh_each_emotion_the_same() -> None:
    from streamer.stream_norm import balanced_moments

    rng = np.random.default_rng(1)
    x = rng.normal(0, 2, (12, 4))
    # the same emotion weights on every window: every emotion's moments are the plain ones
    probs = np.tile([0.5, 0.3, 0.2], (12, 1))
    mean, square = balanced_moments(probs.sum(0), (probs[:, :, None] * x[:, None]).sum(0),
                                    (probs[:, :, None] * (x * x)[:, None]).sum(0))
    assert np.allclose(mean, x.mean(0)) and np.allclose(square, (x * x).mean(0))
    # 9 windows of one emotion at +1, 3 of another at -1: the plain mean is 0.5; balanced,
    # each emotion weighs n / (n + 1): (0.9 - 0.75) / 1.65
    x = np.r_[np.ones(9), -np.ones(3)][:, None]
    probs = np.r_[np.tile([1.0, 0.0], (9, 1)), np.tile([0.0, 1.0], (3, 1))]
    mean, square = balanced_moments(probs.sum(0), (probs[:, :, None] * x[:, None]).sum(0),
                                    (probs[:, :, None] * (x * x)[:, None]).sum(0))
    assert np.allclose(mean, 0.15 / 1.65) and np.allclose(square, 1.0)


def test_stream_norm_uses_the_balanced_moments_of_its_stream(stream_model) -> None:
    from streamer.stream_norm import StreamNorm, balanced_moments
    from train.crosscorpus import shrunk_moments

    m = stream_model.module
    x = _waves(3).numpy()
    norm = StreamNorm(stream_model)
    _, mean, std = norm.predict(["a", "a", "a"], x)
    with torch.inference_mode():
        f = m.embed(torch.from_numpy(x)).double().numpy()
        probs = torch.softmax(m.classify(torch.from_numpy(f).float()), -1).double().numpy()
    k = 3
    bal_mean, bal_sq = balanced_moments(probs.sum(0), (probs[:, :, None] * f[:, None]).sum(0),
                                        (probs[:, :, None] * (f * f)[:, None]).sum(0))
    ref_m, ref_s = shrunk_moments(np.array([k]), k * bal_mean[None], k * bal_sq[None],
                                  m.prior_mean.numpy(), m.prior_std.numpy(),
                                  stream_model.card["stream_norm"]["prior_windows"])
    assert np.allclose(mean[2].numpy(), ref_m[0], atol=1e-4)
    assert np.allclose(std[2].numpy(), ref_s[0], rtol=1e-3, atol=1e-4)


def test_engine_explains_the_label_it_sent(stream_model) -> None:
    from streamer.engine import Engine
    from streamer.windows import Window

    assert Engine(stream_model, vad=None, explain_every=0).norm is None  # off by default
    engine = Engine(stream_model, vad=None, explain_every=1, stream_norm=True)
    x = _waves(3).numpy()
    wins = [Window("s", i, 0.5 * i, 0.5 * i + 3, 0.0, time.perf_counter(), x[i], 8000 * i, N)
            for i in range(3)]
    msgs = engine.process(wins)
    preds = [m for m in msgs if m["type"] == "prediction"]
    expls = [m for m in msgs if m["type"] == "explanation"]
    assert len(preds) == 3 and len(expls) == 3
    for p, e in zip(preds, expls, strict=True):
        top = max(p["probabilities"], key=p["probabilities"].get)
        assert e["class"] == top
    off = Engine(stream_model, vad=None, explain_every=0, stream_norm=False)
    assert off.norm is None
    glob = off.process(wins)
    assert [m["probabilities"] for m in glob] != [p["probabilities"] for p in preds]


def test_models_without_stream_norm_are_served_as_before(tiny_model_path: Path) -> None:
    from streamer.stream_norm import StreamNorm, supported

    plain = ServedModel.load(tiny_model_path, "cpu")
    assert not supported(plain)
    with pytest.raises(ValueError, match="no per-stream normalisation"):
        StreamNorm(plain)


# ---------------------------------------------------------------- per-site calibration

def _site_arrays(seed: int = 4) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"site_mean": rng.normal(0, .2, 768).astype(np.float32),
            "site_std": rng.uniform(.5, 2, 768).astype(np.float32),
            "site_weight": rng.normal(0, .3, (7, 768)).astype(np.float32),
            "site_bias": rng.normal(0, .1, 7).astype(np.float32)}


@pytest.fixture(scope="module")
def site_model_path(whisper_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("site")
    run = _run_dir(tmp, whisper_checkpoint)
    with np.load(run / "head.npz") as z:
        arrays = dict(z)
    np.savez(run / "head.npz", **arrays, **_site_arrays())
    return export(run, tmp / "site-model.pt")


def test_calibrated_file_is_the_site_head_over_site_statistics(
        site_model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import soundfile as sf

    from streamer import calibrate as cal

    monkeypatch.setattr(cal, "MIN_WINDOWS", 3)
    rec = tmp_path / "site"
    rec.mkdir()
    waves = _waves(6).numpy()
    for i in range(4):  # 3.0 s each: exactly one window per file and channel
        sf.write(rec / f"call{i}.wav", waves[i], 16_000, subtype="FLOAT")
    sf.write(rec / "stereo.wav", waves[4:6].T, 16_000, subtype="FLOAT")  # two voices
    (rec / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    out = cal.calibrate(site_model_path, [rec], tmp_path / "calibrated.pt", vad=None,
                        progress=False)
    card = read_card(out)
    assert card["site"]["voiced_windows"] == 6 and card["site"]["files"] == 5
    assert list(card["site"]["skipped"]) == [str(rec / "broken.wav")]
    assert "display" not in card and card["name"].endswith("-site")
    model = ServedModel.load(site_model_path, "cpu", precision="float32")
    with torch.inference_mode():
        f = model.module.embed(torch.from_numpy(waves)).double().numpy()
    mean, std = f.mean(0), f.std(0)
    s = _site_arrays()
    x = _waves(3)
    with torch.inference_mode():
        z = (model.module.embed(x).double().numpy() - mean) / (std + 1e-5)
    logits = ((z - s["site_mean"]) / s["site_std"]) @ s["site_weight"].T + s["site_bias"]
    expected = torch.softmax(torch.from_numpy(logits), -1).numpy()
    calibrated = ServedModel.load(out, "cpu", precision="float32")
    assert np.allclose(calibrated.predict(x.numpy()), expected, atol=1e-4)
    assert not np.allclose(model.predict(x.numpy()), expected, atol=1e-3)  # it did change
    # the explanation path serves the calibrated head too
    logits_e, _, _ = calibrated.explain(x.numpy())
    assert np.allclose(torch.softmax(logits_e.detach(), -1).numpy(), expected, atol=1e-4)


def test_calibrate_refuses_what_it_cannot_do(site_model_path: Path, tiny_model_path: Path,
                                             tmp_path: Path) -> None:
    import soundfile as sf

    from streamer.calibrate import CalibrationError, calibrate

    rec = tmp_path / "few"
    rec.mkdir()
    sf.write(rec / "one.wav", _waves(1).numpy()[0], 16_000)
    out = tmp_path / "out.pt"
    with pytest.raises(CalibrationError, match="at least"):  # 1 window: too few
        calibrate(site_model_path, [rec], out, vad=None, progress=False)
    with pytest.raises(CalibrationError, match="no site head"):
        calibrate(tiny_model_path, [rec], out, vad=None, progress=False)
    with pytest.raises(CalibrationError, match="overwrite"):
        calibrate(site_model_path, [rec], site_model_path, vad=None, progress=False)
    assert not out.exists()


def test_re_export_adds_a_site_head(site_model_path: Path, whisper_checkpoint: Path,
                                    tmp_path: Path) -> None:
    np.savez(tmp_path / "site.npz", **_site_arrays(seed=9))
    out = export(site_model_path, tmp_path / "re.pt", encoder=whisper_checkpoint,
                 site_head=tmp_path / "site.npz")
    assert read_card(out)["site_norm"]
    module = torch.jit.load(str(out))
    assert np.allclose(module.site_head.weight.detach().numpy(), _site_arrays(9)["site_weight"])
    # the served head is untouched
    old = torch.jit.load(str(site_model_path))
    assert torch.equal(module.head.weight, old.head.weight)


def test_site_statistics_read_long_resampled_stereo_in_blocks(
        site_model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import soundfile as sf

    from streamer import calibrate as cal

    monkeypatch.setattr(cal, "BLOCK_S", 1.0)  # many blocks, resampled as a stream
    rng = np.random.default_rng(0)
    sf.write(tmp_path / "call.wav", 0.1 * rng.standard_normal((7 * 8000, 2)), 8000)
    model = ServedModel.load(site_model_path, "cpu", precision="float32")
    monkeypatch.setattr(cal, "MIN_WINDOWS", 1)
    stats = cal.site_statistics(model, [tmp_path], vad=None, progress=False)
    assert 18 <= stats.windows <= 20  # 7 s at hop 0.5: 9 full windows per channel
    assert stats.mean.shape == (768,) and np.isfinite(stats.std).all()
    sf.write(tmp_path / "nan.wav", np.full(8000, np.nan, np.float32), 8000, subtype="FLOAT")
    stats = cal.site_statistics(model, [tmp_path], vad=None, progress=False)
    assert list(stats.skipped.values()) == ["non-finite samples"]
