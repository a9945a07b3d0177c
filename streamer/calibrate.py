"""`emotion-monitor calibrate`: fit a model file to a site from its unlabelled recordings.

A site (a call centre's floor, a clinic) differs from the training corpora in microphones,
rooms, language and the way its people talk. Model files exported with a *site head*
(card ``site_norm``; ``train.site_norm``) can standardise a site's features by the site's own
statistics: this command runs the daemon's own windowing (3-s windows, 0.5-s hop) and voice
detection over recordings of the site, takes the mean and standard deviation of the voiced
windows' features (``embed``), and writes a copy of the model whose head is the site head with
those statistics folded into its standardiser. The copy keeps the model-file contract, so the
daemon, dashboard and Grad-CAM serve it unchanged. No labels are needed; a few dozen
utterances are enough, and a site where most talk is neutral does not upset the statistics
(docs/results/crosscorpus.md, "Standardising per corpus": +9.8 points on SAVEE's never-heard
voices, URDU within 2.5).

Bad recordings are skipped with their reason (the card lists them); too few voiced windows,
a model without a site head or an output path equal to the model's are refused before
anything is written.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from streamer.model import CARD_NAME, ServedModel
from streamer.sources import SourceError, expand_paths, open_audio, show_path
from streamer.vad import Vad, VadConfig
from streamer.windows import Window, Windower

log = logging.getLogger(__name__)

HOP_S = 0.5  # the daemon's hop
MIN_WINDOWS = 20  # voiced windows a calibration needs (30 clips measured as enough)
BLOCK_S = 10.0  # seconds of a file read at a time (memory stays bounded for long calls)
EPS = 1e-5  # added to the site's std before dividing (as train.site_norm)


class CalibrationError(ValueError):
    """A calibration that cannot be done, with the reason."""


@dataclass
class SiteStatistics:
    """Feature statistics of a site's voiced windows."""

    mean: np.ndarray
    std: np.ndarray
    windows: int
    files: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


def has_site_head(model: ServedModel) -> bool:
    return bool(model.card.get("site_norm")) and all(
        hasattr(model.module, name) for name in ("embed", "site_head", "site_feat_mean"))


def _windows(path: Path, rate: int, window_s: float) -> Iterator[Window]:
    """The daemon's windows over each channel of ``path`` (a channel is one voice), as the
    file is read: memory stays bounded however long the recording."""
    import soxr

    with open_audio(path) as f:
        channels, file_rate = f.channels, f.samplerate
        if channels > 2:
            raise CalibrationError(f"{channels} channels; a call has 1 (caller) or 2 (caller, "
                                   "agent)")
        resample = (soxr.ResampleStream(file_rate, rate, channels, dtype="float32")
                    if file_rate != rate else None)
        windowers = [Windower(f"{path}#{c}", rate, window_s, HOP_S) for c in range(channels)]
        for block in f.blocks(blocksize=int(BLOCK_S * file_rate), dtype="float32",
                              always_2d=True):
            if not np.isfinite(block).all():
                raise CalibrationError("non-finite samples")
            if resample is not None:
                block = resample.resample_chunk(block).reshape(-1, channels)
            for c, w in enumerate(windowers):
                yield from w.push(block[:, c], wall_time=0.0, arrived=0.0)
        if resample is not None:
            tail = resample.resample_chunk(np.zeros((0, channels), np.float32), last=True)
            for c, w in enumerate(windowers):
                yield from w.push(tail.reshape(-1, channels)[:, c], wall_time=0.0, arrived=0.0)
    for w in windowers:
        yield from w.flush()


class _Moments:
    """Running sums of features (float64)."""

    def __init__(self) -> None:
        self.n, self.total, self.square = 0, 0.0, 0.0

    def add(self, f: np.ndarray) -> None:
        self.n += len(f)
        self.total = self.total + f.sum(0)
        self.square = self.square + (f * f).sum(0)

    def add_sums(self, other: _Moments) -> None:
        self.n += other.n
        self.total = self.total + other.total
        self.square = self.square + other.square


def _add_file(model: ServedModel, path: Path, detector: Vad | None, batch: int,
              moments: _Moments) -> None:
    """Add the voiced windows of one recording to ``moments`` (nothing if it fails)."""
    mine = _Moments()
    streams: set[str] = set()
    try:
        wins = _windows(path, model.sample_rate, model.window_s)
        while part := list(itertools.islice(wins, batch)):
            streams.update(w.stream_id for w in part)
            if detector is not None:
                fractions = detector.voiced_fractions(part)
                part = [w for w, fr in zip(part, fractions, strict=True)
                        if detector.is_voiced(fr)]
            if part:
                x = model._as_batch(np.stack([w.samples for w in part]))
                with torch.inference_mode():
                    mine.add(model.module.embed(x).double().cpu().numpy())
    finally:
        for sid in streams if detector is not None else ():
            detector.end_stream(sid)
    if mine.n:
        moments.add_sums(mine)


