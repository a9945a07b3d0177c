"""streamer.engine: batched predictions equal the model's own output, unvoiced windows are not
classified, explanations every N voiced windows, valid protocol messages, failures contained."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch

from streamer import protocol
from streamer.engine import Engine
from streamer.model import ServedModel
from streamer.vad import VadConfig
from streamer.windows import Window, Windower
from tests.tiny_model import TinyModel
from tests.tiny_model import card as tiny_card

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


def _probs(msgs: list[dict], classes: list[str]) -> np.ndarray:
    return np.array([[m["probabilities"][c] for c in classes]
                     for m in msgs if m["type"] == "prediction"])


@pytest.mark.parametrize("every", [1, 2, 3])
def test_explained_predictions_come_from_the_explanation(model: ServedModel,
                                                         speech: np.ndarray,
                                                         every: int) -> None:
    """The model runs once per explained window (its prediction is the explanation's forward)
    and the predictions still equal forward()'s, in order, across parts of max_batch."""
    wa, wb = _windows("a", speech), _windows("b", speech[::-1].copy())
    batch = [w for pair in zip(wa, wb, strict=True) for w in pair]
    engine = Engine(model, vad=None, explain_every=every, max_batch=3)
    assert engine.fuses()
    calls = {"forward": 0}
    real = model.predict

    def counted(waves: np.ndarray) -> np.ndarray:
        calls["forward"] += len(waves)
        return real(waves)

    engine.model = type(model)(module=model.module, card=model.card, device=model.device)
    engine.model.predict = counted  # type: ignore[method-assign]
    msgs = engine.process(batch)
    n_explained = sum(m["type"] == "explanation" for m in msgs)
    assert n_explained == sum(len(range(0, len(w), every)) for w in (wa, wb))
    assert calls["forward"] == len(batch) - n_explained
    preds = [m for m in msgs if m["type"] == "prediction"]
    assert [(m["stream"], m["seq"]) for m in preds] == [(w.stream_id, w.seq) for w in batch]
    np.testing.assert_allclose(_probs(msgs, model.classes),
                               real(np.stack([w.samples for w in batch])), atol=1e-5)
    for m in msgs:  # each explanation after its own prediction
        if m["type"] == "explanation":
            assert msgs.index(m) > next(i for i, p in enumerate(msgs)
                                        if p["type"] == "prediction"
                                        and (p["stream"], p["seq"]) == (m["stream"], m["seq"]))


class _Calibrated(TinyModel):
    """forward() is a temperature-scaled softmax, not softmax(explain()'s logits)."""

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        logits, _, _ = self.explain(wave)
        return torch.softmax(logits / 4.0, dim=-1)


def test_a_forward_that_is_not_explains_softmax_is_run(speech: np.ndarray) -> None:
    torch.manual_seed(0)
    module = torch.jit.script(_Calibrated().eval())
    served = ServedModel(module=module, card=tiny_card(), device=torch.device("cpu"))
    engine = Engine(served, vad=None, explain_every=1)
    assert not engine.fuses()
    wins = _windows("s", speech)[:4]
    msgs = engine.process(wins)
    assert [m["type"] for m in msgs] == ["prediction"] * 4 + ["explanation"] * 4
    np.testing.assert_allclose(_probs(msgs, served.classes),
                               served.predict(np.stack([w.samples for w in wins])), atol=1e-5)


@pytest.mark.parametrize("stage", ["forward", "backward"])
def test_gradcam_failure_keeps_predictions(model: ServedModel, speech: np.ndarray,
                                           monkeypatch: pytest.MonkeyPatch, stage: str) -> None:
    """Grad-CAM failing in its forward (the predictions then come from forward()) or in its
    backward (after the predictions went out) costs the explanations only."""
    from streamer import gradcam

    def boom(*_a: object, **_k: object) -> None:
        raise RuntimeError("broken explainer")

    engine = Engine(model, vad=None, explain_every=1)
    assert engine.fuses()
    monkeypatch.setattr(*((gradcam, "start_explain", boom) if stage == "forward"
                          else (gradcam.ExplainPass, "finish", boom)))
    wins = _windows("s", speech)[:3]
    msgs = engine.process(wins)
    assert [m["type"] for m in msgs] == ["prediction"] * 3
    assert engine.stats["explain_errors"] == 1
    np.testing.assert_allclose(_probs(msgs, model.classes),
                               model.predict(np.stack([w.samples for w in wins])), atol=1e-5)


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
