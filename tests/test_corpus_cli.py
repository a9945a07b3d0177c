"""`emotion-monitor corpus summarize`: what it prints on TESS and on a corpus with bad files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from emotion_monitor.cli import main
from tests.audio_fixtures import make_bad, write_tone
from train.corpus import CORPORA
from train.corpus_cli import CORPUS_CHOICES

REPO = Path(__file__).resolve().parents[1]


def test_choices_match_the_loaders() -> None:
    assert CORPUS_CHOICES == ("auto", *CORPORA)


@pytest.mark.timeout(60)
def test_cli_module_is_light() -> None:
    code = "import sys, train.corpus_cli; print('soundfile' in sys.modules, 'numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False"]


@pytest.mark.tess
def test_summarize_tess_json(tess_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["corpus", "summarize", str(tess_dir), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert (s["corpus"], s["files"], s["n_emotions"], s["n_speakers"], s["n_words"]) == (
        "tess", 2798, 7, 2, 200,
    )  # fmt: skip
    assert s["sample_rates"]["96000"]["files"] == 1
    assert s["sample_rates"]["96000"]["paths"][0].endswith("OAF_Fear/OAF_food_fear.flac")
    assert s["bad_files"] == {}


@pytest.mark.tess
@pytest.mark.timeout(120)
def test_summarize_tess_text_via_console(tess_dir: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "emotion_monitor", "corpus", "summarize", str(tess_dir),
         "--corpus", "tess"],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "2,798 files, 7 emotions, 2 speakers, 200 words" in text
    assert "96,000 Hz        1 file: " in text and "OAF_food_fear.flac" in text
    for emotion in ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"):
        assert f"  {emotion}" in text
    assert "OAF" in text and "YAF" in text
    assert "duration: min 1.25 s" in text
    assert "bad files: none" in text


def test_summarize_lists_bad_and_dropped_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_tone(tmp_path / "03-01-05-01-01-01-12.wav")
    write_tone(tmp_path / "03-01-02-01-01-01-12.wav", rate=8000)
    empty = make_bad("empty", tmp_path / "03-01-03-01-01-01-01.wav")
    text = make_bad("text", tmp_path / "03-01-04-01-01-01-01.wav")
    write_tone(tmp_path / "03-01-09-01-01-01-01.wav")  # emotion code 09 does not exist
    assert main(["corpus", "summarize", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "ravdess at" in out and "2 files, 2 emotions, 1 speaker, 0 words" in out
    assert "unmapped emotion code '09'" in out
    assert "bad files: 2" in out
    assert f"{empty}: empty file" in out and f"{text}: not readable as audio" in out
    assert "8,000 Hz" in out and "16,000 Hz" in out


def test_summarize_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["corpus", "summarize", str(tmp_path / "missing")]) == 2
    assert "corpus path not found" in capsys.readouterr().err
    (tmp_path / "a.wav").write_bytes(b"")
    assert main(["corpus", "summarize", str(tmp_path)]) == 2
    assert "cannot tell which corpus" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["corpus", "summarize", str(tmp_path), "--corpus", "iemocap"])
