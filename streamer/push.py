"""Push call audio to a daemon's ``/ingest`` websocket, as a phone platform would.

``push_call`` sends one call in real time (``speed`` 1; N times faster; 0 as fast as the socket
takes it): Media Streams JSON events with 20-ms base64 media frames (μ-law at 8 kHz by
default, Twilio's camelCase or Telnyx's snake_case layout), or the raw variant (a JSON start,
binary PCM frames, a stop). Channel 0 of the audio is the inbound track (caller), channel 1 the
outbound track (agent). ``emotion-monitor push`` (``streamer/push_cli.py``), the tests and
``benchmarks/call_floor.py`` all send through it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import numpy as np
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from streamer import g711

FRAME_MS = 20  # what Twilio and Telnyx send per media message
PROTOCOLS = ("media-streams", "raw")
LAYOUTS = ("twilio", "telnyx")  # camelCase (Twilio, SignalWire) | snake_case (Telnyx)
FORMATS = ("mulaw", "alaw", "l16", "s16le", "f32le")
TOKEN_VIA = ("header", "query", "param")
# The rate each format is sent at unless told otherwise: G.711 is 8-kHz telephone audio.
DEFAULT_RATES = {"mulaw": 8000, "alaw": 8000, "l16": 16000, "s16le": 16000, "f32le": 16000}
_MEDIA_STREAMS_ENCODING = {
    "twilio": {"mulaw": "audio/x-mulaw", "alaw": "audio/x-alaw", "l16": "audio/L16",
               "s16le": "s16le", "f32le": "f32le"},
    "telnyx": {"mulaw": "PCMU", "alaw": "PCMA", "l16": "L16", "s16le": "s16le",
               "f32le": "f32le"},
}
TRACKS = ("inbound", "outbound")
LABELS = ("caller", "agent")


@dataclass
class PushResult:
    """How a push went: what was sent, and how the daemon closed the connection."""

    call_id: str
    frames_sent: int = 0  # samples per track at the sent rate
    seconds_sent: float = 0.0
    messages: int = 0
    close_code: int | None = None
    close_reason: str = ""
    wall_s: float = 0.0
    stopped: bool = False  # our stop went out before the daemon closed
    extra: dict[str, Any] = field(default_factory=dict)


def encode(samples: np.ndarray, fmt: str) -> bytes:
    """Float samples (any shape; interleaved when 2-D) -> the bytes of ``fmt``."""
    if fmt == "f32le":
        return np.ascontiguousarray(samples, dtype="<f4").tobytes()
    pcm = g711.float_to_pcm16(samples).reshape(-1)
    if fmt == "mulaw":
        return g711.ulaw_encode(pcm).tobytes()
    if fmt == "alaw":
        return g711.alaw_encode(pcm).tobytes()
    if fmt == "l16":  # RFC 3551: network byte order
        return pcm.astype(">i2").tobytes()
    if fmt == "s16le":
        return pcm.astype("<i2").tobytes()
    raise ValueError(f"unknown format {fmt!r} (use one of {FORMATS})")


def load_audio(path: str | Path, rate: int) -> np.ndarray:
    """A file as float32 ``[frames, channels]`` (1 or 2 channels) at ``rate`` (soxr)."""
    import soundfile as sf
    import soxr

    data, file_rate = sf.read(str(path), dtype="float32", always_2d=True)
    if data.shape[1] > 2:
        raise ValueError(f"{path}: {data.shape[1]} channels; a call has 1 (caller) or 2 "
                         "(caller, agent)")
    if file_rate != rate:
        data = soxr.resample(data, file_rate, rate).astype(np.float32).reshape(
            -1, data.shape[1])
    return data


def with_query_token(url: str, token: str) -> str:
    parts = urlsplit(url)
    query = "&".join(q for q in (parts.query, urlencode({"token": token})) if q)
    return urlunsplit(parts._replace(query=query))


async def push_call(url: str, audio: np.ndarray | AsyncIterator[np.ndarray], rate: int, *,
                    token: str | None = None, token_via: str = "header", fmt: str = "mulaw",
                    protocol: str = "media-streams", layout: str = "twilio",
                    speed: float = 1.0, call_id: str | None = None,
                    params: dict[str, str] | None = None, frame_ms: int = FRAME_MS,
                    channels: int | None = None, connect_kw: dict[str, Any] | None = None,
                    ) -> PushResult:
    """Send one call to ``url`` (``ws://HOST:PORT/ingest``) and wait for the daemon's close.

    ``audio``: float32 ``[frames, channels]`` at ``rate`` (channel 0 caller, 1 agent), or an
    async iterator of such blocks (a microphone: paced by its source, so ``speed`` is ignored;
    give ``channels``). ``token_via``: ``header`` (Authorization: Bearer), ``query``
    (``?token=``) or ``param`` (the start's ``customParameters.token``, as Twilio's
    ``<Parameter>`` sends it).
    """
    if protocol not in PROTOCOLS or layout not in LAYOUTS or token_via not in TOKEN_VIA:
        raise ValueError(f"protocol in {PROTOCOLS}, layout in {LAYOUTS}, token_via in "
                         f"{TOKEN_VIA}")
    encode(np.zeros(1, np.float32), fmt)  # unknown formats fail before connecting
    live = not isinstance(audio, np.ndarray)
    n_ch = int(channels or 1) if live else audio.shape[1]
    call_id = call_id or f"CA{uuid.uuid4().hex}"
    result = PushResult(call_id)
    headers, target = {}, url
    if token and token_via == "header":
        headers["Authorization"] = f"Bearer {token}"
    elif token and token_via == "query":
        target = with_query_token(url, token)
    sender = _Sender(protocol, layout, fmt, rate, n_ch, call_id,
                     dict(params or {}) | ({"token": token} if token and token_via == "param"
                                           else {}))
    frame = max(1, int(rate * frame_ms / 1000))
    t0 = time.monotonic()
    async with connect(target, additional_headers=headers, max_size=2**20,
                       **(connect_kw or {})) as ws:
        try:
            for msg in sender.opening():
                await ws.send(msg)
                result.messages += 1
            sent = 0
            async for block in (audio if live else _blocks(audio, frame)):
                for msg in sender.media(block):
                    await ws.send(msg)
                    result.messages += 1
                sent += block.shape[0]
                result.frames_sent = sent
                if not live and speed > 0:  # pace against one clock: no drift
                    delay = t0 + sent / rate / speed - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
            await ws.send(sender.stop())
            result.stopped = True
            await asyncio.wait_for(ws.wait_closed(), 30)
        except ConnectionClosed:
            pass
        result.close_code, result.close_reason = ws.close_code, ws.close_reason or ""
    result.seconds_sent = result.frames_sent / rate
    result.wall_s = time.monotonic() - t0
    return result


async def _blocks(audio: np.ndarray, frame: int) -> AsyncIterator[np.ndarray]:
    for lo in range(0, audio.shape[0], frame):
        yield audio[lo:lo + frame]


class _Sender:
    """The messages of one call in one protocol and layout."""

    def __init__(self, protocol: str, layout: str, fmt: str, rate: int, channels: int,
                 call_id: str, params: dict[str, str]) -> None:
        self.protocol, self.layout, self.fmt, self.rate = protocol, layout, fmt, rate
        self.channels, self.call_id, self.params = channels, call_id, params
        self.stream_sid = f"MZ{uuid.uuid4().hex}"
        self.seq = 0
        self.chunk = 0
        self.t_ms = 0

    def _event(self, event: str, body: dict[str, Any]) -> str:
        self.seq += 1
        if self.layout == "twilio":
            msg = {"event": event, "sequenceNumber": str(self.seq), **body,
                   "streamSid": self.stream_sid}
        else:
            msg = {"event": event, "sequence_number": str(self.seq), **body,
                   "stream_id": self.stream_sid}
        return json.dumps(msg)

    def opening(self) -> list[str]:
        if self.protocol == "raw":
            start = {"type": "start", "rate": self.rate, "format": self.fmt,
                     "channels": self.channels, "labels": list(LABELS[:self.channels]),
                     "call": self.call_id}
            if "token" in self.params:
                start["token"] = self.params["token"]
            return [json.dumps(start)]
        encoding = _MEDIA_STREAMS_ENCODING[self.layout][self.fmt]
        tracks = list(TRACKS[:self.channels])
        if self.layout == "twilio":
            start = {"accountSid": "AC0", "streamSid": self.stream_sid, "callSid": self.call_id,
                     "tracks": tracks, "customParameters": self.params,
                     "mediaFormat": {"encoding": encoding, "sampleRate": self.rate,
                                     "channels": 1}}
            connected = {"event": "connected", "protocol": "Call", "version": "1.0.0"}
        else:
            start = {"call_control_id": self.call_id, "tracks": tracks,
                     "custom_parameters": self.params,
                     "media_format": {"encoding": encoding, "sample_rate": self.rate,
                                      "channels": 1}}
            connected = {"event": "connected", "version": "1.0.0"}
        return [json.dumps(connected), self._event("start", {"start": start})]

    def media(self, block: np.ndarray) -> list[str | bytes]:
        if self.protocol == "raw":
            return [encode(block, self.fmt)]
        self.chunk += 1
        out: list[str | bytes] = []
        for ch, track in enumerate(TRACKS[:self.channels]):
            payload = base64.b64encode(encode(block[:, ch], self.fmt)).decode("ascii")
            out.append(self._event("media", {"media": {
                "track": track, "chunk": str(self.chunk), "timestamp": str(self.t_ms),
                "payload": payload}}))
        self.t_ms += int(round(1000 * block.shape[0] / self.rate))
        return out

    def stop(self) -> str:
        if self.protocol == "raw":
            return json.dumps({"type": "stop"})
        key = "callSid" if self.layout == "twilio" else "call_control_id"
        return self._event("stop", {"stop": {key: self.call_id}})


async def mic_blocks(rate: int, frame_ms: int = FRAME_MS, device: Any = None,
                     stop: asyncio.Event | None = None) -> AsyncIterator[np.ndarray]:
    """The microphone as ``[frames, 1]`` float32 blocks at ``rate`` (soxr from its native
    rate), until ``stop`` is set. sounddevice (PortAudio) is imported only here."""
    import soxr

    from streamer.sources import _sounddevice, query_input

    sd = _sounddevice()
    device, info = query_input(sd, device)
    native = int(round(info["default_samplerate"]))
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[np.ndarray] = asyncio.Queue(256)
    rs = soxr.ResampleStream(native, rate, 1, dtype="float32")

    def callback(indata: np.ndarray, frames: int, _time: Any, _status: Any) -> None:
        block = indata[:, :1].copy()
        loop.call_soon_threadsafe(lambda: queue.full() or queue.put_nowait(block))

    with sd.InputStream(device=device, samplerate=native, channels=1, dtype="float32",
                        blocksize=max(1, native * frame_ms // 1000), callback=callback):
        while stop is None or not stop.is_set():
            try:  # a silent or stalled device must not keep a stop from being seen
                block = await asyncio.wait_for(queue.get(), 0.25)
            except TimeoutError:
                continue
            out = rs.resample_chunk(block)
            if out.size:
                yield out.reshape(-1, 1)
