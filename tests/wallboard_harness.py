"""The wallboard end to end, shared by its browser tests and its benchmark: the real dashboard
under ``streamlit run`` watching one daemon, and headless Chromium on ``?view=wallboard``,
driven over the DevTools protocol.

The daemon is either a fake call floor (`tests.call_floor.FloorDaemon`, protocol v1,
torch-free: ``WallboardRun(50)``) or any running daemon (``WallboardRun(url=..., token=...)``:
a real ``emotion-monitor stream --ingest`` with calls pushed into it). The page-driving steps
(wait for the tiles, click one open, go Back) are here too, so both tests drive the page the
same way.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from websockets.asyncio.client import connect

from dashboard.cli import child_env, streamlit_command
from tests.browser import DevTools, Output, free_port, launch, page_websocket, stop
from tests.call_floor import FloorDaemon

SIZE = (1600, 1000)
STARTUP_TIMEOUT_S = 90.0
T = TypeVar("T")

#: Each tile as the page shows it, in page order.
TILES_JS = """
Array.from(document.querySelectorAll('.wb-tile')).map(t => ({
  key: t.dataset.call, severity: Number(t.dataset.severity),
  trend: t.dataset.trend === '' ? null : Number(t.dataset.trend),
  text: t.innerText, alerts: t.querySelectorAll('.wb-alert').length}))
"""
#: The component's own timings (see dashboard/wallboard.py's script).
STATS_JS = "(window.__wallboard || {renders: []}).renders"
CENTRE_JS = """
((key) => { const t = document.querySelector(`.wb-tile[data-call="${key}"]`);
  if (!t) return null; t.scrollIntoView({block: 'center'});
  const r = t.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })
"""
#: The live page after a click: where we are, its text, and the ids of its stream cards (a
#: call's streams are ``<call id>-caller`` and ``<call id>-agent``).
OPENED_JS = """
(() => ({href: location.href, text: document.body.innerText,
  cards: Array.from(document.querySelectorAll('h3')).map(h => h.innerText.split(' ')[0])
    .filter(t => /-(caller|agent)$/.test(t))}))()
"""

#: Notes the call of the tile the next click is delivered to (capture phase, before the
#: component's own handler).
CLICKED_JS = """
window.__clicked = null;
document.addEventListener('click', (e) => {
  const t = e.target.closest && e.target.closest('.wb-tile');
  window.__clicked = t ? t.dataset.call : null; }, {capture: true, once: true});
