"""train.corpus: every loader's naming scheme and quirks, counted drops, scans that go on."""

from __future__ import annotations

import csv
import dataclasses
from collections import Counter
from pathlib import Path

import pytest
import soundfile as sf

from tests.audio_fixtures import PROBE_CATCHES, make_bad, tone, write_tone
from train.corpus import (
    EMOTIONS,
    Utterance,
    canonical_emotion,
    detect_corpus,
    labels,
    load_corpora,
    load_cremad,
    load_emodb,
    load_manifest,
    load_ravdess,
    load_savee,
    load_tess,
    load_urdu,
    ravdess_gender,
    scan_corpus,
)


def _by_name(utts: list[Utterance]) -> dict[str, Utterance]:
    return {u.path.name: u for u in utts}


def test_emotions_canonical_order() -> None:
    assert EMOTIONS == ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")


def test_utterance_is_frozen_and_has_label() -> None:
    u = Utterance(Path("a.wav"), "sad", "OAF", "tess", "Say the word a", "a")
    assert u.label == 5
    assert labels([u, dataclasses.replace(u, emotion="angry")]) == [5, 0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        u.emotion = "happy"  # type: ignore[misc]


def test_speaker_id_keeps_corpora_apart() -> None:
    a = Utterance(Path("a.wav"), "sad", "DC", "savee")
    assert (a.speaker, a.speaker_id) == ("DC", "savee:DC")
    assert dataclasses.replace(a, corpus="other").speaker_id != a.speaker_id
    assert dataclasses.replace(a, speaker=None).speaker_id is None  # unknowns never merge


@pytest.mark.parametrize(
    "name, expected",
    [("Pleasant_surprise", "surprise"), ("pleasant surprised", "surprise"), ("ps", "surprise"),
     ("Fear", "fear"), ("fearful", "fear"), ("ANG", "angry"), ("calm", "neutral"),
     ("boredom", None), ("contempt", None), ("", None)],
)  # fmt: skip
def test_canonical_emotion(name: str, expected: str | None) -> None:
    assert canonical_emotion(name) == expected


# --- TESS -----------------------------------------------------------------------------------


@pytest.fixture
def tess_tree(tmp_path: Path) -> Path:
    """A small TESS in the Kaggle layout with every quirk of the shared README, and then some."""
    root = tmp_path / "TESS Toronto emotional speech set data"
    for rel in [
        "OAF_Fear/OAF_food_fear.wav",
        "OAF_Fear/OAF_back_fear.flac",
        "OAF_Pleasant_surprise/OAF_back_ps.wav",
        "YAF_pleasant_surprised/YAF_back_ps.wav",
        "OAF_neutral/OA_bite_neutral.wav",
        "OAF_angry/OAF_back_angry.ogg",
        "YAF_sad/YAF_back_sad.wav",
        "YAF_disgust/YAF_back_disgust.wav",
        "YAF_happy/YAF_back_happy.wav",
    ]:
        write_tone(root / rel, rate=96_000 if "food" in rel else 24_414)
    # AIFF with a .wav name, as in the Kaggle release
    (root / "YAF_angry").mkdir()
    sf.write(str(root / "YAF_angry/YAF_germ_angry.wav"), tone(0.2, 24_414), 24_414, format="AIFF")
    # a nested second copy of one file (the Kaggle zip nests the set inside itself)
    write_tone(root / "TESS Toronto emotional speech set data/OAF_Fear/OAF_food_fear.wav")
    # things that must be dropped, each for its own reason
    write_tone(root / "YAF_sad/YAF_back_angry.wav")  # folder says sad
    write_tone(root / "YAF_sad/YAF_back_bored.wav")  # no such emotion
    write_tone(root / "YAF_sad/recording 1.wav")  # not a TESS name
    (root / "README.md").write_text("notes")
    (root / "YAF_sad/.DS_Store").write_bytes(b"\0")
    return root


def test_load_tess_quirks(tess_tree: Path) -> None:
    dropped: Counter[str] = Counter()
    utts = load_tess(tess_tree, dropped)
    by = _by_name(utts)
    assert len(utts) == 10
    assert by["OAF_back_ps.wav"].emotion == "surprise"
    assert by["YAF_back_ps.wav"].emotion == "surprise"
    assert by["OA_bite_neutral.wav"].speaker == "OAF"  # OA_ prefix: speaker from the folder
    assert by["OA_bite_neutral.wav"].word == "bite"
    assert by["YAF_germ_angry.wav"].emotion == "angry"  # AIFF named .wav
    assert by["OAF_back_angry.ogg"].corpus == "tess"
    food = by["OAF_food_fear.wav"]
    assert (food.emotion, food.speaker, food.word) == ("fear", "OAF", "food")
    assert food.text == "Say the word food"
    assert {u.speaker for u in utts} == {"OAF", "YAF"}
    assert dict(dropped) == {
        "duplicate of an earlier file": 1,
        "folder and file name disagree on the emotion": 1,
        "unmapped emotion 'bored'": 1,
        "file name does not match TESS (SPEAKER_word_emotion)": 1,
        "not an audio file (*.md)": 1,
        "hidden file (e.g. macOS metadata)": 1,
    }


def test_load_tess_without_counter_warns_about_dropped_audio(tess_tree: Path) -> None:
    with pytest.warns(UserWarning, match=r"load_tess: dropped 4 files"):
        load_tess(tess_tree)


def test_load_tess_flat_layout_takes_speaker_from_name(tmp_path: Path) -> None:
    for name in ["OAF_back_angry.wav", "YA_dog_ps.wav", "YAF_chair_pleasant_surprise.wav"]:
        write_tone(tmp_path / name)
    by = _by_name(load_tess(tmp_path, Counter()))
    assert by["YA_dog_ps.wav"].speaker == "YAF"
    assert (by["YAF_chair_pleasant_surprise.wav"].word, by["YAF_chair_pleasant_surprise.wav"]
            .emotion) == ("chair", "surprise")  # fmt: skip


# --- other corpora --------------------------------------------------------------------------


def _touch(root: Path, names: list[str]) -> Path:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"")  # loaders read names only; scans probe separately
    return root


