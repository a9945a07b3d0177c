"""The bytes between a daemon and the Serve deployment: one HTTP request per chunk of windows.

Request body: a 4-byte little-endian header length, a JSON header (``streams``, ``seqs``,
``explain`` = indices of the rows to explain, ``predict`` = whether probabilities are wanted,
``samples`` per window), then the windows as raw
little-endian float32 ``[B, N]``. Raw float32, not JSON or int16: 192 KB a 3-s window, decoded
without a copy, and the replica sees exactly the samples the daemon's VAD saw, so predictions
equal in-process ones (tested within 1e-5). Response: JSON (``probs`` rows, ``explanations``
as finished protocol messages, ``model`` = name, version and sha256 of the file that answered).

numpy and the standard library only: the daemon side never needs Ray.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

HEADER_LEN = struct.Struct("<I")
#: One request's header may name at most this many bytes (stream ids, seqs, flags).
MAX_HEADER_BYTES = 1 << 20
CONTENT_TYPE = "application/x-emotion-monitor-windows"
#: The environment variable both sides read the deployment's token from (``cluster up
#: --token`` and ``stream --inference-token``).
TOKEN_ENV = "EMOTION_MONITOR_SERVE_TOKEN"


def token_digest(token: str) -> str:
    """What a replica keeps of the token: its sha256 (deployment arguments are visible in Ray's
    state API and dashboard, so the token itself never goes there)."""
    return hashlib.sha256(token.encode()).hexdigest()


def authorized(header: str | None, digest: str | None) -> bool:
    """Does an ``Authorization`` header carry the token whose digest is ``digest``? Always
    with no token configured (a loopback-only proxy)."""
    if digest is None:
        return True
    if not header or not header[:7].lower() == "bearer ":
        return False
    return hmac.compare_digest(token_digest(header[7:].strip()), digest)


@dataclass
class Chunk:
    """Windows of one request: samples ``[B, N]`` float32 and who they belong to."""

    waves: np.ndarray
    streams: list[str]
    seqs: list[int]
    explain: list[int] = field(default_factory=list)  # row indices to explain
    # False: explanations only. The daemon asks for predictions and explanations in separate
    # requests, so a window's prediction never waits for a Grad-CAM (as in-process).
    predict: bool = True

    @property
    def n(self) -> int:
        return int(self.waves.shape[0])


class WireError(ValueError):
    """A request body that is not a chunk of windows."""


def encode_chunk(chunk: Chunk) -> bytes:
    waves = np.ascontiguousarray(chunk.waves, dtype="<f4")
    header = json.dumps({"streams": chunk.streams, "seqs": [int(s) for s in chunk.seqs],
                         "explain": [int(i) for i in chunk.explain],
                         "predict": bool(chunk.predict), "samples": int(waves.shape[1])}).encode()
    return HEADER_LEN.pack(len(header)) + header + waves.tobytes()


def decode_chunk(body: bytes) -> Chunk:
    if len(body) < HEADER_LEN.size:
        raise WireError("body shorter than its header length")
    (n_header,) = HEADER_LEN.unpack_from(body)
    if n_header > MAX_HEADER_BYTES or HEADER_LEN.size + n_header > len(body):
        raise WireError(f"bad header length {n_header}")
    try:
        header = json.loads(body[HEADER_LEN.size:HEADER_LEN.size + n_header])
        streams, seqs = list(header["streams"]), [int(s) for s in header["seqs"]]
        explain, samples = [int(i) for i in header["explain"]], int(header["samples"])
        predict = bool(header.get("predict", True))
    except (ValueError, KeyError, TypeError) as exc:
        raise WireError(f"bad header: {exc}") from None
    data = memoryview(body)[HEADER_LEN.size + n_header:]
    if samples <= 0 or len(data) != len(streams) * samples * 4 or len(seqs) != len(streams):
        raise WireError(f"{len(data)} bytes of samples for {len(streams)} windows of {samples}")
    if any(not 0 <= i < len(streams) for i in explain):
        raise WireError("explain index out of range")
    # a writable copy: torch refuses to share a read-only buffer (and warns), and the request
    # body is freed as soon as this returns
    waves = np.frombuffer(data, dtype="<f4").reshape(len(streams), samples).copy()
    return Chunk(waves, streams, seqs, explain, predict)


def encode_result(probs: np.ndarray, explanations: list[dict], model: dict,
                  explain_errors: int = 0) -> bytes:
    """``explanations``: protocol messages, in the order of the chunk's ``explain``."""
    return json.dumps({"probs": np.asarray(probs, dtype=np.float64).tolist(),
                       "explanations": explanations, "model": model,
                       "explain_errors": int(explain_errors)}).encode()


def decode_result(body: bytes, n: int) -> dict[str, Any]:
    out = json.loads(body)
    if not isinstance(out, dict) or len(out.get("probs", ())) != n:
        raise WireError(f"expected {n} rows of probabilities")
    return out
