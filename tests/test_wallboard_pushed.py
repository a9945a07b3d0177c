"""The wallboard with 50 calls really pushed (issue #15): the real daemon
(``emotion-monitor stream --ingest`` with the tiny contract model) as a subprocess, 50 concurrent
two-track calls of TESS speech pushed in real time over ``/ingest`` with
`streamer.push.push_call`, the real dashboard watching the daemon, and headless Chromium on
``?view=wallboard`` (`tests.wallboard_harness`). `tests/test_wallboard_browser.py` checks the
same page against a fake protocol-v1 floor; here every figure on a tile comes from the daemon's
own VAD, model and ``dynamics`` messages.

The calls use the raw binary variant (a JSON start, then 100-ms frames of 16-bit PCM at 8 kHz),
not Media Streams' 20-ms base64 JSON: 50 calls of those are 5,000 messages a second to encode,
send, parse and decode, which on a 2-core CI machine (shared with the daemon, the dashboard and
Chromium) would make the sender itself the thing under test. 100-ms frames are 500 messages a
second and the same audio; the Media Streams parsing has its own tests (tests/test_ingest.py).

Alerts: the dashboard's default rules (its sidebar) are kept. Every ``DEAD_AIR_EVERY``-th call
falls silent on both sides after one turn each, so the default "dead air > 15 s" rule raises a
warning on it about 20 s into the call. The other calls talk all the time. The tiny model is
untrained (its probabilities stay far below the anger rule's 60 %), so no label is relied on.
The default loudness rule ("louder than usual": the last 20 s of a side's talk against its own
earlier talk) needs 10 s of baseline before those 20 s, so it cannot fire in the first 30 s of
a call, and every clip is scaled to one speech level anyway: the alerted calls are exactly the
dead-air calls.

Checks: 50 tiles with the pushed call ids; severities never rise down the page, so the alerted
calls lead, the dead-air calls among them, each saying why; every tile shows caller, agent,
talk share and interruptions from the daemon's dynamics; a mouse click on a tile opens that
call's two streams on the live page (``?call=``), and Back returns to the wallboard.
Saves test-artifacts/wallboard-pushed.png.

Skips only where Chromium is missing, and never in CI (env CI set: it fails instead).
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from streamer.push import PushResult, load_audio, push_call
from tests.browser import Output, require_chromium, stop
from tests.wallboard_harness import (
    WallboardRun,
    back_to_board,
    open_call,
    page,
    screenshot,
    wait_for_tiles,
)

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
TOKEN = "wallboard-pushed-token"
N_CALLS = 50
DEAD_AIR_EVERY = 10  # calls 0, 10, 20, 30, 40 go quiet
RATE = 8000  # telephone audio; the daemon resamples to the model's 16 kHz
FRAME_MS = 100
#: Long enough to stay live through the checks (the dead-air alert comes ~20 s in); the daemon
#: is stopped once they are done, which closes the calls still going with 1001.
CALL_S = 45.0
STAGGER_S = 0.04  # between call starts: the daemon holds at most 16 handshakes before a start
PAUSE_S = (0.3, 0.8)  # between turns
LEVEL_DBFS = -20.0  # every clip's speech at this level: loudness alerts stay rare
NOISE = 3e-4  # line noise, about -70 dBFS
#: Dead air: the dashboard's default rule (15 s) plus the first turns, with room for load.
ALERT_TIMEOUT_S = 75.0
# The caller's clips (one actress, mixed emotions) and the agent's (the other, calm).
CALLER_CLIPS = ["YAF_angry", "YAF_sad", "YAF_fear", "YAF_disgust", "YAF_neutral", "YAF_happy"]
AGENT_CLIPS = ["OAF_neutral", "OAF_happy", "OAF_Pleasant_surprise"]
CLIPS_PER_FOLDER = 3

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def call_id(i: int) -> str:
    return f"PC{i:03d}"


def dead_air_calls() -> set[str]:
    return {call_id(i) for i in range(0, N_CALLS, DEAD_AIR_EVERY)}


# ----------------------------------------------------------------------------- the calls

def clip_pool(tess_dir: Path, folders: list[str]) -> list[np.ndarray]:
    """Mono clips at RATE, each scaled so its speech (the louder half of its 20-ms frames)
    sits at LEVEL_DBFS."""
    out = []
    for folder in folders:
        files = sorted((tess_dir / folder).glob("*.flac"))[:CLIPS_PER_FOLDER]
        assert len(files) == CLIPS_PER_FOLDER, f"TESS clips missing in {tess_dir / folder}"
        for f in files:
            x = load_audio(f, RATE)[:, 0]
            frames = x[:x.size // 160 * 160].reshape(-1, 160)
            rms = np.sqrt(np.mean(frames ** 2, axis=1))
            speech = np.sqrt(np.mean(np.sort(rms)[rms.size // 2:] ** 2))
            out.append((x * (10 ** (LEVEL_DBFS / 20) / speech)).astype(np.float32))
    return out


def conversation(seed: int, callers: list[np.ndarray], agents: list[np.ndarray],
                 dead_air: bool) -> np.ndarray:
    """[frames, 2] float32 at RATE (caller, agent) taking turns for CALL_S; a dead-air call
    stops after one turn each and is line noise from then on."""
    rng = np.random.default_rng(seed)
    out = (rng.standard_normal((int(CALL_S * RATE), 2)) * NOISE).astype(np.float32)
    t, side, turns = int(0.3 * RATE), 0, 0
    while t < out.shape[0] and not (dead_air and turns == 2):
        pool = callers if side == 0 else agents
        clip = pool[int(rng.integers(len(pool)))]
        n = min(clip.size, out.shape[0] - t)
        out[t:t + n, side] += clip[:n]
        t += n + int(rng.uniform(*PAUSE_S) * RATE)
        side, turns = 1 - side, turns + 1
    return out


class Pusher(threading.Thread):
    """Pushes every call from its own thread and asyncio loop (the test's loop drives the
    browser), in real time, starts ``STAGGER_S`` apart; ``results`` once it has ended: a
    `PushResult` or the exception, per call."""

    def __init__(self, url: str, calls: dict[str, np.ndarray]) -> None:
        super().__init__(daemon=True, name="pusher")
        self.url, self.calls = url, calls
        self.results: dict[str, PushResult | BaseException] = {}

    def run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        async def one(i: int, cid: str, audio: np.ndarray) -> PushResult:
            await asyncio.sleep(i * STAGGER_S)
            return await push_call(self.url, audio, RATE, token=TOKEN, protocol="raw",
                                   fmt="s16le", frame_ms=FRAME_MS, call_id=cid)

        got = await asyncio.gather(*(one(i, cid, audio)
                                     for i, (cid, audio) in enumerate(self.calls.items())),
                                   return_exceptions=True)
        self.results = dict(zip(self.calls, got, strict=True))


# ----------------------------------------------------------------------------- the daemon

class Daemon:
    """``emotion-monitor stream --ingest`` as a child process, its output drained (50 calls'
    worth of log lines would fill a pipe nobody reads and stall it)."""

    def __init__(self, model: Path, sessions: Path) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_WAIT_POLICY": "PASSIVE",
               "PYTHONPATH": str(REPO)}
        env.pop("EMOTION_MONITOR_TOKEN", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "emotion_monitor", "stream", "--ingest", "--token", TOKEN,
             "--model", str(model), "--vad", "energy", "--explain-every", "0",
             "--max-calls", str(N_CALLS + 10), "--port", "0", "--sessions-dir", str(sessions)],
            cwd=sessions.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True)
        self.out = Output(self.proc)
        try:
            self.port = int(self.out.wait_for(r"serving ws://[^:]+:(\d+)/", 90))
        except BaseException:
            stop(self.proc)
            raise

    def stop(self) -> int | None:
        stop(self.proc)  # SIGTERM: calls still going are closed with 1001
        return self.proc.returncode


# ----------------------------------------------------------------------------- the test

@pytest.mark.timeout(300)
def test_wallboard_with_50_pushed_calls(tmp_path: Path, tiny_model_path: Path,
                                        tess_dir: Path) -> None:
    chrome = require_chromium()
    ARTIFACTS.mkdir(exist_ok=True)
    callers, agents = clip_pool(tess_dir, CALLER_CLIPS), clip_pool(tess_dir, AGENT_CLIPS)
    calls = {call_id(i): conversation(i, callers, agents, i % DEAD_AIR_EVERY == 0)
             for i in range(N_CALLS)}
    (tmp_path / "sessions").mkdir()
    daemon = Daemon(tiny_model_path, tmp_path / "sessions")
    pusher = Pusher(f"ws://127.0.0.1:{daemon.port}/ingest", calls)
    try:
        with WallboardRun(N_CALLS, chrome=chrome, workdir=tmp_path / "board",
                          url=f"ws://127.0.0.1:{daemon.port}/", token=TOKEN) as run:
            pusher.start()  # the page is open: every call is seen from its start
            try:
                result = asyncio.run(drive(run, ARTIFACTS / "wallboard-pushed.png"))
            except BaseException:
                print(f"--- dashboard output ---\n{run.output()[-4000:]}")
                print(f"--- daemon output ---\n{daemon.out.text()[-4000:]}")
                raise
    finally:
        code = daemon.stop()
        if pusher.ident is not None:
            pusher.join(60)
    print(f"board ready {result['ready_s']:.1f} s after the calls began, checks done at "
          f"{result['done_s']:.1f} s")
    assert code == 0, daemon.out.text()[-3000:]
    assert not pusher.is_alive()
    # Every call was accepted and ran until the daemon stopped (1001) or its end (1000).
    failed = {k: r for k, r in pusher.results.items()
              if not isinstance(r, PushResult) or r.close_code not in (1000, 1001)}
    assert not failed and len(pusher.results) == N_CALLS, failed

    tiles = result["tiles"]
    keys = [t["key"] for t in tiles]
    assert sorted(keys) == sorted(calls)
    # Ordered by alert: severities never rise down the page, so the alerted calls come first,
    # exactly the dead-air calls, each saying why (see the module docstring).
    severities = [t["severity"] for t in tiles]
    assert severities == sorted(severities, reverse=True)
    alerted = [t for t in tiles if t["alerts"]]
    assert all(t["severity"] >= 2 for t in alerted) and all(
        t["alerts"] == 0 and t["severity"] == 0 for t in tiles[len(alerted):]), severities
    dead = dead_air_calls()
    assert {t["key"] for t in alerted} == dead, [(t["key"], t["severity"]) for t in alerted]
    assert all(t["severity"] == 2 and "dead air" in t["text"] for t in alerted)
    # Both sides and the call's dynamics on every tile, from the daemon's messages.
    for t in tiles:
        assert "Caller" in t["text"] and "Agent" in t["text"], t
        assert re.search(r"talk\s*\d+% / \d+%", t["text"]), t  # talk share: caller / agent
        assert re.search(r"⚡ \d+/\d+", t["text"]), t  # interruptions each way
    # A click opened that call, and only that call, on the live page; Back came back.
    opened = result["opened"]
    assert f"call={opened['key']}" in opened["href"]
    assert f"Call {opened['key']}" in opened["text"]
    assert sorted(opened["cards"]) == [f"{opened['key']}-agent", f"{opened['key']}-caller"]
    assert result["back"]["href"].endswith("?view=wallboard")
    assert result["back"]["tiles"] == N_CALLS, result["back"]
    assert (ARTIFACTS / "wallboard-pushed.png").stat().st_size > 50_000


async def drive(run: WallboardRun, shot: Path) -> dict:
    dead = dead_air_calls()

    def ready(tiles: list[dict]) -> bool:  # every call there, talking, dead air alerted
        return len(tiles) == N_CALLS and all("talk share —" not in t["text"] for t in tiles) \
            and {t["key"] for t in tiles if t["severity"] >= 2} >= dead

    async with page(run) as cdp:
        t0 = time.monotonic()
        tiles = await wait_for_tiles(cdp, ready, ALERT_TIMEOUT_S)
        assert ready(tiles), (f"after {ALERT_TIMEOUT_S:.0f} s: {len(tiles)} tiles, "
                              f"{[(t['key'], t['severity']) for t in tiles[:8]]}")
        ready_s = time.monotonic() - t0
        await screenshot(cdp, shot)
        # Click a tile below the alerts, as a mouse does; then the browser's Back button.
        below = [t for t in tiles if not t["alerts"]]
        opened = await open_call(cdp, below[min(2, len(below) - 1)]["key"])
        back = await back_to_board(cdp, N_CALLS)
        return {"tiles": tiles, "opened": opened, "back": back, "ready_s": ready_s,
                "done_s": time.monotonic() - t0}