def test_load_ravdess(tmp_path: Path) -> None:
    root = _touch(tmp_path, [
        "Actor_12/03-01-05-01-01-01-12.wav",  # angry
        "Actor_12/03-01-02-02-02-01-12.wav",  # calm -> neutral
        "Actor_01/03-02-08-01-01-01-01.wav",  # song... surprise
        "Actor_01/03-01-09-01-01-01-01.wav",  # no emotion 09
        "Actor_01/notes.wav",
    ])  # fmt: skip
    dropped: Counter[str] = Counter()
    by = _by_name(load_ravdess(root, dropped))
    assert by["03-01-05-01-01-01-12.wav"].emotion == "angry"
    assert by["03-01-05-01-01-01-12.wav"].speaker == "Actor_12"
    assert by["03-01-05-01-01-01-12.wav"].text == "Kids are talking by the door"
    assert by["03-01-02-02-02-01-12.wav"].emotion == "neutral"
    assert by["03-02-08-01-01-01-01.wav"].emotion == "surprise"
    assert len(by) == 3
    assert dropped["unmapped emotion code '09'"] == 1
    assert sum(dropped.values()) == 2


def test_load_ravdess_calm_drop(tmp_path: Path) -> None:
    root = _touch(tmp_path, ["03-01-02-02-02-01-12.wav", "03-01-01-01-01-01-12.wav"])
    dropped: Counter[str] = Counter()
    utts = load_ravdess(root, dropped, calm="drop")
    assert [u.path.name for u in utts] == ["03-01-01-01-01-01-12.wav"]
    assert dropped == Counter({"calm (code 02), dropped with calm='drop'": 1})
    with pytest.warns(UserWarning, match=r"1 calm"):
        load_ravdess(root, calm="drop")
    with pytest.raises(ValueError, match="calm must be one of"):
        load_ravdess(root, calm="happy")


@pytest.mark.parametrize(
    "speaker, gender",
    [("Actor_01", "male"), ("Actor_24", "female"), ("07", "male"), ("actor_12", "female")],
)
def test_ravdess_gender(speaker: str, gender: str) -> None:
    assert ravdess_gender(speaker) == gender


def test_ravdess_gender_refuses_other_names() -> None:
    with pytest.raises(ValueError, match="not a RAVDESS actor"):
        ravdess_gender("DC")


def test_load_cremad(tmp_path: Path) -> None:
    root = _touch(tmp_path, ["1001_DFA_ANG_XX.wav", "1091_TSI_SAD_HI.wav", "1001_DFA_XYZ_XX.wav"])
    dropped: Counter[str] = Counter()
    by = _by_name(load_cremad(root, dropped))
    assert (by["1001_DFA_ANG_XX.wav"].emotion, by["1001_DFA_ANG_XX.wav"].speaker) == (
        "angry", "1001",
    )  # fmt: skip
    assert by["1001_DFA_ANG_XX.wav"].text == "Don't forget a jacket"
    assert by["1091_TSI_SAD_HI.wav"].emotion == "sad"
    assert dropped == Counter({"unmapped emotion code 'XYZ'": 1})


