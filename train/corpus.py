"""Emotional-speech corpora as one record type.

Each loader turns a corpus's file naming into ``Utterance`` records with canonical labels
(``EMOTIONS``). Nothing is dropped silently: every file a loader skips is counted under a
reason, either in the ``dropped`` counter the caller passes or, without one, in a warning.
``scan_corpus`` adds header probing (``soundfile.info``, no decoding), so unreadable files are
listed in ``bad_files`` while the scan goes on.
"""

from __future__ import annotations

import csv
import functools
import re
import statistics
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import soundfile as sf

from train.audio import AudioError, AudioInfo, probe_audio

EMOTIONS: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")
CORPORA: tuple[str, ...] = ("tess", "ravdess", "cremad", "emodb", "savee", "urdu", "manifest")


@dataclass(frozen=True)
class Utterance:
    """One recording: where it is, what emotion it carries, who said what."""

    path: Path
    emotion: str  # one of EMOTIONS
    speaker: str | None  # None only where a manifest does not say
    corpus: str
    text: str | None = None  # the spoken sentence, when known
    word: str | None = None  # TESS: the target word ("Say the word ___")

    @property
    def label(self) -> int:
        """Index of ``emotion`` in ``EMOTIONS`` (the models' class order)."""
        return EMOTIONS.index(self.emotion)

    @property
    def speaker_id(self) -> str | None:
        """``corpus:speaker``, unique across corpora (SAVEE's "DC" and another corpus's "DC"
        are different people); None when the speaker is unknown, so unknowns never merge."""
        return None if self.speaker is None else f"{self.corpus}:{self.speaker}"


# --- shared helpers -------------------------------------------------------------------------

# Names people use for the canonical labels (manifests, folder names). Calm counts as neutral,
# as for RAVDESS; boredom, contempt and the like have no canonical label and are dropped.
EMOTION_ALIASES: dict[str, str] = {
    **{e: e for e in EMOTIONS},
    "anger": "angry", "ang": "angry", "mad": "angry",
    "disgusted": "disgust", "dis": "disgust",
    "fearful": "fear", "fea": "fear", "afraid": "fear", "scared": "fear",
    "happiness": "happy", "hap": "happy", "joy": "happy",
    "neu": "neutral", "calm": "neutral",
    "sadness": "sad",
    "surprised": "surprise", "ps": "surprise", "sur": "surprise",
    "pleasant_surprise": "surprise", "pleasant_surprised": "surprise",
    "pleasant surprise": "surprise", "pleasant surprised": "surprise",
}  # fmt: skip


def canonical_emotion(name: str) -> str | None:
    """Map a label as people write it to a canonical one, or None when there is no match."""
    key = re.sub(r"[\s\-]+", "_", name.strip().lower())
    return EMOTION_ALIASES.get(key) or EMOTION_ALIASES.get(key.replace("_", " "))


def _audio_extensions() -> frozenset[str]:
    # Whatever this libsndfile build reads (WAV, AIFF, FLAC, OGG, MP3, ...), plus common aliases.
    names = {fmt.lower() for fmt in sf.available_formats()}
    return frozenset(names | {"aif", "aifc", "wave", "oga", "opus", "snd"})


AUDIO_EXTENSIONS = _audio_extensions()


_HIDDEN = "hidden file (e.g. macOS metadata)"
_NOT_AUDIO = "not an audio file"
_NOT_AUDIO_REASONS = (_HIDDEN, _NOT_AUDIO)


def _files(root: Path, dropped: Counter[str]) -> Iterator[Path]:
    """Audio-named files under ``root`` in a stable order; count everything else."""
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"corpus path not found: {root}")
    candidates = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    for path in candidates:
        if path.name.startswith("."):
            dropped[_HIDDEN] += 1
        elif path.suffix.lower().lstrip(".") not in AUDIO_EXTENSIONS:
            dropped[f"{_NOT_AUDIO} (*{path.suffix.lower() or ' no extension'})"] += 1
        else:
            yield path


def _finish(
    name: str, utts: list[Utterance], local: Counter[str], dropped: Counter[str] | None
) -> list[Utterance]:
    if dropped is not None:
        dropped.update(local)
        return utts
    # Without a counter, warn about audio files that were dropped; non-audio files beside the
    # corpus (README.md, .DS_Store) are only counted, or every TESS load would warn.
    audio = {r: n for r, n in local.items() if not r.startswith(_NOT_AUDIO_REASONS)}
    if audio:
        detail = ", ".join(f"{n} {reason}" for reason, n in sorted(audio.items()))
        warnings.warn(f"{name}: dropped {sum(audio.values())} files: {detail}", stacklevel=3)
    return utts


