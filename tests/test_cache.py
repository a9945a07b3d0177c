"""The feature cache: a second run extracts nothing, changes re-extract exactly what changed,
unreadable files are reported without stopping the run."""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import train.cache as cache
from train.audio import load_audio
from train.cache import extract_features
from train.corpus import Utterance
from train.features import LogMel, LogMelConfig, UtteranceVector, fix_length

pytestmark = [pytest.mark.tess, pytest.mark.timeout(120)]


@pytest.fixture()
def corpus(tess_dir: Path, tmp_path: Path) -> list[Utterance]:
    """Three copied TESS clips (copies: the tests change their mtimes), a corrupt file and a
    missing one."""
    audio = tmp_path / "audio"
    audio.mkdir()
    sources = sorted(tess_dir.glob("*/*.flac"))[::900][:3]
    utts = []
    for src in sources:
        dst = audio / src.name
        shutil.copy2(src, dst)
        utts.append(Utterance(path=dst, emotion="angry", speaker="OAF", corpus="tess"))
    corrupt = audio / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really audio")
    utts.insert(1, Utterance(path=corrupt, emotion="sad", speaker="YAF", corpus="tess"))
    utts.append(Utterance(path=audio / "missing.flac", emotion="sad", speaker="YAF", corpus="t"))
    return utts