"""


class WallboardRun:
    """Dashboard + Chromium on a daemon's wallboard; ``with WallboardRun(50) as run: ...`` for
    the fake floor's 50 calls, ``WallboardRun(url=URL, token=T)`` for a daemon already running
    (``n_calls`` is then only what the caller expects to see)."""

    def __init__(self, n_calls: int = 0, history_ticks: int = 20, size: tuple[int, int] = SIZE,
                 chrome: str = "chromium", workdir: str | Path | None = None, *,
                 url: str | None = None, token: str | None = None) -> None:
        if url is None and n_calls < 1:
            raise ValueError("give the fake floor's n_calls, or a daemon's url")
        self.n_calls = n_calls
        self.size = size
        self.chrome = chrome
        self.floor = FloorDaemon(n_calls, history_ticks=history_ticks) if url is None else None
        self.url = url
        self.token = token
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="wallboard-"))
        self.dashboard: subprocess.Popen | None = None
        self.dashboard_out: Output | None = None
        self.browser: subprocess.Popen | None = None
        self.devtools_url = ""
        self.page_url = ""

    def __enter__(self) -> WallboardRun:
        try:
            self._start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _start(self) -> None:
        if self.floor is not None:
            self.floor.__enter__()
            self.url = self.floor.url
        assert self.url is not None
        port = free_port()
        sessions = self.workdir / "sessions"
        sessions.mkdir(parents=True, exist_ok=True)
        env = child_env(self.token)  # the token by environment, never on a command line
        env["OMP_WAIT_POLICY"] = "PASSIVE"  # nothing here loads torch; kept for safety
        self.dashboard = subprocess.Popen(
            streamlit_command(port, urls=[self.url], sessions_dir=str(sessions)),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        self.dashboard_out = Output(self.dashboard)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            try:
                with urllib.request.urlopen(f"{base}/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline or self.dashboard.poll() is not None:
                raise AssertionError("the dashboard did not start:\n"
                                     + self.dashboard_out.text()[-3000:])
            time.sleep(0.3)
        self.page_url = f"{base}/?view=wallboard"
        profile = tempfile.mkdtemp(prefix="chromium-", dir=self.workdir)
        self.browser, self.devtools_url = launch(self.chrome, self.page_url, profile, self.size)

    def __exit__(self, *exc: object) -> None:
        stop(self.browser)
        stop(self.dashboard)
        if self.floor is not None:
            self.floor.__exit__()

    def output(self) -> str:
        return self.dashboard_out.text() if self.dashboard_out else ""

    @property
    def dashboard_pid(self) -> int | None:
        return self.dashboard.pid if self.dashboard else None

    @property
    def browser_pid(self) -> int | None:
        return self.browser.pid if self.browser else None


# ----------------------------------------------------------------------------- the page

@contextlib.asynccontextmanager
async def page(run: WallboardRun) -> AsyncIterator[DevTools]:
    """The wallboard's page over DevTools, at the run's viewport size."""
    async with connect(await page_websocket(run.devtools_url), max_size=64 * 2**20,
                       open_timeout=20) as ws:
        cdp = DevTools(ws)
        await cdp.call("Emulation.setDeviceMetricsOverride", width=run.size[0],
                       height=run.size[1], deviceScaleFactor=1, mobile=False)
        yield cdp


async def poll(probe: Callable[[], Awaitable[T]], done: Callable[[T], bool], timeout: float,
               every: float = 0.5) -> T:
    """Probe until ``done(value)`` or the deadline, whichever comes first; returns the last
    value, so the caller's assertion says what was there (no fixed sleeps that race)."""
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if done(value) or time.monotonic() >= deadline:
            return value
        await asyncio.sleep(every)


async def tiles(cdp: DevTools) -> list[dict]:
    return await cdp.js(TILES_JS) or []


async def wait_for_tiles(cdp: DevTools, done: Callable[[list[dict]], bool],
                         timeout: float) -> list[dict]:
    """The tiles once ``done(tiles)`` holds (or the last read at the deadline)."""
    return await poll(lambda: tiles(cdp), done, timeout)


async def screenshot(cdp: DevTools, path: Path) -> None:
    shot = await cdp.call("Page.captureScreenshot", format="png")
    path.write_bytes(base64.b64decode(shot["data"]))


async def open_call(cdp: DevTools, key: str, timeout: float = 30.0) -> dict:
    """Click the tile of call ``key`` as a mouse does; the live page it opened (``href``,
    ``text``, ``cards``: its stream cards' ids) once both of the call's streams show.

    Tiles can swap places between redraws (the order follows live trends), so a redraw
    landing between finding the tile and the mouse's release can put another call under the
    pointer. The page notes which tile the browser really delivered the click to, and that
    call is the one expected to open: ``key`` in the result is it, ``aimed`` the one aimed at.
    """
    await cdp.js(CLICKED_JS)
    xy = await cdp.js(f"{CENTRE_JS}({json.dumps(key)})")
    assert xy, f"tile {key} not found"
    await cdp.click(*xy)
    clicked = await cdp.js("window.__clicked")
    assert clicked, f"the click at {xy} hit no tile"

    async def probe() -> dict:
        return await cdp.js(OPENED_JS) or {}

    opened = await poll(probe, lambda o: f"call={clicked}" in o.get("href", "")
                        and len(o.get("cards", [])) == 2, timeout)
    return {**opened, "key": clicked, "aimed": key}


async def back_to_board(cdp: DevTools, n_tiles: int, timeout: float = 30.0) -> dict:
    """The browser's Back button; where it went and how many tiles came back."""
    await cdp.js("history.back()")

    async def probe() -> dict:
        return {"href": await cdp.js("location.href"), "tiles": len(await tiles(cdp))}

    return await poll(probe, lambda b: b["tiles"] == n_tiles
                      and b["href"].endswith("?view=wallboard"), timeout)
