"""Protocol v1 of the emotion-monitor websocket: builders and validators for every message.

Pure Python and torch-free on purpose: the dashboard imports only this module. The JSON Schemas
in ``SCHEMAS`` are the one definition of the protocol; ``docs/protocol.md`` embeds them (and
``EXAMPLES``) through ``python -m streamer.protocol --update-doc docs/protocol.md``, and a test
checks the doc is current.

Validation here is deliberately hand-written: ``_check_schema`` interprets the small subset of
JSON Schema these schemas use (type, const, enum, properties, required, additionalProperties,
maxProperties, items, min/max bounds, pattern, anyOf, if/then), so the module runs without
the ``jsonschema`` package; the tests cross-check every example against ``jsonschema``
itself. Rules a schema cannot state (label is the argmax, frame data length = F*T, axes
lengths) are in ``_SEMANTIC_CHECKS``.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import json
import math
import re
import reprlib
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

PROTOCOL_VERSION = "1"
#: Upper bound of one explanation message on the wire (the explanations issue).
MAX_EXPLANATION_BYTES = 32 * 1024
#: Upper bound of the explanation frames: F mel bands x T frames.
MAX_FRAME_F = 64
MAX_FRAME_T = 100

SERVER_TYPES = (
    "hello", "prediction", "explanation", "status", "stream_started", "stream_ended",
    "error", "ack", "pong", "dynamics",
)
#: ``upload_start`` opens a chunked upload (binary frames follow; docs/protocol.md).
CLIENT_TYPES = ("subscribe", "replay", "stop_stream", "ping", "upload_start")

ERROR_CODES = (
    "bad_json",            # the text was not a JSON object
    "invalid_message",     # well-formed JSON that breaks the message's schema
    "unknown_type",        # "type" is not a client message type
    "unsupported_version",  # "v" is not "1"
    "too_large",           # message or upload over the server's limit
    "forbidden",           # replay path outside the allowed directory, or replay disabled
    "not_found",           # replay path, stream id or upload id does not exist
    "bad_audio",           # the file is not audio libsndfile can read, or is empty
    "source_failed",       # a running source failed (microphone unplugged, read error)
    "limit_reached",       # too many streams
    "busy",                # too much in progress (uploads being received, file checks): retry
    "log_truncated",       # the session log reached its size cap: explanations no longer logged
    "internal",            # a bug on the server side; the connection stays usable
    # Added with chunked uploads; sent only about an upload the client opened (upload_start).
    "timeout",             # an upload sent no data for too long (or took too long): abandoned
)
END_REASONS = ("eof", "stopped", "error", "shutdown")
#: "call": audio pushed to the daemon's ingest websocket (a phone platform's Media Streams
#: fork, or the plain binary variant), one stream per track.
SOURCE_KINDS = ("mic", "file", "stdin", "upload", "call")
#: Who a stream is in its call: Media Streams' inbound track is the caller, outbound the agent.
CALL_ROLES = ("caller", "agent")


class ProtocolError(ValueError):
    """A message that is not valid protocol v1; ``code`` is one of ``ERROR_CODES``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# ----------------------------------------------------------------------------- schemas

_SURROGATE = re.compile("[\ud800-\udfff]")  # lone surrogates: not encodable as UTF-8
_NUM = {"type": "number"}
_NONNEG = {"type": "number", "minimum": 0}
_COUNT = {"type": "integer", "minimum": 0}
_STREAM_ID = {"type": "string", "pattern": r"^[A-Za-z0-9_.:-]{1,64}$"}
_UPLOAD_ID = {"type": "string", "pattern": r"^[A-Za-z0-9_-]{1,64}$"}
_LABEL = {"type": "string", "minLength": 1, "maxLength": 64}
#: Integer ids stay within what every JSON parser holds exactly (JavaScript's safe integers).
MAX_INT_ID = 2**53 - 1
#: The most of a client's value an error text quotes.
MAX_QUOTE = 60
#: Error texts are cut to this many characters.
MAX_ERROR_TEXT = 1024
_REF = {"type": ["string", "integer", "null"], "maxLength": 64, "minimum": -MAX_INT_ID,
        "maximum": MAX_INT_ID}
_PAIR = {"type": "array", "items": _NUM, "minItems": 2, "maxItems": 2}
_PAIR_OR_NULL = {"anyOf": [_PAIR, {"type": "null"}]}
_NUM_OR_NULL = {"type": ["number", "null"]}
_TYPE_V = {"v": {"const": PROTOCOL_VERSION}}


