"""Audio sources: file replay, raw PCM on stdin, and the microphone.

Every source delivers :class:`Chunk` s — float32 mono audio at the model's rate, tagged with a
stream id and the moment its last sample entered the daemon. A source runs in its own thread
(``run(emit, stop)`` blocks until the audio ends, ``stop`` is set, or it fails with
:class:`SourceError`), so pacing and device callbacks never depend on how busy the event loop
is, and one failing source ends only its own streams. :func:`iter_chunks` adapts a source to an
async iterator for the daemon.

Files are checked with ``soundfile.info`` in ``open()`` so corrupt, empty and non-audio files fail
fast with the file's name. Resampling is soxr (``soxr.ResampleStream`` block by block), never
torchaudio (see the design note). ``sounddevice`` is imported only when a microphone is opened.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import os
import select
import stat
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import soundfile as sf
import soxr

AUDIO_SUFFIXES = frozenset(
    {".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".aif", ".aiff", ".aifc", ".au", ".caf",
     ".w64", ".rf64", ".mp3"}
)
log = logging.getLogger("streamer.sources")

PCM_FORMATS = {"s16le": ("<i2", 32768.0), "f32le": ("<f4", 1.0)}


class SourceError(Exception):
    """A source that cannot deliver audio; the message names the file/device and the cause."""


@dataclass(frozen=True)
class Chunk:
    """Consecutive float32 mono samples of one stream at the model's rate."""

    stream_id: str
    samples: np.ndarray
    wall_time: float  # time.time() when the last sample entered the daemon
    arrived: float  # time.perf_counter() at the same moment


Emit = Callable[[Chunk], None]


class Source:
    """Base class: ``open()`` validates (fast), ``run(emit, stop)`` streams, ``stats()`` reports."""

    kind = "source"
    name: str
    sample_rate: int

    @property
    def stream_ids(self) -> list[str]:
        raise NotImplementedError

    def open(self) -> Source:
        return self

    def run(self, emit: Emit, stop: threading.Event) -> None:
        raise NotImplementedError

    def describe(self) -> list[dict[str, Any]]:
        """One dict per stream, for the ``hello``/status messages."""
        return [{"id": s, "kind": self.kind} for s in self.stream_ids]

    def stats(self) -> dict[str, Any]:
        return {}


class _Pacer:
    """Real-time pacing against one monotonic clock from the stream's start, so it never drifts
    (a sleep per chunk would accumulate error). speed 0: no waiting."""

    def __init__(self, sample_rate: int, speed: float, stop: threading.Event) -> None:
        self.sample_rate = sample_rate
        self.speed = speed
        self.stop = stop
        self.t0: float | None = None

    def wait_until(self, n_samples: int) -> bool:
        """Wait until ``n_samples`` of stream time are due; False if stopped meanwhile."""
        if self.t0 is None:
            self.t0 = time.monotonic()
        if self.speed <= 0:
            return not self.stop.is_set()
        due = self.t0 + n_samples / self.sample_rate / self.speed
        delay = due - time.monotonic()
        if delay > 0:
            return not self.stop.wait(delay)
        return not self.stop.is_set()


def show_path(path: str | Path) -> str:
    """A path as text that always encodes to UTF-8 (messages, logs, the wire).

    A file name that is not UTF-8 reaches Python as lone surrogates (``os.fsdecode``'s
    surrogateescape); put in a message unchanged, it cannot be encoded and the reply is lost.
    Its undecodable bytes are shown as ``\\xNN`` instead.
    """
    text = os.fspath(path)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that no file name can hold: escape it
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


def _expand(paths: Iterable[str | Path]) -> list[tuple[Path, bool]]:
    """(file, found by expanding a directory) for each file to replay."""
    out: list[tuple[Path, bool]] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file()
                           and f.suffix.lower() in AUDIO_SUFFIXES)
            if not found:
                raise SourceError(f"{show_path(p)}: directory holds no audio files")
            out.extend((f, True) for f in found)
        elif p.exists():
            out.append((p, False))
        else:
            raise SourceError(f"{show_path(p)}: no such file or directory")
    if not out:
        raise SourceError("no files to replay")
    return out


