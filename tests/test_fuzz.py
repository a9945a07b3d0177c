"""Property-based fuzzing of the daemon's websocket surface (issue 14).

One real daemon (loopback, tiny model) serves the whole module. Hypothesis sends client
frames of any JSON shape, size and encoding (escapes, non-ASCII, non-standard NaN, sizes past
the message limit), protocol-shaped requests with hostile field values, and random bytes.
After each frame the sender's ping must get its pong, a bystander connected all along must
get its pong too, every frame either client received must be a valid server message, and the
session log may grow by only a few lines. Derandomized and without an example database, so CI
runs the same examples every time.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.sync.client import ClientConnection, connect

from streamer import protocol
from tests.streamer_harness import make_config, running

# Lines one client frame may add to the log: a failed upload replay is at most
# stream_started + error + stream_ended; status is off (interval one hour) so nothing else.
MAX_LOG_LINES_PER_FRAME = 4
REPLY_TIMEOUT_S = 30.0


class _Served:
    """The module's daemon, run in its own thread and event loop."""

    def __init__(self, tmp: Path, model: Path) -> None:
        self.config = make_config(tmp, model, status_interval_s=3600.0,
                                  file_timeout_s=30.0)
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.daemon: Any = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread = threading.Thread(target=self._serve, name="fuzz-daemon", daemon=True)
        self.thread.start()
        assert self.ready.wait(120), "daemon did not start"
        if self.error is not None:
            raise self.error

    def _serve(self) -> None:
        async def main() -> None:
            async with running(self.config) as daemon:
                self.daemon, self.loop = daemon, asyncio.get_running_loop()
                self.ready.set()
                await daemon._stop.wait()

        try:
            asyncio.run(main())
        except BaseException as exc:  # reported by stop() or at start
            self.error = exc
        finally:
            self.ready.set()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.daemon.port}/"

    @property
    def log_path(self) -> Path:
        return Path(self.config.sessions_dir) / f"{self.daemon.session_id}.jsonl"

    def log_lines(self) -> int:
        return self.log_path.read_bytes().count(b"\n")

    def stop(self) -> None:
        assert self.loop is not None
        self.loop.call_soon_threadsafe(self.daemon.request_stop)
        self.thread.join(60)
        assert not self.thread.is_alive(), "daemon did not stop"
        if self.error is not None:
            raise self.error


class _Client:
    """A sync websocket client that checks every frame it receives is a valid server message."""

    def __init__(self, url: str) -> None:
        self.ws: ClientConnection = connect(url, max_size=None, open_timeout=30).__enter__()
        self.received = 0
        hello = self.recv()
        assert hello["type"] == "hello", hello
        self.pings = 0

    def recv(self, timeout: float = REPLY_TIMEOUT_S) -> dict:
        raw = self.ws.recv(timeout=timeout)
        assert isinstance(raw, str), f"binary frame from the server: {raw[:80]!r}"
        self.received += 1
        return protocol.decode(raw, "server")  # raises on anything not a valid server message

    def served(self, tag: str) -> None:
        """A ping gets its pong (whatever else arrives first must be valid too)."""
        self.pings += 1
        ref = f"{tag}-{self.pings}"
        self.ws.send(json.dumps(protocol.ping(id=ref)))
        deadline = time.monotonic() + REPLY_TIMEOUT_S
        while True:
            msg = self.recv(max(0.1, deadline - time.monotonic()))
            if msg["type"] == "pong" and msg.get("ref") == ref:
                return

    def close(self) -> None:
        self.ws.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, tiny_model_path: Path
           ) -> Iterator[_Served]:
    s = _Served(tmp_path_factory.mktemp("fuzz"), tiny_model_path)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def pair(served: _Served) -> Iterator[tuple[_Client, _Client]]:
    fuzzer, bystander = _Client(served.url), _Client(served.url)
    yield fuzzer, bystander
    fuzzer.close()
    bystander.close()


# ----------------------------------------------------------------------------- strategies

_scalars = (st.none() | st.booleans()
            | st.integers(min_value=-(2**70), max_value=2**70)
            | st.floats(allow_nan=True, allow_infinity=True)
            | st.text(max_size=40)
            | st.sampled_from(["1", "", "\ud800", "\x00", "../etc/passwd", "a" * 65]))
_json = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=5)
                     | st.dictionaries(st.text(max_size=12), inner, max_size=5), max_leaves=25)
_ids = st.one_of(st.integers(min_value=-(2**60), max_value=2**60), st.text(max_size=70),
                 st.floats(), st.booleans(), st.none())


