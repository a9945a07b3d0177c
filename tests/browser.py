"""Headless Chromium for the browser tests and benchmarks: find and start it, drain its
output, talk to a page over the Chrome DevTools protocol (a websocket; no selenium), and read
the CPU time of its processes from /proc.

Flags: see the design note (../shared/docs/architecture.md, "Headless Chromium").
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--no-first-run", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio",
]
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "chrome")


def find_chromium() -> str | None:
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def require_chromium() -> str:
    """Chromium's path for a test; skips where it is missing, but fails in CI (env CI set)."""
    import pytest

    path = find_chromium()
    if path:
        return path
    if os.environ.get("CI"):
        pytest.fail("Chromium is not installed (Debian package `chromium`); CI must run this")
    pytest.skip("Chromium is not installed (apt-get install chromium)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Output:
    """Drains a child's output in a thread (a full pipe would stall the child) and keeps it."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.lines: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def text(self) -> str:
        return "".join(self.lines)

    def wait_for(self, pattern: str, timeout: float) -> str:
        """Group 1 of the first match of ``pattern`` in the output."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(pattern, self.text())
            if m:
                return m.group(1)
            if self.proc.poll() is not None:
                time.sleep(0.2)
                m = re.search(pattern, self.text())
                if m:
                    return m.group(1)
                break
            time.sleep(0.1)
        raise AssertionError(f"no {pattern!r} within {timeout:.0f} s; output:\n"
                             f"{self.text()[-3000:]}")


def stop(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def launch(chrome: str, url: str, profile: str | Path,
           size: tuple[int, int] = (1500, 1900)) -> tuple[subprocess.Popen, str]:
    """Start headless Chromium on ``url``; returns the process and its DevTools websocket."""
    proc = subprocess.Popen(
        [chrome, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0",
         f"--window-size={size[0]},{size[1]}", url],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        devtools = Output(proc).wait_for(r"DevTools listening on (ws://\S+)", 60)
    except BaseException:
        stop(proc)
        raise
    return proc, devtools


async def page_websocket(devtools_url: str, timeout: float = 30.0) -> str:
    """The DevTools websocket of the browser's first page."""
    import asyncio

    port = re.search(r"ws://[^:/]+:(\d+)/", devtools_url).group(1)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as resp:
            pages = [t for t in json.load(resp) if t.get("type") == "page"]
        if pages:
            return pages[0]["webSocketDebuggerUrl"]
        await asyncio.sleep(0.3)
    raise AssertionError("Chromium opened no page")


class DevTools:
    """Just enough of the Chrome DevTools protocol: evaluate JavaScript, take a screenshot,
    click like a mouse."""

    def __init__(self, ws) -> None:  # noqa: ANN001 - a websockets connection
        self.ws = ws
        self.next_id = 0

    async def call(self, method: str, **params: object) -> dict:
        self.next_id += 1
        my_id = self.next_id
        await self.ws.send(json.dumps({"id": my_id, "method": method, "params": params}))
        while True:
            msg = json.loads(await self.ws.recv())
            if msg.get("id") == my_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    async def js(self, expression: str) -> object:
        res = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return res.get("result", {}).get("value")

    async def click(self, x: float, y: float) -> None:
        """A left click at page coordinates, as the mouse does it (press, release)."""
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            await self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left",
                            clickCount=0 if kind == "mouseMoved" else 1)


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants (Chromium's renderer, GPU and utility processes)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes so far (gone ones count 0)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / tick
