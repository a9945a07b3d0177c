"""Chunked uploads: a file arrives as binary frames of at most ``max_chunk_bytes``, each
appended to the upload's private file off the event loop, then a ``replay`` plays it.

Why not one frame: the websockets library reads a whole frame into memory before any of our
code sees it, so with 20 MiB uploads inline in ``replay`` (27 MB of base64) 64 clients could
make the daemon hold 1.7 GB before the in-flight budget refused anything. With chunks the
websocket frame limit can be small (an inline upload of a few MiB), and what the library can
hold is ``max_clients`` x that.

The conversation, one upload per connection at a time (docs/protocol.md, "Uploads"):

- ``upload_start {id, name, bytes}``: the size is reserved at once against the all-clients
  in-flight budget (``intake.UploadBudget``; beyond it ``busy``, nothing reserved), and must be
  within ``max_upload_bytes`` (``too_large``). Answer: ``ack`` with a fresh ``upload_id``.
- binary frames of 1..``max_chunk_bytes`` bytes, appended in order; nothing is answered.
- ``replay {upload_id, speed, ...}`` once all ``bytes`` have arrived: the file is handed to the
  daemon's replay (``streamer/replay.py``) exactly as an inline upload's file is, and the
  reservation is released.

Anything else abandons the upload: its file is removed, its reservation released, and the
client told with an ``error`` whose ``ref`` is the ``upload_start``'s id: a chunk too big, empty,
past the announced size or past ``MAX_CHUNKS`` (``too_large`` / ``invalid_message``), a second
``upload_start`` while one is open (both refused: two uploads' chunks must never mix), a
``replay`` before the last byte, no data for ``idle_s`` or the whole upload taking longer
than ``max_s`` (``timeout``), a failed write (``busy``). A disconnect abandons silently. Once an
upload was abandoned, the connection's further binary frames are dropped unanswered until its
next text frame (one error, not one per chunk still in flight); a ``replay`` naming it gets
``not_found`` with the reason. Upload ids are per connection: another client cannot name one.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import secrets
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streamer import protocol
from streamer.guards import return_memory
from streamer.intake import Rejected, UploadBudget
from streamer.uploads import UploadStore

#: Binary frames one upload may take: with chunks of at least 5 KiB on average, a 20 MiB file.
MAX_CHUNKS = 4096
#: Abandoned uploads a connection remembers, so a replay naming one says why it is gone.
REMEMBERED = 8


@dataclass(eq=False)
class ChunkedUpload:
    """One upload on its way in. ``claimed`` is set by the replay that takes its file over
    (``streamer/replay.py``); a file nobody claimed is removed once the replay is answered."""

    id: str
    name: str
    size: int
    ref: str | int | None  # the upload_start's id, echoed by errors about this upload
    client: Any  # server.Client: replies about an upload abandoned by its timer
    fd: int
    path: Path
    started: float = field(default_factory=time.monotonic)
    received: int = 0
    chunks: int = 0
    writing: bool = False  # a chunk is being written in a worker thread
    closed: bool = False  # abandoned or finished: the descriptor is (to be) closed
    claimed: bool = False
    timer: asyncio.TimerHandle | None = None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class ChunkedUploads:
    """The server's chunked uploads, all connections: ``start`` (upload_start), ``chunk``
    (a binary frame), ``replay`` (a replay naming an upload_id), ``text_frame`` and ``drop``
    (disconnect) from the server; ``close`` at shutdown."""

    def __init__(self, store: UploadStore, budget: UploadBudget, pool: Executor, *,
                 max_bytes: int, max_chunk_bytes: int, idle_s: float = 30.0,
                 max_s: float = 600.0) -> None:
        self.store, self.budget, self.pool = store, budget, pool
        self.max_bytes, self.max_chunk_bytes = max_bytes, max_chunk_bytes
        self.idle_s, self.max_s = idle_s, max_s
        self.open: dict[str, ChunkedUpload] = {}  # client id -> its upload
        self._discarding: set[str] = set()  # clients whose upload was abandoned
        self._gone: dict[str, collections.OrderedDict[str, str]] = {}  # client -> id -> why

    # ---------------------------------------------------------------- requests
    async def start(self, client: Any, msg: dict) -> list[dict]:
        """``upload_start``: reserve, create the private file, answer with the upload id."""
        ref, name, size = msg.get("id"), msg["name"], int(msg["bytes"])
        old = self.open.get(client.id)
        if old is not None:
            self._abandon(old, "invalid_message", "another upload_start came while it was "
                          "open (one upload per connection at a time)", notify=True)
            raise Rejected("invalid_message", f"upload {old.id} was still open on this "
                           "connection: both are abandoned; start again", ref)
        if size > self.max_bytes:
            raise Rejected("too_large", f"upload of {size} bytes over the limit of "
                           f"{self.max_bytes}", ref)
        if not self.budget.try_acquire(size):
            raise Rejected("busy", f"other uploads are being received ("
                           f"{self.budget.in_flight} bytes); retry in a moment", ref)
        loop = asyncio.get_running_loop()
        try:
            fd, path = await loop.run_in_executor(self.pool, self.store.create, name)
        except OSError as exc:
            self.budget.release(size)
            raise Rejected("busy", f"could not store the upload ({exc.strerror})", ref) from None
        except BaseException:
            self.budget.release(size)
            raise
        # (One connection's frames are handled one at a time: nothing else opened one since.)
        up = ChunkedUpload(f"up-{secrets.token_hex(8)}", name, size, ref, client, fd, path)
        self.open[client.id] = up
        self._discarding.discard(client.id)
        self._arm(up)
        return [protocol.ack("upload_start", ref=ref, upload_id=up.id)]

    async def chunk(self, client: Any, data: bytes) -> None:
        """A binary frame: the next piece of this connection's open upload."""
        up = self.open.get(client.id)
        if up is None:
            if client.id in self._discarding:
                return  # its upload was abandoned and the client told so once
            raise Rejected("bad_json", "a binary frame is a chunk of an upload, and no upload "
                           "is open on this connection (send upload_start first); requests "
                           "are JSON text frames")
        n = len(data)
        if not n:
            raise self._refuse(up, "invalid_message", "an empty chunk")
        if n > self.max_chunk_bytes:
            raise self._refuse(up, "too_large", f"a chunk of {n} bytes, over the limit of "
                               f"{self.max_chunk_bytes}")
        if up.received + n > up.size:
            raise self._refuse(up, "too_large", f"more than the {up.size} bytes announced")
        if up.chunks >= MAX_CHUNKS:
            raise self._refuse(up, "invalid_message", f"more than {MAX_CHUNKS} chunks")
        up.writing = True
        try:
            await asyncio.get_running_loop().run_in_executor(self.pool, _write_all, up.fd,
                                                             data)
        except OSError as exc:
            if not up.closed:
                raise self._refuse(up, "busy", f"could not store it ({exc.strerror})") from None
        finally:
            up.writing = False
            if up.closed:  # abandoned (timer) while the chunk was being written
                _close(up)
        if not up.closed:
            up.received += n
            up.chunks += 1
            self._arm(up)

    async def replay(self, client: Any, msg: dict,
                     on_request: Callable[[Any, dict], Awaitable[list[dict]]]) -> list[dict]:
        """A ``replay`` naming a finished upload: its file goes to ``on_request`` as an inline
        upload's would (``upload["stored"]``); removed here unless the replay claimed it."""
        ref, upload_id = msg.get("id"), msg["upload_id"]
        up = self.open.get(client.id)
        if up is None or up.id != upload_id:
            why = self._gone.get(client.id, {}).get(upload_id)
            raise Rejected("not_found", f"no upload {upload_id} on this connection"
                           + (f": it was abandoned ({why})" if why else ""), ref)
        if up.received < up.size:
            self._abandon(up, "invalid_message", "replayed before it was complete",
                          notify=False)
            raise Rejected("invalid_message", f"upload {up.id} has {up.received} of its "
                           f"{up.size} bytes: abandoned", ref)
        self._finish(up)
        request = {k: v for k, v in msg.items() if k != "upload_id"}
        request["upload"] = {"name": up.name, "stored": up}
        try:
            return await on_request(client, request)
        finally:
            if not up.claimed:
                self.store.remove(up.path)

    # ---------------------------------------------------------------- connection events
    def text_frame(self, client_id: str) -> None:
        """A text frame ends the dropping of an abandoned upload's stray chunks."""
        self._discarding.discard(client_id)

    def drop(self, client_id: str) -> None:
        """The connection is gone: its upload is abandoned, unanswered."""
        up = self.open.get(client_id)
        if up is not None:
            self._abandon(up, "invalid_message", "disconnected", notify=False)
        self._discarding.discard(client_id)
        self._gone.pop(client_id, None)

    def close(self) -> None:
        for client_id in list(self.open):
            self.drop(client_id)

    # ---------------------------------------------------------------- internals
    def _arm(self, up: ChunkedUpload) -> None:
        """(Re)start the upload's timer: ``idle_s`` from now, within ``max_s`` of its start."""
        if up.timer is not None:
            up.timer.cancel()
        now = time.monotonic()
        delay = max(0.0, min(self.idle_s, up.started + self.max_s - now))
        up.timer = asyncio.get_running_loop().call_later(delay, self._expire, up)

    def _expire(self, up: ChunkedUpload) -> None:
        if up.closed or self.open.get(up.client.id) is not up:
            return
        if time.monotonic() - up.started >= self.max_s:
            why = f"not finished within {self.max_s:g} s"
        else:
            why = f"no data for {self.idle_s:g} s"
        self._abandon(up, "timeout", why, notify=True)

    def _refuse(self, up: ChunkedUpload, code: str, why: str) -> Rejected:
        self._abandon(up, code, why, notify=False)
        return Rejected(code, f"upload {up.id} abandoned: {why}", up.ref)

    def _abandon(self, up: ChunkedUpload, code: str, why: str, notify: bool) -> None:
        """Remove the upload and its file, release its bytes; ``notify``: tell the client."""
        if self.open.get(up.client.id) is up:
            del self.open[up.client.id]
        gone = self._gone.setdefault(up.client.id, collections.OrderedDict())
        gone[up.id] = why
        while len(gone) > REMEMBERED:
            gone.popitem(last=False)
        self._discarding.add(up.client.id)
        self._finish(up)
        self.store.remove(up.path)
        if notify:
            up.client.reply(protocol.error(code, f"upload {up.id} abandoned: {why}",
                                           ref=up.ref))

    def _finish(self, up: ChunkedUpload) -> None:
        """The upload is no longer open: timer off, bytes released, descriptor closed (after a
        write in progress), memory given back."""
        if up.timer is not None:
            up.timer.cancel()
            up.timer = None
        if self.open.get(up.client.id) is up:
            del self.open[up.client.id]
        if not up.closed:
            up.closed = True
            self.budget.release(up.size)
            if not up.writing:
                _close(up)
            with contextlib.suppress(RuntimeError):  # no loop: nothing to give back
                asyncio.get_running_loop().run_in_executor(self.pool, return_memory)


def _close(up: ChunkedUpload) -> None:
    if up.fd >= 0:
        with contextlib.suppress(OSError):
            os.close(up.fd)
        up.fd = -1
