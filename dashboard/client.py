"""The dashboard's websocket feed: one background thread with its own asyncio loop, one
connection per daemon, reconnecting with exponential backoff, folding every message into a
`Store` that the Streamlit script reads.

A `Feed` lives in ``st.session_state``, so reruns of the script reuse the same connection;
Streamlit only ever reads the store (under its lock) and asks the feed to `send`.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from dashboard.state import Store
from streamer import protocol

DEFAULT_URL = "ws://127.0.0.1:8765"
# Explanation frames are at most 32 KB; a hello with a big model card stays far below this.
MAX_MESSAGE_BYTES = 4 * 1024 * 1024


class Feed:
    """Watches one or more daemons from a thread of its own.

    ``backoff`` is (first delay, longest delay) in seconds; each failed attempt doubles the
    delay, with jitter so that several dashboards do not reconnect in lockstep.
    """

    def __init__(
        self,
        urls: Iterable[str] = (DEFAULT_URL,),
        token: str | None = None,
        store: Store | None = None,
        backoff: tuple[float, float] = (0.5, 10.0),
        streams: Iterable[str] | None = None,
        keepalive: Callable[[], bool] | None = None,
    ) -> None:
        self.urls = [u.strip() for u in urls if u and u.strip()]
        self.token = token or None
        self.store = store if store is not None else Store()
        self.backoff = backoff
        self.streams = list(streams) if streams else None
        # Asked every few seconds; False (the browser tab is gone) ends the feed.
        self.keepalive = keepalive
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._sockets: dict[str, ClientConnection] = {}
        self._waiting: dict[str, asyncio.Future[dict]] = {}  # request id -> its reply
        self._stopping = threading.Event()
        for url in self.urls:
            self.store.source(url)

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> Feed:
        if self._thread is not None:
            return self
        ready = threading.Event()
        self._thread = threading.Thread(target=self._main, args=(ready,), name="emotion-feed",
                                        daemon=True)
        self._thread.start()
        ready.wait(5)
        return self

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float = 3.0) -> None:
        """Close every connection (1001, going away) and end the thread."""
        self._stopping.set()
        loop = self._loop
        if loop is not None and loop.is_running():
            try:
                asyncio.run_coroutine_threadsafe(self._close_all(), loop).result(timeout)
            except Exception:  # noqa: BLE001 - cancelling below ends it anyway
                pass
            loop.call_soon_threadsafe(self._cancel_all)
        if self._thread is not None:
            self._thread.join(timeout)
        for url in self.urls:
            src = self.store.source(url)
            src.state, src.detail = "closed", "stopped"

    async def _close_all(self) -> None:
        sockets = list(self._sockets.values())
        if sockets:
            await asyncio.wait([asyncio.ensure_future(ws.close(1001, "dashboard closed"))
                                for ws in sockets], timeout=2)

    def _cancel_all(self) -> None:
        for task in asyncio.all_tasks():
            task.cancel()

    def _main(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        ready.set()
        try:
            loop.run_until_complete(self._run_all())
        except (asyncio.CancelledError, RuntimeError):
            pass
        finally:
            loop.close()

    async def _run_all(self) -> None:
        tasks = [asyncio.ensure_future(self._run_source(url)) for url in self.urls]
        if self.keepalive is not None:
            tasks.append(asyncio.ensure_future(self._watch(tasks[:])))
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _watch(self, tasks: list[asyncio.Future], every: float = 5.0) -> None:
        """End the feed once its owner (a Streamlit session) has gone away."""
        while not self._stopping.is_set():
            await asyncio.sleep(every)
            try:
                alive = self.keepalive() if self.keepalive else True
            except Exception:  # noqa: BLE001 - when in doubt, keep running
                alive = True
            if not alive:
                self._stopping.set()
                await self._close_all()
                for task in tasks:
                    task.cancel()

    # -- one daemon --------------------------------------------------------------------------
    async def _run_source(self, url: str) -> None:
        src = self.store.source(url)
        first, longest = self.backoff
        attempt = 0
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        while not self._stopping.is_set():
            with self.store.lock:
                src.state, src.attempts = "connecting", src.attempts + 1
            try:
                async with connect(url, additional_headers=headers, max_size=MAX_MESSAGE_BYTES,
                                   open_timeout=5, close_timeout=2) as ws:
                    self._sockets[url] = ws
                    attempt = 0
                    with self.store.lock:
                        src.state, src.detail = "connected", ""
                        src.connected_since = time.time()
                        src.next_retry_at = None
                    self.store.event("info", f"connected to {url}")
                    await ws.send(protocol.encode(
                        protocol.subscribe(self.streams or "*", id="dashboard")))
                    async for raw in ws:
                        self._handle(url, raw)
                    reason = f"closed by daemon ({ws.close_code or 'no code'})"
            except asyncio.CancelledError:
                raise
            except InvalidStatus as exc:
                code = exc.response.status_code
                reason = ("refused: wrong or missing token" if code in (401, 403)
                          else f"refused with HTTP {code}")
            except (OSError, TimeoutError) as exc:
                reason = _describe(exc)
            except Exception as exc:  # noqa: BLE001 - any failure means: retry later
                reason = f"{type(exc).__name__}: {exc}"
            finally:
                self._sockets.pop(url, None)
            delay = min(longest, first * 2 ** attempt) * random.uniform(0.75, 1.25)
            attempt += 1
            with self.store.lock:
                if src.state == "connected":
                    self.store.event("warning", f"lost {url}: {reason}")
                src.state, src.detail = "retrying", reason
                src.connected_since = None
                src.next_retry_at = time.time() + delay
            await asyncio.sleep(delay)

    def _handle(self, url: str, raw: str | bytes) -> None:
        try:
            msg = protocol.decode(raw, "server")
        except protocol.ProtocolError as exc:
            with self.store.lock:
                self.store.rejected += 1
            self.store.event("error", f"{url}: invalid message skipped ({exc.message[:200]})")
            return
        waiter = self._waiting.get(str(msg.get("ref")))
        if waiter is not None and not waiter.done() and msg["type"] in ("ack", "error"):
            waiter.set_result(msg)
        try:
            self.store.apply(url, msg)
        except Exception as exc:  # noqa: BLE001 - one bad message must not end the feed
            with self.store.lock:
                self.store.rejected += 1
            self.store.event("error", f"{url}: message not understood ({exc!r})")

    # -- commands ----------------------------------------------------------------------------
    def connected(self) -> list[str]:
        return [u for u in self.urls if u in self._sockets]

    def send(self, url: str, message: Mapping[str, Any], timeout: float = 5.0) -> None:
        """Send one client message to a daemon; raises ConnectionError when it is not up and
        ProtocolError when the message is not valid v1 (checked here, not by the daemon)."""
        protocol.validate(dict(message), "client")
        ws, loop = self._sockets.get(url), self._loop
        if ws is None or loop is None:
            raise ConnectionError(f"not connected to {url}")
        fut = asyncio.run_coroutine_threadsafe(ws.send(protocol.encode(message)), loop)
        try:
            fut.result(timeout)
        except Exception as exc:
            raise ConnectionError(f"could not send to {url}: {exc}") from exc

    def send_upload(self, url: str, name: str, data: bytes, request_id: str,
                    timeout: float = 120.0, **replay: Any) -> None:
        """Replay ``data`` as a chunked upload (``upload_start``, its ack, binary chunks of
        ``limits.max_chunk_bytes``, then ``replay`` with id ``request_id`` and ``replay``'s
        options): for files over the daemon's inline limit, which a single frame cannot
        carry. The replay's answer arrives like any other (``store.replies``). Raises
        ConnectionError when the daemon is not up, ValueError when it refuses the upload."""
        ws, loop = self._sockets.get(url), self._loop
        if ws is None or loop is None:
            raise ConnectionError(f"not connected to {url}")
        limits = (self.store.source(url).hello or {}).get("limits") or {}
        chunk = int(limits.get("max_chunk_bytes") or 0)
        if not chunk:
            raise ValueError("this daemon takes no chunked uploads (an older version): "
                             f"files up to {limits.get('max_upload_bytes', 0) / 2**20:.0f} "
                             "MiB only")
        fut = asyncio.run_coroutine_threadsafe(
            self._upload(ws, name, data, chunk, request_id, replay, timeout), loop)
        try:
            fut.result(timeout)
        except ValueError:
            raise
        except Exception as exc:
            fut.cancel()
            raise ConnectionError(f"could not upload to {url}: {_describe(exc)}") from exc

    async def _upload(self, ws: ClientConnection, name: str, data: bytes, chunk: int,
                      request_id: str, replay: Mapping[str, Any], timeout: float) -> None:
        start_id = f"{request_id}-start"
        waiter = asyncio.get_running_loop().create_future()
        self._waiting[start_id] = waiter
        try:
            await ws.send(protocol.encode(protocol.upload_start(name, len(data), id=start_id)))
            answer = await asyncio.wait_for(waiter, timeout)
        finally:
            self._waiting.pop(start_id, None)
        if answer["type"] == "error":
            raise ValueError(f"The daemon refused the upload: {answer['message']} "
                             f"({answer['code']})")
        for piece in protocol.upload_chunks(data, chunk):
            await ws.send(piece)  # binary frames
        msg = protocol.replay(upload_id=answer["upload_id"], id=request_id, **replay)
        await ws.send(protocol.encode(msg))

    def inject(self, url: str, message: Mapping[str, Any]) -> None:
        """Feed a message as if it had arrived from ``url`` (tests and offline demos)."""
        self._handle(url, protocol.encode(message))


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is the daemon running?)"
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__