def site_statistics(model: ServedModel, paths: list[str | Path], vad: VadConfig | None,
                    batch: int = 16, progress: bool = True) -> SiteStatistics:
    """Mean and std of ``embed`` over the voiced windows of ``paths`` (files or folders)."""
    from tqdm import tqdm

    files = expand_paths(paths)
    detector = Vad(vad, model.sample_rate) if vad is not None else None
    moments = _Moments()
    stats = SiteStatistics(np.zeros(0), np.zeros(0), 0)
    for path in tqdm(files, desc="site recordings", unit="file", disable=not progress):
        try:
            _add_file(model, path, detector, batch, moments)
        except (CalibrationError, SourceError, RuntimeError, OSError, ValueError) as err:
            # libsndfile's own words, without soundfile's "Error opening <fd>: " prefix
            reason = str(getattr(err, "error_string", None) or err)
            stats.skipped[show_path(path)] = reason.removeprefix(f"{show_path(path)}: ")
            log.warning("%s: skipped (%s)", show_path(path), reason)
            continue
        stats.files.append(show_path(path))
    if moments.n < MIN_WINDOWS:
        raise CalibrationError(f"{moments.n} voiced windows in {len(stats.files)} readable "
                               f"file(s); a site needs at least {MIN_WINDOWS} (a few dozen "
                               "utterances)")
    stats.mean = moments.total / moments.n
    stats.std = np.sqrt(np.maximum(moments.square / moments.n - stats.mean ** 2, 0.0))
    stats.windows = moments.n
    return stats


def fold(module: torch.jit.ScriptModule, mean: np.ndarray, std: np.ndarray) -> None:
    """Make ``module``'s head the site head reading features standardised by (mean, std):
    head((x - m') / s') with m' = mean + m_site (std + EPS), s' = (std + EPS) s_site equals
    site_head(((x - mean) / (std + EPS) - m_site) / s_site)."""
    with torch.no_grad():
        sd = torch.as_tensor(std, dtype=torch.float32) + EPS
        mu = torch.as_tensor(mean, dtype=torch.float32)
        module.feat_mean.copy_(mu + module.site_feat_mean * sd)
        module.feat_std.copy_(sd * module.site_feat_std)
        module.head.weight.copy_(module.site_head.weight)
        module.head.bias.copy_(module.site_head.bias)


def calibrate(model_path: str | Path, paths: list[str | Path], out: str | Path,
              vad: VadConfig | None = VadConfig(), progress: bool = True) -> Path:
    """Write ``out``: ``model_path`` fitted to the site heard in ``paths``."""
    model_path, out = Path(model_path), Path(out)
    if out.resolve() == model_path.resolve():
        raise CalibrationError("the output would overwrite the model file; write a new one")
    model = ServedModel.load(model_path, device="cpu", precision="float32")
    if not has_site_head(model):
        raise CalibrationError(f"{show_path(model_path)}: the model has no site head (card "
                               "'site_norm'); re-export it with `emotion-monitor export FILE "
                               "--site-head NPZ`")
    stats = site_statistics(model, paths, vad, progress=progress)
    module = model.module
    fold(module, stats.mean, stats.std)
    card = {k: v for k, v in model.card.items() if k != "display"}
    card["name"] = f"{model.card.get('name', model_path.stem)}-site"
    card["site"] = {
        "calibrated_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "from_model": model_path.name, "voiced_windows": stats.windows,
        "files": len(stats.files), "skipped": stats.skipped,
        "vad": vad.method if vad is not None else "off",
        "note": "the head is the site head over features standardised by these recordings' "
                "statistics; 'metrics' are the uncalibrated file's, and the confidence floor "
                "(chosen for the global head) is dropped",
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    blob = json.dumps(card, indent=1)
    module.save(str(out), _extra_files={CARD_NAME: blob})
    out.with_suffix(".card.json").write_text(blob + "\n")
    return out


__all__ = ["CalibrationError", "MIN_WINDOWS", "SiteStatistics", "calibrate", "fold",
           "has_site_head", "site_statistics"]