def _msg(type_: str, properties: dict, required: Sequence[str], **extra: Any) -> dict:
    """A message schema: "type" and "v" first, no unknown fields (typos fail loudly)."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": type_,
        "type": "object",
        "properties": {"type": {"const": type_}, **_TYPE_V, **properties},
        "required": ["type", "v", *required],
        "additionalProperties": False,
        **extra,
    }


_STREAM_INFO = {
    "type": "object",
    "properties": {
        "stream": _STREAM_ID,
        "kind": {"enum": list(SOURCE_KINDS)},
        "source": {"type": "string", "maxLength": 1024},
        "channel": {"type": ["integer", "null"], "minimum": 0},
        "speed": _NUM_OR_NULL,
        "started_wall": _NUM,
        "state": {"enum": ["running", "ended"]},
        "call": {
            "description": "present when the stream is one side of a call: the call's id (the "
            "platform's call id, or the recording's for --split-channels), the track as the "
            "platform names it, the side's role, the media format as received, and the "
            "sender's custom parameters",
            "type": "object",
            "properties": {
                "id": {"type": "string", "minLength": 1, "maxLength": 128},
                "track": {"type": "string", "minLength": 1, "maxLength": 32},
                "role": {"anyOf": [{"enum": list(CALL_ROLES)}, {"type": "null"}]},
                "format": {"type": "string", "maxLength": 64},
                "params": {"type": "object", "maxProperties": 32,
                           "additionalProperties": {"type": "string", "maxLength": 256}},
            },
            "required": ["id", "track", "role"],
            "additionalProperties": False,
        },
    },
    "required": ["stream", "kind", "source", "started_wall", "state"],
    "additionalProperties": False,
}

_SIDE = {
    "type": "object",
    "properties": {
        "stream": _STREAM_ID,
        "role": {"anyOf": [{"enum": list(CALL_ROLES)}, {"type": "null"}]},
        "speaking": {"type": "boolean", "description": "talking in the last interval"},
        "talk_s": _NONNEG,
        "talk_share": {"type": ["number", "null"], "minimum": 0, "maximum": 1,
                       "description": "this side's part of all talk so far (null: nobody "
                       "has talked yet)"},
        "talk_share_recent": {"type": ["number", "null"], "minimum": 0, "maximum": 1,
                              "description": "the same over the last recent_s seconds"},
        "interruptions": {"type": "integer", "minimum": 0,
                          "description": "times this side cut in on the other (see "
                          "docs/protocol.md: held 0.5 s, overlap 0.3 s, talk 1 s, quiet 1 s "
                          "before)"},
        "loudness_dbfs": {"type": ["number", "null"],
                          "description": "RMS level of the last interval's talk (null: silent)"},
        "loudness_trend_db_per_min": {"type": ["number", "null"],
                                      "description": "slope of talk loudness over the last "
                                      "trend_s seconds (null: too little talk)"},
        "pitch_hz": {"type": ["number", "null"], "minimum": 0,
                     "description": "median F0 of the talk in the last trend_s seconds "
                     "(null: under 1 s of voiced talk)"},
        "pitch_var_st": {"type": ["number", "null"], "minimum": 0,
                         "description": "pitch variability: std of F0 in semitones around "
                         "pitch_hz, same span"},
        "rate_per_s": {"type": ["number", "null"], "minimum": 0,
                       "description": "speaking-rate proxy: syllable-like energy peaks per "
                       "second of talk in the last trend_s seconds (null: under 2 s of talk)"},
    },
    "required": ["stream", "role", "speaking", "talk_s", "talk_share", "interruptions",
                 "loudness_dbfs"],
    "additionalProperties": False,
}

_MODEL_CARD = {
    # The model file's card, passed through; only what the dashboard relies on is required.
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "classes": {"type": "array", "items": _LABEL, "minItems": 1},
        "sample_rate": {"type": "integer", "minimum": 1},
        "window_s": {"type": "number", "exclusiveMinimum": 0},
    },
    "required": ["classes", "sample_rate", "window_s"],
}

_FRAME_PROPS = {
    "shape": {"type": "array", "items": {"type": "integer", "minimum": 1},
              "minItems": 2, "maxItems": 2},
    "dtype": {"const": "uint8"},
    "data": {"type": "string"},
    "min": _NUM,
    "max": _NUM,
}
_SPEC_FRAME = {
    "type": "object", "properties": {**_FRAME_PROPS, "unit": {"type": "string"}},
    "required": ["shape", "dtype", "data", "min", "max"], "additionalProperties": False,
}
_CAM_FRAME = {
    "type": "object", "properties": _FRAME_PROPS,
    "required": ["shape", "dtype", "data"], "additionalProperties": False,
}

SCHEMAS: dict[str, dict] = {
    # ---------------------------------------------------------------- server -> client
    "hello": _msg("hello", {
        "session_id": {"type": "string", "minLength": 1},
        "client_id": {"type": ["string", "null"]},
        "server": {"type": "object", "properties": {"name": {"type": "string"},
                                                    "version": {"type": "string"}},
                   "required": ["name", "version"]},
        "model": _MODEL_CARD,
        "hop_s": {"type": "number", "exclusiveMinimum": 0},
        "explain_every": _COUNT,
        "streams": {"type": "array", "items": _STREAM_INFO},
        "limits": {"type": "object", "properties": {
            "max_message_bytes": _COUNT,
            "max_upload_bytes": {**_COUNT, "description": "largest upload a replay may carry "
                                 "inline (upload.data, decoded)"},
            "queue_size": _COUNT,
            "max_chunked_upload_bytes": {**_COUNT, "description": "largest upload sent in "
                                         "chunks (upload_start); absent: no chunked uploads"},
            "max_chunk_bytes": {**_COUNT, "description": "largest binary frame (chunk) of a "
                                "chunked upload"}},
            "required": ["max_message_bytes", "max_upload_bytes", "queue_size"]},
        "wall_time": _NUM,
    }, ["session_id", "client_id", "server", "model", "hop_s", "explain_every", "streams",
        "limits", "wall_time"]),
    "prediction": _msg("prediction", {
        "stream": _STREAM_ID,
        "seq": _COUNT,
        "t_start": _NONNEG,
        "t_end": _NONNEG,
        "wall_time": _NUM,
        "voiced": {"type": "boolean"},
        "probabilities": {"anyOf": [
            {"type": "object", "additionalProperties": {"type": "number", "minimum": 0,
                                                        "maximum": 1}},
            {"type": "null"}]},
        "label": {"anyOf": [_LABEL, {"type": "null"}]},
        "confidence": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
        "latency_ms": _NONNEG,
    }, ["stream", "seq", "t_start", "t_end", "wall_time", "voiced", "probabilities", "label",
        "confidence", "latency_ms"],
        allOf=[{
            "if": {"properties": {"voiced": {"const": False}}},
            "then": {"properties": {"probabilities": {"type": "null"},
                                    "label": {"type": "null"},
                                    "confidence": {"type": "null"}}},
            "else": {"properties": {"probabilities": {"type": "object"},
                                    "label": {"type": "string"},
                                    "confidence": {"type": "number"}}},
        }]),
    "explanation": _msg("explanation", {
        "stream": _STREAM_ID,
        "seq": _COUNT,
        "class": _LABEL,
        "method": {"type": "string", "minLength": 1, "maxLength": 64},
        "metrics": {
            "type": "object",
            "properties": {
                "confidence": {"type": "number", "minimum": 0, "maximum": 1},
                "max_activation": _NUM,
                "mean_activation": _NUM,
                "activated_area_pct": {"type": "number", "minimum": 0, "maximum": 100},
                "entropy": _NUM,
                "focus_time_s": _PAIR_OR_NULL,
                "focus_freq_hz": _PAIR_OR_NULL,
                "confidence_drop": _NUM_OR_NULL,
                "random_drop": _NUM_OR_NULL,
            },
            "required": ["confidence", "max_activation", "mean_activation",
                         "activated_area_pct", "entropy", "focus_time_s", "focus_freq_hz",
                         "confidence_drop", "random_drop"],
        },
        "spectrogram": _SPEC_FRAME,
        "cam": _CAM_FRAME,
        "axes": {"type": "object", "properties": {
            "times_s": {"type": "array", "items": _NUM},
            "freqs_hz": {"type": "array", "items": _NUM}},
            "required": ["times_s", "freqs_hz"], "additionalProperties": False},
    }, ["stream", "seq", "class", "method", "metrics", "spectrogram", "cam", "axes"]),
    "status": _msg("status", {
        "wall_time": _NUM,
        "uptime_s": _NONNEG,
        "streams": {"type": "array", "items": {
            "type": "object",
            "properties": {
                "stream": _STREAM_ID,
                "state": {"enum": ["running", "ended"]},
                "lag_s": {"type": ["number", "null"]},
                "t_processed_s": _NONNEG,
                "windows": _COUNT,
                "voiced_windows": _COUNT,
                "dropped_windows": _COUNT,
                # What the source itself reports, e.g. a microphone's input overflows and
                # ring-buffer drops: {"overflows": 0, "dropped_frames": 0}.
                "source_stats": {
                    "description": "counters the source reports: a microphone's overflows "
                    "and dropped_frames; a file's, stdin's or microphone's nonfinite_samples "
                    "(NaN/Inf replaced by 0) and clipped_samples (beyond +-1, clipped), and a "
                    "replayed directory's skipped_files (unreadable, left out); repair and skip "
                    "counters only once above 0. With remote inference (stream --inference "
                    "ray) also the daemon's view of it for this stream: "
                    "inference_unavailable (1 while Ray Serve cannot be reached), "
                    "inference_dropped_windows (voiced windows lost to failed requests or an "
                    "outage, also in dropped_windows), inference_retried_windows, "
                    "inference_fallback_windows (inferred locally during an outage)",
                    "type": "object",
                    "additionalProperties": {"type": "number", "minimum": 0}},
            },
            "required": ["stream", "state", "lag_s", "t_processed_s", "windows",
                         "voiced_windows", "dropped_windows"],
            "additionalProperties": False}},
        "clients": {"type": "array", "items": {
            "type": "object",
            "properties": {"client_id": {"type": "string"}, "queued": _COUNT,
                           "dropped_messages": _COUNT},
            "required": ["client_id", "queued", "dropped_messages"],
            "additionalProperties": False}},
    }, ["wall_time", "uptime_s", "streams", "clients"]),
    "stream_started": _msg("stream_started", {
        "stream": _STREAM_INFO,
        "ref": _REF,
    }, ["stream"]),
    "stream_ended": _msg("stream_ended", {
        "stream": _STREAM_ID,
        "reason": {"enum": list(END_REASONS)},
        "windows": _COUNT,
        "t_end_s": _NONNEG,
        "wall_time": _NUM,
    }, ["stream", "reason", "windows", "t_end_s", "wall_time"]),
    "error": _msg("error", {
        "code": {"enum": list(ERROR_CODES)},
        "message": {"type": "string", "maxLength": MAX_ERROR_TEXT},
        "ref": _REF,
        "stream": _STREAM_ID,
    }, ["code", "message"]),
    "ack": _msg("ack", {
        "request": {"enum": list(CLIENT_TYPES)},
        "ref": _REF,
        "stream": _STREAM_ID,
        "streams": {"anyOf": [{"type": "array", "items": _STREAM_ID}, {"const": "*"}]},
        "upload_id": {**_UPLOAD_ID, "description": "upload_start's answer: the upload to send "
                      "the binary chunks of and to name in replay"},
    }, ["request"]),
    "dynamics": _msg("dynamics", {
        "call": {"type": "string", "minLength": 1, "maxLength": 128},
        "t_s": _NONNEG,
        "wall_time": _NUM,
        "interval_s": {"type": "number", "exclusiveMinimum": 0},
        "recent_s": {"type": "number", "exclusiveMinimum": 0,
                     "description": "the span of talk_share_recent"},
        "trend_s": {"type": "number", "exclusiveMinimum": 0,
                    "description": "the span of the loudness trend, pitch and speaking rate"},
        "sides": {"type": "array", "items": _SIDE, "minItems": 1, "maxItems": 2},
        "overlap_s": {"type": "number", "minimum": 0,
                      "description": "total time of the overlaps so far"},
        "overlaps": {"type": "integer", "minimum": 0,
                     "description": "stretches of both sides talking, at least 0.2 s each"},
        "silence_s": {"type": "number", "minimum": 0,
                      "description": "the current stretch with nobody talking"},
        "dead_air": {"type": "integer", "minimum": 0,
                     "description": "silences that reached dead_air_s so far"},
        "dead_air_s": {"type": "number", "exclusiveMinimum": 0},
        "longest_silence_s": _NONNEG,
        "final": {"type": "boolean",
                  "description": "true on the call's last message (every side has ended)"},
    }, ["call", "t_s", "wall_time", "interval_s", "recent_s", "trend_s", "sides", "overlap_s",
        "overlaps", "silence_s", "dead_air", "dead_air_s", "longest_silence_s"]),
    "pong": _msg("pong", {
        "ref": _REF,
        "t": _NUM,
        "wall_time": _NUM,
    }, ["wall_time"]),
    # ---------------------------------------------------------------- client -> server
    "subscribe": _msg("subscribe", {
        "id": _REF,
        "streams": {"anyOf": [{"type": "array", "items": _STREAM_ID, "maxItems": 256},
                              {"const": "*"}]},
        "types": {"type": "array", "items": {"enum": list(SERVER_TYPES)}},
    }, ["streams"]),
    "replay": _msg("replay", {
        "id": _REF,
        "path": {"type": "string", "minLength": 1, "maxLength": 4096},
        "upload": {"type": "object", "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 255},
            "data": {"type": "string"}},
            "required": ["name", "data"], "additionalProperties": False},
        "upload_id": {**_UPLOAD_ID, "description": "a finished chunked upload of this "
                      "connection (upload_start)"},
        "speed": {"type": "number", "minimum": 0, "maximum": 1000},
        "loop": {"type": "boolean"},
        "split_channels": {"type": "boolean"},
    }, [], anyOf=[{"required": ["path"]}, {"required": ["upload"]},
                  {"required": ["upload_id"]}]),
    "stop_stream": _msg("stop_stream", {"id": _REF, "stream": _STREAM_ID}, ["stream"]),
    "ping": _msg("ping", {"id": _REF, "t": _NUM}, []),
    "upload_start": _msg("upload_start", {
        "id": _REF,
        "name": {"type": "string", "minLength": 1, "maxLength": 255},
        "bytes": {"type": "integer", "minimum": 1,
                  "description": "the file's size: exactly this many bytes follow in binary "
                  "frames"},
    }, ["name", "bytes"]),
}


# ----------------------------------------------------------------------------- validation

_JSON_TYPES: dict[str, Callable[[Any], bool]] = {
    "object": lambda x: isinstance(x, dict),
    "array": lambda x: isinstance(x, list),
    "string": lambda x: isinstance(x, str),
    "boolean": lambda x: isinstance(x, bool),
    "null": lambda x: x is None,
    "integer": lambda x: (isinstance(x, int) and not isinstance(x, bool))
    or (isinstance(x, float) and x.is_integer()),
    "number": lambda x: isinstance(x, (int, float)) and not isinstance(x, bool),
}


def _errors(value: Any, schema: Mapping, where: str) -> Iterable[str]:
    """Yield what is wrong with ``value`` under the JSON-Schema subset used in SCHEMAS."""
    if "const" in schema and value != schema["const"]:
        yield f"{where}: expected {schema['const']!r}, got {excerpt(value)}"
        return
    if "enum" in schema and value not in schema["enum"]:
        yield f"{where}: {excerpt(value)} is not one of {schema['enum']}"
        return
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_JSON_TYPES[t](value) for t in types):
            yield f"{where}: expected {' or '.join(types)}, got {type(value).__name__}"
            return
    if isinstance(value, float) and not math.isfinite(value):
        yield f"{where}: {value} is not a finite number"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            yield f"{where}: {excerpt(value)} < minimum {schema['minimum']}"
        if "maximum" in schema and value > schema["maximum"]:
            yield f"{where}: {excerpt(value)} > maximum {schema['maximum']}"
        if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
            yield f"{where}: {excerpt(value)} <= {schema['exclusiveMinimum']}"
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            yield f"{where}: shorter than {schema['minLength']} characters"
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            yield f"{where}: longer than {schema['maxLength']} characters"
        if "pattern" in schema and not re.search(schema["pattern"], value):
            yield f"{where}: {excerpt(value)} does not match {schema['pattern']}"
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0):
            yield f"{where}: fewer than {schema['minItems']} items"
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            yield f"{where}: more than {schema['maxItems']} items"
        if "items" in schema:
            for i, item in enumerate(value):
                yield from _errors(item, schema["items"], f"{where}[{i}]")
    if isinstance(value, dict):
        if "maxProperties" in schema and len(value) > schema["maxProperties"]:
            yield f"{where}: more than {schema['maxProperties']} fields"
        props = schema.get("properties", {})
        for key in schema.get("required", []):
            if key not in value:
                yield f"{where}: missing field {key!r}"
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            if key in props:
                yield from _errors(item, props[key], f"{where}.{key}")
            elif extra is False:
                yield f"{where}: unknown field {excerpt(key)}"
            elif isinstance(extra, dict):
                yield from _errors(item, extra, f"{where}.{key}")
    if "anyOf" in schema:
        branches = [list(_errors(value, s, where)) for s in schema["anyOf"]]
        if all(branches):
            yield min(branches, key=len)[0] if len(schema["anyOf"]) > 1 else branches[0][0]
    for sub in schema.get("allOf", []):
        yield from _errors(value, sub, where)
    if "if" in schema:
        if not any(True for _ in _errors(value, schema["if"], where)):
            yield from _errors(value, schema.get("then", {}), where)
        else:
            yield from _errors(value, schema.get("else", {}), where)


def _frame_bytes(frame: Mapping, where: str) -> bytes:
    try:
        raw = base64.b64decode(frame["data"], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ProtocolError("invalid_message", f"{where}.data: not base64 ({exc})") from None
    f, t = frame["shape"]
    if len(raw) != f * t:
        raise ProtocolError("invalid_message",
                            f"{where}.data: {len(raw)} bytes for shape [{f}, {t}]")
    return raw


def _check_prediction(msg: Mapping) -> None:
    if msg["t_end"] <= msg["t_start"]:
        raise ProtocolError("invalid_message", "prediction: t_end must be after t_start")
    probs = msg["probabilities"]
    if msg["voiced"]:
        if msg["label"] not in probs:
            raise ProtocolError("invalid_message", "prediction: label is not in probabilities")
        if abs(sum(probs.values()) - 1.0) > 1e-3:
            raise ProtocolError("invalid_message", "prediction: probabilities do not sum to 1")
        if abs(probs[msg["label"]] - msg["confidence"]) > 1e-6 or \
                probs[msg["label"]] < max(probs.values()) - 1e-9:
            raise ProtocolError("invalid_message",
                                "prediction: label/confidence must be the most probable class")


def _check_explanation(msg: Mapping) -> None:
    spec, cam, axes = msg["spectrogram"], msg["cam"], msg["axes"]
    if spec["shape"] != cam["shape"]:
        raise ProtocolError("invalid_message", "explanation: cam and spectrogram shapes differ")
    f, t = spec["shape"]
    if f > MAX_FRAME_F or t > MAX_FRAME_T:
        raise ProtocolError("invalid_message",
                            f"explanation: frame {f}x{t} over {MAX_FRAME_F}x{MAX_FRAME_T}")
    if len(axes["freqs_hz"]) != f or len(axes["times_s"]) != t:
        raise ProtocolError("invalid_message", "explanation: axes do not match the frame shape")
    _frame_bytes(spec, "spectrogram")
    _frame_bytes(cam, "cam")


_EXCERPT = reprlib.Repr()
_EXCERPT.maxstring = _EXCERPT.maxother = _EXCERPT.maxlong = MAX_QUOTE
_EXCERPT.maxlevel, _EXCERPT.maxlist, _EXCERPT.maxdict, _EXCERPT.maxtuple = 2, 4, 4, 4


def excerpt(value: Any) -> str:
    """A short ``repr`` of a client's value for an error text: at most about ``MAX_QUOTE``
    characters and two levels deep (a 5 MB string or 30,000 nested arrays are not quoted)."""
    return _EXCERPT.repr(value)


def ref_of(msg: Any) -> str | int | None:
    """The request id a reply may echo as ``ref``: a string of 1-64 characters or an integer
    within +-``MAX_INT_ID`` (not a bool, not a float such as 1.0); anything else is None, so a
    reply never carries what the schema forbids, even for a message that fails validation."""
    ref = msg.get("id") if isinstance(msg, dict) else None
    if isinstance(ref, str) and 1 <= len(ref) <= 64 and not _SURROGATE.search(ref):
        return ref
    if type(ref) is int and -MAX_INT_ID <= ref <= MAX_INT_ID:
        return ref
    return None


def _check_client_id(msg: Mapping) -> None:
    """JSON Schema calls 1.0 an integer; as an id it would come back as ``"ref": 1.0``."""
    if isinstance(msg.get("id"), float):
        raise ProtocolError("invalid_message",
                            f"{msg['type']}.id: {excerpt(msg['id'])} is not an integer")


def _check_replay(msg: Mapping) -> None:
    given = [k for k in ("path", "upload", "upload_id") if k in msg]
    if len(given) > 1:
        raise ProtocolError("invalid_message",
                            f"replay: give one of path, upload, upload_id (got {given})")


_SEMANTIC_CHECKS: dict[str, Callable[[Mapping], None]] = {
    "prediction": _check_prediction,
    "explanation": _check_explanation,
    "replay": _check_replay,
}


def validate(msg: Any, direction: str | None = None) -> dict:
    """Return ``msg`` if it is a valid v1 message, else raise ProtocolError.

    ``direction`` "client" or "server" limits the accepted types (the server validates what
    clients send with "client", so a client cannot send a ``prediction``).
    """
    if not isinstance(msg, dict):
        raise ProtocolError("bad_json", "a message is a JSON object")
    kind = msg.get("type")
    allowed = {"client": CLIENT_TYPES, "server": SERVER_TYPES}.get(direction or "",
                                                                   SCHEMAS.keys())
    if not isinstance(kind, str) or kind not in allowed:
        raise ProtocolError("unknown_type", f"unknown message type {excerpt(kind)}; "
                            f"expected one of {', '.join(allowed)}")
    if msg.get("v") != PROTOCOL_VERSION:
        raise ProtocolError("unsupported_version",
                            f"protocol version {excerpt(msg.get('v'))} is not supported; "
                            f"this server speaks \"{PROTOCOL_VERSION}\"")
    problems = list(_errors(msg, SCHEMAS[kind], kind))
    if problems:
        raise ProtocolError("invalid_message", "; ".join(problems[:5]))
    if kind in _SEMANTIC_CHECKS:
        _SEMANTIC_CHECKS[kind](msg)
    if kind in CLIENT_TYPES:
        _check_client_id(msg)
    return msg


def encode(msg: Mapping) -> str:
    """Compact JSON text of a message (NaN/inf refused: they are not JSON).

    The text always encodes to UTF-8: a lone surrogate (an undecodable file name, a client's
    ``"\\ud800"``) cannot be sent or logged, so one would cost the reply or the connection;
    such characters become U+FFFD (the rare slow path).
    """
    text = json.dumps(msg, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            text = json.dumps(_scrub(msg), separators=(",", ":"), ensure_ascii=False,
                              allow_nan=False)
    return text



def _scrub(value: Any) -> Any:
    """``value`` with every lone surrogate in its strings (keys too) replaced by U+FFFD."""
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, Mapping):
        return {_scrub(k): _scrub(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_scrub(v) for v in value]
    return value


def decode(text: str | bytes, direction: str | None = None) -> dict:
    """Parse and validate one message; ProtocolError("bad_json") if it is not JSON."""
    try:
        msg = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError("bad_json", f"not JSON: {exc}") from None
    return validate(msg, direction)


# ----------------------------------------------------------------------------- frames

def encode_frame(values: Any, lo: float | None = None, hi: float | None = None,
                 unit: str | None = None) -> dict:
    """Quantise a 2-D [F, T] array to uint8 base64 (linear between lo and hi).

    numpy is imported here, not at module import, so the validators stay dependency-free.
    """
    import numpy as np

    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"a frame is 2-D [F, T], got shape {arr.shape}")
    lo = float(np.min(arr)) if lo is None else float(lo)
    hi = float(np.max(arr)) if hi is None else float(hi)
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    q = np.clip(np.rint((arr - lo) * scale), 0, 255).astype(np.uint8)
    frame = {"shape": [int(arr.shape[0]), int(arr.shape[1])], "dtype": "uint8",
             "data": base64.b64encode(q.tobytes()).decode("ascii"), "min": lo, "max": hi}
    if unit is not None:
        frame["unit"] = unit
    return frame


def decode_frame(frame: Mapping) -> Any:
    """A frame back as a float numpy array [F, T] in its original units (min..max; CAM 0..1)."""
    import numpy as np

    raw = _frame_bytes(frame, "frame")
    q = np.frombuffer(raw, dtype=np.uint8).reshape(frame["shape"]).astype(np.float32)
    lo, hi = float(frame.get("min", 0.0)), float(frame.get("max", 1.0))
    return lo + q * ((hi - lo) / 255.0)


# ----------------------------------------------------------------------------- builders

def _now() -> float:
    return time.time()


def _base(type_: str, **fields: Any) -> dict:
    return {"type": type_, "v": PROTOCOL_VERSION,
            **{k: v for k, v in fields.items() if v is not None}}


def stream_info(stream: str, kind: str, source: str, started_wall: float,
                state: str = "running", channel: int | None = None,
                speed: float | None = None, call: Mapping[str, Any] | None = None) -> dict:
    """The description of one stream, as listed in ``hello`` and ``stream_started``; ``call``
    (id, track, role, format, params) when the stream is one side of a call."""
    out = {"stream": stream, "kind": kind, "source": source, "channel": channel,
           "speed": speed, "started_wall": float(started_wall), "state": state}
    if call is not None:
        out["call"] = dict(call)
    return out


def hello(session_id: str, model: Mapping, streams: Sequence[Mapping], hop_s: float,
          explain_every: int, limits: Mapping[str, int], client_id: str | None = None,
          server_version: str = "0", wall_time: float | None = None) -> dict:
    """The first message on every connection (and the first line of every session log)."""
    return {"type": "hello", "v": PROTOCOL_VERSION, "session_id": session_id,
            "client_id": client_id,
            "server": {"name": "emotion-monitor", "version": server_version},
            "model": dict(model), "hop_s": float(hop_s), "explain_every": int(explain_every),
            "streams": [dict(s) for s in streams], "limits": dict(limits),
            "wall_time": _now() if wall_time is None else float(wall_time)}


def prediction(stream: str, seq: int, t_start: float, t_end: float, wall_time: float,
               probabilities: Mapping[str, float] | Sequence[float] | None,
               latency_ms: float, classes: Sequence[str] | None = None,
               voiced: bool = True) -> dict:
    """A window's result. ``probabilities`` by label, or a row in ``classes`` order.

    Unvoiced windows are sent with ``voiced=False`` and null label/probabilities/confidence,
    so a dashboard shows a gap instead of a guess.
    """
    probs: dict[str, float] | None = None
    label: str | None = None
    confidence: float | None = None
    if voiced:
        if probabilities is None:
            raise ValueError("a voiced window needs probabilities")
        if isinstance(probabilities, Mapping):
            probs = {str(k): float(v) for k, v in probabilities.items()}
        else:
            if classes is None:
                raise ValueError("probabilities as a row need the class names")
            row = [float(p) for p in probabilities]
            if len(row) != len(classes):
                raise ValueError(f"{len(row)} probabilities for {len(classes)} classes")
            probs = dict(zip(classes, row, strict=True))
        label = max(probs, key=probs.__getitem__)
        confidence = probs[label]
    return {"type": "prediction", "v": PROTOCOL_VERSION, "stream": stream, "seq": int(seq),
            "t_start": float(t_start), "t_end": float(t_end), "wall_time": float(wall_time),
            "voiced": bool(voiced), "probabilities": probs, "label": label,
            "confidence": confidence, "latency_ms": max(0.0, float(latency_ms))}


def explanation(stream: str, seq: int, class_: str, method: str, metrics: Mapping[str, Any],
                spectrogram: Mapping, cam: Mapping, times_s: Sequence[float],
                freqs_hz: Sequence[float]) -> dict:
    """A window's explanation frame (built from ``encode_frame`` outputs)."""
    return {"type": "explanation", "v": PROTOCOL_VERSION, "stream": stream, "seq": int(seq),
            "class": class_, "method": method, "metrics": dict(metrics),
            "spectrogram": dict(spectrogram), "cam": dict(cam),
            "axes": {"times_s": [float(x) for x in times_s],
                     "freqs_hz": [float(x) for x in freqs_hz]}}