def expand_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given; directories become their audio files (by suffix), sorted, recursively."""
    return [f for f, _ in _expand(paths)]


def open_regular(path: str | Path) -> int:
    """A read-only descriptor of a regular file, or SourceError; never blocks.

    Opening a FIFO blocks until a writer appears, and a device may block or have side effects,
    so only regular files are opened: ``stat`` refuses anything else before any open, and the
    open itself is ``O_NONBLOCK`` + ``fstat``, so a path swapped for a FIFO in between is caught
    too. The descriptor is blocking again when returned.
    """
    try:
        st = os.stat(path)
    except OSError as err:
        raise SourceError(f"{show_path(path)}: cannot open ({err.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        raise SourceError(f"{show_path(path)}: not a regular file (FIFOs, devices and "
                          "sockets are refused)")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as err:
        raise SourceError(f"{show_path(path)}: cannot open ({err.strerror})") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise SourceError(f"{show_path(path)}: not a regular file (it changed while being "
                              "opened)")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextlib.contextmanager
def open_audio(path: str | Path) -> Iterator[sf.SoundFile]:
    """``soundfile.SoundFile`` on :func:`open_regular`'s descriptor (closed on exit)."""
    fd = open_regular(path)
    try:
        with sf.SoundFile(fd, closefd=False) as f:
            yield f
    finally:
        os.close(fd)


@dataclass(frozen=True)
class AudioHeader:
    samplerate: int
    channels: int
    frames: int


def _cause(err: BaseException) -> str:
    """libsndfile's own words, without the "Error opening <file>" prefix soundfile adds."""
    return str(getattr(err, "error_string", None) or err)


def check_audio_file(path: Path) -> AudioHeader:
    """The header of a regular audio file, with a clear error for special, non-audio, corrupt
    or empty files."""
    try:
        with open_audio(path) as f:
            info = AudioHeader(f.samplerate, f.channels, f.frames)
    except SourceError:
        raise
    except Exception as err:  # soundfile raises LibsndfileError/RuntimeError/TypeError
        raise SourceError(f"{show_path(path)}: not a readable audio file ({_cause(err)})") from err
    if info.frames <= 0:
        raise SourceError(f"{show_path(path)}: empty audio file (0 frames)")
    if info.samplerate <= 0 or info.channels <= 0:
        raise SourceError(f"{show_path(path)}: invalid header ({info.samplerate} Hz, "
                          f"{info.channels} ch)")
    return info


class SampleRepair:
    """Float audio as it must reach the model: non-finite samples (NaN, +-Inf) become 0 and
    samples beyond full scale are clipped to [-1, 1]; both are counted for ``stats()``.

    One NaN in a window makes its prediction NaN (no prediction at all), and the source is the
    place to repair it: before resampling, which would smear it over the filter's length. Audio
    within full scale (all integer formats) passes on the fast path, untouched.
    """

    def __init__(self) -> None:
        self.nonfinite = 0
        self.clipped = 0

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if x.size == 0 or float(np.max(np.abs(x))) <= 1.0:  # NaN compares False: slow path
            return x
        bad = ~np.isfinite(x)
        n_bad = int(np.count_nonzero(bad))
        if n_bad:
            x = np.where(bad, np.float32(0), x)
            self.nonfinite += n_bad
        over = np.abs(x) > 1.0
        n_over = int(np.count_nonzero(over))
        if n_over:
            x = np.clip(x, -1.0, 1.0)
            self.clipped += n_over
        return x.astype(np.float32, copy=False)

    def stats(self) -> dict[str, int]:
        out = {}
        if self.nonfinite:
            out["nonfinite_samples"] = self.nonfinite
        if self.clipped:
            out["clipped_samples"] = self.clipped
        return out


class _Converter:
    """Mixdown or keep channels, then stream-resample to the model rate (soxr)."""

    def __init__(self, in_rate: int, out_rate: int, channels: int, split: bool) -> None:
        self.split = split
        self.out_channels = channels if split else 1
        self.rs = (soxr.ResampleStream(in_rate, out_rate, self.out_channels, dtype="float32")
                   if in_rate != out_rate else None)

    def __call__(self, block: np.ndarray, last: bool = False) -> np.ndarray:
        """``block`` is [frames, channels] float32; returns [frames', out_channels]."""
        x = block if self.split else block.mean(axis=1, keepdims=True, dtype=np.float32)
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self.rs is None:
            return x
        return self.rs.resample_chunk(x, last=last).reshape(-1, self.out_channels)