def _load_by_name(
    name: str,
    root: Path,
    parse: Callable[[Path, Counter[str]], tuple[Utterance, Any] | None],
    dropped: Counter[str] | None,
) -> list[Utterance]:
    """Run ``parse`` (file -> (utterance, identity) or None after counting why) over a tree.

    The identity key drops duplicates (the Kaggle TESS zip nests a second copy of itself).
    """
    local: Counter[str] = Counter()
    seen: set[Any] = set()
    utts: list[Utterance] = []
    for path in _files(root, local):
        parsed = parse(path, local)
        if parsed is None:
            continue
        utt, identity = parsed
        if identity in seen:
            local["duplicate of an earlier file"] += 1
            continue
        seen.add(identity)
        utts.append(utt)
    return _finish(name, utts, local, dropped)


# --- TESS -----------------------------------------------------------------------------------

_TESS_SPEAKER = re.compile(r"^(?P<speaker>[OY]AF?)$", re.IGNORECASE)
_TESS_FOLDER = re.compile(r"^(?P<speaker>[OY]AF?)_(?P<emotion>.+)$", re.IGNORECASE)


def _tess_speaker(token: str) -> str:
    # "OA_bite_neutral" is OAF: normalise OA/YA to the release's OAF/YAF.
    token = token.upper()
    return token if token.endswith("F") else token + "F"


def _tess_folder(path: Path) -> tuple[str, str] | None:
    """(speaker, emotion) from the file's folder when it is named like ``OAF_Fear``."""
    m = _TESS_FOLDER.match(path.parent.name)
    if m and (emotion := canonical_emotion(m["emotion"])):
        return _tess_speaker(m["speaker"]), emotion
    return None


def _parse_tess(path: Path, dropped: Counter[str]) -> tuple[Utterance, Any] | None:
    tokens = path.stem.split("_")
    if len(tokens) < 3 or not _TESS_SPEAKER.match(tokens[0]):
        dropped["file name does not match TESS (SPEAKER_word_emotion)"] += 1
        return None
    emotion_token, word_tokens = tokens[-1], tokens[1:-1]
    # a two-word label first (OAF_back_pleasant_surprise), else the last token
    emotion = canonical_emotion("_".join(tokens[-2:])) if len(tokens) >= 4 else None
    if emotion is not None:
        word_tokens = tokens[1:-2]
    else:
        emotion = canonical_emotion(emotion_token)
    if emotion is None:
        dropped[f"unmapped emotion {emotion_token.lower()!r}"] += 1
        return None
    speaker = _tess_speaker(tokens[0])
    folder = _tess_folder(path)
    if folder is not None:
        speaker = folder[0]  # the README's rule: the folder names the speaker (OA_ prefix quirk)
        if folder[1] != emotion:
            dropped["folder and file name disagree on the emotion"] += 1
            return None
    word = "_".join(word_tokens).lower()
    utt = Utterance(path, emotion, speaker, "tess", text=f"Say the word {word}", word=word)
    return utt, (speaker, word, emotion)


def load_tess(root: str | Path, dropped: Counter[str] | None = None) -> list[Utterance]:
    """TESS in the Kaggle layout (``OAF_Fear/OAF_food_fear.wav``), any libsndfile extension.

    Handles the release's quirks: folder-name variants (``OAF_Pleasant_surprise``,
    ``YAF_pleasant_surprised``), ``_ps`` for pleasant surprise, the ``OA_`` prefix (speaker
    from the folder), nested duplicate copies. The word is the middle token of the name.
    """
    return _load_by_name("load_tess", Path(root), _parse_tess, dropped)


# --- RAVDESS --------------------------------------------------------------------------------

_RAVDESS = re.compile(r"^(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})$")
_RAVDESS_EMOTION = {
    "01": "neutral", "02": "neutral",  # calm counts as neutral unless load_ravdess(calm="drop")
    "03": "happy", "04": "sad", "05": "angry", "06": "fear", "07": "disgust", "08": "surprise",
}  # fmt: skip
_RAVDESS_TEXT = {"01": "Kids are talking by the door", "02": "Dogs are sitting by the door"}
_RAVDESS_CALM = ("neutral", "drop")
_RAVDESS_ACTOR = re.compile(r"^(?:Actor_)?(\d{1,2})$", re.IGNORECASE)