def stream_status(stream: str, state: str, lag_s: float | None, t_processed_s: float,
                  windows: int, voiced_windows: int, dropped_windows: int,
                  source_stats: Mapping[str, float] | None = None) -> dict:
    """One stream's health line inside ``status``."""
    out = {"stream": stream, "state": state,
           "lag_s": None if lag_s is None else float(lag_s),
           "t_processed_s": float(t_processed_s), "windows": int(windows),
           "voiced_windows": int(voiced_windows), "dropped_windows": int(dropped_windows)}
    if source_stats:
        out["source_stats"] = {str(k): v for k, v in source_stats.items()
                               if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return out


def status(streams: Sequence[Mapping], clients: Sequence[Mapping], uptime_s: float,
           wall_time: float | None = None) -> dict:
    """The once-a-second health message. ``clients``: {client_id, queued, dropped_messages}."""
    return {"type": "status", "v": PROTOCOL_VERSION,
            "wall_time": _now() if wall_time is None else float(wall_time),
            "uptime_s": float(uptime_s), "streams": [dict(s) for s in streams],
            "clients": [dict(c) for c in clients]}


def stream_started(info: Mapping, ref: str | int | None = None) -> dict:
    return _base("stream_started", stream=dict(info), ref=ref)


def stream_ended(stream: str, reason: str, windows: int, t_end_s: float,
                 wall_time: float | None = None) -> dict:
    return {"type": "stream_ended", "v": PROTOCOL_VERSION, "stream": stream, "reason": reason,
            "windows": int(windows), "t_end_s": float(t_end_s),
            "wall_time": _now() if wall_time is None else float(wall_time)}


def error(code: str, message: str, ref: str | int | None = None,
          stream: str | None = None) -> dict:
    if code not in ERROR_CODES:
        raise ValueError(f"unknown error code {code!r}")
    if len(message) > MAX_ERROR_TEXT:
        message = message[:MAX_ERROR_TEXT - 1] + "…"
    return _base("error", code=code, message=message, ref=ref, stream=stream)


def ack(request: str, ref: str | int | None = None, stream: str | None = None,
        streams: Sequence[str] | str | None = None, upload_id: str | None = None) -> dict:
    return _base("ack", request=request, ref=ref, stream=stream,
                 streams=list(streams) if isinstance(streams, (list, tuple)) else streams,
                 upload_id=upload_id)


def dynamics(call: str, t_s: float, sides: Sequence[Mapping[str, Any]], overlap_s: float,
             overlaps: int, silence_s: float, dead_air: int, dead_air_s: float,
             longest_silence_s: float, interval_s: float = 1.0, recent_s: float = 120.0,
             trend_s: float = 20.0, final: bool | None = None,
             wall_time: float | None = None) -> dict:
    """A call's conversation dynamics, once per second of call time: per side talk,
    interruptions, loudness, pitch and rate; for the call overlap and silences
    (``streamer/dynamics.py``). ``final`` only on the call's last message."""
    return _base("dynamics", call=call, t_s=float(t_s),
                 wall_time=_now() if wall_time is None else float(wall_time),
                 interval_s=float(interval_s), recent_s=float(recent_s),
                 trend_s=float(trend_s), sides=[dict(x) for x in sides],
                 overlap_s=float(overlap_s), overlaps=int(overlaps),
                 silence_s=float(silence_s), dead_air=int(dead_air),
                 dead_air_s=float(dead_air_s), longest_silence_s=float(longest_silence_s),
                 final=True if final else None)


def pong(ref: str | int | None = None, t: float | None = None) -> dict:
    return _base("pong", ref=ref, t=t, wall_time=_now())


# client -> server

def subscribe(streams: Sequence[str] | str = "*", types: Sequence[str] | None = None,
              id: str | int | None = None) -> dict:
    return _base("subscribe", id=id,
                 streams=streams if isinstance(streams, str) else list(streams),
                 types=None if types is None else list(types))


def replay(path: str | None = None, upload_name: str | None = None,
           upload_data: bytes | None = None, speed: float = 1.0, loop: bool = False,
           split_channels: bool = False, id: str | int | None = None,
           upload_id: str | None = None) -> dict:
    """Ask the daemon to replay a file from its allowed directory, an uploaded file (inline,
    base64: up to ``limits.max_upload_bytes``), or a finished chunked upload (``upload_id``)."""
    if sum(x is not None for x in (path, upload_data, upload_id)) != 1:
        raise ValueError("give one of path, upload_data, upload_id")
    upload = None
    if upload_data is not None:
        upload = {"name": upload_name or "upload",
                  "data": base64.b64encode(upload_data).decode("ascii")}
    return _base("replay", id=id, path=path, upload=upload, upload_id=upload_id,
                 speed=float(speed), loop=bool(loop), split_channels=bool(split_channels))


def upload_start(name: str, size: int, id: str | int | None = None) -> dict:
    """Open a chunked upload of ``size`` bytes: after its ``ack`` (which carries the
    ``upload_id``) send the file as binary frames (``upload_chunks``), then a ``replay`` with
    that ``upload_id``."""
    return _base("upload_start", id=id, name=name, bytes=int(size))


def upload_chunks(data: bytes, max_chunk_bytes: int) -> Iterable[memoryview]:
    """``data`` in the binary frames of a chunked upload: slices of at most
    ``max_chunk_bytes`` (``limits.max_chunk_bytes``), in order, none empty."""
    view, step = memoryview(data), max(1, int(max_chunk_bytes))
    for i in range(0, len(view), step):
        yield view[i:i + step]


def stop_stream(stream: str, id: str | int | None = None) -> dict:
    return _base("stop_stream", id=id, stream=stream)


def ping(id: str | int | None = None, t: float | None = None) -> dict:
    return _base("ping", id=id, t=t)


# ----------------------------------------------------------------------------- examples

_CLASSES = ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]
_EX_CARD = {"name": "default", "version": "1.0.0", "classes": _CLASSES, "sample_rate": 16000,
            "window_s": 3.0, "features": {"n_fft": 512, "hop_length": 160, "n_mels": 64,
                                          "f_min": 0.0, "f_max": 8000.0},
            "architecture": "cnn-lstm"}
