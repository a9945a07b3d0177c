"""streamer.vad: silero-vad and the energy gate on real speech, silence and noise; the sequence
model equals silero's streaming model stepped frame by frame; per-stream state kept while
streams are interleaved; each sample scored once."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch

from streamer.vad import Vad, VadConfig
from streamer.windows import Window, Windower

SR = 16000


def _speech(tess_dir: Path, name: str) -> np.ndarray:
    path = next((tess_dir / "YAF_happy").glob(f"*_{name}_happy.flac"))
    x, rate = sf.read(str(path), dtype="float32")
    return soxr.resample(x, rate, SR).astype(np.float32)


def _windows(stream_id: str, x: np.ndarray) -> list[Window]:
    w = Windower(stream_id, SR, 3.0, 0.5)
    return w.push(x) + w.flush()


@pytest.fixture(scope="module")
def silero() -> Vad:
    return Vad(VadConfig("silero"), SR)


@pytest.fixture(scope="module")
def speech(tess_dir: Path) -> np.ndarray:
    gap = np.zeros(SR, np.float32)
    return np.concatenate([gap, _speech(tess_dir, "back"), gap, _speech(tess_dir, "bar"), gap])


def test_silero_loads_and_keeps_torch_threads() -> None:
    before = torch.get_num_threads()
    vad = Vad(VadConfig("silero"), SR)
    assert vad.method == "silero" and torch.get_num_threads() == before


@pytest.mark.parametrize("method", ["silero", "energy"])
def test_speech_silence_noise(speech: np.ndarray, method: str) -> None:
    vad = Vad(VadConfig(method), SR)
    sil = _windows("sil", np.zeros(4 * SR, np.float32))
    noise = _windows("noise", (np.random.default_rng(0).standard_normal(4 * SR) * 10 ** (-60 / 20))
                     .astype(np.float32))
    talk = _windows("talk", speech)
    f_sil, f_noise, f_talk = (vad.voiced_fractions(w) for w in (sil, noise, talk))
    assert max(f_sil) == 0.0 and max(f_noise) == 0.0
    assert max(f_talk) > 0.3 and sum(map(vad.is_voiced, f_talk)) >= len(f_talk) // 2


def test_sequence_model_equals_silero_streaming_model(tess_dir: Path) -> None:
    """Our block-at-a-time scoring (in uneven chunks, state carried) against silero's own
    TorchScript streaming model stepped one frame at a time: the reference usage."""
    import warnings

    from silero_vad import load_silero_vad

    x = np.concatenate([_speech(tess_dir, "back"), np.zeros(SR // 2, np.float32),
                        _speech(tess_dir, "bar")])
    x = x[: x.size // 512 * 512]
    vad = Vad(VadConfig("silero"), SR)
    st = vad._state("s", 0)
    got = []
    for lo, hi in [(0, 512 * 3), (512 * 3, 512 * 40), (512 * 40, x.size)]:
        st.fed.append((lo, x[lo:hi]))
        frames, _ = vad._frames(st)
        got += vad._score_silero([(st, frames)])[0].tolist()
    with warnings.catch_warnings():  # silero's loader uses a deprecated importlib API
        warnings.simplefilter("ignore", DeprecationWarning)
        net = load_silero_vad(onnx=False)
    net.reset_states()
    with torch.inference_mode():
        ref = [float(net(torch.from_numpy(x[i:i + 512]), SR)) for i in range(0, x.size, 512)]
    np.testing.assert_allclose(got, ref, atol=1e-5)
    assert max(ref) > 0.9 and min(ref) < 0.1


def test_batching_across_streams_keeps_each_streams_state(silero: Vad, tess_dir: Path) -> None:
    a = np.concatenate([_speech(tess_dir, "back"), np.zeros(SR, np.float32)] * 2)
    b = np.concatenate([np.zeros(SR // 3, np.float32), _speech(tess_dir, "bar")] * 2)
    wa, wb = _windows("a", a), _windows("b", b)
    alone = Vad(VadConfig("silero"), SR)
    ref_a, ref_b = alone.voiced_fractions(wa), alone.voiced_fractions(wb)
    together = Vad(VadConfig("silero"), SR)
    got_a: list[float] = []
    got_b: list[float] = []
    for k in range(max(len(wa), len(wb))):  # interleaved batches, as the engine sends them
        batch = wa[k:k + 1] + wb[k:k + 1]
        res = together.voiced_fractions(batch)
        for w, f in zip(batch, res, strict=True):
            (got_a if w.stream_id == "a" else got_b).append(f)
    # different block boundaries move scores by ~1e-7, which can flip a frame sitting on the
    # threshold: allow one frame of 93
    np.testing.assert_allclose(got_a, ref_a, atol=1.5 / 93)
    np.testing.assert_allclose(got_b, ref_b, atol=1.5 / 93)
    assert max(ref_a) > 0.3 and max(ref_b) > 0.3


def test_each_frame_scored_once(speech: np.ndarray) -> None:
    vad = Vad(VadConfig("silero"), SR)
    calls: list[int] = []
    net = vad._net

    class Counting:
        def run(self, names: list[str], feeds: dict) -> list:
            calls.append(feeds["input"].shape[0])
            return net.run(names, feeds)

    vad._net = Counting()
    wins = _windows("s", speech)
    for w in wins:  # one window at a time, the worst case for overlap
        vad.voiced_fractions([w])
    assert sum(calls) == speech.size // 512  # not len(wins) * 93


def test_padding_counts_as_unvoiced(speech: np.ndarray) -> None:
    vad = Vad(VadConfig("energy"), SR)
    (last,) = _windows("s", speech[SR:SR + SR // 2])  # half a second of speech, padded
    (frac,) = vad.voiced_fractions([last])
    assert 0 < frac <= 0.5 / 3.0 + 1e-6


def test_energy_fallback_and_config_checks() -> None:
    assert Vad(VadConfig("silero"), 22050).method == "energy"
    with pytest.raises(ValueError):
        VadConfig("webrtc")
    with pytest.raises(ValueError):
        VadConfig(min_voiced=2.0)


@pytest.mark.timeout(60)
def test_fed_chunks_scored_in_background_give_the_same_answer(speech: np.ndarray) -> None:
    wins = _windows("s", speech)
    ref = Vad(VadConfig("silero"), SR).voiced_fractions(wins)
    vad = Vad(VadConfig("silero"), SR, interval_s=0.01)
    try:
        w = Windower("s", SR, 3.0, 0.5)
        got: list[float] = []
        for lo in range(0, speech.size, 800):  # 50 ms chunks, as a paced source sends them
            chunk = speech[lo:lo + 800]
            vad.feed("s", chunk, lo)
            ready = w.push(chunk)
            if ready:
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:  # let the background thread catch up
                    with vad._lock:
                        st = vad._streams.get("s")
                        if not vad._inbox and st is not None and not st.fed:
                            break
                    time.sleep(0.005)
                # the background thread framed everything fed so far, before the window came
                assert st is not None and st.pos == ready[-1].start_sample + 48000
                got += vad.voiced_fractions(ready)
        got += vad.voiced_fractions(w.flush())
    finally:
        vad.close()
    np.testing.assert_allclose(got, ref, atol=1.5 / 93)
