"""The wallboard end to end, shared by its browser test and its benchmark: a fake call floor
(`tests.call_floor.FloorDaemon`, protocol v1, torch-free), the real dashboard under
``streamlit run`` watching it, and headless Chromium on ``?view=wallboard``, driven over the
DevTools protocol.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from dashboard.cli import child_env, streamlit_command
from tests.browser import Output, free_port, launch, stop
from tests.call_floor import FloorDaemon

SIZE = (1600, 1000)
STARTUP_TIMEOUT_S = 90.0

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


class WallboardRun:
    """Floor daemon + dashboard + Chromium; ``with WallboardRun(50) as run: ...``."""

    def __init__(self, n_calls: int, history_ticks: int = 20, size: tuple[int, int] = SIZE,
                 chrome: str = "chromium", workdir: str | Path | None = None) -> None:
        self.n_calls = n_calls
        self.size = size
        self.chrome = chrome
        self.floor = FloorDaemon(n_calls, history_ticks=history_ticks)
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
        self.floor.__enter__()
        port = free_port()
        sessions = self.workdir / "sessions"
        sessions.mkdir(parents=True, exist_ok=True)
        env = child_env()
        env["OMP_WAIT_POLICY"] = "PASSIVE"  # nothing here loads torch; kept for safety
        self.dashboard = subprocess.Popen(
            streamlit_command(port, urls=[self.floor.url], sessions_dir=str(sessions)),
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
        self.floor.__exit__()

    def output(self) -> str:
        return self.dashboard_out.text() if self.dashboard_out else ""

    @property
    def dashboard_pid(self) -> int | None:
        return self.dashboard.pid if self.dashboard else None

    @property
    def browser_pid(self) -> int | None:
        return self.browser.pid if self.browser else None