@st.composite
def _requests(draw: st.DrawFn) -> dict:
    """Protocol-shaped requests: a real (or near) type and version, hostile field values."""
    msg: dict[str, Any] = {"type": draw(st.sampled_from([*protocol.CLIENT_TYPES, "pong",
                                                          "hello", "Ping", ""])),
                           "v": draw(st.sampled_from(["1", "1", "2", 1, None]))}
    if draw(st.booleans()):
        msg["id"] = draw(_ids)
    kind = msg["type"]
    if kind == "replay":
        if draw(st.integers(0, 4)) == 0:  # a chunked upload's id (this one's or none)
            msg["upload_id"] = draw(st.text(max_size=70) | _scalars)
        elif draw(st.booleans()):
            data = base64.b64encode(draw(st.binary(max_size=2048))).decode()
            if draw(st.integers(0, 4)) == 0:
                data = data[:-1] + "!"  # not base64
            msg["upload"] = {"name": draw(st.text(max_size=300)), "data": data}
        else:
            msg["path"] = draw(st.text(max_size=100) | st.sampled_from(
                ["/dev/zero", "/proc/self/fd/0", "..", "clips", "/etc/passwd"]))
        for key in ("speed", "loop", "split_channels"):
            if draw(st.booleans()):
                msg[key] = draw(_scalars)
    elif kind == "stop_stream":
        msg["stream"] = draw(st.text(max_size=70) | _scalars)
    elif kind == "upload_start":  # binary frames drawn later may then land in an upload
        msg["name"] = draw(st.text(min_size=1, max_size=300) | _scalars)
        msg["bytes"] = draw(st.integers(1, 600) | st.integers(-5, 2**40) | _scalars)
    elif kind == "subscribe":
        msg["streams"] = draw(_json)
    extra = draw(st.dictionaries(st.text(max_size=10), _json, max_size=3))
    return {**extra, **msg}


def _encode(value: Any, ascii_only: bool, indent: int | None) -> str:
    """JSON text that a websocket text frame can carry: with ``ensure_ascii=False`` a lone
    surrogate would be raw (not UTF-8), so it goes back to its ``\\uXXXX`` escape."""
    text = json.dumps(value, ensure_ascii=ascii_only, indent=indent)
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


@st.composite
def _text_frames(draw: st.DrawFn) -> str:
    """JSON text of any shape in several encodings, padded past the size limit, or not JSON."""
    choice = draw(st.integers(0, 5))
    if choice == 0:
        return draw(st.text(max_size=200))  # anything, mostly not JSON
    value = draw(_requests()) if choice in (1, 2, 3) else draw(_json)
    if choice == 3 and isinstance(value, dict):  # size past / near the 64 KiB limit
        value["pad"] = "p" * draw(st.sampled_from([10, 60_000, 65_600, 200_000]))
    text = _encode(value, draw(st.booleans()), draw(st.sampled_from([None, 0, 2])))
    if draw(st.integers(0, 5)) == 0:  # cut short, or trailing junk
        text = text[: len(text) // 2] if draw(st.booleans()) else text + " ]"
    return text


_SURROGATE = re.compile("[\ud800-\udfff]")
_frames = st.one_of(_text_frames(), st.binary(max_size=512))


# ----------------------------------------------------------------------------- tests

@pytest.mark.timeout(300)
@settings(max_examples=150, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(frame=_frames)
def test_any_client_frame_answered_and_everyone_stays_served(served: _Served,
                                                             pair: tuple[_Client, _Client],
                                                             frame: str | bytes) -> None:
    fuzzer, bystander = pair
    before = served.log_lines()
    fuzzer.ws.send(frame)
    fuzzer.served("fz")
    bystander.served("by")
    grown = served.log_lines() - before
    assert 0 <= grown <= MAX_LOG_LINES_PER_FRAME, (grown, frame[:200])


@pytest.mark.timeout(120)
def test_invalid_utf8_text_frame_closes_only_that_connection(served: _Served) -> None:
    """A text frame that is not UTF-8 breaks the websocket protocol itself: that connection is
    closed (1007), the daemon and its other clients go on."""
    from websockets.exceptions import ConnectionClosed

    bystander, bad = _Client(served.url), _Client(served.url)
    bad.ws.send(b'{"type":"ping","v":"1","id":"\xff\xfe"}', text=True)
    with pytest.raises(ConnectionClosed) as closed:
        bad.served("bad")
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1007
    bystander.served("by")
    late = _Client(served.url)
    late.served("late")
    for c in (bystander, late):
        c.close()
