"""`emotion-monitor dashboard` and `emotion-monitor demo`.

Light on purpose (stdlib only at import): the dashboard runs as a ``streamlit run`` child
process, and the demo supervises two children, the capture daemon and the dashboard, stopping
both cleanly on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from emotion_monitor.cliutil import (
    DEFAULT_MODEL,
    add_command,
    checkout_root,
    default_model_path,
    example_stream_dir,
    model_help,
)

APP = Path(__file__).resolve().parent / "app.py"
DEFAULT_URL = "ws://127.0.0.1:8765"
STOP_TIMEOUT_S = 10.0


def register(sub: Any) -> None:
    p = add_command(
        sub, "dashboard", help="open the live dashboard (Streamlit) on running daemons",
        description="Start the Streamlit dashboard: live emotion timelines, current emotion, "
                    "Grad-CAM explanations, stream health and alerts from one or more capture "
                    "daemons (emotion-monitor stream); replay files; review past sessions.",
        example="emotion-monitor dashboard --url ws://127.0.0.1:8765 --port 8501",
        handler=_dashboard)
    _dashboard_options(p)

    d = add_command(
        sub, "demo", help="run the daemon on the bundled example stream and open the dashboard",
        description="The one-command demo: start the capture daemon with models/default.pt "
                    "replaying the bundled example stream (seven TESS recordings, one per "
                    "emotion, examples/tess_stream; both ship with the package, so it runs "
                    "from any directory) in a loop in real time, or the microphone with --mic; "
                    "start the dashboard; print its URL. Ctrl-C stops both. `make demo` also "
                    "installs what is missing first.",
        example="emotion-monitor demo            # then open http://127.0.0.1:8501",
        handler=_demo)
    d.add_argument("--mic", action="store_true",
                   help="analyse the microphone instead of the example stream")
    d.add_argument("--mic-device", default=None, metavar="X",
                   help="input device index or name (see emotion-monitor devices)")
    d.add_argument("--model", default=str(default_model_path()), help=model_help())
    d.add_argument("--port", type=int, default=8501, help="dashboard port (default 8501)")
    d.add_argument("--daemon-port", type=int, default=8765,
                   help="daemon websocket port (default 8765)")
    d.add_argument("--sessions-dir", default="sessions",
                   help="where the daemon logs the session (default sessions/)")
    d.add_argument("--device", default="auto", help="inference device auto|cpu|cuda")


def _dashboard_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", action="append", default=None, metavar="WS_URL",
                   help=f"daemon to watch; repeat for several (default {DEFAULT_URL})")
    p.add_argument("--token", default=None,
                   help="token for daemons that require one (default $EMOTION_MONITOR_TOKEN); "
                        "passed to the app by environment, not on its command line")
    p.add_argument("--port", type=int, default=8501, help="dashboard port (default 8501)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address the dashboard listens on (default 127.0.0.1)")
    p.add_argument("--sessions-dir", default="sessions",
                   help="session logs to offer for review (default sessions/)")
    p.add_argument("--max-upload-mb", type=float, default=20.0,
                   help="largest file a user may upload for replay (MiB, default 20)")
    p.add_argument("--refresh", type=float, default=0.5,
                   help="seconds between redraws of the live view (at least 0.5, the default)")


def streamlit_command(port: int, host: str = "127.0.0.1", urls: list[str] | None = None,
                      sessions_dir: str = "sessions", max_upload_mb: float = 20.0,
                      refresh: float = 0.5) -> list[str]:
    """The ``streamlit run`` command line of the dashboard (no secrets on it)."""
    app_args: list[str] = []
    for url in urls or [DEFAULT_URL]:
        app_args += ["--url", url]
    app_args += ["--sessions-dir", sessions_dir, "--max-upload-mb", f"{max_upload_mb:g}",
                 "--refresh", f"{refresh:g}"]
    return [
        sys.executable, "-m", "streamlit", "run", str(APP),
        "--server.port", str(port), "--server.address", host,
        "--server.headless", "true", "--browser.gatherUsageStats", "false",
        "--server.fileWatcherType", "none", "--server.runOnSave", "false",
        "--client.toolbarMode", "viewer",
        "--server.maxUploadSize", str(max(1, int(max_upload_mb + 0.999))),
        "--", *app_args,
    ]


def child_env(token: str | None = None) -> dict[str, str]:
    env = dict(os.environ)
    root = checkout_root()  # a checkout's children import it; an installed package's need not
    if root is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH")) if p)
    env.setdefault("PYTHONUNBUFFERED", "1")
    if token:
        env["EMOTION_MONITOR_TOKEN"] = token
    return env


def _dashboard(args: argparse.Namespace) -> int:
    cmd = streamlit_command(args.port, args.host, args.url, args.sessions_dir, args.max_upload_mb,
                            args.refresh)
    print(f"dashboard: http://{args.host}:{args.port}  (Ctrl-C to stop)", flush=True)
    with Supervisor() as sup:
        sup.start("dashboard", cmd, env=child_env(args.token))
        return sup.wait()


def _demo(args: argparse.Namespace) -> int:
    model = Path(args.model).resolve()
    if not model.is_file():
        print(f"error: no model at {model}. The default model ships as {DEFAULT_MODEL}; "
              "train/export one (emotion-monitor export ...) or pass --model FILE.",
              file=sys.stderr)
        return 2
    example = example_stream_dir()
    if not args.mic and not any(example.glob("*.flac")):
        print(f"error: the example stream is missing (expected at {example}; it ships with the "
              "package). Run the demo on the microphone (--mic), or replay your own audio: "
              "emotion-monitor stream --replay FILE, then emotion-monitor dashboard.",
              file=sys.stderr)
        return 2
    daemon_cmd = [sys.executable, "-m", "emotion_monitor", "stream", "--model", str(model),
                  "--port", str(args.daemon_port), "--sessions-dir", args.sessions_dir,
                  "--device", args.device, "--allowed-dir", str(example.parent)]
    if args.mic:
        daemon_cmd += ["--mic"] + (["--mic-device", args.mic_device] if args.mic_device else [])
    else:
        daemon_cmd += ["--replay", str(example), "--loop", "--speed", "1"]
    with Supervisor() as sup:
        print("starting the capture daemon (loading the model)…", flush=True)
        daemon = sup.start("daemon", daemon_cmd, env=child_env(), watch=_SERVING)
        url = sup.wait_for_line(daemon, timeout=120)
        if sup.stopping:
            return 0
        if url is None:
            print("error: the daemon did not start (see its messages above)", file=sys.stderr)
            return 1
        url = url.rstrip("/")
        dash_cmd = streamlit_command(args.port, urls=[url], sessions_dir=args.sessions_dir)
        sup.start("dashboard", dash_cmd, env=child_env())
        page = f"http://127.0.0.1:{args.port}"
        if not sup.wait_http(f"{page}/_stcore/health", timeout=60):
            if sup.stopping:
                return 0
            print("error: the dashboard did not start (see its messages above)",
                  file=sys.stderr)
            return 1
        source = "the microphone" if args.mic else f"{example} (loop)"
        print(f"\n  emotion monitor demo: {source} -> {url}\n"
              f"  open the dashboard:   {page}\n  Ctrl-C stops both.\n", flush=True)
        return sup.wait()


_SERVING = re.compile(r"serving (ws://\S+)")


class Supervisor:
    """Runs child processes, forwards their output, and stops them all (SIGTERM, then
    SIGKILL after a timeout) on exit, Ctrl-C, SIGTERM, or when any one of them dies."""

    def __init__(self) -> None:
        self.children: list[tuple[str, subprocess.Popen]] = []
        self._lines: dict[int, list[str]] = {}
        self._stop = threading.Event()
        self._old: dict[int, Any] = {}

    def __enter__(self) -> Supervisor:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._on_signal)
            except ValueError:  # not the main thread (tests): rely on stop()
                pass
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        for sig, handler in self._old.items():
            signal.signal(sig, handler)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._stop.set()

    @property
    def stopping(self) -> bool:
        """A Ctrl-C or SIGTERM arrived."""
        return self._stop.is_set()

    def start(self, name: str, cmd: list[str], env: dict[str, str] | None = None,
              watch: re.Pattern[str] | None = None) -> subprocess.Popen:
        # A session of its own, so a terminal's Ctrl-C reaches only us and we stop the
        # children in order, with a timeout.
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, bufsize=1,
                                start_new_session=True)
        self.children.append((name, proc))
        found: list[str] = []
        self._lines[proc.pid] = found

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                sys.stderr.write(f"[{name}] {line}")
                if watch is not None and not found:
                    m = watch.search(line)
                    if m:
                        found.append(m.group(1))
        threading.Thread(target=pump, daemon=True, name=f"pump-{name}").start()
        return proc

    def wait_for_line(self, proc: subprocess.Popen, timeout: float) -> str | None:
        """The watched pattern's match in ``proc``'s output, or None if it exits/times out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self._stop.is_set():
            if self._lines[proc.pid]:
                return self._lines[proc.pid][0]
            if proc.poll() is not None:
                return None
            time.sleep(0.1)
        return None

    def wait_http(self, url: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self._stop.is_set():
            if any(p.poll() is not None for _, p in self.children):
                return False
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    if resp.status == 200:
                        return True
            except OSError:
                pass
            time.sleep(0.3)
        return False

    def wait(self) -> int:
        """Until a signal arrives (0) or a child exits on its own (its code, or 1)."""
        while not self._stop.is_set():
            for name, proc in self.children:
                code = proc.poll()
                if code is not None:
                    print(f"{name} exited with code {code}; stopping", file=sys.stderr)
                    return code or 1
            self._stop.wait(0.2)
        print("stopping…", file=sys.stderr, flush=True)
        return 0

    def stop(self) -> None:
        """SIGTERM every child (last started first), then SIGKILL what is left."""
        for _, proc in reversed(self.children):
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for name, proc in reversed(self.children):
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                print(f"{name} did not stop in {STOP_TIMEOUT_S:g} s; killing it",
                      file=sys.stderr)
                proc.kill()
                proc.wait()
