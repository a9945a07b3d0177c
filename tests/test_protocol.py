"""Protocol v1: builders, the hand-written validator against jsonschema, the doc is current."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from streamer import protocol as p

REPO = Path(__file__).resolve().parents[1]


def _all_examples() -> list[dict]:
    return [*p.EXAMPLES.values(), p.EXAMPLE_UNVOICED]


def test_every_type_has_schema_and_example():
    assert set(p.SCHEMAS) == set(p.SERVER_TYPES) | set(p.CLIENT_TYPES)
    assert set(p.EXAMPLES) == set(p.SCHEMAS)
    for schema in p.SCHEMAS.values():
        jsonschema.Draft202012Validator.check_schema(schema)


@pytest.mark.parametrize("msg", _all_examples(), ids=lambda m: m["type"])
def test_examples_valid_by_both_validators(msg):
    p.validate(msg)
    jsonschema.validate(msg, p.SCHEMAS[msg["type"]])
    assert p.decode(p.encode(msg)) == msg


# Broken variants: each must be refused by the hand-written validator AND by jsonschema
# (except semantic rules, which jsonschema cannot state: marked semantic=True).
def _broken() -> list[tuple[str, dict, bool]]:
    ex = p.EXAMPLES
    cases = []

    def case(name, base, mutate, semantic=False):
        m = copy.deepcopy(base)
        mutate(m)
        cases.append((name, m, semantic))

    case("missing seq", ex["prediction"], lambda m: m.pop("seq"))
    case("negative seq", ex["prediction"], lambda m: m.update(seq=-1))
    case("seq is bool", ex["prediction"], lambda m: m.update(seq=True))
    case("unknown field", ex["prediction"], lambda m: m.update(extra=1))
    case("unvoiced with label", p.EXAMPLE_UNVOICED, lambda m: m.update(label="angry"))
    case("voiced without probs", ex["prediction"], lambda m: m.update(probabilities=None))
    case("prob > 1", ex["prediction"], lambda m: m["probabilities"].update(angry=1.5))
    case("label not argmax", ex["prediction"], lambda m: m.update(label="sad", confidence=0.05),
         semantic=True)
    case("t_end before t_start", ex["prediction"], lambda m: m.update(t_end=0.0),
         semantic=True)
    case("bad stream id", ex["prediction"], lambda m: m.update(stream="a b/../"))
    case("cam shape mismatch", ex["explanation"], lambda m: m["cam"].update(shape=[3, 3]),
         semantic=True)
    case("frame not base64", ex["explanation"], lambda m: m["cam"].update(data="@@@@"),
         semantic=True)
    case("axes length", ex["explanation"], lambda m: m["axes"].update(times_s=[0.0]),
         semantic=True)
    case("metrics missing", ex["explanation"], lambda m: m["metrics"].pop("entropy"))
    case("focus pair of 3", ex["explanation"],
         lambda m: m["metrics"].update(focus_time_s=[0, 1, 2]))
    case("dtype", ex["explanation"], lambda m: m["spectrogram"].update(dtype="float32"))
    case("replay without source", ex["replay"], lambda m: m.pop("path"))
    case("negative speed", ex["replay"], lambda m: m.update(speed=-1))
    case("subscribe streams int", ex["subscribe"], lambda m: m.update(streams=3))
    case("error unknown code", ex["error"], lambda m: m.update(code="oops"))
    case("status missing clients", ex["status"], lambda m: m.pop("clients"))
    case("stream_ended reason", ex["stream_ended"], lambda m: m.update(reason="bored"))
    case("upload_start of 0 bytes", ex["upload_start"], lambda m: m.update(bytes=0))
    case("upload_start without name", ex["upload_start"], lambda m: m.pop("name"))
    case("replay upload_id with a slash", ex["replay"],
         lambda m: (m.pop("path"), m.update(upload_id="up/1")))
    case("replay path and upload_id", ex["replay"], lambda m: m.update(upload_id="up-1"),
         semantic=True)
    return cases


@pytest.mark.parametrize("name,msg,semantic", _broken(), ids=[c[0] for c in _broken()])
def test_broken_messages_refused(name, msg, semantic):
    with pytest.raises(p.ProtocolError) as info:
        p.validate(msg)
    assert info.value.code == "invalid_message"
    if not semantic:
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(msg, p.SCHEMAS[msg["type"]])


def test_decode_error_codes():
    with pytest.raises(p.ProtocolError) as e:
        p.decode("{not json")
    assert e.value.code == "bad_json"
    with pytest.raises(p.ProtocolError) as e:
        p.decode("[1, 2]")
    assert e.value.code == "bad_json"
    with pytest.raises(p.ProtocolError) as e:
        p.decode(json.dumps({"type": "prediction", "v": "1"}), direction="client")
    assert e.value.code == "unknown_type"
    with pytest.raises(p.ProtocolError) as e:
        p.decode(json.dumps({"type": "ping", "v": "2"}), direction="client")
    assert e.value.code == "unsupported_version"
    with pytest.raises(ValueError):
        p.encode({"type": "ping", "v": "1", "t": float("nan")})


def test_prediction_builder_from_row_picks_argmax():
    classes = ["a", "b", "c"]
    m = p.prediction("s1", 3, 1.5, 4.5, 10.0, np.array([0.2, 0.5, 0.3]), 5.0, classes)
    assert m["label"] == "b" and m["confidence"] == pytest.approx(0.5)
    assert m["probabilities"] == pytest.approx({"a": 0.2, "b": 0.5, "c": 0.3})
    p.validate(m)
    u = p.prediction("s1", 4, 2.0, 5.0, 10.5, None, 1.0, voiced=False)
    assert u["label"] is None and u["probabilities"] is None
    p.validate(u)
    with pytest.raises(ValueError):
        p.prediction("s1", 0, 0, 3, 0, [0.5, 0.5], 1.0, classes)


def test_frame_roundtrip_and_size_bound():
    rng = np.random.default_rng(0)
    spec = rng.normal(size=(64, 100)) * 3
    cam = rng.uniform(size=(64, 100))
    fs, fc = p.encode_frame(spec, unit="log-mel"), p.encode_frame(cam, 0.0, 1.0)
    back = p.decode_frame(fs)
    assert back.shape == (64, 100)
    assert np.max(np.abs(back - spec)) <= (spec.max() - spec.min()) / 255 / 2 + 1e-5
    assert np.max(np.abs(p.decode_frame(fc) - cam)) <= 1 / 255
    metrics = dict(p.EXAMPLES["explanation"]["metrics"])
    m = p.explanation("s1", 0, "angry", "gradcam", metrics, fs, fc,
                      np.linspace(0, 3, 100), np.linspace(0, 8000, 64))
    p.validate(m)
    # The largest frame fits the 32 KB bound with room for metrics.
    assert len(p.encode(m).encode()) <= p.MAX_EXPLANATION_BYTES
    with pytest.raises(p.ProtocolError):
        big = p.encode_frame(rng.uniform(size=(65, 10)))
        p.validate(p.explanation("s1", 0, "angry", "gradcam", metrics, big, big,
                                 range(10), range(65)))


def test_client_builders_valid():
    p.validate(p.replay(upload_name="x.wav", upload_data=b"RIFF....", speed=0), "client")
    p.validate(p.subscribe("*"), "client")
    p.validate(p.ping(), "client")
    with pytest.raises(ValueError):
        p.replay()
    p.validate(p.upload_start("a.wav", 5, id="s"), "client")
    p.validate(p.replay(upload_id="up-1f", speed=0, id="r"), "client")
    p.validate(p.ack("upload_start", ref="s", upload_id="up-1f"), "server")
    with pytest.raises(ValueError):
        p.replay(path="a.wav", upload_id="up-1")
    chunks = list(p.upload_chunks(b"abcdefg", 3))
    assert [bytes(c) for c in chunks] == [b"abc", b"def", b"g"]


def test_protocol_is_torch_free():
    code = ("import sys, streamer.protocol; "
            "bad = [m for m in ('torch', 'numpy', 'websockets') if m in sys.modules]; "
            "sys.exit(1 if bad else 0)")
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0


def test_doc_is_current(tmp_path):
    doc = REPO / "docs" / "protocol.md"
    copy_ = tmp_path / "protocol.md"
    copy_.write_text(doc.read_text(encoding="utf-8"), encoding="utf-8")
    assert not p.update_doc(str(copy_)), \
        "docs/protocol.md is stale: python -m streamer.protocol --update-doc docs/protocol.md"
    for t in p.SCHEMAS:
        assert f"#### `{t}`" in doc.read_text(encoding="utf-8")
