"""The installed command works from anywhere (issue 14, "what a call floor needs").

A NON-editable install of this project (its wheel, built as `pip install .` builds it) into a
fresh virtual environment, run from a temporary directory outside the repository: `--help`,
`models show` on the packaged default model, the daemon replaying a file until done (exit 0,
a session log in that directory), the dashboard and the demo (the Streamlit server answers).

Torch & co. are not downloaded again: the fresh venv gets a `.pth` file naming the running
interpreter's site-packages, added only after the install, so pip never sees the dev venv's
editable emotion-monitor. A plain path in a `.pth` does not run that site-packages' own `.pth`
files, so the editable install's finder stays out and the installed copy is what runs (asserted).
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
import tomllib
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ROOMS = ("emotion_monitor", "streamer", "dashboard", "train")


def test_defaults_name_the_shipped_files_wherever_the_command_runs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In a checkout: its models/ and examples/, absolute; an explicit relative --model stays
    relative (to the current directory); installed (no checkout): the package's copies."""
    import emotion_monitor
    from emotion_monitor import cliutil
    from emotion_monitor.cli import build_parser
    from streamer.daemon import DaemonConfig

    assert cliutil.checkout_root() == REPO
    assert cliutil.default_model_path() == REPO / "models" / "default.pt"
    assert cliutil.example_stream_dir() == REPO / "examples" / "tess_stream"
    monkeypatch.chdir(tmp_path)
    parser = build_parser()
    for argv in (["stream", "--replay", "x.wav"], ["demo"], ["explain", "x.wav"]):
        assert str(parser.parse_args(argv).model) == str(REPO / "models" / "default.pt")
        assert str(parser.parse_args([*argv, "--model", "m.pt"]).model) == "m.pt"
    assert DaemonConfig().model_path == REPO / "models" / "default.pt"
    monkeypatch.setattr(cliutil, "_CHECKOUT", tmp_path)  # as installed: site-packages
    assert cliutil.checkout_root() is None
    package = Path(emotion_monitor.__file__).resolve().parent
    assert cliutil.default_model_path() == package / "models" / "default.pt"
    assert cliutil.example_stream_dir() == package / "examples" / "tess_stream"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _source_copy(dest: Path) -> Path:
    """What the build reads (pyproject's packages and mapped folders, readme, licence), copied,
    so the build neither writes build/ into the checkout nor picks up stale files from it."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    st = config["tool"]["setuptools"]
    mapped = st.get("package-dir", {})
    tops = {p.split(".")[0] for p in st["packages"]} | set(mapped.values())
    dest.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in sorted(tops):
        shutil.copytree(REPO / name, dest / name, ignore=ignore)
    for name in ("pyproject.toml", config["project"]["readme"], "LICENSE"):
        shutil.copy2(REPO / name, dest / name)
    return dest


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding a non-editable install of the project; returns its directory."""
    base = tmp_path_factory.mktemp("installed")
    src = _source_copy(base / "src")
    wheels = base / "wheels"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--no-index", str(src), "-w", str(wheels)],
        capture_output=True, text=True, timeout=180)
    assert build.returncode == 0, (
        f"building the wheel failed (needs setuptools>=77 in this venv: "
        f"pip install -e '.[dev]'):\n{build.stdout[-3000:]}\n{build.stderr[-3000:]}")
    (wheel,) = wheels.glob("emotion_monitor-*.whl")
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=60)
    python = venv / "bin" / "python"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
         "--no-index", str(wheel)], capture_output=True, text=True, timeout=180)
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    # Only now the dependencies: the dev venv's site-packages, after the venv's own.
    site = Path(subprocess.run([str(python), "-c", "import sysconfig;"
                                "print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "_dev_dependencies.pth").write_text("".join(f"{d}\n" for d in sorted(deps)))
    return venv


@pytest.fixture()
def elsewhere(tmp_path: Path) -> Path:
    """A working directory outside the repository, with nothing in it."""
    work = tmp_path / "elsewhere"
    work.mkdir()
    assert REPO not in work.resolve().parents
    return work


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["OMP_WAIT_POLICY"] = "PASSIVE"
    return env


def _run(venv: Path, args: list[str], cwd: Path, timeout: float = 120,
         ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(venv / "bin" / "emotion-monitor"), *args], cwd=cwd, env=_env(),
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_the_installed_package_is_what_runs(installed: Path, elsewhere: Path) -> None:
    code = ("import json, emotion_monitor, streamer, dashboard, train, torch;"
            "from emotion_monitor.cliutil import checkout_root, default_model_path, "
            "example_stream_dir;"
            "print(json.dumps({'files': [m.__file__ for m in (emotion_monitor, streamer, "
            "dashboard, train)], 'checkout': str(checkout_root()), "
            "'model': str(default_model_path()), 'examples': str(example_stream_dir())}))")
    out = subprocess.run([str(installed / "bin" / "python"), "-c", code], cwd=elsewhere,
                         env=_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    venv = str(installed.resolve())
    assert all(f.startswith(venv) for f in info["files"]), info
    assert info["checkout"] == "None"
    assert info["model"].startswith(venv) and Path(info["model"]).is_file()
    assert info["model"].endswith("emotion_monitor/models/default.pt")
    assert sorted(p.name for p in Path(info["examples"]).glob("*.flac")) == sorted(
        p.name for p in (REPO / "examples" / "tess_stream").glob("*.flac"))
    # The explicit package list in pyproject.toml misses no subpackage.
    site = Path(info["files"][0]).parents[1]
    for room in ROOMS:
        for init in (REPO / room).rglob("__init__.py"):
            rel = init.relative_to(REPO)
            assert (site / rel).is_file(), f"{rel} is not installed: add it to pyproject.toml"


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_help_and_models_show_from_elsewhere(installed: Path, elsewhere: Path) -> None:
    out = _run(installed, ["--help"], elsewhere)
    assert out.returncode == 0 and "emotion-monitor demo" in out.stdout, out.stderr
    out = _run(installed, ["stream", "--help"], elsewhere)
    assert out.returncode == 0 and "models/default.pt" in out.stdout
    (model,) = installed.resolve().glob("lib/*/site-packages/emotion_monitor/models/default.pt")
    out = _run(installed, ["models", "show", str(model), "--json"], elsewhere)
    assert out.returncode == 0, out.stderr
    card = json.loads(out.stdout)
    shipped = json.loads((REPO / "models" / "default.card.json").read_text())
    assert card["name"] == shipped["name"] and card["version"] == shipped["version"]


@pytest.mark.slow
@pytest.mark.timeout(420)
@pytest.mark.tess
def test_stream_with_the_default_model_from_elsewhere(installed: Path, elsewhere: Path,
                                                      tess_dir: Path) -> None:
    audio = sorted([*tess_dir.rglob("*_angry.wav"), *tess_dir.rglob("*_angry.flac")])[0]
    out = _run(installed, ["stream", "--replay", str(audio), "--speed", "0", "--exit-when-done",
                           "--host", "127.0.0.1", "--port", "0", "--device", "cpu",
                           "--threads", "1", "--session-id", "installed"], elsewhere, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    logs = list((elsewhere / "sessions").glob("installed.jsonl*"))
    assert len(logs) == 1, list(elsewhere.rglob("*"))
    opener = gzip.open if logs[0].suffix == ".gz" else open
    with opener(logs[0], "rt") as f:
        messages = [json.loads(line) for line in f]
    types = [m["type"] for m in messages]
    assert types[0] == "hello" and "prediction" in types and "stream_ended" in types, types
    assert "error" not in types, [m for m in messages if m["type"] == "error"]


def _serves_http(url: str, proc: subprocess.Popen, lines: list[str], ready: str,
                 timeout: float) -> bool:
    """The URL answers 200 and the process has printed a line containing ``ready``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200 and any(ready in line for line in list(lines)):
                    return True
        except OSError:
            pass
        time.sleep(0.3)
    return False


def _stop(proc: subprocess.Popen, reader: threading.Thread) -> int:
    """SIGTERM (the supervisor stops its children), then the process group if it hangs."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        reader.join(5)
        pytest.fail("did not stop on SIGTERM")
    reader.join(10)
    return proc.returncode


@pytest.mark.slow
@pytest.mark.timeout(420)
@pytest.mark.parametrize("command", ["demo", "dashboard"])
def test_demo_and_dashboard_from_elsewhere(installed: Path, elsewhere: Path,
                                           command: str) -> None:
    port = _free_port()
    args = [command, "--port", str(port)]
    if command == "demo":
        args += ["--daemon-port", str(_free_port()), "--device", "cpu"]
    proc = subprocess.Popen([str(installed / "bin" / "emotion-monitor"), *args], cwd=elsewhere,
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    lines: list[str] = []
    assert proc.stdout is not None

    def read() -> None:
        for line in proc.stdout:
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    ready = "emotion monitor demo:" if command == "demo" else "dashboard:"
    try:
        up = _serves_http(f"http://127.0.0.1:{port}/_stcore/health", proc, lines, ready, 120)
    finally:
        code = _stop(proc, reader)
    out = "".join(lines)
    assert up, f"the dashboard never answered on port {port}:\n{out[-4000:]}"
    assert code == 0, out[-4000:]
    if command == "demo":
        assert "emotion monitor demo:" in out, out[-4000:]
        assert str(installed.resolve()) in out  # the packaged example stream
        assert list((elsewhere / "sessions").glob("*.jsonl*")), "the demo's daemon logged nothing"
