"""On-disk feature cache: extract a corpus's features once, load them on every later run.

An entry is one ``.npy`` per audio file, named by a hash of the file's identity (resolved
path, size, modification time in ns); entries live in a folder named by the front-end, its
settings, the fixed window (if any) and ``CACHE_VERSION``. So editing or replacing a file
re-extracts that file only, changing any setting starts a new folder, and a run that is killed
keeps what it had finished (entries are written atomically). Unreadable files are collected in
``FeatureSet.bad_files`` and logged, never fatal, and never cached (they are retried).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from train.audio import SAMPLE_RATE, AudioError, load_audio
from train.corpus import Utterance
from train.features import (
    DeltaLogMel,
    DeltaLogMelConfig,
    LogMel,
    LogMelConfig,
    UtteranceVector,
    UtteranceVectorConfig,
)

log = logging.getLogger(__name__)

# Bump when a front-end's output changes for the same settings (a bug fix), so old entries
# are not reused.
CACHE_VERSION = "1"
CACHE_ENV = "EMOTION_MONITOR_CACHE"

# name -> (module class, config class). The names are the ones the CLI and the cache use.
FRONTENDS: dict[str, tuple[type[torch.nn.Module], type]] = {
    "logmel": (LogMel, LogMelConfig),
    "utterance-vector": (UtteranceVector, UtteranceVectorConfig),
    "delta-logmel": (DeltaLogMel, DeltaLogMelConfig),
}


def default_cache_dir() -> Path:
    """``$EMOTION_MONITOR_CACHE/features``, else ``.cache/features`` (git-ignored)."""
    return Path(os.environ.get(CACHE_ENV, ".cache")) / "features"


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; anything else as ``torch.device``."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def make_frontend(frontend: str | torch.nn.Module) -> tuple[str, torch.nn.Module]:
    """A front-end from its name (default settings) or an eager module with a ``config``."""
    if isinstance(frontend, str):
        if frontend not in FRONTENDS:
            raise ValueError(f"unknown front-end {frontend!r}; choose from {sorted(FRONTENDS)}")
        module_cls, config_cls = FRONTENDS[frontend]
        return frontend, module_cls(config_cls())
    for name, (module_cls, _) in FRONTENDS.items():
        if type(frontend) is module_cls:
            return name, frontend
    raise TypeError(
        f"cannot cache features of {type(frontend).__name__}: pass a name from "
        f"{sorted(FRONTENDS)} or an eager LogMel/UtteranceVector/DeltaLogMel (its config keys "
        "the cache; a scripted module has lost it)"
    )


def _settings(name: str, module: torch.nn.Module, window_samples: int | None) -> dict:
    config = module.config
    assert is_dataclass(config)
    return {
        "frontend": name,
        "config": asdict(config),
        "window_samples": window_samples,
        "version": CACHE_VERSION,
    }


def _digest(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def file_key(path: str | Path) -> str:
    """Hash of the file's identity: resolved path and content. Raises ``OSError``.

    Content, not mtime: corpora copied afresh (a new checkout, a synced share, this project's
    machines at every session) keep their caches; the content hash is itself memoised on
    (path, size, mtime), so a run hashes each file once (~0.3 s for the 240 MB of the four
    shared corpora)."""
    resolved = Path(path).resolve()
    stat = resolved.stat()
    return _digest([str(resolved), stat.st_size,
                    _content_sha256(str(resolved), stat.st_size, stat.st_mtime_ns)])[:32]


@functools.lru_cache(maxsize=65536)
def _content_sha256(path: str, size: int, mtime_ns: int) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _save_atomic(path: Path, array: np.ndarray) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            np.save(handle, array)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _load_entry(path: Path) -> np.ndarray | None:
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, EOFError):  # a damaged entry: drop it and extract again
        log.warning("discarding damaged cache entry %s", path)
        path.unlink(missing_ok=True)
        return None


@dataclass
class FeatureSet:
    """Features of the readable utterances, in input order.

    ``features[i]`` belongs to ``utterances[kept[i]]``. Frame-level front-ends without a fixed
    window give clips of different lengths: they are zero-padded on the last axis to the
    longest, and ``frames[i]`` is row ``i``'s real frame count (``None`` for utterance vectors
    and fixed windows, where every row is full).
    """

    features: np.ndarray
    kept: np.ndarray
    frames: np.ndarray | None
    bad_files: dict[str, str]
    settings: dict
    extracted: int = 0  # files extracted by this call
    cached: int = 0  # files loaded from the cache by this call
    cache_dir: Path = field(default_factory=default_cache_dir)

    def summary(self) -> str:
        name = self.settings["frontend"]
        text = (
            f"{name}: {len(self.kept)} utterances {tuple(self.features.shape[1:])}, "
            f"{self.extracted} extracted, {self.cached} from cache"
        )
        if self.bad_files:
            text += f", {len(self.bad_files)} unreadable"
        return text


# On CPU a batch's complex STFT is the front-ends' largest tensor; once it passes ~8 MiB per
# call, throughput falls by up to half on the 2-core machines measured. Groups of 32 TESS clips,
# 2 threads, one interleaved run, whole group vs cut to this budget: ViT image 1,081 -> 1,658
# files/s, delta log-mel (3-s windows) 729 -> 1,297, utterance vector 482 -> 566. So CPU
# batches are cut into calls under this budget; CUDA takes the whole batch.
CPU_STFT_BYTES = 8 * 2**20


def rows_per_call(module: torch.nn.Module, n_samples: int, device: torch.device) -> int | None:
    """Clips of ``n_samples`` per forward call that keep a CPU call's STFT under budget
    (``None``: no limit, on CUDA or for a module without ``config.n_fft``/``hop_length``)."""
    config = getattr(module, "config", None)
    if device.type != "cpu" or not hasattr(config, "n_fft") or not hasattr(config, "hop_length"):
        return None
    stft_bytes = (config.n_fft // 2 + 1) * (1 + n_samples // config.hop_length) * 8
    return max(1, CPU_STFT_BYTES // stft_bytes)


def compute_features(
    module: torch.nn.Module,
    waves: Sequence[np.ndarray],
    device: torch.device,
    window_samples: int | None = None,
) -> list[np.ndarray]:
    """Features of a list of clips, batched where the result is exactly the single-clip one
    (fixed windows; the utterance vector and log-mel with lengths), in calls of
    ``rows_per_call`` clips."""
    tensors = [torch.from_numpy(w) for w in waves]
    with_lengths = isinstance(module, (UtteranceVector, LogMel))
    if window_samples is None and not with_lengths:
        # Delta log-mel at natural length: one clip at a time (padding would change the deltas
        # at a clip's end).
        return [module(t.unsqueeze(0).to(device))[0].cpu().numpy() for t in tensors]
    longest = max((len(t) for t in tensors), default=0)
    step = rows_per_call(module, window_samples or longest, device) or max(len(tensors), 1)
    # Natural lengths go shortest first, so each call pads its clips to similar lengths.
    order = list(range(len(tensors)))
    if window_samples is None:
        order.sort(key=lambda i: len(tensors[i]))
    out: list[np.ndarray] = [np.empty(0)] * len(tensors)
    for start in range(0, len(order), step):
        rows = order[start : start + step]
        part = [tensors[i] for i in rows]
        width = window_samples or max(len(t) for t in part)
        # One zero batch, each clip copied in (cropped to the window): what fix_length then
        # pad_sequence would give, without padding every clip first.
        batch = torch.zeros(len(part), width, dtype=torch.float32)
        for row, t in zip(batch, part, strict=True):
            row[: min(len(t), width)] = t[:width]
        batch = batch.to(device)
        if window_samples is not None:
            result = list(module(batch).cpu().numpy())
        else:
            lengths = torch.tensor([len(t) for t in part], device=device)
            result = list(module(batch, lengths).cpu().numpy())
            if isinstance(module, LogMel):  # each clip keeps its own frames, not the padding's
                result = [r[..., : module.config.frames(len(t))]
                          for r, t in zip(result, part, strict=True)]  # fmt: skip
        for i, array in zip(rows, result, strict=True):
            out[i] = array
    return out


def extract_features(
    utterances: Sequence[Utterance],
    frontend: str | torch.nn.Module = "utterance-vector",
    cache_dir: str | Path | None = None,
    *,
    device: str | torch.device = "cpu",
    batch_size: int = 32,
    window_samples: int | None = None,
    sample_rate: int = SAMPLE_RATE,
    progress: bool = True,
) -> FeatureSet:
    """Features of ``utterances`` from the cache, extracting (and caching) what is missing.

    ``frontend`` is a name from ``FRONTENDS`` or an eager front-end module (its ``config`` is
    part of the key). ``window_samples`` pads/crops every clip to a fixed window first (the
    spectrogram models); without it clips keep their length. Extraction runs on ``device``
    (``"auto"`` picks CUDA when present) in batches of ``batch_size``, with a progress bar.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if window_samples is not None and window_samples < 1:
        raise ValueError(f"window_samples must be >= 1, got {window_samples}")
    name, module = make_frontend(frontend)
    config_rate = getattr(module.config, "sample_rate", sample_rate)
    if config_rate != sample_rate:
        raise ValueError(f"front-end expects {config_rate} Hz, audio is read at {sample_rate} Hz")
    settings = _settings(name, module, window_samples)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    folder = root / f"{name}-{_digest(settings)[:16]}"
    folder.mkdir(parents=True, exist_ok=True)
    settings_file = folder / "settings.json"
    if not settings_file.exists():
        settings_file.write_text(json.dumps(settings, indent=2) + "\n")

    results: dict[int, np.ndarray] = {}
    bad_files: dict[str, str] = {}
    entries: dict[int, Path] = {}
    for i, utt in enumerate(utterances):
        try:
            entries[i] = folder / f"{file_key(utt.path)}.npy"
        except OSError as exc:
            bad_files[str(utt.path)] = f"cannot stat ({exc.strerror or exc})"
            continue
        cached = _load_entry(entries[i])
        if cached is not None:
            results[i] = cached
    n_cached = len(results)
    todo = [i for i in entries if i not in results]

    dev = resolve_device(device)
    module = module.to(dev).eval()
    with (
        torch.inference_mode(),
        tqdm(total=len(todo), desc=f"features {name}", unit="file", disable=not progress) as bar,
    ):
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            readable: list[int] = []
            waves: list[np.ndarray] = []
            for i in chunk:
                try:
                    waves.append(load_audio(utterances[i].path, sample_rate))
                    readable.append(i)
                except AudioError as exc:
                    bad_files[str(utterances[i].path)] = exc.cause
            if waves:
                for i, array in zip(
                    readable, compute_features(module, waves, dev, window_samples), strict=True
                ):
                    array = np.ascontiguousarray(array, dtype=np.float32)
                    _save_atomic(entries[i], array)
                    results[i] = array
            bar.update(len(chunk))

    if bad_files:
        first = next(iter(bad_files.items()))
        log.warning(
            "%d of %d files unreadable, skipped (first: %s: %s)",
            len(bad_files),
            len(utterances),
            *first,
        )
    kept = np.array(sorted(results), dtype=np.int64)
    features, frames = _assemble([results[i] for i in kept], window_samples)
    return FeatureSet(
        features=features,
        kept=kept,
        frames=frames,
        bad_files=bad_files,
        settings=settings,
        extracted=len(results) - n_cached,
        cached=n_cached,
        cache_dir=folder,
    )


def _assemble(
    arrays: list[np.ndarray], window_samples: int | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Stack; frame-level clips at natural length are zero-padded to the longest."""
    if not arrays:
        return np.zeros((0,), dtype=np.float32), None
    if arrays[0].ndim == 1 or window_samples is not None:
        return np.stack(arrays), None
    frames = np.array([a.shape[-1] for a in arrays], dtype=np.int64)
    out = np.zeros((len(arrays), *arrays[0].shape[:-1], int(frames.max())), dtype=np.float32)
    for row, array in enumerate(arrays):
        out[row, ..., : array.shape[-1]] = array
    return out, frames
