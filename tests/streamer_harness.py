"""Helpers for the daemon/server tests: an in-process daemon on an ephemeral port, a websocket
client that records what it received, and the daemon as a subprocess (signal tests)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from streamer.daemon import Daemon, DaemonConfig
from streamer.server import ServerConfig

REPO = Path(__file__).resolve().parents[1]
TESS_FILES = ["OAF_angry/OAF_bath_angry.flac", "OAF_happy/OAF_bath_happy.flac",
              "YAF_sad/YAF_bath_sad.flac", "OAF_neutral/OAF_bath_neutral.flac"]


def tess_files(tess_dir: Path, n: int = 3) -> list[Path]:
    files = [tess_dir / f for f in TESS_FILES[:n]]
    missing = [f for f in files if not f.is_file()]
    assert not missing, f"TESS files missing: {missing}"
    return files


def copy_files(files: list[Path], dest: Path) -> list[Path]:
    """Copies into a temp dir (never the repo) so replay paths can be confined to it."""
    dest.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copy(f, dest / f.name)) for f in files]


def make_config(tmp_path: Path, model_path: Path, **kw: Any) -> DaemonConfig:
    server_kw = {k: kw.pop(k) for k in list(kw) if k in ServerConfig.__dataclass_fields__}
    server_kw.setdefault("port", 0)
    kw.setdefault("vad", "energy")  # fast and deterministic; silero is D2's to test
    kw.setdefault("explain_every", 0)
    kw.setdefault("device", "cpu")
    return DaemonConfig(model_path=model_path, sessions_dir=tmp_path / "sessions",
                        server=ServerConfig(**server_kw), **kw)


@contextlib.asynccontextmanager
async def running(config: DaemonConfig, sources: list[Any] | None = None
                  ) -> AsyncIterator[Daemon]:
    daemon = Daemon(config, sources or [])
    task = asyncio.create_task(daemon.run())
    ready = asyncio.create_task(daemon.wait_ready())
    await asyncio.wait([task, ready], return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        task.result()  # raise the start-up error
    try:
        yield daemon
    finally:
        daemon.request_stop()
        assert await asyncio.wait_for(task, 30) == 0


async def replay_to_end(config: DaemonConfig, files: list[Path], name: str) -> Recorder:
    """A daemon replaying ``files`` as fast as possible; what a client got until the end."""
    from streamer.sources import FileSource

    async with running(config) as daemon, client(daemon) as c:
        await daemon._start_source(FileSource(files, 16000, name=name, speed=0))
        await c.until(lambda m: m["type"] == "stream_ended")
        return c


def log_text(directory: Path, session_id: str) -> str:
    """A session log's text, plain or (once the daemon closed it) gzip-compressed."""
    from streamer.sessionlog import open_log, session_path

    with open_log(session_path(directory, session_id)) as fh:
        return fh.read().decode("utf-8")


def url(daemon: Daemon) -> str:
    return f"ws://127.0.0.1:{daemon.port}/"


class Recorder:
    """A client that keeps every text frame it received, parsed and raw."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.raw: list[str] = []
        self.msgs: list[dict] = []

    async def recv(self, timeout: float = 20.0) -> dict:
        raw = await asyncio.wait_for(self.ws.recv(), timeout)
        self.raw.append(raw)
        msg = json.loads(raw)
        self.msgs.append(msg)
        return msg

    async def until(self, pred: Any, timeout: float = 30.0, seen: bool = False) -> dict:
        """Receive until ``pred(msg)``; returns that message. ``seen``: a message received
        before counts too."""
        if seen:
            for msg in self.msgs:
                if pred(msg):
                    return msg
        deadline = time.monotonic() + timeout
        while True:
            msg = await self.recv(max(0.1, deadline - time.monotonic()))
            if pred(msg):
                return msg

    async def send(self, msg: dict | str) -> None:
        await self.ws.send(msg if isinstance(msg, str) else json.dumps(msg))

    async def request(self, msg: dict, timeout: float = 20.0) -> dict:
        """Send a request and return its reply (ack/pong/error with the same ref)."""
        await self.send(msg)
        return await self.until(lambda m: m.get("ref") == msg.get("id")
                                and m["type"] in ("ack", "pong", "error"), timeout)

    def of(self, type_: str, stream: str | None = None) -> list[dict]:
        return [m for m in self.msgs if m["type"] == type_
                and (stream is None or m.get("stream") == stream)]


async def upload_chunked(c: Recorder, name: str, data: bytes, id: str = "up",
                         chunk: int = 2**16, **replay: Any) -> dict:
    """A chunked upload as a client sends one: ``upload_start``, its ack, the binary chunks,
    then ``replay`` (id ``id``) with ``replay``'s options; the replay's answer, or the
    ``upload_start``'s error."""
    from streamer import protocol

    started = await c.request(protocol.upload_start(name, len(data), id=f"{id}-start"))
    if started["type"] != "ack":
        return started
    for piece in protocol.upload_chunks(data, chunk):
        await c.ws.send(piece)
    return await c.request(protocol.replay(upload_id=started["upload_id"], id=id, **replay))


@contextlib.asynccontextmanager
async def client(daemon_or_url: Daemon | str, **kw: Any) -> AsyncIterator[Recorder]:
    target = daemon_or_url if isinstance(daemon_or_url, str) else url(daemon_or_url)
    async with connect(target, **kw) as ws:
        rec = Recorder(ws)
        hello = await rec.recv()
        assert hello["type"] == "hello", hello
        yield rec


# ----------------------------------------------------------------------------- subprocess

class DaemonProcess:
    """``emotion-monitor stream ...`` as a child process; the port is read from its stderr."""

    def __init__(self, args: list[str], cwd: Path, stdin: int | None = None) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("EMOTION_MONITOR_TOKEN", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "emotion_monitor", "stream", "--port", "0", *args],
            cwd=cwd, env={**env, "PYTHONPATH": str(REPO)}, stdin=stdin, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True)
        self.stderr_lines: list[str] = []
        self.port = self._read_port()

    def _read_port(self, timeout: float = 60.0) -> int:
        deadline = time.monotonic() + timeout
        assert self.proc.stderr is not None
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            self.stderr_lines.append(line)
            m = re.search(r"serving ws://[^:]+:(\d+)/", line)
            if m:
                return int(m.group(1))
        self.proc.kill()
        raise AssertionError("daemon did not start: " + "".join(self.stderr_lines)
                             + (self.proc.stderr.read() or ""))

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    def signal(self, sig: int = signal.SIGTERM) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> tuple[int, str]:
        try:
            _, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
            msg = "daemon did not exit: " + "".join(self.stderr_lines) + err
            raise AssertionError(msg) from None
        return self.proc.returncode, "".join(self.stderr_lines) + (err or "")
