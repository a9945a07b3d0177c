"""`emotion-monitor dashboard` / `demo`: command lines, help, and a clear error without a model.
(The demo itself runs end to end in tests/test_dashboard_browser.py.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from dashboard.cli import child_env, streamlit_command
from emotion_monitor.cli import build_parser


def test_streamlit_command_passes_urls_but_never_the_token() -> None:
    cmd = streamlit_command(8599, urls=["ws://a:1", "ws://b:2"], sessions_dir="s",
                            max_upload_mb=5, refresh=1.0)
    assert cmd[1:4] == ["-m", "streamlit", "run"] and cmd[4].endswith("dashboard/app.py")
    assert cmd[cmd.index("--server.port") + 1] == "8599"
    assert cmd[cmd.index("--server.headless") + 1] == "true"
    assert cmd[cmd.index("--server.maxUploadSize") + 1] == "5"
    app_args = cmd[cmd.index("--") + 1:]
    assert app_args[:4] == ["--url", "ws://a:1", "--url", "ws://b:2"]
    assert "--refresh" in app_args
    env = child_env("s3cret")
    assert env["EMOTION_MONITOR_TOKEN"] == "s3cret" and "s3cret" not in " ".join(cmd)


def test_app_arguments_are_parsed_and_refresh_is_capped() -> None:
    from dashboard.app import parse_args

    args = parse_args(["--url", "ws://x:1", "--refresh", "0.1", "--unknown", "z"])
    assert args.url == ["ws://x:1"] and args.refresh == 0.5
    assert parse_args([]).url == ["ws://127.0.0.1:8765"]


def test_help_shows_an_example() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name in ("dashboard", "demo"):
        text = sub.choices[name].format_help()
        assert "example:" in text and f"emotion-monitor {name}" in text


def test_demo_without_a_model_says_what_to_do(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "emotion_monitor", "demo", "--model", str(tmp_path / "no.pt")],
        capture_output=True, text=True, timeout=60, env=child_env())
    assert out.returncode == 2
    assert "no model at" in out.stderr and "--model" in out.stderr
