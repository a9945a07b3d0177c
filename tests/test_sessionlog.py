"""Session logs: append-only lines, crash-cut last line skipped, summaries, CSV, the CLI."""

from __future__ import annotations

import csv
import io
import json
import threading

import pytest

from emotion_monitor.cli import main as cli_main
from streamer import protocol
from streamer.sessionlog import (
    SessionLog,
    existing_log,
    export_csv,
    list_sessions,
    new_session_id,
    read_session,
    session_path,
    summarize,
)

CLASSES = ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]
CARD = {"name": "tiny", "classes": CLASSES, "sample_rate": 16000, "window_s": 3.0}


def _messages() -> list[dict]:
    limits = {"max_message_bytes": 1, "max_upload_bytes": 1, "queue_size": 1}
    msgs = [protocol.hello("sid", CARD, [], 0.5, 1, limits)]
    for seq in range(4):
        row = [0.05] * 7
        row[seq % 7] = 0.7
        msgs.append(protocol.prediction("s1", seq, seq * 0.5, seq * 0.5 + 3, 100.0 + seq,
                                        row, 12.5, CLASSES))
    msgs.append(protocol.prediction("s1", 4, 2.0, 5.0, 104.0, None, 3.0, voiced=False))
    msgs.append(protocol.stream_ended("s1", "eof", 5, 5.2, wall_time=105.0))
    return msgs


def _write(tmp_path, sid="20260101T000000Z-abcdef") -> tuple[SessionLog, list[str]]:
    log = SessionLog(tmp_path, sid)
    texts = [protocol.encode(m) for m in _messages()]
    for t in texts:
        log.append(t)
    log.close()
    return log, texts


def test_lines_are_the_messages_and_files_only_grow(tmp_path):
    log, texts = _write(tmp_path)
    assert log.path.read_text().splitlines() == texts
    read = read_session(log.path)
    assert read.messages == [json.loads(t) for t in texts]
    assert not read.partial_last_line and read.bad_lines == 0
    # Reopening the same session is refused (a second hello, seq restarting); nothing changes.
    before = log.path.read_bytes()
    with pytest.raises(FileExistsError, match="already has a log"):
        SessionLog(tmp_path, log.session_id)
    assert log.path.read_bytes() == before
    assert existing_log(tmp_path, log.session_id) == log.path
    assert existing_log(tmp_path, "other") is None
    with pytest.raises(ValueError):
        log.append("{}")  # closed
    with pytest.raises(ValueError):
        SessionLog(tmp_path, "x").append("a\nb")


def test_partial_last_line_skipped(tmp_path):
    log, texts = _write(tmp_path)
    with open(log.path, "ab") as f:  # what a SIGKILL mid-write leaves
        f.write(texts[1][:17].encode())
    read = read_session(log.path)
    assert read.partial_last_line and read.bad_lines == 0
    assert read.messages == [json.loads(t) for t in texts]


def test_concurrent_appends_keep_lines_whole(tmp_path):
    log = SessionLog(tmp_path, "conc")
    line = json.dumps({"type": "x", "pad": "y" * 5000})

    def work():
        for _ in range(50):
            log.append(line)
            log.sync()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.close()
    read = read_session(log.path)
    assert len(read.messages) == 200 and read.bad_lines == 0


def test_session_ids_and_lookup(tmp_path):
    a, b = new_session_id(), new_session_id()
    assert a != b and a[:8].isdigit()
    _write(tmp_path, "20260101T000000Z-aaaaaa")
    _write(tmp_path, "20260101T000000Z-bbbbbb")
    assert session_path(tmp_path, "20260101T000000Z-b").name == "20260101T000000Z-bbbbbb.jsonl"
    with pytest.raises(FileNotFoundError, match="matches 2"):
        session_path(tmp_path, "20260101")
    with pytest.raises(FileNotFoundError):
        session_path(tmp_path, "1999")
    with pytest.raises(ValueError):
        session_path(tmp_path, "../etc/passwd")
    assert len(list_sessions(tmp_path)) == 2


def test_summary_and_csv(tmp_path):
    log, _ = _write(tmp_path)
    s = summarize(log.path)
    assert s["model"] == "tiny" and s["predictions"] == 5
    assert s["streams"]["s1"]["windows"] == 5 and s["streams"]["s1"]["voiced"] == 4
    assert s["streams"]["s1"]["labels"] == {"angry": 1, "disgust": 1, "fear": 1, "happy": 1}
    out = io.StringIO()
    assert export_csv(log.path, out) == 5
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert [r["seq"] for r in rows] == ["0", "1", "2", "3", "4"]
    assert rows[0]["label"] == "angry" and float(rows[0]["p_angry"]) == pytest.approx(0.7)
    assert rows[4]["voiced"] == "False" and rows[4]["label"] == "" and rows[4]["p_angry"] == ""


def test_sessions_cli(tmp_path, capsys):
    log, _ = _write(tmp_path)
    d = str(tmp_path)
    assert cli_main(["sessions", "list", "--sessions-dir", d]) == 0
    assert log.session_id in capsys.readouterr().out
    assert cli_main(["sessions", "show", log.session_id[:18], "--sessions-dir", d]) == 0
    out = capsys.readouterr().out
    assert "stream s1: 5 windows (4 voiced)" in out
    assert cli_main(["sessions", "show", log.session_id, "--json", "--sessions-dir", d]) == 0
    assert json.loads(capsys.readouterr().out)["predictions"] == 5
    dest = tmp_path / "out.csv"
    assert cli_main(["sessions", "export", log.session_id, "--csv", "-o", str(dest),
                     "--sessions-dir", d]) == 0
    assert len(dest.read_text().splitlines()) == 6
    assert cli_main(["sessions", "show", "nope", "--sessions-dir", d]) == 1
    assert "no session" in capsys.readouterr().err