_EX_INFO = stream_info("s1", "file", "OAF_back_angry.wav", 1763760000.0, speed=1.0)
_EX_T0 = 1763760003.02


def _example_explanation() -> dict:
    f, t = 2, 3  # tiny frame for the doc; real frames are up to 64 x 100
    spec = {"shape": [f, t], "dtype": "uint8",
            "data": base64.b64encode(bytes([0, 128, 255, 30, 60, 90])).decode(),
            "min": -11.5, "max": 4.2, "unit": "log-mel"}
    cam = {"shape": [f, t], "dtype": "uint8",
           "data": base64.b64encode(bytes([0, 40, 255, 0, 10, 200])).decode()}
    metrics = {"confidence": 0.62, "max_activation": 1.0, "mean_activation": 0.31,
               "activated_area_pct": 33.3, "entropy": 1.52, "focus_time_s": [1.5, 3.0],
               "focus_freq_hz": [0.0, 4000.0], "confidence_drop": 0.41, "random_drop": 0.07}
    return explanation("s1", 0, "angry", "gradcam", metrics, spec, cam,
                       [0.5, 1.5, 2.5], [2000.0, 6000.0])


EXAMPLES: dict[str, dict] = {
    "hello": hello("20261121T211500Z-3f9a", _EX_CARD, [_EX_INFO], 0.5, 1,
                   {"max_message_bytes": 65536, "max_upload_bytes": 4 * 2**20,
                    "queue_size": 256, "max_chunked_upload_bytes": 20 * 2**20,
                    "max_chunk_bytes": 2**20}, client_id="c1", server_version="0.1.0",
                   wall_time=_EX_T0),
    "prediction": prediction("s1", 0, 0.0, 3.0, _EX_T0,
                             [0.62, 0.03, 0.1, 0.05, 0.1, 0.05, 0.05], 18.4, _CLASSES),
    "explanation": _example_explanation(),
    "status": status([stream_status("s1", "running", 0.02, 3.5, 2, 2, 0,
                                    {"nonfinite_samples": 3}),
                      stream_status("mic", "running", 0.01, 3.5, 2, 1, 0,
                                    {"overflows": 0, "dropped_frames": 0})],
                     [{"client_id": "c1", "queued": 0, "dropped_messages": 0}], 4.0,
                     wall_time=_EX_T0 + 1),
    "stream_started": stream_started(_EX_INFO, ref="r1"),
    "stream_ended": stream_ended("s1", "eof", 6, 3.41, wall_time=_EX_T0 + 2),
    "error": error("forbidden", "replay path is outside the allowed directory", ref="r2"),
    "ack": ack("replay", ref="r1", stream="s1"),
    "pong": {"type": "pong", "v": "1", "ref": 7, "t": 12.5, "wall_time": _EX_T0},
    "dynamics": dynamics(
        "CA5f2e", 42.0, [
            {"stream": "CA5f2e-caller", "role": "caller", "speaking": True, "talk_s": 18.5,
             "talk_share": 0.56, "talk_share_recent": 0.61, "interruptions": 2,
             "loudness_dbfs": -21.4, "loudness_trend_db_per_min": 3.2, "pitch_hz": 196.0,
             "pitch_var_st": 2.7, "rate_per_s": 3.9},
            {"stream": "CA5f2e-agent", "role": "agent", "speaking": False, "talk_s": 14.5,
             "talk_share": 0.44, "talk_share_recent": 0.39, "interruptions": 0,
             "loudness_dbfs": None, "loudness_trend_db_per_min": -0.4, "pitch_hz": 118.0,
             "pitch_var_st": 1.9, "rate_per_s": 4.2}],
        overlap_s=2.1, overlaps=3, silence_s=0.0, dead_air=1, dead_air_s=10.0,
        longest_silence_s=12.5, recent_s=120.0, trend_s=20.0, wall_time=_EX_T0 + 3),
    "subscribe": subscribe(["s1"], types=["prediction", "explanation", "status"], id="sub-1"),
    "replay": replay(path="tess/OAF_angry/OAF_back_angry.wav", speed=1.0, id="r1"),
    "stop_stream": stop_stream("s1", id="r3"),
    "ping": ping(id=7, t=12.5),
    "upload_start": upload_start("call-0412.wav", 9_437_228, id="u1"),
}
#: An unvoiced window: nothing classified, shown as a gap.
EXAMPLE_UNVOICED = prediction("s1", 1, 0.5, 3.5, _EX_T0 + 0.5, None, 2.1, voiced=False)