@dataclass
class FileSource(Source):
    """Replay files (or directories, or a list of both) as one stream, or one per channel.

    ``speed`` 1 real time, N times faster, 0 as fast as possible. Files follow each other with
    ``gap_s`` of silence (``gap="silence"``) or a low noise floor (``gap="noise"``, ``noise_db``
    dBFS RMS) so replayed utterances don't run into each other. ``loop`` repeats forever.
    """

    paths: Sequence[str | Path]
    sample_rate: int
    name: str | None = None
    speed: float = 1.0
    loop: bool = False
    split_channels: bool = False
    gap_s: float = 0.5
    gap: str = "silence"
    noise_db: float = -60.0
    block_s: float | None = None  # default 0.05 s paced, 1 s at speed 0
    max_channels: int | None = None
    label: str | None = None  # the source as clients see it (default: the first path)
    # Unreadable files are skipped (warned, counted) rather than failing the source: None for
    # those found by expanding a directory, True for any (the daemon's expanded replay dirs).
    skip_unreadable: bool | None = None
    kind: str = field(default="file", init=False)
    files: list[Path] = field(default_factory=list, init=False)
    skipped: list[str] = field(default_factory=list, init=False)  # why each was left out
    repair: SampleRepair = field(default_factory=SampleRepair, init=False, repr=False)
    channels: int = field(default=1, init=False)

    def open(self) -> FileSource:
        if self.speed < 0:
            raise SourceError(f"speed must be >= 0, got {self.speed}")
        if self.gap not in ("silence", "noise"):
            raise SourceError(f"gap must be 'silence' or 'noise', got {self.gap!r}")
        self.files, infos, self.skipped = [], [], []
        for f, in_dir in _expand(self.paths):
            try:
                infos.append(check_audio_file(f))
            except SourceError as err:
                if not (in_dir or self.skip_unreadable):  # a file named by itself must be audio
                    raise
                # One bad file in a folder of thousands should not refuse the rest.
                log.warning("skipped: %s", err)
                self.skipped.append(str(err))
                continue
            self.files.append(f)
        if not self.files:
            raise SourceError(f"no readable audio files ({self.skipped[0]})")
        chans = {i.channels for i in infos}
        if self.max_channels and max(chans) > self.max_channels:
            bad = next(f for f, i in zip(self.files, infos, strict=True)
                       if i.channels > self.max_channels)
            raise SourceError(f"{show_path(bad)}: {max(chans)} channels, more than "
                              f"{self.max_channels}")
        if self.split_channels and len(chans) > 1:
            raise SourceError(f"--split-channels needs one channel count; files have {chans}")
        self.channels = infos[0].channels if self.split_channels else 1
        if self.name is None:
            first = Path(self.paths[0])
            self.name = first.stem if first.is_file() else first.name or "replay"
        return self

    @property
    def stream_ids(self) -> list[str]:
        if self.split_channels:
            return [f"{self.name}:ch{i}" for i in range(self.channels)]
        return [str(self.name)]

    def describe(self) -> list[dict[str, Any]]:
        src = self.label if self.label is not None else show_path(self.paths[0]) \
            if len(self.paths) == 1 else f"{len(self.files)} files"
        return [{"id": s, "kind": "file", "source": src, "channel": i if self.split_channels
                 else None, "speed": self.speed, "loop": self.loop}
                for i, s in enumerate(self.stream_ids)]

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = self.repair.stats()
        if self.skipped:
            out["skipped_files"] = len(self.skipped)
        return out

    def run(self, emit: Emit, stop: threading.Event) -> None:
        if not self.files:
            self.open()
        ids = self.stream_ids
        pacer = _Pacer(self.sample_rate, self.speed, stop)
        block_s = self.block_s or (0.05 if self.speed > 0 else 1.0)
        emitted = 0
        rng = np.random.default_rng(0)

        def send(out: np.ndarray) -> bool:
            nonlocal emitted
            if out.shape[0] == 0:
                return not stop.is_set()
            emitted += out.shape[0]
            if not pacer.wait_until(emitted):
                return False
            wall, mono = time.time(), time.perf_counter()
            for i, sid in enumerate(ids):
                emit(Chunk(sid, np.ascontiguousarray(out[:, i]), wall, mono))
            return True

        def send_gap() -> bool:
            n_gap = int(round(self.gap_s * self.sample_rate))
            step = max(1, int(block_s * self.sample_rate))
            for lo in range(0, n_gap, step):
                n = min(step, n_gap - lo)
                if self.gap == "noise":
                    amp = 10 ** (self.noise_db / 20)
                    g = (rng.standard_normal((n, len(ids))) * amp).astype(np.float32)
                else:
                    g = np.zeros((n, len(ids)), dtype=np.float32)
                if not send(g):
                    return False
            return True

        first = True
        while True:
            for path in self.files:
                if not first and self.gap_s > 0 and not send_gap():
                    return
                first = False
                if not self._play(path, send, block_s):
                    return
            if not self.loop:
                return

    def _play(self, path: Path, send: Callable[[np.ndarray], bool], block_s: float) -> bool:
        try:
            with open_audio(path) as f:
                conv = _Converter(f.samplerate, self.sample_rate, f.channels, self.split_channels)
                block = max(1, int(math.ceil(block_s * f.samplerate)))
                while True:
                    data = self.repair(f.read(block, dtype="float32", always_2d=True))
                    last = data.shape[0] < block
                    if not send(conv(data, last=last)):
                        return False
                    if last:
                        return True
        except SourceError:
            raise
        except Exception as err:  # libsndfile errors mid-file
            raise SourceError(f"{show_path(path)}: read failed ({_cause(err)})") from err


