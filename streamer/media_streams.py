"""The ingest wire formats, parsed and checked: no I/O, no clock, so every rule is testable alone.

Two ways to push call audio to ``/ingest`` (``docs/ingest.md``):

- **Media Streams**, the JSON events phone platforms fork a live call into: ``connected``,
  ``start`` (call and stream ids, tracks, media format, custom parameters), ``media`` (base64
  payload of one track, 20 ms at a time), ``stop``; ``mark`` and ``dtmf`` are accepted and
  ignored. Twilio and SignalWire spell it camelCase (``start.callSid``, ``start.streamSid``,
  ``start.mediaFormat.sampleRate``, ``start.customParameters``), Telnyx snake_case
  (``stream_id``, ``start.call_control_id``, ``start.media_format.sample_rate``); both are
  read. Track ``inbound`` is the caller, ``outbound`` the agent.
- **Raw**, for softphones and scripts: a JSON ``{"type": "start", "rate", "format",
  "channels", "labels", "call"}``, then binary frames of interleaved PCM, then
  ``{"type": "stop"}``. The first message says which of the two a connection speaks.

Anything a sender gets wrong raises :class:`IngestError` with the websocket close code and the
short reason the connection is closed with.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streamer import g711

# Close codes (RFC 6455, section 7.4.1) an ingest connection ends with.
CLOSE_NORMAL = 1000  # the sender's stop, or its own close
CLOSE_GOING_AWAY = 1001  # the daemon is shutting down, or an operator stopped the stream
CLOSE_UNSUPPORTED = 1003  # unknown format, payload not base64 or not whole samples
CLOSE_POLICY = 1008  # token, order of events, unknown track, faster than real time, idle
CLOSE_TOO_BIG = 1009  # a message over the ingest limit
CLOSE_INTERNAL = 1011  # a bug on our side
CLOSE_TRY_LATER = 1013  # too many concurrent calls (or streams)
MAX_CLOSE_REASON = 120  # bytes; RFC 6455 allows 123 in a close frame

MEDIA_STREAMS_RATE = 8000  # G.711 on the telephone network
MIN_RATE, MAX_RATE = 8000, 48000
MAX_RAW_CHANNELS = 2  # caller and agent
MAX_CALL_ID = 128  # protocol v1's call.id
MAX_PARAMS, MAX_PARAM_KEY, MAX_PARAM_VALUE = 32, 64, 256  # protocol v1's call.params
MAX_LABEL = 32
TOKEN_PARAM = "token"  # the custom parameter that carries the token (Twilio's <Parameter>)

# Track names as the platforms spell them -> ours. Twilio sends "inbound"/"outbound" in media and
# start.tracks; Telnyx's stream_track options are "inbound_track"/"outbound_track".
TRACKS = {"inbound": "inbound", "inbound_track": "inbound", "outbound": "outbound",
          "outbound_track": "outbound"}
ROLES = {"inbound": "caller", "outbound": "agent"}


class IngestError(Exception):
    """A sender's mistake: close the connection with ``code`` and ``reason``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = close_reason(reason)


def close_reason(text: str) -> str:
    """``text`` cut to what a close frame holds (UTF-8 bytes, whole characters)."""
    raw = text.encode("utf-8", "replace")[:MAX_CLOSE_REASON]
    return raw.decode("utf-8", "ignore")


# ----------------------------------------------------------------------------- formats

# Encoding names -> canonical format. L16 is *big-endian* (network byte order), as RFC 3551
# (section 4.5.11) defines it and Telnyx sends it; little-endian PCM must say so: "s16le".
_FORMAT_NAMES = {
    "audio/x-mulaw": "mulaw", "pcmu": "mulaw", "mulaw": "mulaw", "ulaw": "mulaw",
    "g711_ulaw": "mulaw", "audio/x-alaw": "alaw", "pcma": "alaw", "alaw": "alaw",
    "g711_alaw": "alaw", "l16": "l16", "audio/l16": "l16", "s16be": "l16", "s16le": "s16le",
    "pcm_s16le": "s16le", "f32le": "f32le",
}
_SAMPLE_BYTES = {"mulaw": 1, "alaw": 1, "l16": 2, "s16le": 2, "f32le": 4}
FORMATS = tuple(_SAMPLE_BYTES)


