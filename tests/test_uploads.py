"""The upload store's private files, and what a daemon killed with SIGKILL leaves behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from streamer.uploads import UploadStore, sweep_orphans

PREFIX = "emotion-monitor-uploads-"


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_files_are_private_and_removed_with_the_store(tmp_path: Path) -> None:
    store = UploadStore(root=tmp_path)
    path = store.save("../../etc/passwd.wav", b"RIFF")
    assert path.parent.parent == tmp_path and path.suffix == ".wav"
    assert path.parent.name.startswith(f"{PREFIX}{os.getpid()}-")
    assert oct(path.stat().st_mode & 0o777) == oct(0o600)
    assert oct(path.parent.stat().st_mode & 0o777) == oct(0o700)
    store.remove(path)
    assert not path.exists()
    store.close()
    assert not path.parent.exists()


def test_a_killed_daemons_directory_is_swept_by_the_next_one(tmp_path: Path) -> None:
    orphan = tmp_path / f"{PREFIX}{dead_pid()}-abc"
    orphan.mkdir()
    (orphan / "upload-x.wav").write_bytes(b"call audio")
    live = tmp_path / f"{PREFIX}{os.getpid()}-def"  # a running daemon's: kept
    live.mkdir()
    unrelated = tmp_path / f"{PREFIX}notapid"
    unrelated.mkdir()
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "keep").write_bytes(b"x")
    link = tmp_path / f"{PREFIX}{dead_pid()}-link"
    link.symlink_to(target)  # never followed

    store = UploadStore(root=tmp_path)
    store.save("a.wav", b"RIFF")
    assert not orphan.exists()
    assert live.exists() and unrelated.exists() and link.is_symlink()
    assert (target / "keep").exists()
    store.close()


def test_sweep_reports_what_it_removed(tmp_path: Path) -> None:
    orphan = tmp_path / f"{PREFIX}{dead_pid()}-zz"
    orphan.mkdir()
    assert sweep_orphans(PREFIX, tmp_path) == [orphan]
    assert sweep_orphans(PREFIX, tmp_path) == []
