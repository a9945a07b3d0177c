"""Inference on Ray Serve (streamer/backends): one real local Ray instance for the whole file
(session-scoped: Ray's start-up cost stays out of every other test), the tiny model deployed
by the code behind `emotion-monitor cluster up`, daemons in-process with `inference=<Serve URL>`.

- a replay through Serve yields the in-process messages (same seqs, voiced flags, labels,
  explanations; probabilities within 1e-5);
- a replica killed mid-replay: the stream goes on to its end, every window is a prediction or a
  counted drop, no client sees an error, the replica comes back;
- Serve unreachable at start: exit code 2 and one line; lost while running (a TCP relay in
  between is cut): streams go on, status says so, inference resumes when it is back, or runs
  locally with the fallback.

Skipped only where Ray is not installed (`.ci/run` installs the `ray` extra, so CI never skips).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from streamer.backends import RemoteOptions
from streamer.backends.remote import serve_url
from streamer.sources import FileSource
from tests.streamer_harness import REPO, client, make_config, replay_to_end, running, tess_files

SPEED = 2.0  # paced replays: the faults happen while windows arrive
TOKEN = "serve-test-token"  # the deployment requires it (cluster up --token)
pytestmark = pytest.mark.timeout(120)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def serve_cluster(tiny_model_path: Path):
    """A local Ray instance with the tiny model deployed (one replica); its Serve URL."""
    try:
        import ray
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("ray is not installed; CI installs the ray extra (.ci/run)")
        pytest.skip("the ray extra is not installed (pip install -e '.[ray]')")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from ray import serve

    from streamer.backends import serve_app

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        url = serve_app.up(None, tiny_model_path, serve_app.ReplicaSettings(threads=1),
                           http_port=_free_port(), num_cpus=0.5, token=TOKEN)
        yield url
    finally:
        with contextlib.suppress(Exception):
            serve.shutdown()
        ray.shutdown()


def _config(tmp_path: Path, model: Path, inference: str = "local", **kw):
    """Remote configs carry the deployment's token (``remote``'s own options kept)."""
    if inference != "local":
        kw["remote"] = dataclasses.replace(kw.get("remote", RemoteOptions()), token=TOKEN)
    return make_config(tmp_path, model, explain_every=2, inference=inference, **kw)


def _replica_actor():
    import ray

    from streamer.backends.serve_app import DEPLOYMENT_NAME

    names = [a for a in ray.util.list_named_actors(all_namespaces=True)
             if a["name"].startswith("SERVE_REPLICA") and DEPLOYMENT_NAME in a["name"]]
    assert len(names) == 1, names
    return ray.get_actor(names[0]["name"], namespace=names[0]["namespace"]), names[0]["name"]


def _wait_running(timeout: float = 60.0) -> str:
    """Until the deployment has one running replica again; its actor name."""
    from streamer.backends import serve_app

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = serve_app.status(None)
        reps = st.get("deployments", {}).get(serve_app.DEPLOYMENT_NAME, {}).get("replicas", {})
        if st["status"] == "RUNNING" and reps == {"RUNNING": 1}:
            return _replica_actor()[1]
        time.sleep(0.5)
    raise AssertionError(f"the replica did not come back: {st}")


# ----------------------------------------------------------------------------- no Ray needed

def test_serve_url_forms() -> None:
    assert serve_url("ray") == "http://127.0.0.1:8000/emotion"
    assert serve_url("ray://head") == "http://head:8000/emotion"
    assert serve_url("ray://10.0.0.5:9000") == "http://10.0.0.5:9000/emotion"
    assert serve_url("http://lb:80/") == "http://lb:80/emotion"
    assert serve_url("https://lb/x") == "https://lb/x"
    with pytest.raises(ValueError):
        serve_url("grpc://x")


def test_unreachable_at_start_is_one_line_and_exit_2(tmp_path: Path, tiny_model_path: Path,
                                                     tess_dir: Path) -> None:
    """Nothing listens on the port: the daemon refuses before binding, with one line."""
    port = _free_port()
    proc = subprocess.run(
        [sys.executable, "-m", "emotion_monitor", "stream", "--port", "0",
         "--replay", str(tess_files(tess_dir, 1)[0]), "--model", str(tiny_model_path),
         "--sessions-dir", str(tmp_path / "s"), "--inference", f"ray://127.0.0.1:{port}"],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True,
        text=True, timeout=90)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "remote inference unavailable" in lines[0], proc.stderr
    assert "cluster up" in lines[0]


# ----------------------------------------------------------------------------- with Ray

def _predictions(c) -> list[dict]:
    return [m for m in c.msgs if m["type"] == "prediction"]


def test_replay_through_serve_equals_in_process(tmp_path: Path, tiny_model_path: Path,
                                                tess_dir: Path, serve_cluster: str) -> None:
    files = tess_files(tess_dir, 3)
    local = asyncio.run(replay_to_end(_config(tmp_path / "l", tiny_model_path), files, "s"))
    remote = asyncio.run(replay_to_end(_config(tmp_path / "r", tiny_model_path, serve_cluster),
                                       files, "s"))
    lp, rp = _predictions(local), _predictions(remote)
    assert [(m["seq"], m["voiced"], m["label"]) for m in lp] == \
        [(m["seq"], m["voiced"], m["label"]) for m in rp]
    assert sum(m["voiced"] for m in lp) > 3
    for a, b in zip(lp, rp, strict=True):
        if a["voiced"]:
            assert max(abs(a["probabilities"][k] - b["probabilities"][k])
                       for k in a["probabilities"]) < 1e-5
    le, re_ = local.of("explanation"), remote.of("explanation")
    assert [(m["seq"], m["class"]) for m in le] == [(m["seq"], m["class"]) for m in re_]
    assert le and all(abs(a["metrics"]["confidence"] - b["metrics"]["confidence"]) < 1e-5
                      for a, b in zip(le, re_, strict=True))
    assert not remote.of("error")
    hello = remote.msgs[0]
    assert hello["model"]["name"] == "tiny-test" and len(hello["model"]["sha256"]) == 64


def _windows_accounted(daemon, c, sid: str, expected: int) -> int:
    """Every window is a prediction or a counted drop; the number dropped."""
    st = daemon.streams[sid]
    assert st.windows == len(c.of("prediction", sid))
    assert st.windows + st.dropped == expected, (st.windows, st.dropped, expected)
    return st.dropped


def test_killed_replica_mid_replay(tmp_path: Path, tiny_model_path: Path, tess_dir: Path,
                                   serve_cluster: str) -> None:
    import ray

    files = tess_files(tess_dir, 4)
    reference = asyncio.run(replay_to_end(_config(tmp_path / "l", tiny_model_path), files, "k"))
    expected = len(_predictions(reference))
    actor, before = _replica_actor()
    cfg = _config(tmp_path / "r", tiny_model_path, serve_cluster,
                  remote=RemoteOptions(timeout_s=20.0))

    killed: list[float] = []

    def kill_under_request(infer):  # the 3rd request: the replica dies while it computes
        def wrapped(chunk):
            if len(calls) == 2:
                threading.Timer(0.005, ray.kill, (actor,), {"no_restart": True}).start()
                killed.append(time.monotonic())
            calls.append(chunk.n)
            return infer(chunk)
        return wrapped

    calls: list[int] = []

    async def main():
        async with running(cfg) as daemon, client(daemon) as c:
            daemon.engine.client.infer = kill_under_request(daemon.engine.client.infer)
            await daemon._start_source(FileSource(files, 16000, name="k", speed=SPEED))
            await c.until(lambda m: m["type"] == "stream_ended", timeout=90)
            return daemon, c

    daemon, c = asyncio.run(main())
    assert killed, "the replay ended before the third request"
    dropped = _windows_accounted(daemon, c, "k", expected)
    assert not c.of("error")
    assert c.of("stream_ended")[0]["reason"] == "eof"
    stats = daemon.engine.stats
    # the killed request: retried (by Serve or here) or its windows counted as dropped
    assert stats["requests"] + stats["failed_requests"] >= len(calls) - stats["retried_windows"]
    print("after the kill:", stats, "dropped", dropped)
    assert _wait_running() != before  # a new replica answers
    assert daemon.engine.client.card()["name"] == "tiny-test"


class Relay:
    """A TCP relay between the daemon and Serve's proxy that a test can cut and restore."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = _free_port()
        self._socks: list[socket.socket] = []
        self._listener: socket.socket | None = None

    def start(self) -> None:
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("127.0.0.1", self.port))
        ls.listen()
        self._listener = ls
        threading.Thread(target=self._accept, args=(ls,), daemon=True).start()

    def _accept(self, ls: socket.socket) -> None:
        while True:
            try:
                a, _ = ls.accept()
            except OSError:
                return
            b = socket.create_connection(self.target)
            self._socks += [a, b]
            for x, y in ((a, b), (b, a)):
                threading.Thread(target=self._pump, args=(x, y), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(1 << 16):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def cut(self) -> None:
        if self._listener is not None:  # shutdown wakes the accept() (close alone does not)
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
        for s in self._socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
        self._socks = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/emotion"


@pytest.mark.parametrize("fallback", [False, True], ids=["drop", "fallback-local"])
def test_serve_lost_while_running_then_back(tmp_path: Path, tiny_model_path: Path,
                                            tess_dir: Path, serve_cluster: str,
                                            fallback: bool) -> None:
    files = tess_files(tess_dir, 4)
    reference = asyncio.run(replay_to_end(_config(tmp_path / "l", tiny_model_path), files, "o"))
    expected = len(_predictions(reference))
    target = urlsplit(serve_cluster)
    relay = Relay((target.hostname, target.port))
    relay.start()
    cfg = _config(tmp_path / "r", tiny_model_path, relay.url,
                  remote=RemoteOptions(fallback_local=fallback), status_interval_s=0.2)

    def outage(m: dict) -> bool:
        return m["type"] == "status" and any(
            s["stream"] == "o" and s.get("source_stats", {}).get("inference_unavailable")
            for s in m["streams"])

    async def main():
        async with running(cfg) as daemon, client(daemon) as c:
            await daemon._start_source(FileSource(files, 16000, name="o", speed=SPEED))
            await c.until(lambda m: m["type"] == "prediction" and m["voiced"])
            relay.cut()
            await c.until(outage, timeout=20)
            n_during = len(c.of("prediction", "o"))
            await asyncio.sleep(1.0)
            relay.start()
            await c.until(lambda m: m["type"] == "status" and not outage(m)
                          and len(c.of("prediction", "o")) > n_during, timeout=20)
            await c.until(lambda m: m["type"] == "stream_ended", timeout=60)
            return daemon, c

    try:
        daemon, c = asyncio.run(main())
    finally:
        relay.cut()
    dropped = _windows_accounted(daemon, c, "o", expected)
    assert not c.of("error") and c.of("stream_ended")[0]["reason"] == "eof"
    assert daemon.engine.stats["outages"] == 1 and daemon.engine.down_since is None
    last = next(s for s in daemon._status()["streams"] if s["stream"] == "o")
    if fallback:  # nothing lost: the local model answered during the outage
        assert dropped == 0 and daemon.engine.stats["fallback_windows"] > 0
        assert last["source_stats"]["inference_fallback_windows"] > 0
    else:
        assert dropped > 0 and last["dropped_windows"] == dropped
        assert last["source_stats"]["inference_dropped_windows"] == dropped


def test_cluster_status_command(serve_cluster: str) -> None:
    """`emotion-monitor cluster status` from another process: RUNNING, one replica, exit 0."""
    import json

    import ray

    address = ray.get_runtime_context().gcs_address
    proc = subprocess.run(
        [sys.executable, "-m", "emotion_monitor", "cluster", "status", "--json",
         "--address", address], env={**os.environ, "PYTHONPATH": str(REPO),
                                     "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "token")},
        capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr[-2000:]
    st = json.loads(proc.stdout)
    assert st["status"] == "RUNNING"
    assert st["deployments"]["EmotionModel"]["replicas"] == {"RUNNING": 1}


def test_deployment_refuses_requests_without_its_token(tmp_path: Path, tiny_model_path: Path,
                                                       tess_dir: Path,
                                                       serve_cluster: str) -> None:
    """Every request needs the token, the card too; a daemon without it (or with another)
    refuses to start with one line that says so. Replicas keep only the token's digest."""
    from streamer.backends.remote import RemoteError, ServeClient

    assert ServeClient(serve_cluster, 10.0, TOKEN).card()["name"] == "tiny-test"
    for token in (None, "wrong"):
        with pytest.raises(RemoteError, match="wrong or missing token"):
            ServeClient(serve_cluster, 10.0, token).card()
    port = urlsplit(serve_cluster).port
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("EMOTION_MONITOR_SERVE_TOKEN", None)
    cmd = [sys.executable, "-m", "emotion_monitor", "stream", "--port", "0",
           "--replay", str(tess_files(tess_dir, 1)[0]), "--sessions-dir", str(tmp_path / "s"),
           "--inference", f"ray://127.0.0.1:{port}"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=90)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "wrong or missing token" in lines[0], proc.stderr


def test_a_proxy_beyond_loopback_needs_a_token(tiny_model_path: Path,
                                               serve_cluster: str) -> None:
    """Refused before anything is deployed or changed (the address is never contacted)."""
    from streamer.backends import serve_app

    with pytest.raises(ValueError, match="without a token"):
        serve_app.up("127.0.0.1:1", tiny_model_path, serve_app.ReplicaSettings(),
                     http_host="0.0.0.0")