@dataclass
class StdinSource(Source):
    """Raw interleaved PCM from a pipe (``-``): ``fmt`` s16le or f32le, ``rate``, ``channels``.

    The writer paces the stream (ffmpeg -re, a telephony recorder); chunks are released as they
    arrive (``read1``), so latency is the pipe's, not a block size's.
    """

    rate: int
    sample_rate: int
    fmt: str = "s16le"
    channels: int = 1
    name: str = "stdin"
    split_channels: bool = False
    stream: BinaryIO | None = None
    block_s: float = 0.05
    kind: str = field(default="stdin", init=False)
    repair: SampleRepair = field(default_factory=SampleRepair, init=False, repr=False)

    def stats(self) -> dict[str, Any]:
        return self.repair.stats()

    def open(self) -> StdinSource:
        if self.fmt not in PCM_FORMATS:
            raise SourceError(f"stdin: unknown --format {self.fmt!r} (use {list(PCM_FORMATS)})")
        if self.rate <= 0 or self.channels <= 0:
            raise SourceError(f"stdin: --rate and --channels must be positive "
                              f"({self.rate}, {self.channels})")
        if self.stream is None:
            self.stream = sys.stdin.buffer
        return self

    @property
    def stream_ids(self) -> list[str]:
        if self.split_channels and self.channels > 1:
            return [f"{self.name}:ch{i}" for i in range(self.channels)]
        return [self.name]

    def run(self, emit: Emit, stop: threading.Event) -> None:
        if self.stream is None:
            self.open()
        assert self.stream is not None
        dtype, scale = PCM_FORMATS[self.fmt]
        frame_bytes = np.dtype(dtype).itemsize * self.channels
        split = self.split_channels and self.channels > 1
        conv = _Converter(self.rate, self.sample_rate, self.channels, split)
        ids = self.stream_ids
        want = max(1, int(self.block_s * self.rate)) * frame_bytes
        read = self._reader()
        pending = b""
        while not stop.is_set():
            try:
                data = read(want)
            except Exception as err:
                raise SourceError(f"stdin: read failed ({err})") from err
            if data is None:  # nothing yet; look at ``stop`` again
                continue
            last = not data
            pending += data
            n = len(pending) // frame_bytes * frame_bytes
            raw, pending = pending[:n], pending[n:]
            x = self.repair(np.frombuffer(raw, dtype=dtype).astype(np.float32) / scale)
            out = conv(x.reshape(-1, self.channels), last=last)
            if out.shape[0]:
                wall, mono = time.time(), time.perf_counter()
                for i, sid in enumerate(ids):
                    emit(Chunk(sid, np.ascontiguousarray(out[:, i]), wall, mono))
            if last:
                return


    def _reader(self) -> Callable[[int], bytes | None]:
        """A read that never blocks for long: with a real descriptor, wait for data in slices
        of 0.2 s (``select``) and read what is there (``os.read``); None means nothing yet.

        A thread blocked in ``sys.stdin.buffer.read`` holds the buffer's lock, and interpreter
        exit then aborts ("could not acquire lock ... at interpreter shutdown"): a silent pipe
        must not turn SIGTERM into a crash. Streams without a descriptor (tests' BytesIO) are
        read as before.
        """
        assert self.stream is not None
        try:
            fd = self.stream.fileno()
        except (AttributeError, OSError, ValueError):
            return getattr(self.stream, "read1", self.stream.read)

        def read(n: int) -> bytes | None:
            if not select.select([fd], [], [], 0.2)[0]:
                return None
            return os.read(fd, n)

        return read


