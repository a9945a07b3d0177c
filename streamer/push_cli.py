"""`emotion-monitor push`: stream audio to a daemon's /ingest as a phone platform would.

Light on purpose: numpy, websockets and the client (``streamer/push.py``) are imported inside
the handler, so ``emotion-monitor --help`` stays instant.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Any

from emotion_monitor.cliutil import add_command

FORMATS = ("mulaw", "alaw", "l16", "s16le", "f32le")  # streamer.push.FORMATS, without numpy


def register(sub: Any) -> None:
    p = add_command(
        sub, "push", help="push call audio to a daemon's /ingest (as Twilio/Telnyx would)",
        description="Stream files (or the microphone) to a running daemon's ingest websocket "
                    "in real time, as a phone platform forks a live call: Media Streams JSON "
                    "with 20-ms media frames, mu-law at 8 kHz by default, or the raw variant "
                    "(binary PCM). A stereo file is one call with two tracks (channel 0 "
                    "inbound = caller, channel 1 outbound = agent); a mono file is the caller "
                    "only; several FILEs are several concurrent calls. Exit code 0 when every "
                    "call ended with the daemon's normal close (1000).",
        example="emotion-monitor push call.wav --url ws://127.0.0.1:8765/ingest --token T",
        handler=_push)
    p.add_argument("files", nargs="*", metavar="FILE", help="audio files, one call each")
    p.add_argument("--mic", action="store_true", help="push the microphone (one track, caller) "
                   "until Ctrl-C (or SIGTERM), which ends the call with a stop")
    p.add_argument("--mic-device", default=None, metavar="X",
                   help="input device index or name (emotion-monitor devices)")
    p.add_argument("--url", default="ws://127.0.0.1:8765/ingest",
                   help="the daemon's ingest URL (default %(default)s)")
    p.add_argument("--token", default=None,
                   help="ingest token (default: $EMOTION_MONITOR_TOKEN)")
    p.add_argument("--token-via", default="header", choices=("header", "query", "param"),
                   help="send it as Authorization: Bearer (default), ?token=, or the start's "
                   "customParameters.token (as Twilio's <Parameter> does)")
    p.add_argument("--format", default="mulaw", choices=FORMATS,
                   help="sample format (default mulaw; l16 is big-endian, RFC 3551)")
    p.add_argument("--rate", type=int, default=None,
                   help="sample rate sent (default 8000 for mulaw/alaw, else 16000)")
    p.add_argument("--protocol", default="media-streams", choices=("media-streams", "raw"),
                   help="Media Streams JSON (default) or the raw binary variant")
    p.add_argument("--layout", default="twilio", choices=("twilio", "telnyx"),
                   help="Media Streams field names: camelCase (Twilio, SignalWire; default) "
                   "or snake_case (Telnyx)")
    p.add_argument("--speed", type=float, default=1.0,
                   help="1 real time (default), N times faster, 0 as fast as possible (the "
                   "daemon refuses senders more than 2 s ahead of real time)")
    p.add_argument("--call-id", default=None,
                   help="call id (default: random CA...; with several files, -1, -2... added)")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="custom parameter sent in the start (repeat)")


def _push(args: argparse.Namespace) -> int:
    import asyncio

    from streamer import push
    from streamer.sources import SourceError

    if bool(args.files) == bool(args.mic):
        print("error: give FILE... or --mic (not both)", file=sys.stderr)
        return 2
    token = args.token or os.environ.get("EMOTION_MONITOR_TOKEN") or None
    rate = args.rate or push.DEFAULT_RATES[args.format]
    params = dict(kv.split("=", 1) for kv in args.param if "=" in kv)
    kw = dict(token=token, token_via=args.token_via, fmt=args.format, protocol=args.protocol,
              layout=args.layout, params=params)

    async def main() -> list[push.PushResult]:
        if args.mic:  # Ctrl-C ends the call as a hang-up does: a stop, then the close
            stop = asyncio.Event()
            for sig in (signal.SIGINT, signal.SIGTERM):
                asyncio.get_running_loop().add_signal_handler(sig, stop.set)
            blocks = push.mic_blocks(rate, device=args.mic_device, stop=stop)
            return [await push.push_call(args.url, blocks, rate, channels=1,
                                         call_id=args.call_id, **kw)]
        audio = [push.load_audio(f, rate) for f in args.files]
        ids = [None if args.call_id is None else args.call_id if len(audio) == 1
               else f"{args.call_id}-{i + 1}" for i in range(len(audio))]
        return await asyncio.gather(*(push.push_call(args.url, a, rate, speed=args.speed,
                                                     call_id=i, **kw)
                                      for a, i in zip(audio, ids, strict=True)))

    try:
        results = asyncio.run(main())
    except (OSError, ValueError, RuntimeError, SourceError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # websockets' InvalidStatus (401, 403, 503) and the like
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    for r in results:
        print(f"call {r.call_id}: {r.seconds_sent:.2f} s sent in {r.wall_s:.2f} s; closed "
              f"{r.close_code} {r.close_reason}", file=sys.stderr)
    return 0 if all(r.close_code == 1000 for r in results) else 1
