"""streamer.sources: file replay (formats, rates, channels, gaps, loop, pacing), stdin PCM,
clear errors for bad files, and one failing source not touching another."""

from __future__ import annotations

import asyncio
import io
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from streamer import sources
from streamer.sources import (
    FileSource,
    SourceError,
    StdinSource,
    _Pacer,
    iter_chunks,
)

SR = 16000


def _sine(freq: float, rate: int, seconds: float, channels: int = 1) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    x = 0.5 * np.sin(2 * np.pi * freq * t).astype(np.float32)
    return np.stack([x * (c == 0) for c in range(channels)], axis=1) if channels > 1 else x


def _collect(src: sources.Source) -> dict[str, np.ndarray]:
    got: dict[str, list[np.ndarray]] = {}
    src.open()
    src.run(lambda c: got.setdefault(c.stream_id, []).append(c.samples), threading.Event())
    return {k: np.concatenate(v) for k, v in got.items()}


def _peak_hz(x: np.ndarray, rate: int = SR) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    return float(np.fft.rfftfreq(x.size, 1 / rate)[np.argmax(spec)])


@pytest.mark.parametrize(
    ("name", "rate", "channels", "fmt", "subtype"),
    [("a.wav", 44100, 2, "WAV", "PCM_16"), ("b.flac", 24414, 1, "FLAC", "PCM_16"),
     ("c.ogg", 48000, 1, "OGG", "VORBIS"), ("d.aiff", 8000, 1, "AIFF", "PCM_16"),
     ("e.wav", 16000, 6, "WAV", "FLOAT")],
)
def test_formats_rates_channels(tmp_path: Path, name: str, rate: int, channels: int,
                                fmt: str, subtype: str) -> None:
    path = tmp_path / name
    sf.write(path, _sine(440, rate, 1.0, channels), rate, format=fmt, subtype=subtype)
    (out,) = _collect(FileSource([path], SR, speed=0)).values()
    assert out.dtype == np.float32 and out.ndim == 1
    assert abs(out.size - SR) <= 16  # resampled length: 1 s at 16 kHz
    assert abs(_peak_hz(out) - 440) < 5  # the tone survives resampling at the right pitch
    if channels > 1:  # mixdown = mean: only channel 0 carries the tone
        assert 0.5 / channels * 0.9 < np.abs(out[2000:-2000]).max() < 0.5 / channels * 1.1


def test_split_channels(tmp_path: Path) -> None:
    path = tmp_path / "call.wav"
    stereo = np.stack([_sine(300, 22050, 1.0), _sine(1000, 22050, 1.0)], axis=1)
    sf.write(path, stereo, 22050)
    src = FileSource([path], SR, speed=0, split_channels=True)
    got = _collect(src)
    assert list(got) == ["call:ch0", "call:ch1"] == src.stream_ids
    assert abs(_peak_hz(got["call:ch0"]) - 300) < 5 and abs(_peak_hz(got["call:ch1"]) - 1000) < 5
    assert got["call:ch0"].size == got["call:ch1"].size
    assert [d["channel"] for d in src.describe()] == [0, 1]