# ----------------------------------------------------------------------------- call floor

def _explanation(stream: str, seq: int) -> dict:
    return {"type": "explanation", "v": "1", "stream": stream, "seq": seq, "pad": "e" * 900}


def test_log_policy_every_nth_explanation_per_stream_and_the_cap():
    from streamer.logpolicy import LogPolicy

    policy = LogPolicy(explain_every=3)
    kept = [(s, q) for q in range(9) for s in ("a", "b")
            if policy.lines(_explanation(s, q), protocol.encode(_explanation(s, q)), 0)]
    assert kept == [(s, q) for q in (0, 3, 6) for s in ("a", "b")]  # every 3rd, per stream
    policy.lines({"type": "stream_ended", "stream": "a"}, "{}", 0)  # a new "a" starts over
    assert policy.lines(_explanation("a", 100), "x", 0) == ["x"]
    assert LogPolicy(explain_every=0).lines(_explanation("a", 0), "x", 0) == []
    # The cap: explanations stop with one log_truncated note; predictions never stop.
    capped = LogPolicy(explain_every=1, max_bytes=10_000)
    pred = protocol.encode(_messages()[1])
    size, notes, expl = 0, [], 0
    for seq in range(40):
        for msg, text in ((_messages()[1], pred), (_explanation("a", seq), "e" * 1000)):
            for line in capped.lines(msg, text, size):
                size += len(line) + 1
                if line.startswith("{"):
                    m = json.loads(line)
                    notes += [m] if m["type"] == "error" else []
                else:
                    expl += 1
    assert capped.truncated and len(notes) == 1 and notes[0]["code"] == "log_truncated"
    protocol.validate(notes[0], "server")
    assert 5 <= expl <= 9  # explanations only while under the cap
    assert size > 10_000  # predictions went on past it (40 of them, none dropped)
    with pytest.raises(ValueError):
        LogPolicy(explain_every=-1)


def test_compressed_log_read_listed_shown_and_exported(tmp_path, capsys):
    from streamer.retention import compress

    log, texts = _write(tmp_path)
    gz = compress(log.path)
    assert gz.name == f"{log.session_id}.jsonl.gz" and not log.path.exists()
    assert gz.stat().st_mode & 0o777 == 0o600
    assert not list(tmp_path.glob("*.tmp"))
    assert read_session(gz).messages == [json.loads(t) for t in texts]
    assert session_path(tmp_path, log.session_id) == gz
    assert session_path(tmp_path, log.session_id[:18]) == gz
    assert summarize(gz)["session_id"] == log.session_id
    # A crash between the rename and the unlink leaves both: one session, the .gz.
    (tmp_path / f"{log.session_id}.jsonl").write_text("\n".join(texts) + "\n")
    assert list_sessions(tmp_path) == [gz]
    d = str(tmp_path)
    assert cli_main(["sessions", "list", "--sessions-dir", d]) == 0
    out = capsys.readouterr().out
    assert out.count(log.session_id) == 1 and "predictions=5" in out
    assert cli_main(["sessions", "show", log.session_id, "--sessions-dir", d]) == 0
    assert "stream s1: 5 windows (4 voiced)" in capsys.readouterr().out
    dest = tmp_path / "out.csv"
    assert cli_main(["sessions", "export", log.session_id, "-o", str(dest),
                     "--sessions-dir", d]) == 0
    assert len(dest.read_text().splitlines()) == 6


def test_compress_failure_keeps_the_plain_log(tmp_path, monkeypatch):
    import gzip as gzip_module

    from streamer.retention import compress

    log, texts = _write(tmp_path)

    def broken(*a, **kw):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(gzip_module.GzipFile, "write", broken)
    with pytest.raises(OSError):
        compress(log.path)
    assert log.path.read_text().splitlines() == texts
    assert sorted(p.name for p in tmp_path.iterdir()) == [log.path.name]


def test_retention_sweep_deletes_only_old_session_files(tmp_path):
    import os
    import time

    from streamer.retention import sweep

    now = time.time()
    old, day = now - 10 * 86400, 86400
    files = {
        "20260101T000000Z-aaaaaa.jsonl.gz": old,  # old closed log: goes
        "20260101T000000Z-bbbbbb.jsonl": old,  # old crash-left plain log: goes
        "20260101T000000Z-cccccc.jsonl.gz.tmp": old,  # old compression leftover: goes
        "keepme.jsonl": old,  # the caller's own session: stays
        "20260109T000000Z-dddddd.jsonl.gz": now - day,  # recent: stays
        "notes.txt": old,  # not a session log: stays
        "bad name.jsonl": old,  # not a session id: stays
    }
    for name, mtime in files.items():
        (tmp_path / name).write_text("x\n")
        os.utime(tmp_path / name, (mtime, mtime))
    audio = tmp_path / "20260101T000000Z-aaaaaa"
    audio.mkdir()
    (audio / "s1.flac").write_bytes(b"f")
    os.utime(audio / "s1.flac", (old, old))
    recent_audio = tmp_path / "20260109T000000Z-dddddd"
    recent_audio.mkdir()
    (recent_audio / "s1.flac").write_bytes(b"f")
    gone = sweep(tmp_path, 7, keep={"keepme"}, now=now)
    assert sorted(p.name for p in gone) == sorted(
        ["20260101T000000Z-aaaaaa.jsonl.gz", "20260101T000000Z-bbbbbb.jsonl",
         "20260101T000000Z-cccccc.jsonl.gz.tmp", "s1.flac"])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["keepme.jsonl", "20260109T000000Z-dddddd.jsonl.gz", "notes.txt", "bad name.jsonl",
         "20260109T000000Z-dddddd"])
    assert sweep(tmp_path / "missing", 7) == []
