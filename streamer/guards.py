"""Small guards the daemon and server put between untrusted input and shared resources.

Kept out of ``daemon.py``/``server.py`` so those stay about the flow: blocking work that a
client can trigger runs in bounded daemon threads with a deadline (``Detached``); the stream
limit is reserved before any await (``StreamSlots``); what a reply may quote is bounded
(``excerpt``, ``safe_ref``) and never shows server-side paths (``Redactor``); error logging is
rate-limited per client (``LogLimiter``).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class Busy(Exception):
    """Too much of some bounded resource is in use; try again later."""


class Detached:
    """Run blocking calls (file checks, temp-file writes) in daemon threads, with a deadline.

    Not the loop's default executor: its threads are joined when ``asyncio.run`` ends, so one
    call stuck in the kernel (a hung network mount) would hold up shutdown, and its few workers
    are shared with the session log's fsync. A daemon thread that never returns holds up
    neither; at most ``max_threads`` may be in flight, so stuck ones cannot pile up.
    """

    def __init__(self, max_threads: int = 8) -> None:
        self.max_threads = max_threads
        self.in_flight = 0
        self._lock = threading.Lock()

    async def run(self, fn: Callable[..., T], *args: Any, timeout: float | None) -> T:
        """``fn(*args)`` in a daemon thread; TimeoutError after ``timeout`` s (None: no
        deadline; the thread is left to finish on its own), Busy when ``max_threads`` calls are
        already running."""
        with self._lock:
            if self.in_flight >= self.max_threads:
                raise Busy(f"{self.in_flight} file operations already in progress")
            self.in_flight += 1
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()

        def settle(ok: bool, value: Any) -> None:
            if fut.done():
                return
            if ok:
                fut.set_result(value)
            else:
                fut.set_exception(value)

        def work() -> None:
            try:
                ok, value = True, fn(*args)
            except BaseException as exc:  # handed to the awaiting task
                ok, value = False, exc
            finally:
                with self._lock:
                    self.in_flight -= 1
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits
                loop.call_soon_threadsafe(settle, ok, value)

        threading.Thread(target=work, name=f"detached-{getattr(fn, '__name__', 'call')}",
                         daemon=True).start()
        return await asyncio.wait_for(asyncio.shield(fut), timeout)


class StreamSlots:
    """The stream limit, reserved before any await.

    Checking "running < max" and then awaiting the source's open lets every request that
    arrives meanwhile pass the same check (60 at once ran 81 streams with a limit of 64). A
    source being opened holds one slot from the check on (``opening``); once open, ``claim``
    checks its real number of streams (split channels) and the caller registers them before
    its next await, so the count it checked is the count that runs.
    """

    def __init__(self, limit: int, running: Callable[[], int]) -> None:
        self.limit = limit
        self.running = running
        self.opening_now = 0

    @contextlib.contextmanager
    def opening(self) -> Any:
        if self.running() + self.opening_now >= self.limit:
            raise Busy(f"{self.running()} streams running (max {self.limit})")
        self.opening_now += 1
        try:
            yield self
        finally:
            self.opening_now -= 1

    def claim(self, n: int) -> None:
        """Inside ``opening``: room for ``n`` streams (ours is the one slot held already)?"""
        if self.running() + self.opening_now - 1 + n > self.limit:
            raise Busy(f"{self.running()} streams running (max {self.limit})")


class Redactor:
    """Keeps server-side paths out of what clients read.

    Error texts name files by their path on this machine (``/srv/calls/x.wav: not a readable
    audio file``); a client should see the allowed directory's files by their relative names
    and an upload by the name it gave, never the directory layout or a temporary file.
    """

    def __init__(self) -> None:
        self._shown: dict[str, str] = {}

    def hide(self, secret: str, shown: str) -> None:
        if secret:
            self._shown[secret] = shown

    def forget(self, secret: str) -> None:
        self._shown.pop(secret, None)

    def __call__(self, text: str) -> str:
        for secret in sorted(self._shown, key=len, reverse=True):  # longest (deepest) first
            if secret in text:
                text = text.replace(secret, self._shown[secret])
        return text


class LogLimiter:
    """At most ``burst`` log records per key, refilled at ``per_s`` a second (a token bucket):
    a client that makes every message fail cannot flood the log with tracebacks."""

    def __init__(self, per_s: float = 0.2, burst: int = 3) -> None:
        self.per_s, self.burst = per_s, burst
        self._buckets: dict[str, tuple[float, float]] = {}
        self.suppressed: dict[str, int] = {}

    def allow(self, key: str) -> bool:
        now = time.monotonic()
        tokens, last = self._buckets.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.per_s)
        if tokens < 1:
            self._buckets[key] = (tokens, now)
            self.suppressed[key] = self.suppressed.get(key, 0) + 1
            return False
        self._buckets[key] = (tokens - 1, now)
        return True

    def forget(self, key: str) -> None:
        self._buckets.pop(key, None)
        self.suppressed.pop(key, None)


def return_memory() -> None:
    """Give freed heap back to the OS (glibc ``malloc_trim``; a no-op elsewhere).

    A 27 MB upload frame passes through several buffers of that size; glibc serves blocks
    that large from the heap once its mmap threshold has grown, and keeps the freed heap. Called
    after each large frame, so the daemon's memory comes back after a burst of uploads.
    """
    global _TRIM
    if _TRIM is None:
        try:
            import ctypes

            _TRIM = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _TRIM = False
    if _TRIM:
        _TRIM(0)


_TRIM: Any = None
