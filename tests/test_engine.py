"""streamer.engine: batched predictions equal the model's own output, unvoiced windows are not
classified, explanations every N voiced windows, valid protocol messages, failures contained."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from streamer import protocol
from streamer.engine import Engine
from streamer.model import ServedModel
from streamer.vad import VadConfig
from streamer.windows import Window, Windower

SR = 16000


@pytest.fixture(scope="module")
def model(tiny_model_path: Path) -> ServedModel:
    return ServedModel.load(tiny_model_path, device="cpu")


@pytest.fixture(scope="module")
def speech(tess_dir: Path) -> np.ndarray:
    parts = []
    for path in sorted((tess_dir / "OAF_angry").glob("*.flac"))[:2]:
        x, rate = sf.read(str(path), dtype="float32")
        parts += [soxr.resample(x, rate, SR).astype(np.float32), np.zeros(SR // 2, np.float32)]
    return np.concatenate(parts)


def _windows(stream_id: str, x: np.ndarray) -> list[Window]:
    w = Windower(stream_id, SR, 3.0, 0.5)
    return w.push(x) + w.flush()


def test_predictions_equal_the_models_output(model: ServedModel, speech: np.ndarray) -> None:
    wa, wb = _windows("a", speech), _windows("b", speech[::-1].copy())
    batch = [w for pair in zip(wa, wb, strict=True) for w in pair]  # two streams, interleaved
    engine = Engine(model, vad=None, explain_every=0, max_batch=5)
    msgs = engine.process(batch)
    assert [m["type"] for m in msgs] == ["prediction"] * len(batch)
    expected = model.predict(np.stack([w.samples for w in batch]))
    for msg, win, row in zip(msgs, batch, expected, strict=True):
        protocol.validate(msg, "server")
        assert (msg["stream"], msg["seq"], msg["t_start"]) == (win.stream_id, win.seq, win.t_start)
        got = np.array([msg["probabilities"][c] for c in model.classes])
        np.testing.assert_allclose(got, row, atol=1e-5)
        assert msg["label"] == model.classes[int(np.argmax(row))]
        assert msg["wall_time"] == win.wall_time and msg["latency_ms"] >= 0


def test_unvoiced_windows_are_not_classified(model: ServedModel, speech: np.ndarray) -> None:
    silence = _windows("quiet", np.zeros(5 * SR, np.float32))
    talk = _windows("talk", speech)
    engine = Engine(model, vad=VadConfig("energy"), explain_every=1)
    msgs = engine.process(silence + talk)
    preds = [m for m in msgs if m["type"] == "prediction"]
    quiet = [m for m in preds if m["stream"] == "quiet"]
    assert quiet and all(not m["voiced"] and m["probabilities"] is None and m["label"] is None
                         for m in quiet)
    assert any(m["voiced"] for m in preds if m["stream"] == "talk")
    explained = {(m["stream"], m["seq"]) for m in msgs if m["type"] == "explanation"}
    voiced = {(m["stream"], m["seq"]) for m in preds if m["voiced"]}
    assert explained == voiced  # explain_every=1: every voiced window, never an unvoiced one


def test_explain_every_n_and_order(model: ServedModel, speech: np.ndarray) -> None:
    wins = _windows("s", speech)
    engine = Engine(model, vad=None, explain_every=2)
    sent: list[dict] = []
    msgs = engine.process(wins[:3], emit=sent.append) + engine.process(wins[3:], emit=sent.append)
    assert sent == msgs
    seqs = [m["seq"] for m in msgs if m["type"] == "explanation"]
    assert seqs == list(range(0, len(wins), 2))
    # within a batch, every prediction is emitted before any explanation
    first = engine.process(_windows("t", speech)[:4])
    kinds = [m["type"] for m in first]
    assert kinds == ["prediction"] * 4 + ["explanation"] * 2
    for m in first[4:]:
        protocol.validate(m, "server")
        assert len(json.dumps(m)) <= protocol.MAX_EXPLANATION_BYTES


def test_gradcam_failure_keeps_predictions(model: ServedModel, speech: np.ndarray,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from streamer import gradcam

    def boom(*_a: object, **_k: object) -> None:
        raise RuntimeError("broken explainer")

    monkeypatch.setattr(gradcam, "explain_windows", boom)
    engine = Engine(model, vad=None, explain_every=1)
    msgs = engine.process(_windows("s", speech)[:3])
    assert [m["type"] for m in msgs] == ["prediction"] * 3
    assert engine.stats["explain_errors"] == 1


def test_end_stream_resets_counters(model: ServedModel, speech: np.ndarray) -> None:
    engine = Engine(model, vad=None, explain_every=3)
    wins = _windows("s", speech)
    engine.process(wins[:2])
    engine.end_stream("s")
    msgs = engine.process(_windows("s", speech)[:1])
    assert [m["type"] for m in msgs] == ["prediction", "explanation"]
    assert engine.process([]) == []
    with pytest.raises(ValueError):
        Engine(model, explain_every=-1)
