"""The microphone path with a virtual input: a PulseAudio null sink run as a user process
(its monitor is the default source, reached through PortAudio's ALSA 'pulse' device), fed in
real time by ``paplay``. Needs Debian pulseaudio, pulseaudio-utils, libportaudio2 (installed by
.ci/run); skips without them locally, fails in CI."""

from __future__ import annotations

import ctypes.util
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from streamer.sources import Chunk, MicSource, SourceError, list_devices

pytestmark = [pytest.mark.mic, pytest.mark.slow]
SR = 16000
TONE_HZ = 1000.0


def _require(what: str) -> None:
    msg = f"virtual microphone unavailable: {what} (Debian: pulseaudio pulseaudio-utils " \
          "libportaudio2)"
    if os.environ.get("CI"):
        pytest.fail(msg + "; CI must run the microphone test")
    pytest.skip(msg)


@pytest.fixture(scope="module")
def virtual_mic(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    for tool in ("pulseaudio", "paplay", "pactl"):
        if shutil.which(tool) is None:
            _require(f"{tool} not found")
    if ctypes.util.find_library("portaudio") is None:
        _require("PortAudio library not found")
    runtime = tmp_path_factory.mktemp("pulse")
    runtime.chmod(0o700)
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime), "PULSE_RUNTIME_PATH": str(runtime)}
    started = subprocess.run(
        ["pulseaudio", "--start", "--exit-idle-time=-1", "-n",
         "--load=module-native-protocol-unix",
         f"--load=module-null-sink sink_name=vsink rate={SR} channels=1",
         "--load=module-always-sink"],
        env=env, capture_output=True, text=True, timeout=30,
    )
    deadline = time.monotonic() + 15
    while subprocess.run(["pactl", "info"], env=env, capture_output=True).returncode != 0:
        if time.monotonic() > deadline:
            _require(f"pulseaudio did not start: {started.stderr.strip()[-300:]}")
        time.sleep(0.2)
    subprocess.run(["pactl", "set-default-source", "vsink.monitor"], env=env, check=True)
    saved = {k: os.environ.get(k) for k in ("XDG_RUNTIME_DIR", "PULSE_RUNTIME_PATH")}
    os.environ.update({k: env[k] for k in saved})
    import sounddevice as sd

    sd._terminate()  # PortAudio enumerates devices at init: redo it against our server
    sd._initialize()
    try:
        yield env
    finally:
        subprocess.run(["pulseaudio", "--kill"], env=env, capture_output=True, timeout=30)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_devices_listed(virtual_mic: dict[str, str]) -> None:
    devices = list_devices()
    names = [d["name"] for d in devices]
    assert "pulse" in names or "default" in names
    first = devices[0]  # chosen by index (as the CLI passes it: a string of digits)
    mic = MicSource(SR, device=str(first["index"])).open()
    assert mic.device == first["index"] and mic.device_name == first["name"]
    assert mic.native_rate == int(first["default_samplerate"])
    with pytest.raises(SourceError, match="no such input device"):
        MicSource(SR, device="no-such-microphone-xyz").open()


@pytest.mark.timeout(90)
def test_tone_captured_and_resampled(virtual_mic: dict[str, str], tmp_path: Path) -> None:
    tone = tmp_path / "tone.wav"
    t = np.arange(int(1.5 * SR)) / SR
    sf.write(tone, (0.5 * np.sin(2 * np.pi * TONE_HZ * t)).astype(np.float32), SR,
             subtype="PCM_16")
    mic = MicSource(SR, device="pulse").open()
    assert mic.native_rate > 0 and mic.stream_ids == ["mic"]
    chunks: list[Chunk] = []
    stop = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            mic.run(chunks.append, stop)
        except BaseException as err:  # reported below
            errors.append(err)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not chunks and time.monotonic() < deadline and not errors:
        time.sleep(0.05)
    subprocess.run(["paplay", "-d", "vsink", str(tone)], env=virtual_mic, check=True,
                   timeout=30)
    time.sleep(0.5)
    stop.set()
    thread.join(10)
    assert not errors, errors
    assert all(c.stream_id == "mic" and c.samples.dtype == np.float32 for c in chunks)
    x = np.concatenate([c.samples for c in chunks])
    # the loudest second is the tone, at the right pitch once resampled to the model's rate
    frame = SR
    energies = [np.mean(x[i:i + frame] ** 2) for i in range(0, x.size - frame, SR // 10)]
    lo = int(np.argmax(energies)) * (SR // 10)
    seg = x[lo:lo + frame]
    freq = np.fft.rfftfreq(seg.size, 1 / SR)[np.argmax(np.abs(np.fft.rfft(seg)))]
    assert abs(freq - TONE_HZ) < 10, freq
    assert np.sqrt(np.mean(seg ** 2)) > 0.1
    stats = mic.stats()
    assert set(stats) == {"overflows", "dropped_frames"}
    assert chunks[-1].wall_time >= chunks[0].wall_time


@pytest.mark.timeout(120)
def test_push_mic_sends_a_live_call_and_ctrl_c_ends_it(virtual_mic: dict[str, str],
                                                       tmp_path: Path,
                                                       tiny_model_path: Path) -> None:
    """`emotion-monitor push --mic`: the microphone becomes a live call on the daemon's
    /ingest (a tone played into it comes out in the call's stream), and Ctrl-C ends the call
    with a stop: the daemon's normal close, exit code 0, the stream ended as eof."""
    import asyncio
    import signal

    from streamer.ingest import IngestConfig
    from tests.streamer_harness import REPO, client, make_config, running

    token = "mic-push-token"
    tone = tmp_path / "tone.wav"
    t = np.arange(int(1.5 * SR)) / SR
    sf.write(tone, (0.5 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32), SR,
             subtype="PCM_16")
    cfg = make_config(tmp_path, tiny_model_path, token=token, ingest=IngestConfig())

    async def main() -> tuple[subprocess.CompletedProcess, dict, list[dict]]:
        async with running(cfg) as daemon, client(
                f"ws://127.0.0.1:{daemon.port}/?token={token}") as c:
            proc = subprocess.Popen(
                [sys.executable, "-m", "emotion_monitor", "push", "--mic", "--mic-device",
                 "pulse", "--url", f"ws://127.0.0.1:{daemon.port}/ingest", "--token", token,
                 "--call-id", "MIC1"],
                env={**virtual_mic, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, text=True)
            try:
                await c.until(lambda m: m["type"] == "stream_started"
                              and m["stream"]["stream"] == "MIC1-caller", timeout=60)
                await asyncio.to_thread(subprocess.run, ["paplay", "-d", "vsink", str(tone)],
                                        env=virtual_mic, check=True, timeout=30)
                await c.until(lambda m: m["type"] == "prediction"
                              and m["stream"] == "MIC1-caller", timeout=30)
                proc.send_signal(signal.SIGINT)
                out, err = await asyncio.to_thread(proc.communicate, timeout=30)
            finally:
                if proc.poll() is None:
                    proc.kill()
            ended = await c.until(lambda m: m["type"] == "stream_ended"
                                  and m["stream"] == "MIC1-caller", timeout=30)
            done = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
            return done, ended, c.of("prediction", "MIC1-caller")

    done, ended, preds = asyncio.run(main())
    assert done.returncode == 0, done.stderr[-2000:]
    assert "call MIC1:" in done.stderr and "closed 1000" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert ended["reason"] == "eof" and ended["t_end_s"] >= 3.0, ended
    assert preds
