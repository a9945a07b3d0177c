"""The daemon's queue of windows waiting for inference, and the marker that ends a stream.

Bounded: a paced source's oldest window is dropped (and returned, so the daemon counts it) when
the queue is full; an unpaced one waits. End markers are never dropped and keep their place, so
``stream_ended`` follows a stream's last prediction.
"""

from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass
from typing import Any


@dataclass
class End:
    """Queued after a stream's last window, so stream_ended follows its last prediction."""

    stream_id: str
    reason: str
    error: Exception | None = None


class Pending:
    """The bounded queue of windows (and end markers) waiting for inference."""

    def __init__(self, max_windows: int) -> None:
        self.items: collections.deque[Any] = collections.deque()
        self.windows = 0
        self.max_windows = max_windows
        self.changed = asyncio.Condition()

    async def put(self, item: Any, wait: bool) -> Any | None:
        """Queue ``(window, received)``; returns a dropped window's item when full and not
        ``wait``."""
        dropped = None
        async with self.changed:
            if wait:
                await self.changed.wait_for(lambda: self.windows < self.max_windows)
            elif self.windows >= self.max_windows:
                for i, old in enumerate(self.items):
                    if not isinstance(old, End):
                        dropped = old
                        del self.items[i]
                        self.windows -= 1
                        break
            self.items.append(item)
            self.windows += 1
            self.changed.notify_all()
        return dropped

    async def put_end(self, end: End) -> None:
        async with self.changed:
            self.items.append(end)
            self.changed.notify_all()

    async def get_batch(self, max_windows: int) -> list[Any]:
        """Everything ready now (at least one item), at most ``max_windows`` windows."""
        async with self.changed:
            await self.changed.wait_for(lambda: bool(self.items))
            out: list[Any] = []
            n = 0
            while self.items and n < max_windows:
                item = self.items.popleft()
                out.append(item)
                if not isinstance(item, End):
                    n += 1
                    self.windows -= 1
            self.changed.notify_all()
            return out
