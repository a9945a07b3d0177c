"""The daemon under hostile and careless input (issue 14): each hole as a regression test
against a real daemon with real websocket clients, plus the variants the probe did not try."""

from __future__ import annotations

import asyncio
import os
import threading
import time

import pytest

from streamer import protocol
from streamer.daemon import _RequestError
from streamer.sources import FileSource, Source
from tests.streamer_harness import (
    DaemonProcess,
    client,
    copy_files,
    make_config,
    running,
    tess_files,
)


def _ended(sid: str):
    return lambda m: m["type"] == "stream_ended" and m["stream"] == sid


# ----------------------------------------------------------------------------- special files

class HangingSource(Source):
    """A source whose open() never returns, like a file on a hung network mount."""

    kind = "file"

    def __init__(self) -> None:
        self.name, self.sample_rate = "hang", 16000
        self.release = threading.Event()

    @property
    def stream_ids(self):
        return [self.name]

    def open(self):
        self.release.wait(60)
        return self


@pytest.mark.timeout(90)
def test_special_files_refused_nothing_stalls(tmp_path, tiny_model_path, tess_dir):
    """FIFOs in the allowed directory are refused at once (more requests than the loop's
    default executor has threads), pings and a bystander stream go on, a directory holding a
    FIFO plays its regular files, a file swapped for a FIFO while it plays ends that stream
    with an error, and a file check that hangs is answered after file_timeout_s."""
    allowed = tmp_path / "allowed"
    clip = copy_files(tess_files(tess_dir, 1), allowed / "d")[0]
    os.mkfifo(allowed / "pipe.wav")
    os.mkfifo(allowed / "d" / "fifo.flac")
    swap = copy_files([clip], allowed)[0]
    cfg = make_config(tmp_path, tiny_model_path, allowed_dir=allowed, file_timeout_s=1.0)
    bystander = FileSource([clip], 16000, name="bystander", speed=4, loop=True)

    async def main():
        async with running(cfg, [bystander]) as daemon, client(daemon) as c:
            t0 = time.monotonic()
            for i in range(8):
                reply = await c.request(protocol.replay(path="pipe.wav", id=f"f{i}"), timeout=10)
                assert reply["type"] == "error" and reply["code"] == "bad_audio", reply
                assert "not a regular file" in reply["message"], reply
                pong = await c.request(protocol.ping(id=f"p{i}"), timeout=10)
                assert pong["type"] == "pong"
            refused_in = time.monotonic() - t0
            seq = c.of("prediction", "bystander")[-1]["seq"] if c.of("prediction") else -1
            await c.until(lambda m: m["type"] == "prediction" and m["stream"] == "bystander"
                          and m["seq"] > seq + 2, timeout=30)
            d_ack = await c.request(protocol.replay(path="d", speed=0, id="d"))
            assert d_ack["type"] == "ack", d_ack
            await c.until(_ended(d_ack["stream"]), seen=True)
            s_ack = await c.request(protocol.replay(path=swap.name, speed=0, loop=True, id="s"))
            assert s_ack["type"] == "ack", s_ack
            os.mkfifo(tmp_path / "new-fifo")
            os.replace(tmp_path / "new-fifo", swap)
            ended = await c.until(_ended(s_ack["stream"]), seen=True)
            with pytest.raises(_RequestError) as hung:
                await daemon._start_source(HangingSource())
            return c, refused_in, d_ack, s_ack, ended, hung.value

    c, refused_in, d_ack, s_ack, ended, hung = asyncio.run(main())
    assert refused_in < 30
    assert c.of("stream_ended", d_ack["stream"])[0]["reason"] == "eof"
    assert c.of("prediction", d_ack["stream"])
    assert ended["reason"] == "error"
    errs = [m for m in c.of("error") if m.get("stream") == s_ack["stream"]]
    assert errs and "not a regular file" in errs[0]["message"], errs
    assert hung.code == "source_failed" and "longer than 1 s" in hung.message


@pytest.mark.timeout(120)
def test_sigterm_bounded_while_sources_block(tmp_path, tiny_model_path):
    """SIGTERM stops the CLI daemon in bounded time while stdin never delivers and after a
    client asked for a FIFO (which used to hang a thread that interpreter exit waited for)."""
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    os.mkfifo(allowed / "pipe.wav")
    r, w = os.pipe()  # stdin for the daemon: open, silent
    try:
        d = DaemonProcess(["--replay", "-", "--model", str(tiny_model_path), "--device", "cpu",
                           "--vad", "energy", "--explain-every", "0", "--allowed-dir",
                           str(allowed), "--sessions-dir", str(tmp_path / "s")], cwd=tmp_path,
                          stdin=r)

        async def ask():
            async with client(d.url) as c:
                return await c.request(protocol.replay(path="pipe.wav", id="x"), timeout=20)

        reply = asyncio.run(ask())
        t0 = time.monotonic()
        d.signal()
        rc, err = d.wait(timeout=30)
        took = time.monotonic() - t0
    finally:
        os.close(w)
        os.close(r)
    assert reply["type"] == "error" and reply["code"] == "bad_audio", reply
    assert rc == 0, err
    assert took < 20, took


def test_fifo_on_command_line_does_not_block(tmp_path):
    """The same check for sources given by the operator (``--replay FIFO``)."""
    from streamer.sources import SourceError

    os.mkfifo(tmp_path / "p.wav")
    t0 = time.monotonic()
    with pytest.raises(SourceError, match="not a regular file"):
        FileSource([tmp_path / "p.wav"], 16000).open()
    assert time.monotonic() - t0 < 5