def test_load_emodb_drops_boredom(tmp_path: Path) -> None:
    root = _touch(tmp_path, [
        "wav/03a01Fa.wav", "wav/03a01Wa.wav", "wav/16b10Tb.wav", "wav/08a02Ac.wav",
        "wav/09b03Ed.wav", "wav/10a04Nb.wav", "wav/11a05Lc.wav",
    ])  # fmt: skip
    dropped: Counter[str] = Counter()
    by = _by_name(load_emodb(root, dropped))
    assert {n: u.emotion for n, u in by.items()} == {
        "03a01Fa.wav": "happy", "03a01Wa.wav": "angry", "16b10Tb.wav": "sad",
        "08a02Ac.wav": "fear", "09b03Ed.wav": "disgust", "10a04Nb.wav": "neutral",
    }  # fmt: skip
    assert by["16b10Tb.wav"].speaker == "16"
    assert by["03a01Fa.wav"].text == "Der Lappen liegt auf dem Eisschrank."
    assert dropped == Counter({"unmapped emotion 'boredom'": 1})


@pytest.mark.parametrize("layout", ["flat", "folders"])
def test_load_savee_both_layouts(tmp_path: Path, layout: str) -> None:
    codes = ["a01", "d02", "f03", "h04", "n30", "sa05", "su15"]
    names = [f"DC_{c}.wav" if layout == "flat" else f"DC/{c}.wav" for c in codes]
    names += ["JK_sa01.wav" if layout == "flat" else "JK/sa01.wav"]
    dropped: Counter[str] = Counter()
    utts = load_savee(_touch(tmp_path / "AudioData", names), dropped)
    assert [u.emotion for u in utts[:7]] == [
        "angry", "disgust", "fear", "happy", "neutral", "sad", "surprise",
    ]  # fmt: skip
    assert {u.speaker for u in utts} == {"DC", "JK"}
    assert not dropped


def test_load_urdu(tmp_path: Path) -> None:
    root = _touch(tmp_path, [
        "Angry/SM1_F10_A010.wav",
        "Angry/SF1_F1_A0100.wav",  # SF1 is not SM1; numbers have 2-4 digits
        "Sad/SM24_F3_S09.flac",
        "Happy/SF6_F2_N01.wav",  # folder says happy, name says neutral
        "Neutral/SM1_F1_X01.wav",  # no emotion X
        "SF2_F1_H01.wav",  # flat: the name alone decides
    ])  # fmt: skip
    dropped: Counter[str] = Counter()
    by = _by_name(load_urdu(root, dropped))
    assert {n: (u.speaker, u.emotion) for n, u in by.items()} == {
        "SM1_F10_A010.wav": ("SM1", "angry"), "SF1_F1_A0100.wav": ("SF1", "angry"),
        "SM24_F3_S09.flac": ("SM24", "sad"), "SF2_F1_H01.wav": ("SF2", "happy"),
    }  # fmt: skip
    assert {u.corpus for u in by.values()} == {"urdu"}
    assert dropped == Counter({
        "folder and file name disagree on the emotion": 1,
        "file name does not match URDU (SM1_F10_A010)": 1,
    })  # fmt: skip


def test_load_corpora_takes_pairs_and_name_path_strings(tmp_path: Path) -> None:
    savee = _touch(tmp_path / "savee", ["DC_a01.wav", "notes.txt"])
    urdu = _touch(tmp_path / "urdu", ["Angry/SM1_F1_A01.wav"])
    dropped: Counter[str] = Counter()
    utts = load_corpora([("savee", savee), f"urdu={urdu}"], dropped)
    assert [u.speaker_id for u in utts] == ["savee:DC", "urdu:SM1"]
    assert dropped == Counter({"savee: not an audio file (*.txt)": 1})
    with pytest.raises(ValueError, match="not name=path"):
        load_corpora([str(urdu)])
    with pytest.raises(ValueError, match="unknown corpus"):
        load_corpora([f"iemocap={urdu}"])


def test_load_savee_without_speaker_is_counted(tmp_path: Path) -> None:
    dropped: Counter[str] = Counter()
    assert load_savee(_touch(tmp_path / "misc", ["a01.wav"]), dropped) == []
    assert dropped == Counter({"SAVEE file without a speaker (prefix or folder)": 1})