def _parse_ravdess(
    path: Path, dropped: Counter[str], calm: str = "neutral"
) -> tuple[Utterance, Any] | None:
    m = _RAVDESS.match(path.stem)
    if not m:
        dropped["file name does not match RAVDESS (MM-VV-EE-II-SS-RR-AA)"] += 1
        return None
    if m[3] == "02" and calm == "drop":
        dropped["calm (code 02), dropped with calm='drop'"] += 1
        return None
    emotion = _RAVDESS_EMOTION.get(m[3])
    if emotion is None:
        dropped[f"unmapped emotion code {m[3]!r}"] += 1
        return None
    utt = Utterance(path, emotion, f"Actor_{m[7]}", "ravdess", text=_RAVDESS_TEXT.get(m[5]))
    return utt, path.stem


def load_ravdess(
    root: str | Path, dropped: Counter[str] | None = None, calm: str = "neutral"
) -> list[Utterance]:
    """RAVDESS (``03-01-05-01-01-01-12.wav``): emotion is field 3, actor field 7.

    Calm has no canonical label: ``calm="neutral"`` (default) counts it as neutral, which
    triples neutral (96 -> 288 clips); ``calm="drop"`` leaves it out, counted in ``dropped``.
    """
    if calm not in _RAVDESS_CALM:
        raise ValueError(f"calm must be one of {', '.join(_RAVDESS_CALM)}, not {calm!r}")
    parse = functools.partial(_parse_ravdess, calm=calm)
    return _load_by_name("load_ravdess", Path(root), parse, dropped)


def ravdess_gender(speaker: str) -> str:
    """An actor's gender: the RAVDESS README gives odd numbers to men, even to women, and
    the file names carry no gender. Takes ``Actor_07`` or ``07``; returns "male"/"female"."""
    m = _RAVDESS_ACTOR.match(speaker)
    if not m:
        raise ValueError(f"not a RAVDESS actor: {speaker!r} (expected Actor_NN)")
    return "male" if int(m[1]) % 2 else "female"


# --- CREMA-D --------------------------------------------------------------------------------

_CREMAD = re.compile(r"^(\d{4})_([A-Z]{3})_([A-Z]{3})_([A-Z]{2})$", re.IGNORECASE)
_CREMAD_EMOTION = {
    "ANG": "angry", "DIS": "disgust", "FEA": "fear", "HAP": "happy", "NEU": "neutral",
    "SAD": "sad",
}  # fmt: skip
_CREMAD_TEXT = {
    "IEO": "It's eleven o'clock",
    "TIE": "That is exactly what happened",
    "IOM": "I'm on my way to the meeting",
    "IWW": "I wonder what this is about",
    "TAI": "The airplane is almost full",
    "MTI": "Maybe tomorrow it will be cold",
    "IWL": "I would like a new alarm clock",
    "ITH": "I think I have a doctor's appointment",
    "DFA": "Don't forget a jacket",
    "ITS": "I think I've seen this before",
    "TSI": "The surface is slick",
    "WSI": "We'll stop in a couple of minutes",
}


def _parse_cremad(path: Path, dropped: Counter[str]) -> tuple[Utterance, Any] | None:
    m = _CREMAD.match(path.stem)
    if not m:
        dropped["file name does not match CREMA-D (ACTOR_SEN_EMO_LV)"] += 1
        return None
    emotion = _CREMAD_EMOTION.get(m[3].upper())
    if emotion is None:
        dropped[f"unmapped emotion code {m[3]!r}"] += 1
        return None
    utt = Utterance(path, emotion, m[1], "cremad", text=_CREMAD_TEXT.get(m[2].upper()))
    return utt, path.stem.upper()


def load_cremad(root: str | Path, dropped: Counter[str] | None = None) -> list[Utterance]:
    """CREMA-D (``1001_DFA_ANG_XX.wav``): actor, sentence, emotion, intensity."""
    return _load_by_name("load_cremad", Path(root), _parse_cremad, dropped)


# --- EmoDB ----------------------------------------------------------------------------------