@pytest.fixture()
def loads(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every path the cache decodes, in order."""
    seen: list[Path] = []

    def counting_load(path, sample_rate=16_000):
        seen.append(Path(path))
        return load_audio(path, sample_rate)

    monkeypatch.setattr(cache, "load_audio", counting_load)
    return seen


def test_second_run_reads_the_cache(corpus, loads, tmp_path: Path) -> None:
    store = tmp_path / "cache"
    first = extract_features(corpus, "utterance-vector", store, progress=False)
    assert first.features.shape == (3, 187) and first.features.dtype == np.float32
    assert first.kept.tolist() == [0, 2, 3]
    assert set(first.bad_files) == {str(corpus[1].path), str(corpus[4].path)}
    assert "not readable" in first.bad_files[str(corpus[1].path)]
    assert (first.extracted, first.cached, first.frames) == (3, 0, None)
    assert "3 extracted" in first.summary() and "2 unreadable" in first.summary()

    # The cached values are the front-end's own output for each clip.
    module = UtteranceVector()
    for row, i in enumerate(first.kept):
        expected = module(torch.from_numpy(load_audio(corpus[i].path)).unsqueeze(0))[0].numpy()
        np.testing.assert_allclose(first.features[row], expected, rtol=1e-5, atol=1e-5)

    loads.clear()
    second = extract_features(corpus, "utterance-vector", store, progress=False)
    assert (second.extracted, second.cached) == (0, 3)
    # Only the unreadable file is tried again (the missing one fails before decoding).
    assert loads == [corpus[1].path]
    np.testing.assert_array_equal(second.features, first.features)
    assert second.bad_files == first.bad_files


def test_a_changed_file_is_extracted_again(corpus, loads, tmp_path: Path) -> None:
    """The key is the content: a rewritten file is extracted again, a file only touched (a
    corpus copied afresh gets new mtimes) keeps its entry."""
    store = tmp_path / "cache"
    extract_features(corpus, "utterance-vector", store, progress=False)
    stat = corpus[0].path.stat()
    os.utime(corpus[0].path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    corpus[2].path.write_bytes(corpus[0].path.read_bytes())
    loads.clear()
    again = extract_features(corpus, "utterance-vector", store, progress=False)
    assert (again.extracted, again.cached) == (1, 2)
    assert loads == [corpus[1].path, corpus[2].path]


def test_settings_key_the_cache(corpus, tmp_path: Path) -> None:
    store = tmp_path / "cache"
    good = [corpus[0], corpus[2]]
    window = extract_features(good, "logmel", store, window_samples=48_000, progress=False)
    assert window.features.shape == (2, 1, 128, 301) and window.frames is None
    # The same settings given as a module share the entries ...
    same = extract_features(
        good, LogMel(LogMelConfig()), store, window_samples=48_000, progress=False
    )
    assert (same.extracted, same.cached) == (0, 2)
    # ... other settings, or another window, do not.
    other = extract_features(
        good, LogMel(LogMelConfig(n_mels=64)), store, window_samples=48_000, progress=False
    )
    assert other.extracted == 2 and other.features.shape == (2, 1, 64, 301)
    longer = extract_features(good, "logmel", store, window_samples=64_000, progress=False)
    assert longer.extracted == 2 and longer.features.shape[-1] == 401
    assert len(list(store.iterdir())) == 3


def test_natural_length_frames_are_padded_and_counted(corpus, tmp_path: Path) -> None:
    good = [corpus[0], corpus[2], corpus[3]]
    result = extract_features(
        good, "delta-logmel", tmp_path / "cache", batch_size=2, progress=False
    )
    waves = [load_audio(u.path) for u in good]
    assert result.frames.tolist() == [1 + len(w) // 160 for w in waves]
    assert result.features.shape == (3, 3, 64, max(result.frames))
    module = cache.make_frontend("delta-logmel")[1]
    for row, wave in enumerate(waves):
        n = result.frames[row]
        expected = module(torch.from_numpy(wave).unsqueeze(0))[0].numpy()
        np.testing.assert_allclose(result.features[row, ..., :n], expected, atol=1e-4, rtol=0)
        assert not result.features[row, ..., n:].any()


def test_a_damaged_entry_is_extracted_again(corpus, tmp_path: Path) -> None:
    store = tmp_path / "cache"
    good = [corpus[0]]
    first = extract_features(good, "utterance-vector", store, progress=False)
    entry = next(first.cache_dir.glob("*.npy"))
    entry.write_bytes(b"garbage")
    again = extract_features(good, "utterance-vector", store, progress=False)
    assert again.extracted == 1
    np.testing.assert_array_equal(again.features, first.features)


def test_bad_front_ends_fail_clearly(corpus, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown front-end"):
        extract_features(corpus, "mfcc", tmp_path, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.script(LogMel())
    with pytest.raises(TypeError, match="scripted"):
        extract_features(corpus, scripted, tmp_path, progress=False)


def test_cpu_batches_are_cut_to_the_stft_budget_without_changing_features(
    tess_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    waves = [load_audio(p) for p in sorted(tess_dir.glob("*/*.flac"))[::700][:4]]
    cpu = torch.device("cpu")
    vector, logmel = UtteranceVector(), LogMel(LogMelConfig(hop_length=375))
    # 1025 bins x 94 frames x 8 bytes per 3-s clip: the 8-MiB budget takes 10 such clips.
    assert cache.rows_per_call(vector, 48_000, cpu) == 8 * 2**20 // (1025 * 94 * 8)
    assert cache.rows_per_call(vector, 48_000, torch.device("meta")) is None  # not CPU
    with torch.inference_mode():
        whole = {"vector": cache.compute_features(vector, waves, cpu),
                 "image": cache.compute_features(logmel, waves, cpu, 48_000)}  # fmt: skip
        calls: list[int] = []
        real_forward = LogMel.forward

        def counted(self: LogMel, wave: torch.Tensor) -> torch.Tensor:
            calls.append(len(wave))
            return real_forward(self, wave)

        monkeypatch.setattr(LogMel, "forward", counted)
        monkeypatch.setattr(cache, "CPU_STFT_BYTES", 1)  # one clip per call
        cut = {"vector": cache.compute_features(vector, waves, cpu),
               "image": cache.compute_features(logmel, waves, cpu, 48_000)}  # fmt: skip
    assert calls == [1, 1, 1, 1]
    for kind in whole:
        np.testing.assert_allclose(np.stack(cut[kind]), np.stack(whole[kind]), rtol=1e-5,
                                   atol=1e-4)  # fmt: skip
    # Batched == singles: each clip zero-padded or cropped to the window on its own (a window
    # between the clips' lengths, so both happen).
    lengths = sorted(len(w) for w in waves)
    window = (lengths[0] + lengths[-1]) // 2
    assert lengths[0] < window < lengths[-1]
    with torch.inference_mode():
        batched = cache.compute_features(logmel, waves, cpu, window)
        for wave, got in zip(waves, batched, strict=True):
            single = real_forward(logmel, fix_length(torch.from_numpy(wave), window)[None])[0]
            np.testing.assert_allclose(got, single.numpy(), rtol=1e-5, atol=1e-4)


def test_natural_length_log_mel_is_batched_exactly_as_single_clips(tess_dir: Path) -> None:
    waves = [load_audio(p) for p in sorted(tess_dir.glob("*/*.flac"))[::700][:3]]
    # Near-silent, then a click in its last 40 samples: its last own frame (centred 119
    # samples before the click) sees the click less than the next frame, padding in a batch,
    # so that frame must stay out of its top_db floor.
    tail = 1e-5 * np.sin(np.arange(8_159, dtype=np.float32))
    tail[-40:] = 0.9 * np.sin(np.arange(40, dtype=np.float32))
    waves.append(tail)
    module, cpu = LogMel(), torch.device("cpu")
    with torch.inference_mode():
        batched = cache.compute_features(module, waves, cpu)
        singles = [module(torch.from_numpy(w)[None])[0].numpy() for w in waves]
        unmasked = module(torch.nn.utils.rnn.pad_sequence(
            [torch.from_numpy(w) for w in waves], batch_first=True))[-1]  # fmt: skip
    for got, want in zip(batched, singles, strict=True):
        assert got.shape == want.shape  # each clip keeps its own frame count
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-3)
    # Without lengths the padded frames would have raised that clip's floor.
    assert not np.allclose(unmasked[..., : singles[-1].shape[-1]].numpy(), singles[-1], atol=1e-3)
