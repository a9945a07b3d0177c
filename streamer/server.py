"""The websocket server (websockets library, asyncio): clients, handshake checks, backpressure.

- Handshake: maximum clients (HTTP 503), token (``Authorization: Bearer`` or ``?token=``,
  compared with ``hmac.compare_digest``; HTTP 401), Origin allow-list (websockets' own
  ``origins`` check; HTTP 403).
- Each client has a bounded queue drained by its own sender task. ``broadcast`` never awaits:
  when a client's queue is full its oldest message is dropped and counted, so a slow client
  never slows capture, inference, the session log or the other clients. Replies to the client's
  own requests go in a separate small queue that is not dropped from.
- Client messages are validated with ``streamer.protocol``; anything wrong gets an ``error``
  and the connection stays open. ``subscribe`` and ``ping`` are answered here; ``replay`` and
  ``stop_stream`` go to the daemon's ``on_request`` callback. Chunked uploads
  (``upload_start``, binary frames, a ``replay`` naming the upload) are
  ``streamer/chunked.py``'s; they are why the frame limit can be small.
- Routing by path: ``/ingest`` (call audio pushed in) goes to the ingest hub given to the server
  (``streamer/ingest.py``), with its own handshake checks; every other path is protocol v1.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import hmac
import ipaddress
import itertools
import logging
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server as _WsServer
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed, ConnectionClosedError
from websockets.http11 import Request, Response

from streamer import protocol
from streamer.chunked import ChunkedUploads
from streamer.guards import LogLimiter, return_memory
from streamer.intake import Rejected, UploadBudget, b64_limit, read_request
from streamer.uploads import UploadStore

log = logging.getLogger("streamer.server")

DEFAULT_PORT = 8765
DEFAULT_ORIGINS = ("http://localhost:8501", "http://127.0.0.1:8501")
TOKEN_ENV = "EMOTION_MONITOR_TOKEN"
INGEST_PATH = "/ingest"  # call audio pushed in (streamer/ingest.py); every other path is v1
# Messages a subscription filter never hides: every client must learn about streams and errors.
ALWAYS_DELIVERED = frozenset({"stream_started", "stream_ended", "error"})
MAX_UNREAD_REPLIES = 64


class ConfigError(ValueError):
    """A server setting that would be unsafe or cannot work (e.g. public bind, no token)."""


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    token: str | None = None
    origins: Sequence[str] = DEFAULT_ORIGINS
    allow_no_origin: bool = True  # non-browser clients send no Origin header
    max_clients: int = 64
    max_message_bytes: int = 64 * 1024
    # The largest upload, sent in chunks (upload_start); an inline one (base64 in replay) is
    # also within max_inline_upload_bytes, which sets the websocket frame limit: what the
    # library may hold per client before our code sees a byte (streamer/chunked.py).
    max_upload_bytes: int = 20 * 2**20
    max_inline_upload_bytes: int = 4 * 2**20
    max_chunk_bytes: int = 2**20
    upload_idle_s: float = 30.0  # a chunked upload with no data this long is abandoned
    upload_max_s: float = 600.0  # ... and one not finished this long after its start
    queue_size: int = 256
    # Kernel send buffer per connection. Small on purpose (no autotuning to megabytes): a slow
    # client's backlog then sits in our bounded, counted queue, not hidden in the kernel.
    send_buffer_bytes: int | None = 256 * 1024
    # A client whose one pending send makes no progress this long (it never reads: its buffer
    # is full) is disconnected, which frees its slot. The library's keep-alive ping cannot do
    # it: the ping waits behind the full buffer too.
    send_timeout_s: float = 30.0
    # Upload bytes in flight, all clients together: inline frames being decoded and chunked
    # uploads from upload_start until their replay (None: four of the largest uploads).
    # Beyond it an upload frame or upload_start is refused with "busy".
    max_upload_inflight_bytes: int | None = None

    @property
    def inline_upload_limit(self) -> int:
        return min(self.max_inline_upload_bytes, self.max_upload_bytes)

    @property
    def frame_limit(self) -> int:
        """The websocket layer's hard limit: a replay carrying the largest inline upload in
        base64, or a chunk."""
        return max(self.max_message_bytes + b64_limit(self.inline_upload_limit) + 1024,
                   self.max_chunk_bytes)

    @property
    def upload_inflight_limit(self) -> int:
        return self.max_upload_inflight_bytes or 4 * self.max_upload_bytes

    def limits(self) -> dict[str, int]:
        """hello's ``limits``. ``max_upload_bytes`` is, as v1 has always defined it, what a
        replay may carry inline: clients that know no chunked uploads read it."""
        return {"max_message_bytes": self.max_message_bytes,
                "max_upload_bytes": self.inline_upload_limit, "queue_size": self.queue_size,
                "max_chunked_upload_bytes": self.max_upload_bytes,
                "max_chunk_bytes": self.max_chunk_bytes}


def is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything, so treat it as public


def check_bind(host: str, token: str | None) -> None:
    """Refuse a non-loopback bind without a token (the daemon would be open to the network)."""
    if not is_loopback(host) and not token:
        raise ConfigError(
            f"refusing to listen on {host!r} without a token: anyone on the network could "
            f"read the stream. Set --token or {TOKEN_ENV}, or bind 127.0.0.1.")


def given_token(request: Request) -> str | None:
    """The token a handshake carries: ``Authorization: Bearer``, else ``?token=``."""
    auth = request.headers.get("Authorization")
    if auth and auth.lower().startswith("bearer "):
        return auth[7:].strip()
    values = parse_qs(urlsplit(request.path).query).get("token")
    return values[0] if values else None


@dataclass
class Client:
    """One connection: its filter, its bounded queue and what it lost."""

    id: str
    ws: ServerConnection
    queue_size: int
    send_timeout_s: float = 30.0
    streams: set[str] | None = None  # None: all streams
    types: set[str] | None = None  # None: all message types
    dropped: int = 0
    sent: int = 0
    queue: collections.deque[str] = field(default_factory=collections.deque)
    control: collections.deque[str] = field(default_factory=collections.deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    def wants(self, msg_type: str, stream: str | None) -> bool:
        if msg_type in ALWAYS_DELIVERED:
            return True
        if self.types is not None and msg_type not in self.types:
            return False
        return stream is None or self.streams is None or stream in self.streams

    def offer(self, text: str) -> None:
        """Queue a broadcast message; when full, the oldest queued one is dropped (counted)."""
        if len(self.queue) >= self.queue_size:
            self.queue.popleft()
            self.dropped += 1
        self.queue.append(text)
        self.wake.set()

    def reply(self, msg: dict) -> None:
        """Queue a reply to this client's own request. Replies skip the broadcast queue, but a
        client that sends requests without reading the replies cannot grow memory without
        bound: past ``MAX_UNREAD_REPLIES`` the oldest reply goes (counted)."""
        if len(self.control) >= MAX_UNREAD_REPLIES:
            self.control.popleft()
            self.dropped += 1
        self.control.append(protocol.encode(msg))
        self.wake.set()

    async def run_sender(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            while self.control or self.queue:
                text = self.control.popleft() if self.control else self.queue.popleft()
                await self.send(text)
                self.sent += 1

    async def send(self, text: str) -> None:
        """One send, or the connection is dropped after ``send_timeout_s`` without it
        completing (the client does not read). Aborted, not closed: a close frame would wait
        behind the same full buffer."""
        try:
            await asyncio.wait_for(self.ws.send(text), self.send_timeout_s)
        except TimeoutError:
            log.warning("client %s read nothing for %.0f s: disconnected", self.id,
                        self.send_timeout_s)
            if self.ws.transport is not None:
                self.ws.transport.abort()
            raise ConnectionClosedError(None, None) from None

    @property
    def pending(self) -> int:
        return len(self.queue) + len(self.control)


RequestHandler = Callable[[Client, dict], Awaitable[list[dict]]]


class Server:
    """Websocket fan-out of daemon messages, with per-client request handling."""

    def __init__(self, config: ServerConfig, hello: Callable[[str], dict],
                 on_request: RequestHandler | None = None, ingest: Any = None,
                 uploads: UploadStore | None = None) -> None:
        check_bind(config.host, config.token)
        self.config = config
        # The /ingest endpoint (streamer.ingest.IngestHub): its own handshake checks and
        # handler; its connections are not protocol-v1 clients (no hello, no broadcasts).
        self._ingest = ingest
        self._hello = hello
        self._on_request = on_request
        self.clients: dict[str, Client] = {}
        self._ids = itertools.count(1)
        self._ws: _WsServer | None = None
        self.port: int | None = None
        self.refused = collections.Counter[str]()
        self.upload_budget = UploadBudget(config.upload_inflight_limit)
        # Upload frames are parsed and decoded here, and chunks written, not in the loop.
        self._decoder = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="decode")
        # The daemon's store (a replay's files are its own); a bare server keeps its own.
        self._own_store = uploads is None
        self.uploads = UploadStore() if uploads is None else uploads
        self.chunked = ChunkedUploads(
            self.uploads, self.upload_budget, self._decoder, max_bytes=config.max_upload_bytes,
            max_chunk_bytes=config.max_chunk_bytes, idle_s=config.upload_idle_s,
            max_s=config.upload_max_s)
        self._log_limit = LogLimiter()

    # ---------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        cfg = self.config
        origins: list[str | None] = list(cfg.origins)
        if cfg.allow_no_origin:
            origins.append(None)
        self._ws = await serve(
            self._handle, cfg.host, cfg.port, origins=origins,
            process_request=self._check_handshake, max_size=cfg.frame_limit,
            ping_interval=20, ping_timeout=20, close_timeout=2,
            # Our own queues do the buffering; keep the library's small so drops are ours.
            write_limit=2**15,
            # Read no further ahead than one frame per client: frames may be upload-sized.
            max_queue=1,
        )
        self.port = next(iter(self._ws.sockets)).getsockname()[1]

    async def close(self, drain_s: float = 1.0, reason: str = "daemon shutting down") -> None:
        """Let queued messages go out (up to ``drain_s``), then close every connection with
        1001 (going away)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + drain_s
        while any(c.pending for c in self.clients.values()) and loop.time() < deadline:
            await asyncio.sleep(0.02)
        if self._ws is not None:
            self._ws.close(close_connections=True, code=1001, reason=reason)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._ws.wait_closed(), timeout=5)
        self.chunked.close()
        if self._own_store:
            self.uploads.close()
        self._decoder.shutdown(wait=False, cancel_futures=True)

    # ---------------------------------------------------------------- fan-out
    def broadcast(self, msg: dict, text: str | None = None) -> None:
        """Queue ``msg`` for every client that wants it; never waits."""
        text = protocol.encode(msg) if text is None else text
        msg_type = msg["type"]
        stream = msg.get("stream") if isinstance(msg.get("stream"), str) else None
        for client in list(self.clients.values()):
            if client.wants(msg_type, stream):
                client.offer(text)

    def clients_status(self) -> list[dict]:
        return [{"client_id": c.id, "queued": c.pending, "dropped_messages": c.dropped}
                for c in self.clients.values()]

    # ---------------------------------------------------------------- connections
    def _is_ingest(self, request: Request | None) -> bool:
        return (self._ingest is not None and request is not None
                and urlsplit(request.path).path.rstrip("/") == INGEST_PATH)

    def _check_handshake(self, connection: ServerConnection, request: Request) -> Response | None:
        if self._is_ingest(request):
            return self._ingest.check_handshake(connection, request)
        cfg = self.config
        if cfg.token:
            given = given_token(request)
            if given is None or not hmac.compare_digest(given.encode(), cfg.token.encode()):
                self.refused["token"] += 1
                return reject(connection, 401, "missing or wrong token\n",
                               {"WWW-Authenticate": 'Bearer realm="emotion-monitor"'})
        if len(self.clients) >= cfg.max_clients:
            self.refused["max_clients"] += 1
            return reject(connection, 503, f"too many clients (max {cfg.max_clients})\n")
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        if self._is_ingest(ws.request):
            await self._ingest.handle(ws)
            return
        if len(self.clients) >= self.config.max_clients:
            # The handshake's 503 check runs before earlier handshakes became clients: many
            # at once all pass it. This check and the registration below share no await.
            self.refused["max_clients"] += 1
            await ws.close(1013, f"too many clients (max {self.config.max_clients})")
            return
        client = Client(f"c{next(self._ids)}", ws, self.config.queue_size,
                        self.config.send_timeout_s)
        sock = ws.transport.get_extra_info("socket") if ws.transport else None
        if sock is not None and self.config.send_buffer_bytes:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF,
                                self.config.send_buffer_bytes)
        self.clients[client.id] = client
        sender: asyncio.Task | None = None
        try:
            await client.send(protocol.encode(self._hello(client.id)))  # always the first
            sender = asyncio.create_task(client.run_sender(), name=f"sender-{client.id}")
            async for raw in ws:
                await self._on_message(client, raw)
                if sender.done():  # the connection broke while sending
                    break
        except ConnectionClosed:
            pass
        finally:
            self.clients.pop(client.id, None)
            self.chunked.drop(client.id)
            self._log_limit.forget(client.id)
            if sender is not None:
                sender.cancel()
                with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                    await sender

    async def _on_message(self, client: Client, raw: str | bytes) -> None:
        ref = None
        try:
            if isinstance(raw, bytes):  # a chunk of this connection's upload
                await self.chunked.chunk(client, raw)
                return
            self.chunked.text_frame(client.id)
            msg = await self._read(raw)
            ref = protocol.ref_of(msg)
            for reply in await self._dispatch(client, msg):
                client.reply(reply)
        except Rejected as exc:
            client.reply(protocol.error(exc.code, exc.message, ref=exc.ref))
        except protocol.ProtocolError as exc:
            client.reply(protocol.error(exc.code, exc.message, ref=ref))
        except Exception as exc:  # a bug must not take the connection down, nor flood the log
            if self._log_limit.allow(client.id):
                log.exception("request from %s failed", client.id)
            client.reply(protocol.error("internal", f"{type(exc).__name__}: "
                                        f"{protocol.excerpt(str(exc))}", ref=ref))
        finally:
            if not isinstance(raw, bytes) and len(raw) > self.config.max_message_bytes:
                # the frame's buffers (decoded upload included) are free now: give them back
                asyncio.get_running_loop().run_in_executor(self._decoder, return_memory)

    async def _read(self, raw: str | bytes) -> dict:
        """``intake.read_request``: in the loop for ordinary messages; an upload-sized frame
        in a worker thread, within the upload budget (else ``busy``)."""
        cfg = self.config
        if isinstance(raw, bytes) or len(raw) <= cfg.max_message_bytes:
            return read_request(raw, cfg.max_message_bytes, cfg.inline_upload_limit)
        n = len(raw)
        if not self.upload_budget.try_acquire(n):
            raise Rejected("busy", f"other uploads are being received ("
                           f"{self.upload_budget.in_flight} bytes); retry in a moment")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._decoder, read_request, raw,
                                              cfg.max_message_bytes, cfg.inline_upload_limit)
        finally:
            self.upload_budget.release(n)

    async def _dispatch(self, client: Client, msg: dict) -> list[dict]:
        kind, ref = msg["type"], msg.get("id")
        if kind == "ping":
            return [protocol.pong(ref=ref, t=msg.get("t"))]
        if kind == "subscribe":
            streams = msg["streams"]
            client.streams = None if streams == "*" else set(streams)
            client.types = set(msg["types"]) if "types" in msg else None
            return [protocol.ack("subscribe", ref=ref, streams=streams)]
        if self._on_request is None:
            raise protocol.ProtocolError("forbidden", f"{kind} is not available on this server")
        if kind == "upload_start":
            return await self.chunked.start(client, msg)
        if kind == "replay" and "upload_id" in msg:
            return await self.chunked.replay(client, msg, self._on_request)
        return await self._on_request(client, msg)


def reject(connection: ServerConnection, status: int, text: str,
            headers: dict[str, str] | None = None) -> Response:
    response = connection.respond(status, text)
    for key, value in (headers or {}).items():
        response.headers[key] = value
    return response
