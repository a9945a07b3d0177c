"""`emotion-monitor explain`: PNG + HTML + the paper's text per file, --per-class, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from emotion_monitor.cli import main
from streamer.explain_report import label_from_name, load_window

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_label_from_tess_names() -> None:
    assert label_from_name("tess/OAF_angry/OAF_back_angry.flac") == "angry"
    assert label_from_name("tess/OAF_Pleasant_surprise/OAF_back_ps.flac") == "surprise"
    assert label_from_name("tess/YAF_pleasant_surprised/YAF_bite_ps.flac") == "surprise"
    assert label_from_name("tess/OAF_neutral/OA_bite_neutral.flac") == "neutral"  # OA_ quirk
    assert label_from_name("tess/OAF_Fear/OAF_food_fear.flac") == "fear"
    assert label_from_name("x/YAF_sad/recording.wav") == "sad"  # from the folder
    assert label_from_name("x/misc/recording.wav") is None


def test_load_window_centres_short_and_picks_loudest(tmp_path: Path) -> None:
    short = tmp_path / "short.wav"
    sf.write(short, np.full(24414, 0.5, dtype=np.float32), 24414)  # 1 s at TESS's rate
    wave, offset = load_window(short, 16000, 48000)
    assert wave.shape == (48000,) and wave.dtype == np.float32
    nz = np.flatnonzero(np.abs(wave) > 0.1)
    assert abs(nz[0] - 16000) <= 2 and abs(nz[-1] - 31999) <= 2 and offset == pytest.approx(-1)
    long = tmp_path / "long.wav"
    x = np.zeros(16000 * 10, dtype=np.float32)
    x[16000 * 6:16000 * 8] = 0.5  # loud from 6 to 8 s
    sf.write(long, x, 16000)
    wave, offset = load_window(long, 16000, 48000)
    assert 5.0 <= offset <= 6.0 and np.abs(wave).max() == pytest.approx(0.5)
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio at all")
    with pytest.raises(ValueError, match="not a readable audio file"):
        load_window(bad, 16000, 48000)


@pytest.mark.timeout(120)
def test_explain_writes_png_html_text(tess_dir: Path, tiny_model_path: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture) -> None:
    files = [tess_dir / "OAF_Fear" / "OAF_back_fear.flac",
             tess_dir / "YAF_sad" / "YAF_bean_sad.flac"]
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF....garbage")
    out = tmp_path / "rep"
    rc = main(["explain", *map(str, files), str(bad), "--model", str(tiny_model_path),
               "--class", "angry", "-o", str(out)])
    assert rc == 1  # the broken file is reported, the good ones are still written
    assert "broken.wav: not a readable audio file" in capsys.readouterr().err
    for i, f in enumerate(files):
        stem = f"{i:02d}_{f.stem}"
        png = (out / f"{stem}.png").read_bytes()
        assert png.startswith(PNG_MAGIC) and len(png) > 10_000
        page = (out / f"{stem}.html").read_text()
        assert "plotly" in page and "Heatmap".lower() in page.lower()
        text = (out / f"{stem}.txt").read_text()
        assert text.startswith("Grad-CAM Analysis for class: angry\n")
        for key in ("Model Confidence", "Grad-CAM Max Activation", "Activated Area",
                    "Focus Region (time:", "Confidence Drop (after masking focus region)",
                    "mean_activation", "entropy", "freq_focus_range", "Class probabilities:",
                    "surprise: "):
            assert key in text, key
    assert (out / "plotly.min.js").exists()  # shared by the pages: the report works offline
    index = (out / "index.html").read_text()
    assert index.count("<section>") == 2 and "00_OAF_back_fear.png" in index
    assert len(json.loads((out / "index.json").read_text())) == 2


@pytest.mark.timeout(120)
def test_explain_per_class(tess_dir: Path, tiny_model_path: Path, tmp_path: Path,
                           capsys: pytest.CaptureFixture) -> None:
    """One correctly classified example per class, an index; classes the (untrained) model
    never gets right are reported, not invented."""
    data = tmp_path / "data"
    for folder in ("OAF_angry", "YAF_disgust", "OAF_Pleasant_surprise", "YAF_sad"):
        (data / folder).mkdir(parents=True)
        for f in sorted((tess_dir / folder).iterdir())[:2]:
            (data / folder / f.name).symlink_to(f)
    out = tmp_path / "per-class"
    rc = main(["explain", "--per-class", "--data", str(data), "--tries", "2", "--model",
               str(tiny_model_path), "-o", str(out)])
    entries = json.loads((out / "index.json").read_text()) if (out / "index.json").exists() \
        else []
    err = capsys.readouterr().err
    for e in entries:  # every example shown is correctly classified
        true = label_from_name(e["file"])
        assert e["heading"].startswith(f"{true}: ") and f"predicted {true}" in e["heading"]
        assert Path(e["files"]["png"]).exists()
    # Seven classes, only four have data: at least three are reported missing.
    assert rc == 1 and err.count("no correctly classified") >= 3
    assert "no correctly classified 'fear'" in err
    assert main(["explain", "--per-class", "--model", str(tiny_model_path)]) == 2


@pytest.mark.timeout(120)
def test_explain_names_the_shipped_models_method(tess_dir: Path, tmp_path: Path) -> None:
    """The shipped Whisper model explains by saliency, and the report says so (it used to
    title every report "Grad-CAM")."""
    from emotion_monitor.cliutil import default_model_path

    out = tmp_path / "rep"
    f = tess_dir / "OAF_angry" / "OAF_bath_angry.flac"
    assert main(["explain", str(f), "--model", str(default_model_path()), "-o", str(out)]) == 0
    text = (out / f"00_{f.stem}.txt").read_text()
    assert text.startswith("Saliency Analysis for class: ") and "Grad-CAM" not in text
    assert "Saliency Max Activation" in text and "Method: saliency" in text
    assert "Saliency Analysis" in (out / f"00_{f.stem}.html").read_text()