_EMODB = re.compile(r"^(\d{2})([a-z]\d{2})([A-Z])([a-z])$")
_EMODB_EMOTION = {
    "W": "angry", "E": "disgust", "A": "fear", "F": "happy", "T": "sad", "N": "neutral",
    "L": None,  # Langeweile (boredom): no canonical label
}  # fmt: skip
_EMODB_NAMES = {"L": "boredom"}
_EMODB_TEXT = {
    "a01": "Der Lappen liegt auf dem Eisschrank.",
    "a02": "Das will sie am Mittwoch abgeben.",
    "a04": "Heute abend könnte ich es ihm sagen.",
    "a05": "Das schwarze Stück Papier befindet sich da oben neben dem Holzstück.",
    "a07": "In sieben Stunden wird es soweit sein.",
    "b01": "Was sind denn das für Tüten, die da unter dem Tisch stehen?",
    "b02": "Sie haben es gerade hochgetragen und jetzt gehen sie wieder runter.",
    "b03": "An den Wochenenden bin ich jetzt immer nach Hause gefahren und habe Agnes besucht.",
    "b09": "Ich will das eben wegbringen und dann mit Karl was trinken gehen.",
    "b10": "Die wird auf dem Platz sein, wo wir sie immer hinlegen.",
}


def _parse_emodb(path: Path, dropped: Counter[str]) -> tuple[Utterance, Any] | None:
    m = _EMODB.match(path.stem)
    if not m:
        dropped["file name does not match EmoDB (SStttEv)"] += 1
        return None
    letter = m[3]
    emotion = _EMODB_EMOTION.get(letter)
    if emotion is None:
        dropped[f"unmapped emotion {_EMODB_NAMES.get(letter, letter)!r}"] += 1
        return None
    utt = Utterance(path, emotion, m[1], "emodb", text=_EMODB_TEXT.get(m[2]))
    return utt, path.stem


def load_emodb(root: str | Path, dropped: Counter[str] | None = None) -> list[Utterance]:
    """Berlin EmoDB (``03a01Fa.wav``): speaker, text code, emotion letter; boredom is dropped."""
    return _load_by_name("load_emodb", Path(root), _parse_emodb, dropped)


# --- SAVEE ----------------------------------------------------------------------------------

_SAVEE = re.compile(r"^(?:(?P<speaker>[A-Za-z]{2})_)?(?P<emotion>sa|su|a|d|f|h|n)(?P<n>\d{1,2})$")
_SAVEE_EMOTION = {
    "a": "angry", "d": "disgust", "f": "fear", "h": "happy", "n": "neutral", "sa": "sad",
    "su": "surprise",
}  # fmt: skip
_SAVEE_FOLDER = re.compile(r"^[A-Z]{2}$")


def _parse_savee(path: Path, dropped: Counter[str]) -> tuple[Utterance, Any] | None:
    m = _SAVEE.match(path.stem)
    if not m:
        dropped["file name does not match SAVEE (DC_a01 or DC/a01)"] += 1
        return None
    speaker = m["speaker"].upper() if m["speaker"] else None
    if speaker is None:
        if not _SAVEE_FOLDER.match(path.parent.name):
            dropped["SAVEE file without a speaker (prefix or folder)"] += 1
            return None
        speaker = path.parent.name
    emotion = _SAVEE_EMOTION[m["emotion"]]
    utt = Utterance(path, emotion, speaker, "savee")
    return utt, (speaker, m["emotion"], int(m["n"]))


def load_savee(root: str | Path, dropped: Counter[str] | None = None) -> list[Utterance]:
    """SAVEE in both layouts: flat ``DC_a01.wav`` and per-speaker ``DC/a01.wav``."""
    return _load_by_name("load_savee", Path(root), _parse_savee, dropped)


# --- URDU -----------------------------------------------------------------------------------

# SM1_F10_A010: S + gender + speaker number (SM1 and SF1 are different people), F + clip
# number, emotion letter + number (2 to 4 digits in the release: A01, A010, A0100).
_URDU = re.compile(r"^(?P<speaker>S[MF]\d+)_F\d+_(?P<emotion>[AHNS])\d+$", re.IGNORECASE)
_URDU_EMOTION = {"A": "angry", "H": "happy", "N": "neutral", "S": "sad"}