def test_directory_is_one_stream_with_gaps(tmp_path: Path) -> None:
    for i in range(3):
        sf.write(tmp_path / f"{i}.wav", np.full(SR, 0.25, np.float32), SR)
    (tmp_path / "notes.txt").write_text("not audio, ignored in a directory")
    src = FileSource([tmp_path], SR, speed=0, gap_s=0.5, name="dir")
    out = _collect(src)["dir"]
    assert out.size == 3 * SR + 2 * SR // 2
    assert not out[SR:SR + SR // 2].any()  # silence gap
    assert np.allclose(out[SR + SR // 2: 2 * SR + SR // 2], 0.25)
    noisy = _collect(FileSource([tmp_path], SR, speed=0, gap_s=0.5, gap="noise"))[tmp_path.name]
    gap = noisy[SR:SR + SR // 2]
    assert gap.any() and 20 * np.log10(np.sqrt(np.mean(gap ** 2))) == pytest.approx(-60, abs=1)


def test_list_of_files_in_order(tmp_path: Path) -> None:
    a, b = tmp_path / "a.wav", tmp_path / "b.flac"
    sf.write(a, np.full(800, 0.1, np.float32), SR)
    sf.write(b, np.full(800, -0.1, np.float32), SR, subtype="PCM_24")
    out = _collect(FileSource([b, a], SR, speed=0, gap_s=0.0))["b"]
    assert out.size == 1600 and out[0] < 0 < out[-1]


def test_loop_until_stopped(tmp_path: Path) -> None:
    path = tmp_path / "x.wav"
    sf.write(path, np.full(1600, 0.1, np.float32), SR)
    src = FileSource([path], SR, speed=0, loop=True, gap_s=0.0).open()
    stop, total = threading.Event(), [0]

    def emit(c: sources.Chunk) -> None:
        total[0] += c.samples.size
        if total[0] >= 10 * 1600:
            stop.set()

    src.run(emit, stop)
    assert total[0] >= 10 * 1600  # 1600 samples replayed at least ten times


class _FakeClock:
    """monotonic() and an Event whose wait() advances the clock, to test pacing exactly."""

    def __init__(self) -> None:
        self.now = 100.0
        self.waits: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def wait(self, delay: float) -> bool:
        self.waits.append(delay)
        self.now += delay
        return False

    def is_set(self) -> bool:
        return False


@pytest.mark.parametrize("speed", [1.0, 4.0])
def test_pacing_follows_one_clock_without_drift(monkeypatch: pytest.MonkeyPatch,
                                                speed: float) -> None:
    clock = _FakeClock()
    monkeypatch.setattr(sources.time, "monotonic", clock.monotonic)
    pacer = _Pacer(SR, speed, clock)  # type: ignore[arg-type]
    for k in range(1, 101):
        clock.now += 0.003  # work done between chunks is absorbed, not added
        assert pacer.wait_until(k * 800)
    # the clock starts at the first chunk (100.003); 3 ms of work per chunk adds nothing
    assert clock.now == pytest.approx(100.003 + 100 * 800 / SR / speed)
    assert len(clock.waits) == 100


def test_speed_zero_never_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = _FakeClock()
    monkeypatch.setattr(sources.time, "monotonic", clock.monotonic)
    pacer = _Pacer(SR, 0.0, clock)  # type: ignore[arg-type]
    assert all(pacer.wait_until(k * SR) for k in range(1, 50)) and clock.waits == []


def _bad_files(tmp_path: Path) -> dict[str, Path]:
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, np.float32), SR)
    text = tmp_path / "notes.wav"
    text.write_text("hello, I am not audio\n" * 20)
    corrupt = tmp_path / "corrupt.flac"
    sf.write(corrupt, np.zeros(SR, np.float32), SR)
    corrupt.write_bytes(b"fLaC" + bytes(range(256)) * 8)
    return {"empty": empty, "not audio": text, "corrupt": corrupt}


def test_bad_files_fail_fast_with_their_name(tmp_path: Path) -> None:
    for why, path in _bad_files(tmp_path).items():
        with pytest.raises(SourceError) as err:
            FileSource([path], SR).open()
        assert path.name in str(err.value), why
        if why == "empty":
            assert "empty" in str(err.value)
    with pytest.raises(SourceError, match="no such file"):
        FileSource([tmp_path / "missing.wav"], SR).open()
    (tmp_path / "sub").mkdir()
    with pytest.raises(SourceError, match="no audio files"):
        FileSource([tmp_path / "sub"], SR).open()


def test_max_channels_and_argument_checks(tmp_path: Path) -> None:
    path = tmp_path / "six.wav"
    sf.write(path, _sine(440, SR, 0.2, 6), SR)
    with pytest.raises(SourceError, match="6 channels"):
        FileSource([path], SR, max_channels=2).open()
    with pytest.raises(SourceError, match="speed"):
        FileSource([path], SR, speed=-1).open()
    with pytest.raises(SourceError, match="gap"):
        FileSource([path], SR, gap="pink").open()


def test_tess_files(tess_dir: Path) -> None:
    files = sorted((tess_dir / "OAF_angry").glob("*.flac"))[:2]
    src = FileSource(files, SR, speed=0, gap_s=0.25)
    out = _collect(src)[files[0].stem]
    frames = sum(sf.info(str(f)).frames * SR / sf.info(str(f)).samplerate for f in files)
    assert abs(out.size - (frames + 0.25 * SR)) < 64
    assert np.abs(out).max() > 0.01


class _Dribble(io.RawIOBase):
    """A pipe that hands out a few odd-sized pieces at a time (partial frames included)."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def read1(self, n: int = -1) -> bytes:
        k = min(n, 1 + (self.pos * 7919) % 333)
        out = self.data[self.pos:self.pos + k]
        self.pos += len(out)
        return out


@pytest.mark.parametrize("fmt", ["s16le", "f32le"])
def test_stdin_pcm(fmt: str) -> None:
    stereo = np.stack([_sine(500, 8000, 1.0), _sine(500, 8000, 1.0) * 0], axis=1)
    raw = ((stereo * 32767).astype("<i2") if fmt == "s16le" else stereo.astype("<f4")).tobytes()
    src = StdinSource(rate=8000, sample_rate=SR, fmt=fmt, channels=2, name="pipe",
                      stream=_Dribble(raw))  # type: ignore[arg-type]
    out = _collect(src)["pipe"]
    assert abs(out.size - SR) <= 16 and abs(_peak_hz(out) - 500) < 5
    assert np.abs(out[2000:-2000]).max() == pytest.approx(0.25, abs=0.02)  # mixdown
    split = StdinSource(rate=8000, sample_rate=SR, fmt=fmt, channels=2, name="pipe",
                        split_channels=True, stream=io.BytesIO(raw))
    got = _collect(split)
    assert list(got) == ["pipe:ch0", "pipe:ch1"] and not got["pipe:ch1"].any()


def test_stdin_bad_format() -> None:
    with pytest.raises(SourceError, match="format"):
        StdinSource(rate=8000, sample_rate=SR, fmt="mp3", stream=io.BytesIO()).open()


class _Failing(sources.Source):
    """Delivers one chunk, then fails the way an unplugged device does."""

    kind, name, sample_rate = "file", "bad", SR

    @property
    def stream_ids(self) -> list[str]:
        return ["bad"]

    def run(self, emit: sources.Emit, stop: threading.Event) -> None:
        emit(sources.Chunk("bad", np.zeros(160, np.float32), 0.0, 0.0))
        raise SourceError("bad: device unplugged")


@pytest.mark.timeout(30)
def test_failing_source_ends_only_its_stream(tmp_path: Path) -> None:
    good = tmp_path / "good.wav"
    sf.write(good, np.full(SR, 0.1, np.float32), SR)

    async def drain(src: sources.Source) -> tuple[int, str | None]:
        n = 0
        try:
            async for chunk in iter_chunks(src.open(), maxsize=4):
                n += chunk.samples.size
        except SourceError as err:
            return n, str(err)
        return n, None

    async def main() -> list[tuple[int, str | None]]:
        return await asyncio.gather(drain(_Failing()), drain(FileSource([good], SR, speed=0)))

    (bad_n, bad_err), (good_n, good_err) = asyncio.run(main())
    assert bad_n == 160 and bad_err == "bad: device unplugged"
    assert good_n == SR and good_err is None


@pytest.mark.timeout(30)
def test_iter_chunks_stops_the_thread(tmp_path: Path) -> None:
    path = tmp_path / "x.wav"
    sf.write(path, np.full(1600, 0.1, np.float32), SR)
    src = FileSource([path], SR, speed=0, loop=True).open()
    stop = threading.Event()

    async def main() -> int:
        n = 0
        async for _ in iter_chunks(src, stop=stop, maxsize=2):
            n += 1
            if n == 20:
                break
        return n

    assert asyncio.run(main()) == 20
    assert stop.wait(5)  # closing the iterator set stop, so the replay thread ends


class _FakeSoundDevice:
    """Just enough of ``sounddevice`` for MicSource: one input device whose stream calls back
    with the given blocks from a thread, then finishes."""

    def __init__(self, blocks: list[np.ndarray], rate: int = 16000) -> None:
        self.blocks, self.rate = blocks, rate

    def query_devices(self, device: object, kind: str) -> dict:
        return {"name": "fake mic", "default_samplerate": self.rate, "index": 0}

    def InputStream(self, callback: object, finished_callback: object, **kw: object) -> object:  # noqa: N802
        fake = self

        class _Stream:
            def start(self) -> None:
                def play() -> None:
                    for b in fake.blocks:
                        callback(b.reshape(-1, 1), b.size, None, None)
                        time.sleep(0.005)
                threading.Thread(target=play, daemon=True).start()

            def close(self) -> None:
                pass

        return _Stream()


def test_mic_repairs_non_finite_samples(monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = [np.full(320, 0.1, np.float32) for _ in range(20)]
    blocks[5][7] = np.nan
    blocks[9][0:3] = [np.inf, -np.inf, 4.0]
    monkeypatch.setattr(sources, "_sounddevice", lambda: _FakeSoundDevice(blocks))
    mic = sources.MicSource(16000).open()
    got: list[np.ndarray] = []
    stop = threading.Event()

    def emit(chunk: sources.Chunk) -> None:
        got.append(chunk.samples)
        if sum(c.size for c in got) >= 320 * 19:
            stop.set()

    worker = threading.Thread(target=mic.run, args=(emit, stop), daemon=True)
    worker.start()
    worker.join(10)
    audio = np.concatenate(got)
    assert np.isfinite(audio).all() and np.abs(audio).max() <= 1.0
    assert mic.stats() == {"overflows": 0, "dropped_frames": 0, "nonfinite_samples": 3,
                           "clipped_samples": 1}
