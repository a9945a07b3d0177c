"""A websockets server in its own thread and event loop, for the fake daemons the dashboard
tests talk to (``tests/call_floor.FloorDaemon``, ``tests/test_dashboard_app.FakeDaemon``)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any


class ThreadedServer:
    """``with Subclass(...) as server:`` serves ``_handler`` on 127.0.0.1:``port`` (0: any
    free port, read back into ``port``) until the block ends. ``_serving`` runs while it
    serves (override it to start background work; call ``super()._serving(ready)``)."""

    thread_name = "ws-server"

    def __init__(self, port: int = 0) -> None:
        self.port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Any:
        ready = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main(ready)),
                                        daemon=True, name=self.thread_name)
        self._thread.start()
        assert ready.wait(10), f"{type(self).__name__} did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop and self._stop:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread:
            self._thread.join(10)

    async def _main(self, ready: threading.Event) -> None:
        from websockets.asyncio.server import serve

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with serve(self._handler, "127.0.0.1", self.port, max_size=2**24) as server:
            self.port = next(iter(server.sockets)).getsockname()[1]
            await self._serving(ready)

    async def _serving(self, ready: threading.Event) -> None:
        ready.set()
        assert self._stop is not None
        await self._stop.wait()

    async def _handler(self, ws: Any) -> None:
        raise NotImplementedError