@dataclass(frozen=True)
class AudioFormat:
    """How a sender's samples are encoded: ``name`` (one of ``FORMATS``), rate, channels."""

    name: str
    rate: int
    channels: int = 1

    @property
    def frame_bytes(self) -> int:
        return _SAMPLE_BYTES[self.name] * self.channels

    def describe(self) -> str:
        """As stream info's ``call.format`` shows it, e.g. ``mulaw/8000``."""
        return f"{self.name}/{self.rate}" + (f"/{self.channels}" if self.channels > 1 else "")

    def decode(self, data: bytes) -> np.ndarray:
        """Bytes -> float32 ``[frames, channels]`` in [-1, 1]; whole frames or IngestError."""
        if len(data) % self.frame_bytes:
            raise IngestError(CLOSE_UNSUPPORTED, f"payload of {len(data)} bytes is not whole "
                              f"samples ({self.describe()}: {self.frame_bytes} bytes a frame)")
        if self.name == "mulaw":
            x = g711.pcm16_to_float(g711.ulaw_decode(data))
        elif self.name == "alaw":
            x = g711.pcm16_to_float(g711.alaw_decode(data))
        elif self.name == "l16":
            x = np.frombuffer(data, dtype=">i2").astype(np.float32) / 32768.0
        elif self.name == "s16le":
            x = np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0
        else:  # f32le; NaN/Inf and overs are repaired by the caller (sources.SampleRepair)
            x = np.frombuffer(data, dtype="<f4").astype(np.float32)
        return x.reshape(-1, self.channels)


def parse_format(encoding: Any, rate: Any, channels: Any = 1,
                 max_channels: int = 1) -> AudioFormat:
    """A format from a sender's words (``audio/x-mulaw``, ``PCMU``, ``L16``, ``s16le``...)."""
    name = _FORMAT_NAMES.get(str(encoding).strip().lower()) if isinstance(encoding, str) else None
    if name is None:
        raise IngestError(CLOSE_UNSUPPORTED, f"unknown format {_quote(encoding)} (use mulaw, "
                          "alaw, l16 (big-endian), s16le or f32le)")
    rate, channels = _as_int(rate), _as_int(channels)
    if not _is_int(rate) or not MIN_RATE <= rate <= MAX_RATE:
        raise IngestError(CLOSE_UNSUPPORTED, f"sample rate {_quote(rate)} not in "
                          f"{MIN_RATE}..{MAX_RATE}")
    if not _is_int(channels) or not 1 <= channels <= max_channels:
        raise IngestError(CLOSE_UNSUPPORTED, f"channels {_quote(channels)} not in "
                          f"1..{max_channels}")
    return AudioFormat(name, int(rate), int(channels))


# ----------------------------------------------------------------------------- messages

@dataclass(frozen=True)
class CallStart:
    """What a ``start`` announces, in either layout. ``tracks`` are the streams to open, as
    (track name, role or None); ``token`` is never part of ``params``."""

    layout: str  # "media-streams" | "raw"
    call_id: str | None  # None: the raw sender gave none (the daemon names the call)
    stream_sid: str | None
    tracks: tuple[tuple[str, str | None], ...]
    format: AudioFormat
    params: dict[str, str] = field(default_factory=dict)
    token: str | None = None


def load(text: str) -> dict[str, Any]:
    """One text message as a JSON object, or IngestError."""
    try:
        msg = json.loads(text)
    except (ValueError, RecursionError):
        raise IngestError(CLOSE_UNSUPPORTED, "message is not JSON") from None
    if not isinstance(msg, dict):
        raise IngestError(CLOSE_UNSUPPORTED, "message is not a JSON object")
    return msg


def kind_of(msg: Mapping[str, Any]) -> tuple[str, str]:
    """(layout, event): Media Streams messages carry ``event``, the raw variant ``type``."""
    if isinstance(msg.get("event"), str):
        return "media-streams", msg["event"]
    if isinstance(msg.get("type"), str):
        return "raw", msg["type"]
    raise IngestError(CLOSE_UNSUPPORTED, "neither a Media Streams event nor a raw start")


def parse_start(msg: Mapping[str, Any]) -> CallStart:
    """A Media Streams ``start`` (Twilio/SignalWire camelCase or Telnyx snake_case)."""
    start = msg.get("start")
    if not isinstance(start, dict):
        raise IngestError(CLOSE_POLICY, "start event without a 'start' object")
    sid = _first_str(start, msg, keys=("streamSid", "stream_id"))
    call_id = _first_str(start, keys=("callSid", "call_control_id", "call_sid", "callId",
                                      "call_id")) or sid
    if not call_id:
        raise IngestError(CLOSE_POLICY, "start names no call (callSid, call_control_id) "
                          "and no stream")
    fmt_in = start.get("mediaFormat", start.get("media_format")) or {}
    if not isinstance(fmt_in, dict):
        raise IngestError(CLOSE_UNSUPPORTED, "start's media format is not an object")
    fmt = parse_format(fmt_in.get("encoding", "audio/x-mulaw"),
                       fmt_in.get("sampleRate", fmt_in.get("sample_rate", MEDIA_STREAMS_RATE)),
                       fmt_in.get("channels", 1))
    tracks_in = start.get("tracks")
    if tracks_in is None:  # Telnyx's start lists none: expect both (an unused one stays empty)
        names = ["inbound", "outbound"]
    elif isinstance(tracks_in, list) and tracks_in:
        names = [track_name(t) for t in tracks_in]
    else:
        raise IngestError(CLOSE_POLICY, "start's tracks is not a non-empty list")
    names = list(dict.fromkeys(names))
    params, token = split_params(start.get("customParameters", start.get("custom_parameters")))
    return CallStart("media-streams", call_id[:MAX_CALL_ID], sid, tuple(
        (n, ROLES[n]) for n in names), fmt, params, token)


