"""A client's text frame -> a validated request, within the server's limits.

``read_request`` is pure and synchronous, so the server can run it in the loop for ordinary
messages and in a worker thread for frames that carry an upload (``UploadBudget`` bounds how
many bytes of those are being decoded at once). The rules:

- not JSON, or nested deeper than the parser goes -> ``bad_json`` (never ``internal``);
- a string holding a lone surrogate (``"\\ud800"``: not Unicode, cannot be sent back or
  logged) -> ``invalid_message``;
- over ``max_message_bytes`` -> ``too_large``, except a ``replay``'s ``upload.data``, which
  has its own limit: every other field still counts against ``max_message_bytes``;
- the reply's ``ref`` is ``protocol.ref_of`` the message, so it is only ever a valid id.
"""

from __future__ import annotations

import binascii
import json
import threading
from typing import Any

from streamer import protocol


class Rejected(protocol.ProtocolError):
    """A request refused with ``code``; ``ref`` is the id its error reply may echo."""

    def __init__(self, code: str, message: str, ref: str | int | None = None) -> None:
        super().__init__(code, message)
        self.ref = ref


def _utf8_size(raw: str) -> int:
    return len(raw) if raw.isascii() else len(raw.encode("utf-8", "surrogatepass"))


def _has_lone_surrogate(obj: Any, skip: str | None = None) -> bool:
    """Any string (key or value) with a lone surrogate? Iterative: the depth is the client's.
    ``skip``: the upload's data (checked as base64, far too long to scan twice)."""
    stack = [obj]
    while stack:
        item = stack.pop()
        if item is skip:
            continue
        if isinstance(item, str):
            if protocol._SURROGATE.search(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def _upload_data(obj: Any) -> str | None:
    if isinstance(obj, dict) and obj.get("type") == "replay" and isinstance(
            obj.get("upload"), dict) and isinstance(obj["upload"].get("data"), str):
        return obj["upload"]["data"]
    return None


def b64_limit(max_upload_bytes: int) -> int:
    """Characters of base64 that decode to at most ``max_upload_bytes``."""
    return (max_upload_bytes + 2) // 3 * 4


def decode_base64(data: str, chunk: int = 2**20) -> bytes:
    """Strict base64 (no whitespace or other characters, padding only at the end), in 1 MiB
    slices: each C call holds the GIL for a few ms only, so the event loop keeps its turns
    while a worker thread decodes a 20 MB upload (one call held it ~85 ms)."""
    if len(data) % 4 or data.find("=", 0, max(0, len(data) - 2)) != -1:
        raise binascii.Error("not base64: length or padding")
    out = bytearray()
    for i in range(0, len(data), chunk):
        out += binascii.a2b_base64(data[i:i + chunk], strict_mode=True)
    return bytes(out)


def _inline_too_large(limit: int) -> str:
    return (f"inline upload over the limit of {limit} bytes; send a larger file as a chunked "
            "upload (upload_start)")


def read_request(raw: str | bytes, max_message_bytes: int, max_upload_bytes: int) -> dict:
    """Parse, check and validate one client frame; Rejected on anything wrong. An upload's
    base64 ``data`` (at most ``max_upload_bytes`` decoded: the inline limit) comes back decoded
    as ``upload["bytes"]`` (``data`` dropped)."""
    if isinstance(raw, bytes):
        raise Rejected("bad_json", "send JSON text frames, not binary")
    size = _utf8_size(raw)
    too_large = f"message of {size} bytes over the limit of {max_message_bytes}"
    try:
        obj = json.loads(raw)
    except RecursionError:
        raise Rejected("bad_json", "not JSON this server reads: nested too deeply") from None
    except ValueError as exc:
        if size > max_message_bytes:
            raise Rejected("too_large", too_large) from None
        raise Rejected("bad_json", f"not JSON: {str(exc)[:200]}") from None
    ref = protocol.ref_of(obj)
    data = _upload_data(obj)
    rest = size - (len(data) if data is not None else 0)  # base64 is ASCII: chars = bytes
    if rest > max_message_bytes:
        raise Rejected("too_large", f"message of {rest} bytes (besides any upload data) over "
                       f"the limit of {max_message_bytes}", ref)
    if (data is not None or "\\u" in raw) and _has_lone_surrogate(obj, skip=data):
        raise Rejected("invalid_message", "a string holds a lone surrogate escape "
                       "(\\ud800-\\udfff): not valid Unicode", ref)
    if data is not None and len(data) > b64_limit(max_upload_bytes):
        raise Rejected("too_large", _inline_too_large(max_upload_bytes), ref)
    try:
        msg = protocol.validate(obj, direction="client")
    except protocol.ProtocolError as exc:
        raise Rejected(exc.code, exc.message, ref) from None
    if data is not None:
        try:
            decoded = decode_base64(data)
        except (binascii.Error, ValueError):
            raise Rejected("invalid_message", "replay.upload.data is not base64", ref) from None
        if len(decoded) > max_upload_bytes:
            raise Rejected("too_large", _inline_too_large(max_upload_bytes), ref)
        msg = {**msg, "upload": {"name": msg["upload"]["name"], "bytes": decoded}}
    return msg


class UploadBudget:
    """Upload bytes in flight, across all clients: large frames being decoded, and chunked
    uploads from their start to their replay (``streamer/chunked.py``).

    Twenty clients each sending a 27 MB upload frame held ~3 copies of each (frame text,
    parsed data, decoded bytes) at the same time; past ``limit`` a frame (or an upload_start)
    is refused at once with ``busy`` instead, so the daemon's memory and its uploads' disk
    stay bounded and come back.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_flight = 0
        self._lock = threading.Lock()

    def try_acquire(self, n: int) -> bool:
        with self._lock:
            if self.in_flight and self.in_flight + n > self.limit:
                return False  # (one frame alone is always allowed: the frame limit bounds it)
            self.in_flight += n
            return True

    def release(self, n: int) -> None:
        with self._lock:
            self.in_flight -= n
