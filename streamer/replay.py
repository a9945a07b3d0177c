"""A client's ``replay`` request: the path check (confined to ``--allowed-dir``) and the upload,
turned into a :class:`~streamer.sources.FileSource` the daemon runs.

Out of ``daemon.py`` so the daemon stays the wiring of sources, engine, log and server; the
request's own rules (what a path may name, what an upload becomes) live here. ``RequestError``
is the error every request handler raises: the server answers it with an ``error`` message.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from streamer import protocol

# A file with more channels than this is refused rather than mixed down: which channel holds
# the speech of a 5.1 recording is anyone's guess.
MAX_REPLAY_CHANNELS = 2


class RequestError(Exception):
    """A client request the daemon refuses; ``code`` is one of ``protocol.ERROR_CODES``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def resolve_replay_path(allowed_dir: str | Path | None, requested: str,
                        redact: Callable[[str], str] = str) -> list[Path]:
    """The files a replay path names, all inside ``allowed_dir``, or RequestError.

    Refuses ``..`` components outright and resolves symlinks (of the path and of every file a
    directory expands to) before checking containment, so a link cannot escape.
    """
    from streamer.sources import SourceError, expand_paths

    if allowed_dir is None:
        raise RequestError("forbidden", "replay from a path is disabled (the daemon was "
                           "started without --allowed-dir); upload the file instead")
    root = Path(allowed_dir).resolve()
    rel = Path(requested)
    if ".." in rel.parts or "\x00" in requested:
        raise RequestError("forbidden", "'..' is not allowed in replay paths")
    target = (rel if rel.is_absolute() else root / rel).resolve()
    if not target.is_relative_to(root):
        raise RequestError("forbidden", f"{requested!r} is outside the allowed directory")
    if not target.exists():
        raise RequestError("not_found", f"{requested!r} does not exist")
    try:
        files = [f.resolve() for f in expand_paths([target])]
    except SourceError as exc:
        raise RequestError("bad_audio", redact(str(exc))) from None
    outside = [f for f in files if not f.is_relative_to(root)]
    if outside:
        raise RequestError("forbidden", f"{requested!r} links outside the allowed directory")
    return files


async def start_replay(daemon: Any, msg: dict, ref: Any) -> list[dict]:
    """Start the stream(s) a ``replay`` asks for on ``daemon``; the ``ack`` to send back.

    File work (path checks, writing the upload) runs off the loop through ``daemon._off_loop``;
    an upload's private file is removed when its streams end (or at once if they never start).
    A chunked upload arrives already in its file (``upload["stored"]``, streamer/chunked.py):
    claimed here once its stream owns it, removed by the server otherwise.
    """
    from streamer.guards import Busy

    # The stream slot is held from the first moment, before any file work: 60 requests at
    # once with a limit of 8 then get 8 slots and 52 prompt limit_reached, rather than 60
    # path checks racing for the 8 file threads (busy) before the limit was ever looked at.
    try:
        with daemon._slots.opening():
            return await _replay(daemon, msg, ref)
    except Busy as exc:
        raise RequestError("limit_reached", str(exc)) from None


async def _replay(daemon: Any, msg: dict, ref: Any) -> list[dict]:
    from streamer.sources import FileSource, show_path

    speed, loop_ = float(msg.get("speed", 1.0)), bool(msg.get("loop", False))
    split = bool(msg.get("split_channels", False))
    upload_path = stored = None
    if "upload" in msg:
        name, stored = msg["upload"]["name"], msg["upload"].get("stored")
        upload_path = stored.path if stored is not None else await daemon._off_loop(
            daemon.uploads.save, name, msg["upload"]["bytes"])
        daemon._redact.hide(str(upload_path), show_path(name))
        files, kind, base, label = [upload_path], "upload", Path(name).stem, name
        skip = False
    else:
        files = await daemon._off_loop(resolve_replay_path, daemon.config.allowed_dir,
                                       msg["path"], daemon._redact)
        kind, base, label = "file", Path(msg["path"]).stem, msg["path"]
        skip = len(files) > 1  # a directory (expanded here, so its links were checked)
    # label: what clients see as the source (their own words, never our paths)
    src = FileSource(files, daemon.model.sample_rate, name=daemon._stream_name(base),
                     speed=speed, loop=loop_, split_channels=split, gap_s=daemon.config.gap_s,
                     max_channels=MAX_REPLAY_CHANNELS, label=label[:1024],
                     skip_unreadable=skip)
    if upload_path is not None:
        daemon._uploads[id(src)] = upload_path  # removed when its streams end
        if stored is not None:
            stored.claimed = True
    try:
        ids = await daemon._start_source(src, kind=kind, ref=ref, slot_held=True)
    except RequestError:
        if upload_path is not None:
            daemon._uploads.pop(id(src), None)
            daemon.uploads.remove(upload_path)
            daemon._redact.forget(str(upload_path))
        raise
    return [protocol.ack("replay", ref=ref, stream=ids[0])]