def _parse_urdu(path: Path, dropped: Counter[str]) -> tuple[Utterance, Any] | None:
    m = _URDU.match(path.stem)
    if not m:
        dropped["file name does not match URDU (SM1_F10_A010)"] += 1
        return None
    emotion = _URDU_EMOTION[m["emotion"].upper()]
    folder = canonical_emotion(path.parent.name)
    if folder is not None and folder != emotion:
        dropped["folder and file name disagree on the emotion"] += 1
        return None
    utt = Utterance(path, emotion, m["speaker"].upper(), "urdu")
    return utt, path.stem.upper()


def load_urdu(root: str | Path, dropped: Counter[str] | None = None) -> list[Utterance]:
    """URDU (``Angry/SM1_F10_A010.flac``): speaker and emotion from the name; an emotion
    folder must agree with the name's letter (a mismatch is dropped, not guessed)."""
    return _load_by_name("load_urdu", Path(root), _parse_urdu, dropped)


# --- CSV manifest ---------------------------------------------------------------------------

_MANIFEST_COLUMNS = ("path", "emotion", "speaker", "text", "word", "corpus")


def load_manifest(csv_path: str | Path, dropped: Counter[str] | None = None) -> list[Utterance]:
    """A CSV of ``path,emotion[,speaker]`` rows (optional header naming columns, which may add
    ``text``, ``word``, ``corpus``). Relative paths are relative to the CSV's folder."""
    csv_path = Path(csv_path)
    local: Counter[str] = Counter()
    utts: list[Utterance] = []
    with csv_path.open(newline="", encoding="utf-8-sig") as f:
        rows = [row for row in csv.reader(f) if any(cell.strip() for cell in row)]
    columns: list[str] = ["path", "emotion", "speaker"]
    if rows and rows[0] and rows[0][0].strip().lower() == "path":
        columns = [c.strip().lower() for c in rows[0]]
        rows = rows[1:]
        if "emotion" not in columns:
            raise ValueError(f"{csv_path}: the header has no 'emotion' column")
    for row in rows:
        if len(row) < 2 or len(row) > len(columns):
            local["malformed manifest row"] += 1
            continue
        rec = {c: v.strip() for c, v in zip(columns, row, strict=False)}
        if not rec.get("path"):
            local["malformed manifest row"] += 1
            continue
        emotion = canonical_emotion(rec.get("emotion", ""))
        if emotion is None:
            local[f"unmapped emotion {rec.get('emotion', '').lower()!r}"] += 1
            continue
        path = Path(rec["path"])
        utts.append(
            Utterance(
                path if path.is_absolute() else csv_path.parent / path,
                emotion,
                rec.get("speaker") or None,
                rec.get("corpus") or "manifest",
                text=rec.get("text") or None,
                word=(rec.get("word") or None),
            )
        )
    return _finish("load_manifest", utts, local, dropped)


LOADERS: dict[str, Callable[..., list[Utterance]]] = {
    "tess": load_tess,
    "ravdess": load_ravdess,
    "cremad": load_cremad,
    "emodb": load_emodb,
    "savee": load_savee,
    "urdu": load_urdu,
    "manifest": load_manifest,
}
_NAME_TESTS: dict[str, Callable[[Path], bool]] = {
    "tess": lambda p: bool(
        len(p.stem.split("_")) >= 3 and _TESS_SPEAKER.match(p.stem.split("_")[0])
    ),
    "ravdess": lambda p: bool(_RAVDESS.match(p.stem)),
    "cremad": lambda p: bool(_CREMAD.match(p.stem)),
    "emodb": lambda p: bool(_EMODB.match(p.stem)),
    "savee": lambda p: bool(_SAVEE.match(p.stem)),
    "urdu": lambda p: bool(_URDU.match(p.stem)),
}


def load_corpora(
    specs: Iterable[str | tuple[str, str | Path]], dropped: Counter[str] | None = None
) -> list[Utterance]:
    """Several corpora as one list, from ``(name, path)`` pairs or ``"name=path"`` strings.

    Pair it with ``Utterance.speaker_id`` for speaker grouping, since bare speaker names may
    repeat across corpora. Drops are counted as ``"name: reason"``.
    """
    utts: list[Utterance] = []
    for spec in specs:
        if isinstance(spec, str):
            name, sep, path = spec.partition("=")
            if not sep or not name or not path:
                raise ValueError(f"corpus spec {spec!r} is not name=path")
        else:
            name, path = spec
        name = name.strip().lower().replace("-", "")
        if name not in LOADERS:
            raise ValueError(f"unknown corpus {name!r}; choose one of {', '.join(CORPORA)}")
        local: Counter[str] | None = None if dropped is None else Counter()
        utts += LOADERS[name](Path(path), dropped=local)
        if dropped is not None and local:
            dropped.update({f"{name}: {reason}": n for reason, n in local.items()})
    return utts


