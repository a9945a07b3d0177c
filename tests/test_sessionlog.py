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