def test_load_manifest(tmp_path: Path) -> None:
    write_tone(tmp_path / "clips/a.wav")
    (tmp_path / "m.csv").write_text(
        "clips/a.wav,Happiness,spk1\n"
        "/abs/b.wav,sad\n"
        "c.wav,boredom,spk2\n"
        "only-one-column\n"
        "d.wav,angry,s,extra\n"
    )
    dropped: Counter[str] = Counter()
    utts = load_manifest(tmp_path / "m.csv", dropped)
    assert [(u.path, u.emotion, u.speaker) for u in utts] == [
        (tmp_path / "clips/a.wav", "happy", "spk1"),
        (Path("/abs/b.wav"), "sad", None),
    ]
    assert dropped == Counter({"unmapped emotion 'boredom'": 1, "malformed manifest row": 2})


def test_load_manifest_with_header(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text(
        "path,speaker,emotion,word,corpus\nx.wav,s1,ps,dog,mine\ny.wav,s2,Fear,,\n"
    )
    utts = load_manifest(tmp_path / "m.csv", Counter())
    assert [(u.emotion, u.speaker, u.word, u.corpus) for u in utts] == [
        ("surprise", "s1", "dog", "mine"), ("fear", "s2", None, "manifest"),
    ]  # fmt: skip


# --- detection and scanning -----------------------------------------------------------------


@pytest.mark.parametrize(
    "corpus, names",
    [("ravdess", ["03-01-05-01-01-01-12.wav", "03-01-01-01-01-01-12.wav"]),
     ("cremad", ["1001_DFA_ANG_XX.wav", "1002_IEO_HAP_HI.wav"]),
     ("emodb", ["03a01Fa.wav", "03a01Wa.wav"]),
     ("savee", ["DC_a01.wav", "JE/su02.wav"]),
     ("urdu", ["Angry/SM1_F10_A010.wav", "Sad/SF11_F1_S03.wav"]),
     ("tess", ["OAF_angry/OAF_back_angry.wav", "YAF_fear/YAF_dog_fear.wav"])],
)  # fmt: skip
def test_detect_corpus(tmp_path: Path, corpus: str, names: list[str]) -> None:
    assert detect_corpus(_touch(tmp_path, [*names, "README.txt"])) == corpus


def test_detect_corpus_refuses_to_guess(tmp_path: Path) -> None:
    _touch(tmp_path, ["a.wav", "b.wav", "03a01Fa.wav"])
    with pytest.raises(ValueError, match="pass corpus="):
        detect_corpus(tmp_path)
    with pytest.raises(ValueError, match="no audio files"):
        detect_corpus(_touch(tmp_path / "docs", ["x.md"]))
    with pytest.raises(FileNotFoundError):
        detect_corpus(tmp_path / "missing")


def test_scan_collects_bad_files_and_goes_on(tess_tree: Path) -> None:
    bad = {kind: make_bad(kind, tess_tree / "YAF_sad" / f"YAF_{kind.replace('_', '')}_sad.wav")
           for kind in PROBE_CATCHES}  # fmt: skip
    scan = scan_corpus(tess_tree, progress=False)
    assert scan.corpus == "tess"
    assert set(scan.bad_files) == set(bad.values())
    assert "truncated" in scan.bad_files[bad["truncated_wav"]]
    assert "empty" in scan.bad_files[bad["empty"]]
    assert len(scan.utterances) == 10
    assert not set(bad.values()) & {u.path for u in scan.utterances}
    assert scan.dropped["duplicate of an earlier file"] == 1
    s = scan.summary()
    assert s["files"] == 10 and s["n_speakers"] == 2 and s["n_emotions"] == 7
    assert s["sample_rates"]["96000"]["paths"] == [str(tess_tree / "OAF_Fear/OAF_food_fear.wav")]
    assert len(s["bad_files"]) == len(PROBE_CATCHES)


def test_scan_manifest_lists_missing_files_as_bad(tmp_path: Path) -> None:
    write_tone(tmp_path / "a.wav")
    (tmp_path / "m.csv").write_text("a.wav,angry,s1\nmissing.wav,sad,s1\n")
    scan = scan_corpus(tmp_path / "m.csv", progress=False)
    assert scan.corpus == "manifest"
    assert [u.path.name for u in scan.utterances] == ["a.wav"]
    assert scan.bad_files == {tmp_path / "missing.wav": "file not found"}


def test_scan_unknown_corpus_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown corpus"):
        scan_corpus(tmp_path, corpus="iemocap")


# --- the shared TESS copy -------------------------------------------------------------------


@pytest.fixture(scope="module")
def tess_scan(tess_dir: Path):
    return scan_corpus(tess_dir, progress=False)


@pytest.mark.tess
def test_tess_scan_matches_the_readme(tess_scan, tess_dir: Path) -> None:
    s = tess_scan.summary()
    assert tess_scan.corpus == "tess"
    assert s["files"] == 2798
    assert s["n_emotions"] == 7 and set(s["emotions"]) == set(EMOTIONS)
    assert s["speakers"] == {"OAF": 1399, "YAF": 1399}
    assert s["n_words"] == 200
    assert s["emotions"]["angry"] == 399 and s["emotions"]["sad"] == 399
    assert s["sample_rates"]["24414"]["files"] == 2797
    assert s["sample_rates"]["96000"] == {
        "files": 1, "paths": [str(tess_dir / "OAF_Fear" / "OAF_food_fear.flac")],
    }  # fmt: skip
    assert s["bad_files"] == {}
    assert s["dropped"] == {"not an audio file (*.md)": 1}  # the README
    assert 1.2 < s["duration"]["min_s"] < s["duration"]["median_s"] < s["duration"]["max_s"] < 3.0


@pytest.mark.tess
def test_tess_quirky_files(tess_scan) -> None:
    by = {u.path.name: u for u in tess_scan.utterances}
    assert by["OA_bite_neutral.flac"].speaker == "OAF"
    assert by["OAF_back_ps.flac"].emotion == "surprise"
    assert by["YAF_back_ps.flac"].emotion == "surprise"
    per_word = Counter(u.word for u in tess_scan.utterances)
    assert min(per_word.values()) >= 13 and max(per_word.values()) == 14


# --- the shared RAVDESS, SAVEE and URDU copies ----------------------------------------------
# File names only (plus scan_corpus's header probing for URDU): no audio is decoded.

SHARED = ("tess", "ravdess", "savee", "urdu")
NOT_AUDIO = {"not an audio file (*.csv)": 1, "not an audio file (*.md)": 1}  # manifest, README


def _manifest(root: Path) -> list[dict[str, str]]:
    with (root / "manifest.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def _rows(root: Path, utts: list[Utterance]) -> Counter[tuple[str, str | None, str]]:
    return Counter((u.path.relative_to(root).as_posix(), u.speaker, u.emotion) for u in utts)


def _manifest_rows(rows: list[dict[str, str]]) -> Counter[tuple[str, str | None, str | None]]:
    return Counter((r["path"], r["speaker"], canonical_emotion(r["emotion"])) for r in rows)


@pytest.mark.ravdess
def test_ravdess_matches_readme_and_manifest(ravdess_dir: Path) -> None:
    dropped: Counter[str] = Counter()
    utts = load_ravdess(ravdess_dir, dropped)
    assert len(utts) == 1440 and dropped == NOT_AUDIO
    assert Counter(u.speaker for u in utts) == {f"Actor_{i:02d}": 60 for i in range(1, 25)}
    assert Counter(u.emotion for u in utts) == {
        "neutral": 96 + 192, "happy": 192, "sad": 192, "angry": 192, "fear": 192,
        "disgust": 192, "surprise": 192,
    }  # fmt: skip
    rows = _manifest(ravdess_dir)
    assert _rows(ravdess_dir, utts) == _manifest_rows(rows)  # calm -> neutral on both sides
    by_path = {u.path.relative_to(ravdess_dir).as_posix(): u for u in utts}
    statements = {"01": "Kids are talking by the door", "02": "Dogs are sitting by the door"}
    for r in rows:
        assert by_path[r["path"]].text == statements[r["statement"]]
        assert ravdess_gender(r["speaker"]) == {"M": "male", "F": "female"}[r["gender"]]


@pytest.mark.ravdess
def test_ravdess_calm_drop_keeps_everything_else(ravdess_dir: Path) -> None:
    dropped: Counter[str] = Counter()
    utts = load_ravdess(ravdess_dir, dropped, calm="drop")
    assert len(utts) == 1248
    assert dropped == {**NOT_AUDIO, "calm (code 02), dropped with calm='drop'": 192}
    assert Counter(u.emotion for u in utts)["neutral"] == 96
    assert Counter(u.speaker for u in utts) == {f"Actor_{i:02d}": 52 for i in range(1, 25)}
    rows = [r for r in _manifest(ravdess_dir) if r["emotion"] != "calm"]
    assert _rows(ravdess_dir, utts) == _manifest_rows(rows)


@pytest.mark.savee
def test_savee_matches_readme_and_manifest(savee_dir: Path) -> None:
    dropped: Counter[str] = Counter()
    utts = load_savee(savee_dir, dropped)
    assert len(utts) == 480 and dropped == NOT_AUDIO
    assert Counter(u.speaker for u in utts) == {"DC": 120, "JE": 120, "JK": 120, "KL": 120}
    assert Counter(u.emotion for u in utts) == {
        "neutral": 120, **{e: 60 for e in EMOTIONS if e != "neutral"},
    }  # fmt: skip
    assert _rows(savee_dir, utts) == _manifest_rows(_manifest(savee_dir))


URDU_SPEAKERS = {
    "SF1": 12, "SF2": 2, "SF3": 2, "SF4": 4, "SF5": 4, "SF6": 14, "SF7": 6, "SF8": 2, "SF9": 4,
    "SF10": 2, "SF11": 4, "SM1": 22, "SM2": 28, "SM3": 12, "SM4": 48, "SM5": 80, "SM6": 14,
    "SM7": 28, "SM17": 2, "SM18": 2, "SM19": 2, "SM20": 10, "SM21": 4, "SM22": 2, "SM23": 6,
    "SM24": 38, "SM25": 40, "SM26": 2, "SM27": 4,
}  # fmt: skip


@pytest.mark.urdu
def test_urdu_matches_readme_and_manifest(urdu_dir: Path) -> None:
    dropped: Counter[str] = Counter()
    utts = load_urdu(urdu_dir, dropped)
    assert len(utts) == 400 and dropped == NOT_AUDIO
    assert Counter(u.emotion for u in utts) == {"angry": 100, "happy": 100, "neutral": 100,
                                                "sad": 100}  # fmt: skip
    assert Counter(u.speaker for u in utts) == URDU_SPEAKERS  # 29 ids, 18 male, 11 female
    rows = _manifest(urdu_dir)
    assert _rows(urdu_dir, utts) == _manifest_rows(rows)
    assert {r["speaker"]: r["gender"] for r in rows} == {s: s[1] for s in URDU_SPEAKERS}


@pytest.mark.urdu
def test_urdu_scan_summary(urdu_dir: Path) -> None:
    s = scan_corpus(urdu_dir, progress=False).summary()
    assert (s["corpus"], s["files"], s["n_emotions"], s["n_speakers"]) == ("urdu", 400, 4, 29)
    assert s["emotions"] == {"angry": 100, "happy": 100, "neutral": 100, "sad": 100}
    assert s["speakers"] == dict(sorted(URDU_SPEAKERS.items()))
    assert s["sample_rates"] == {"16000": {"files": 400, "paths": []}}
    assert s["dropped"] == NOT_AUDIO and s["bad_files"] == {}
    assert 0.9 < s["duration"]["min_s"] < s["duration"]["median_s"] < s["duration"]["max_s"] < 3.1


@pytest.mark.parametrize("corpus", [pytest.param(c, marks=getattr(pytest.mark, c)) for c in SHARED])
def test_detect_shared_corpora(request: pytest.FixtureRequest, corpus: str) -> None:
    assert detect_corpus(request.getfixturevalue(f"{corpus}_dir")) == corpus


@pytest.mark.tess
@pytest.mark.ravdess
@pytest.mark.savee
@pytest.mark.urdu
def test_speaker_ids_unique_across_shared_corpora(
    tess_dir: Path, ravdess_dir: Path, savee_dir: Path, urdu_dir: Path
) -> None:
    utts = load_corpora([
        f"tess={tess_dir}", ("ravdess", ravdess_dir), ("savee", savee_dir), f"urdu={urdu_dir}",
    ], Counter())  # fmt: skip
    assert len(utts) == 2798 + 1440 + 480 + 400
    corpus_of: dict[str | None, set[str]] = {}
    for u in utts:
        corpus_of.setdefault(u.speaker_id, set()).add(u.corpus)
    assert None not in corpus_of and all(len(c) == 1 for c in corpus_of.values())
    assert Counter(c for cs in corpus_of.values() for c in cs) == {
        "tess": 2, "ravdess": 24, "savee": 4, "urdu": 29,
    }  # fmt: skip