# --- scanning -------------------------------------------------------------------------------


def detect_corpus(path: str | Path) -> str:
    """Which corpus a path holds, by how its file names look (most matches wins, > half)."""
    path = Path(path)
    if path.is_file() and path.suffix.lower() == ".csv":
        return "manifest"
    files = list(_files(path, Counter()))
    if not files:
        raise ValueError(f"no audio files under {path}; cannot detect the corpus")
    scores = {name: sum(test(p) for p in files) for name, test in _NAME_TESTS.items()}
    best = max(scores, key=lambda name: scores[name])
    if scores[best] * 2 <= len(files):
        raise ValueError(
            f"cannot tell which corpus {path} holds (best guess {best}: {scores[best]} of "
            f"{len(files)} files match); pass corpus= one of {', '.join(CORPORA)}"
        )
    return best


@dataclass
class CorpusScan:
    """A loaded corpus plus everything that did not make it in, and why."""

    corpus: str
    root: Path
    utterances: list[Utterance]
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> count
    bad_files: dict[Path, str] = field(default_factory=dict)  # path -> cause
    audio: dict[Path, AudioInfo] = field(default_factory=dict)  # header of each usable file

    def summary(self) -> dict[str, Any]:
        """Counts, words, durations and sample rates, JSON-ready (what ``corpus summarize``
        prints)."""
        utts = self.utterances
        durations = [self.audio[u.path].duration for u in utts if u.path in self.audio]
        rates: dict[int, list[str]] = {}
        for u in utts:
            if u.path in self.audio:
                rates.setdefault(self.audio[u.path].sample_rate, []).append(str(u.path))
        words = {u.word for u in utts if u.word is not None}
        emotions = Counter(u.emotion for u in utts)
        speakers = Counter(str(u.speaker) for u in utts)
        duration_stats = (
            {
                "min_s": min(durations),
                "median_s": statistics.median(durations),
                "mean_s": statistics.fmean(durations),
                "max_s": max(durations),
                "total_s": sum(durations),
            }
            if durations
            else {}
        )
        return {
            "corpus": self.corpus,
            "root": str(self.root),
            "files": len(utts),
            "emotions": {e: emotions[e] for e in EMOTIONS if emotions[e]},
            "n_emotions": len(emotions),
            "speakers": dict(sorted(speakers.items())),
            "n_speakers": len(speakers),
            "n_words": len(words),
            "duration": duration_stats,
            "sample_rates": {
                str(rate): {"files": len(paths), "paths": sorted(paths) if len(paths) <= 10 else []}
                for rate, paths in sorted(rates.items())
            },
            "dropped": dict(sorted(self.dropped.items())),
            "bad_files": {str(p): cause for p, cause in sorted(self.bad_files.items())},
        }


def scan_corpus(
    path: str | Path, corpus: str = "auto", probe: bool = True, progress: bool | None = None
) -> CorpusScan:
    """Load a corpus by name (or ``"auto"``), then probe each file's header.

    Files whose header cannot be read go to ``bad_files`` (path -> cause) and out of
    ``utterances``; the scan never stops on one bad file. ``progress=None`` shows a tqdm bar
    on stderr only when it is a terminal.
    """
    from tqdm import tqdm

    path = Path(path)
    name = detect_corpus(path) if corpus == "auto" else corpus.lower().replace("-", "")
    if name not in LOADERS:
        raise ValueError(f"unknown corpus {corpus!r}; choose auto or one of {', '.join(CORPORA)}")
    dropped: Counter[str] = Counter()
    utts = LOADERS[name](path, dropped=dropped)
    scan = CorpusScan(name, path, [], dict(dropped))
    if not probe:
        scan.utterances = utts
        return scan
    disable = None if progress is None else not progress
    for utt in tqdm(utts, desc=f"probing {name}", unit="file", disable=disable):
        try:
            scan.audio[utt.path] = probe_audio(utt.path)
        except AudioError as err:
            scan.bad_files[utt.path] = err.cause
            continue
        scan.utterances.append(utt)
    return scan


def labels(utts: Iterable[Utterance]) -> list[int]:
    """Class indices of ``utts`` (the label vector for sklearn and torch)."""
    return [u.label for u in utts]