def _sounddevice() -> Any:
    """Import sounddevice only when a microphone is used (it needs PortAudio)."""
    try:
        import sounddevice as sd
    except (ImportError, OSError) as err:
        raise SourceError(f"microphone unavailable: sounddevice/PortAudio cannot be loaded "
                          f"({err}); install PortAudio (Debian: libportaudio2)") from err
    return sd


def list_devices() -> list[dict[str, Any]]:
    """Input devices PortAudio sees (for ``emotion-monitor devices``)."""
    sd = _sounddevice()
    try:
        devices = sd.query_devices()
        default_in = sd.default.device[0]
        apis = sd.query_hostapis()
    except Exception as err:
        raise SourceError(f"cannot list audio devices ({err})") from err
    return [
        {"index": i, "name": d["name"], "hostapi": apis[d["hostapi"]]["name"],
         "max_input_channels": d["max_input_channels"],
         "default_samplerate": d["default_samplerate"], "default": i == default_in}
        for i, d in enumerate(devices) if d["max_input_channels"] > 0
    ]


def _device_arg(device: int | str | None) -> int | str | None:
    if isinstance(device, str) and device.strip().lstrip("-").isdigit():
        return int(device)
    return device


def query_input(sd: Any, device: int | str | None) -> tuple[int | str | None, dict[str, Any]]:
    """(the device as PortAudio takes it, its info) for an index or name given by a user;
    SourceError when there is no such input device (``stream --mic``, ``push --mic``)."""
    dev = _device_arg(device)
    try:
        return dev, sd.query_devices(dev, "input")
    except Exception as err:
        raise SourceError(f"microphone {device!r}: no such input device ({err})") from err