# ----------------------------------------------------------------------------- the doc

DOC_BEGIN = "<!-- BEGIN GENERATED: python -m streamer.protocol --update-doc docs/protocol.md -->"
DOC_END = "<!-- END GENERATED -->"


def render_reference() -> str:
    """The generated part of docs/protocol.md: every message's schema and example."""
    out: list[str] = []
    for direction, types in (("Server → client", SERVER_TYPES), ("Client → server",
                                                                 CLIENT_TYPES)):
        out.append(f"### {direction}\n")
        for t in types:
            out.append(f"#### `{t}`\n")
            out.append("Example:\n\n```json\n" + json.dumps(EXAMPLES[t], indent=2) + "\n```\n")
            if t == "prediction":
                out.append("Unvoiced window:\n\n```json\n"
                           + json.dumps(EXAMPLE_UNVOICED, indent=2) + "\n```\n")
            out.append("<details><summary>JSON Schema</summary>\n\n```json\n"
                       + json.dumps(SCHEMAS[t], indent=2) + "\n```\n\n</details>\n")
    return "\n".join(out)


def update_doc(path: str) -> bool:
    """Rewrite the generated block of ``path``; True if it changed."""
    from pathlib import Path

    p = Path(path)
    text = p.read_text(encoding="utf-8")
    head, sep, rest = text.partition(DOC_BEGIN)
    _, sep2, tail = rest.partition(DOC_END)
    if not sep or not sep2:
        raise ValueError(f"{path} has no generated block ({DOC_BEGIN} ... {DOC_END})")
    new = f"{head}{DOC_BEGIN}\n\n{render_reference()}\n{DOC_END}{tail}"
    if new != text:
        p.write_text(new, encoding="utf-8")
    return new != text


if __name__ == "__main__":  # pragma: no cover - maintenance entry point
    import sys

    if len(sys.argv) == 3 and sys.argv[1] == "--update-doc":
        print("updated" if update_doc(sys.argv[2]) else "unchanged")
    else:
        print(render_reference())


def open_log(path: str | Path) -> IO[bytes]:
    """A session log (one protocol message per line) for reading, plain or gzip-compressed (by
    its name); a log compressed since its path was looked up is read from its ``.gz``. Here,
    beside the messages it holds, so the daemon's CLI and the dashboard read logs one way."""
    path = Path(path)
    if path.name.endswith(".gz"):
        return gzip.open(path, "rb")
    try:
        return path.open("rb")
    except FileNotFoundError:
        gz = path.with_name(path.name + ".gz")
        if not gz.is_file():
            raise
        return gzip.open(gz, "rb")