def parse_raw_start(msg: Mapping[str, Any]) -> CallStart:
    """The raw variant's ``start``: rate, format, channels, labels, call, token."""
    fmt = parse_format(msg.get("format", "s16le"), msg.get("rate", 16000),
                       msg.get("channels", 1), max_channels=MAX_RAW_CHANNELS)
    labels = msg.get("labels", ["caller", "agent"][:fmt.channels])
    if not (isinstance(labels, list) and len(labels) == fmt.channels
            and all(isinstance(x, str) and x for x in labels)):
        raise IngestError(CLOSE_POLICY, f"labels must be {fmt.channels} non-empty string(s), "
                          "one per channel")
    labels = [re.sub(r"[^A-Za-z0-9_.-]+", "_", x)[:MAX_LABEL] for x in labels]
    if len(set(labels)) != len(labels):
        raise IngestError(CLOSE_POLICY, "labels must differ")
    call = msg.get("call")
    if call is not None and not (isinstance(call, str) and call):
        raise IngestError(CLOSE_POLICY, "call must be a non-empty string")
    token = msg.get("token")
    params, param_token = split_params(msg.get("params"))
    return CallStart("raw", call[:MAX_CALL_ID] if call else None, None,
                     tuple((x, x if x in ROLES.values() else None) for x in labels), fmt,
                     params, token if isinstance(token, str) else param_token)


def parse_media(msg: Mapping[str, Any]) -> tuple[str, bytes]:
    """A ``media`` event: (track, payload bytes). The payload must be strict base64."""
    media = msg.get("media")
    if not isinstance(media, dict):
        raise IngestError(CLOSE_POLICY, "media event without a 'media' object")
    payload = media.get("payload")
    if not isinstance(payload, str):
        raise IngestError(CLOSE_UNSUPPORTED, "media payload is not a base64 string")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise IngestError(CLOSE_UNSUPPORTED, "media payload is not valid base64") from None
    return track_name(media.get("track", "inbound")), data


def track_name(value: Any) -> str:
    """``inbound``/``outbound`` from any platform's spelling, or IngestError."""
    name = TRACKS.get(value.strip().lower()) if isinstance(value, str) else None
    if name is None:
        raise IngestError(CLOSE_POLICY, f"unknown track {_quote(value)} (inbound or outbound)")
    return name


def split_params(raw: Any) -> tuple[dict[str, str], str | None]:
    """Custom parameters as protocol v1 carries them, and the token taken out of them.

    Twilio sends an object; Telnyx's API takes a list of ``{name, value}``: both are read.
    At most ``MAX_PARAMS`` entries, keys and values cut to their limits, values as text.
    """
    if isinstance(raw, list):
        raw = {p.get("name"): p.get("value") for p in raw
               if isinstance(p, dict) and isinstance(p.get("name"), str)}
    if not isinstance(raw, dict):
        return {}, None
    params: dict[str, str] = {}
    token = None
    for key, value in raw.items():
        if not isinstance(key, str):
            continue
        if key.lower() == TOKEN_PARAM:
            token = value if isinstance(value, str) else None
            continue
        if len(params) < MAX_PARAMS:
            text = value if isinstance(value, str) else json.dumps(value)
            params[key[:MAX_PARAM_KEY]] = text[:MAX_PARAM_VALUE]
    return params, token


def _first_str(*objs: Mapping[str, Any], keys: tuple[str, ...]) -> str | None:
    for obj in objs:
        for key in keys:
            value = obj.get(key)
            if isinstance(value, str) and value:
                return value
    return None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _as_int(value: Any) -> Any:
    """Numbers some platforms send as text ("8000") as int; anything else unchanged."""
    return int(value) if isinstance(value, str) and value.isdigit() and len(value) < 7 else value


def _quote(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