@dataclass
class MicSource(Source):
    """A microphone at its native rate: the PortAudio callback only copies blocks into a ring
    buffer (``ring_s`` seconds; when full the oldest audio is dropped and counted), and the
    source thread resamples them with ``soxr.ResampleStream`` to the model's rate."""

    sample_rate: int
    device: int | str | None = None
    name: str = "mic"
    blocksize_s: float = 0.02
    ring_s: float = 5.0
    kind: str = field(default="mic", init=False)
    native_rate: int = field(default=0, init=False)
    device_name: str = field(default="", init=False)
    overflows: int = field(default=0, init=False)  # PortAudio input overflows
    dropped_frames: int = field(default=0, init=False)  # ring-buffer overruns (frames)
    repair: SampleRepair = field(default_factory=SampleRepair, init=False, repr=False)
    _sd: Any = field(default=None, init=False, repr=False)

    def open(self) -> MicSource:
        self._sd = _sounddevice()
        dev, info = query_input(self._sd, self.device)
        self.native_rate = int(round(info["default_samplerate"]))
        self.device_name = str(info["name"])
        self.device = dev if dev is not None else int(info.get("index", 0))
        return self

    @property
    def stream_ids(self) -> list[str]:
        return [self.name]

    def describe(self) -> list[dict[str, Any]]:
        return [{"id": self.name, "kind": "mic", "source": self.device_name,
                 "native_rate": self.native_rate}]

    def stats(self) -> dict[str, Any]:
        return {"overflows": self.overflows, "dropped_frames": self.dropped_frames,
                **self.repair.stats()}

    def run(self, emit: Emit, stop: threading.Event) -> None:
        if self._sd is None:
            self.open()
        sd = self._sd
        ring: collections.deque[tuple[np.ndarray, float, float]] = collections.deque()
        cond = threading.Condition()
        capacity = int(self.ring_s * self.native_rate)
        held = 0
        failure: list[str] = []

        def callback(indata: np.ndarray, frames: int, _time: Any, status: Any) -> None:
            nonlocal held
            if status and status.input_overflow:
                self.overflows += 1
            with cond:
                ring.append((indata[:, 0].copy(), time.time(), time.perf_counter()))
                held += frames
                while held > capacity and len(ring) > 1:
                    old = ring.popleft()[0]
                    held -= old.size
                    self.dropped_frames += old.size
                cond.notify()

        def finished() -> None:
            if not stop.is_set():
                failure.append("input stream stopped (device unplugged?)")
            with cond:
                cond.notify()

        rs = soxr.ResampleStream(self.native_rate, self.sample_rate, 1, dtype="float32")
        try:
            stream = sd.InputStream(
                device=self.device, samplerate=self.native_rate, channels=1, dtype="float32",
                blocksize=max(1, int(self.blocksize_s * self.native_rate)), callback=callback,
                finished_callback=finished,
            )
            stream.start()
        except Exception as err:
            raise SourceError(f"microphone {self.device_name!r}: cannot open ({err})") from err
        try:
            while not stop.is_set():
                with cond:
                    while not ring and not stop.is_set() and not failure:
                        cond.wait(0.2)
                    items = list(ring)
                    ring.clear()
                    held = 0
                if failure:
                    raise SourceError(f"microphone {self.device_name!r}: {failure[0]}")
                for block, wall, mono in items:
                    # a driver's float stream can carry NaN/Inf too: repaired before the
                    # resampler would smear it over the filter's length
                    out = rs.resample_chunk(self.repair(block))
                    if out.size:
                        emit(Chunk(self.name, out, wall, mono))
        finally:
            stop.set()
            try:
                stream.close()
            except Exception:  # closing an unplugged device may fail; nothing to save
                pass


_END = object()


def source_chunks(source: Any, stop: threading.Event) -> AsyncIterator[Chunk]:
    """The chunks of any source, in the event loop: a pushed source (``chunks(stop)``, fed
    from the loop itself, e.g. a call on the ingest websocket) as it is, no thread; any other
    through :func:`iter_chunks` (its ``run`` in a thread)."""
    chunks = getattr(source, "chunks", None)
    return chunks(stop) if chunks is not None else iter_chunks(source, stop)


async def iter_chunks(
    source: Source, stop: threading.Event | None = None, maxsize: int = 256
) -> AsyncIterator[Chunk]:
    """Run ``source`` in a daemon thread and yield its chunks in the event loop.

    The queue is bounded: a file replayed at speed 0 waits for the consumer (backpressure); a
    microphone's ring buffer absorbs short stalls. A :class:`SourceError` from the source is
    re-raised here after the chunks it produced. Setting ``stop`` (or closing the iterator)
    ends the thread. A daemon thread, not the default executor, because a blocked stdin read
    must not hold up interpreter exit.
    """
    loop = asyncio.get_running_loop()
    stop = stop or threading.Event()
    queue: asyncio.Queue[Any] = asyncio.Queue(maxsize)
    slots = threading.Semaphore(maxsize)

    def put(item: Any) -> None:
        while not slots.acquire(timeout=0.2):
            if stop.is_set():
                raise _Stopped
        loop.call_soon_threadsafe(queue.put_nowait, item)

    def worker() -> None:
        err: BaseException | None = None
        try:
            source.run(put, stop)
        except _Stopped:
            pass
        except SourceError as e:
            err = e
        except Exception as e:  # anything else still ends only this source, with its cause
            err = SourceError(f"{source.stream_ids}: source failed ({type(e).__name__}: {e})")
        try:
            loop.call_soon_threadsafe(queue.put_nowait, (_END, err))
        except RuntimeError:  # the loop is closed: nobody is listening any more
            pass

    thread = threading.Thread(target=worker, name=f"source-{source.stream_ids}", daemon=True)
    thread.start()
    try:
        while True:
            item = await queue.get()
            if isinstance(item, tuple) and item and item[0] is _END:
                if item[1] is not None:
                    raise item[1]
                return
            slots.release()
            yield item
    finally:
        stop.set()


class _Stopped(Exception):
    pass
