"""`emotion-monitor stream | devices | sessions`: the capture daemon's commands.

Light on purpose: torch, websockets and the sources are imported inside the handlers, so
``emotion-monitor --help`` stays instant.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

from emotion_monitor.cliutil import (
    PRECISION_HELP,
    PRECISIONS,
    add_command,
    default_model_path,
    model_help,
)

DEFAULT_SESSIONS = "sessions"


def register(sub: Any) -> None:
    _register_stream(sub)
    add_command(sub, "devices", help="list audio input devices (for stream --mic --device)",
                description="List the audio input devices PortAudio sees, with their index, "
                            "host API, channels and native rate; the default one is marked.",
                example="emotion-monitor devices", handler=_devices)
    _register_sessions(sub)


def _register_stream(sub: Any) -> None:
    p = add_command(
        sub, "stream", help="run the capture daemon (mic, files, stdin or calls -> websocket)",
        description="Capture audio from the microphone, replayed files or raw PCM on stdin; "
                    "classify sliding windows with a TorchScript model, explain them with "
                    "Grad-CAM, and serve predictions over a websocket (protocol v1, "
                    "docs/protocol.md). Every message is logged to sessions/<id>.jsonl "
                    "(explanations only every --log-explanations-every-th), gzip-compressed "
                    "to <id>.jsonl.gz when the session closes. "
                    "Several --replay options (and --mic) make several streams. Phone "
                    "platforms push live calls to ws://HOST:PORT/ingest (--ingest: no local "
                    "source, wait for calls; docs/ingest.md).",
        example="emotion-monitor stream --replay ../shared/data/tess/OAF_angry --speed 1 --loop",
        handler=_stream)
    src = p.add_argument_group("sources (at least one)")
    src.add_argument("--mic", action="store_true", help="capture the microphone")
    src.add_argument("--mic-device", "--input-device", dest="mic_device", default=None,
                     metavar="X", help="input device index or name (emotion-monitor devices); "
                     "also accepted as --device X with --mic when X is not auto/cpu/cuda")
    src.add_argument("--replay", action="append", nargs="+", metavar="PATH", default=[],
                     help="files or directories replayed as one stream (repeat the option for "
                          "more streams); '-' reads raw PCM from stdin")
    src.add_argument("--speed", type=float, default=1.0,
                     help="replay pace: 1 real time, N times faster, 0 as fast as possible")
    src.add_argument("--loop", action="store_true", help="replay forever")
    src.add_argument("--split-channels", action="store_true",
                     help="one stream per channel (e.g. agent/caller of a stereo call)")
    src.add_argument("--gap", type=float, default=0.5, metavar="S",
                     help="silence between replayed files, seconds (default 0.5)")
    src.add_argument("--rate", type=int, default=16000, help="stdin PCM sample rate")
    src.add_argument("--format", default="s16le", choices=["s16le", "f32le"],
                     help="stdin PCM sample format")
    src.add_argument("--channels", type=int, default=1, help="stdin PCM channels")
    ing = p.add_argument_group(
        "call ingest (phone platforms push calls to ws://HOST:PORT/ingest; docs/ingest.md)",
        "On whenever a token is set (--token, --ingest-token or $EMOTION_MONITOR_TOKEN), even "
        "on loopback: call audio is personal data.")
    ing.add_argument("--ingest", action="store_true",
                     help="wait for calls with no local source (a call floor has no "
                     "microphone); needs a token")
    ing.add_argument("--ingest-token", default=None, metavar="T",
                     help="a separate token for /ingest (then only it is accepted there; "
                     "default: --token)")
    ing.add_argument("--max-calls", type=int, default=32, metavar="N",
                     help="concurrent calls; more are closed with 1013 (default 32)")
    ing.add_argument("--ingest-idle-s", type=float, default=10.0, metavar="S",
                     help="close a call whose sender sends no media for S seconds (default 10)")
    m = p.add_argument_group("model and inference")
    m.add_argument("--model", default=str(default_model_path()), help=model_help())
    m.add_argument("--device", default="auto",
                   help="inference device auto|cpu|cuda (auto = CUDA when present)")
    m.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help=PRECISION_HELP)
    m.add_argument("--hop", type=float, default=0.5, help="window hop, seconds (default 0.5)")
    m.add_argument("--explain-every", type=int, default=1, metavar="N",
                   help="Grad-CAM every N-th voiced window of a stream; 0 = off (default 1)")
    m.add_argument("--stream-norm", action="store_true",
                   help="standardise each stream's features by its own running statistics "
                   "(models whose card offers it; each emotion weighs the same in them). Off by "
                   "default: after a minute it helps streams that swing between emotions and "
                   "still costs a few points where one dominates (benchmarks/stream_norm.py)")
    m.add_argument("--vad", default="silero", choices=["silero", "energy", "off"],
                   help="voice activity detection (default silero)")
    m.add_argument("--vad-threshold", type=float, default=0.5,
                   help="per-frame speech probability for silero (default 0.5)")
    m.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    m.add_argument("--inference", default="local", metavar="WHERE",
                   help="where windows are inferred: local (default, in this process) or the "
                   "Ray Serve application of `emotion-monitor cluster up`: ray (this machine's "
                   "cluster), ray://HOST[:PORT] (Serve's HTTP proxy on HOST, port 8000) or "
                   "http://HOST:PORT/emotion. VAD stays here; a --model given must be the file the "
                   "cluster serves; see docs/scale.md")
    m.add_argument("--inference-fallback", choices=["none", "local"], default="none",
                   help="while Serve is unreachable: drop voiced windows (none, counted in "
                   "status) or infer them here with --model, which must be the served file")
    m.add_argument("--inference-token", default=None, metavar="T",
                   help="the Serve deployment's token (`cluster up --token`; default: "
                   "$EMOTION_MONITOR_SERVE_TOKEN)")
    m.add_argument("--inference-timeout", type=float, default=10.0, metavar="S",
                   help="per request to Serve; its windows are dropped past it (default 10)")
    m.add_argument("--inference-request-windows", type=int, default=8, metavar="N",
                   help="voiced windows per request to Serve, up to 4 requests at once "
                   "(default 8)")
    s = p.add_argument_group("server and security")
    s.add_argument("--host", default="127.0.0.1",
                   help="bind address (default 127.0.0.1; anything else needs a token)")
    s.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 = any free)")
    s.add_argument("--token", default=None,
                   help="required from clients (default: $EMOTION_MONITOR_TOKEN)")
    s.add_argument("--allow-origin", action="append", default=[], metavar="URL",
                   help="extra allowed browser Origin (the dashboard's are allowed)")
    s.add_argument("--allowed-dir", default=None,
                   help="directory clients may replay files from (default: none)")
    s.add_argument("--max-clients", type=int, default=64)
    s.add_argument("--max-upload-mb", type=float, default=20.0,
                   help="largest uploaded file a client may replay (MiB, default 20); past "
                   "--max-inline-upload-mb it must come as a chunked upload")
    s.add_argument("--max-inline-upload-mb", type=float, default=4.0,
                   help="largest upload a replay may carry inline as base64 (MiB, default 4); "
                   "the websocket frame limit, so what each client can make the daemon "
                   "buffer, follows from it")
    s.add_argument("--queue-size", type=int, default=256,
                   help="messages buffered per client before the oldest are dropped")
    d = p.add_argument_group("conversation dynamics (calls: pushed calls, --split-channels)")
    d.add_argument("--dead-air-s", type=float, default=10.0, metavar="S",
                   help="a silence on both sides of a call this long counts as dead air "
                   "(default 10)")
    d.add_argument("--split-roles", default="", metavar="ROLES",
                   help="roles of a split recording's channels, e.g. agent,caller (default: "
                   "none); pushed calls carry their own")
    d.add_argument("--no-dynamics", action="store_true",
                   help="send no 'dynamics' messages (talk share, interruptions, dead air...)")
    o = p.add_argument_group("session log")
    o.add_argument("--sessions-dir", default=DEFAULT_SESSIONS,
                   help=f"where session logs go (default {DEFAULT_SESSIONS}/)")
    o.add_argument("--session-id", default=None,
                   help="name the session (default: time+random). An id that already has a "
                   "log in --sessions-dir is refused at start-up (exit code 2): one session, "
                   "one log, so a restart never appends a second hello")
    o.add_argument("--log-explanations-every", type=int, default=10, metavar="N",
                   help="log only every N-th explanation frame of a stream (they are ~95%% of "
                   "a log's bytes); 0 = none. Predictions and all other messages are always "
                   "logged (default 10)")
    o.add_argument("--max-session-mb", type=float, default=None, metavar="MB",
                   help="once the session log reaches MB MiB, explanation frames are no longer "
                   "logged and one log_truncated error is written; predictions and all other "
                   "messages are still logged, so the file keeps growing slowly (~3 MB per "
                   "stream-hour uncompressed). Default: no cap")
    o.add_argument("--retain-days", type=float, default=None, metavar="D",
                   help="delete session logs and recorded audio last written more than D days "
                   "ago, at start-up and once an hour (default: keep everything)")
    o.add_argument("--record-audio", action="store_true",
                   help="also store each stream's audio as FLAC (off by default: sensitive)")
    o.add_argument("--exit-when-done", action="store_true",
                   help="exit once every stream has ended (scripts, benchmarks)")
    o.add_argument("-v", "--verbose", action="store_true", help="log more")


def _stream_names(paths: list[str], used: set[str]) -> str:
    base = Path(paths[0]).stem if len(paths) == 1 else Path(paths[0]).parent.name or "replay"
    if len(paths) == 1 and Path(paths[0]).is_dir():
        base = Path(paths[0]).resolve().name
    base = re.sub(r"[^A-Za-z0-9_.-]+", "_", base).strip("_.")[:48] or "replay"
    name, n = base, 1
    while name in used:
        n += 1
        name = f"{base}-{n}"
    used.add(name)
    return name


def build_sources(args: argparse.Namespace, sample_rate: int) -> list[Any]:
    from streamer.sources import FileSource, MicSource, StdinSource

    sources: list[Any] = []
    used: set[str] = set()
    if args.mic:
        sources.append(MicSource(sample_rate, device=args.mic_device, name="mic"))
        used.add("mic")
    for group in args.replay:
        if group == ["-"]:
            sources.append(StdinSource(args.rate, sample_rate, fmt=args.format,
                                       channels=args.channels, name=_stream_names(["stdin"],
                                                                                  used),
                                       split_channels=args.split_channels))
            continue
        if "-" in group:
            raise SystemExit("error: '-' (stdin) must be a --replay of its own")
        sources.append(FileSource(group, sample_rate, name=_stream_names(group, used),
                                  speed=args.speed, loop=args.loop,
                                  split_channels=args.split_channels, gap_s=args.gap,
                                  max_channels=2))
    return sources


def _stream(args: argparse.Namespace) -> int:
    import asyncio
    import logging

    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if not args.mic and not args.replay and not args.ingest:
        print("error: give a source: --mic, --replay PATH..., --replay - (stdin), or --ingest "
              "(wait for calls)", file=sys.stderr)
        return 2
    if args.device not in ("auto", "cpu") and not args.device.startswith("cuda"):
        if args.mic and args.mic_device is None:  # `--mic --device X` names the input device
            args.mic_device, args.device = args.device, "auto"
        else:
            print(f"error: --device {args.device!r}: use auto, cpu or cuda (the microphone is "
                  "--mic-device)", file=sys.stderr)
            return 2
    from streamer.server import DEFAULT_ORIGINS, TOKEN_ENV, ConfigError, ServerConfig, check_bind
    from streamer.sessionlog import existing_log

    token = args.token or os.environ.get(TOKEN_ENV) or None
    ingest_token = args.ingest_token or token
    try:  # before torch is imported: a refused bind should not take seconds
        check_bind(args.host, token)
        if args.ingest and not ingest_token:
            raise ValueError(f"--ingest needs a token (--token, --ingest-token or {TOKEN_ENV}): "
                             "call audio is never accepted without one")
        if args.max_calls < 1 or args.ingest_idle_s <= 0:
            raise ValueError("--max-calls and --ingest-idle-s must be positive")
        if args.log_explanations_every < 0:
            raise ValueError("--log-explanations-every must be >= 0")
        if args.dead_air_s <= 0:
            raise ValueError("--dead-air-s must be positive")
        from streamer.dynamics import parse_roles

        roles = parse_roles(args.split_roles) if args.split_roles else ()
        for name in ("max_session_mb", "retain_days"):
            if getattr(args, name) is not None and getattr(args, name) <= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive")
        if args.session_id is not None and existing_log(args.sessions_dir, args.session_id):
            raise ValueError(f"session {args.session_id!r} already has a log in "
                             f"{args.sessions_dir}; restarting a session is refused (its "
                             "seq would restart): choose another --session-id")
    except (ConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    import torch

    torch.set_num_threads(max(1, args.threads))
    from streamer import stream_norm
    from streamer.backends import InferenceUnavailable, RemoteOptions, connect_remote
    from streamer.backends.wire import TOKEN_ENV as SERVE_TOKEN_ENV
    from streamer.daemon import Daemon, DaemonConfig
    from streamer.ingest import IngestConfig
    from streamer.model import ModelError, ServedModel

    server = ServerConfig(host=args.host, port=args.port, token=token,
                          origins=(*DEFAULT_ORIGINS, *args.allow_origin),
                          max_clients=args.max_clients,
                          max_upload_bytes=int(args.max_upload_mb * 2**20),
                          max_inline_upload_bytes=int(args.max_inline_upload_mb * 2**20),
                          queue_size=args.queue_size)
    config = DaemonConfig(
        model_path=args.model, device=args.device, precision=args.precision, hop_s=args.hop,
        explain_every=args.explain_every, stream_norm=args.stream_norm, vad=args.vad,
        vad_threshold=args.vad_threshold, sessions_dir=args.sessions_dir,
        session_id=args.session_id, log_explanations_every=args.log_explanations_every,
        max_session_mb=args.max_session_mb, retain_days=args.retain_days,
        record_audio=args.record_audio, allowed_dir=args.allowed_dir, gap_s=args.gap,
        exit_when_done=args.exit_when_done, server=server, dynamics=not args.no_dynamics,
        dead_air_s=args.dead_air_s, split_roles=roles,
        ingest=IngestConfig(token=args.ingest_token, max_calls=args.max_calls,
                            idle_s=args.ingest_idle_s),
        max_streams=max(DaemonConfig.max_streams, 2 * args.max_calls + 8))  # 2 tracks a call
    config.inference, config.remote = args.inference, RemoteOptions(
        fallback_local=args.inference_fallback == "local", timeout_s=args.inference_timeout,
        request_windows=args.inference_request_windows,
        check_model=args.model != str(default_model_path()),
        token=args.inference_token or os.environ.get(SERVE_TOKEN_ENV) or None)
    try:  # remote inference: the served model's card, read from the cluster
        model = (ServedModel.load(args.model, args.device, args.precision)
                 if args.inference == "local"
                 else connect_remote(config))
    except (ModelError, InferenceUnavailable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.stream_norm and not stream_norm.supported(model):
        print(f"error: --stream-norm: {args.model} has no per-stream normalisation "
              "(its card has no 'stream_norm')", file=sys.stderr)
        return 2
    sources = build_sources(args, model.sample_rate)
    daemon = Daemon(config, sources, model=model)

    async def main() -> int:
        task = asyncio.create_task(daemon.run())
        ready = asyncio.create_task(daemon.wait_ready())
        await asyncio.wait([task, ready], return_when=asyncio.FIRST_COMPLETED)
        if daemon.port:
            print(f"emotion-monitor: session {daemon.session_id} serving "
                  f"ws://{args.host}:{daemon.port}/ (log {daemon.log.path if daemon.log else '-'}"
                  f"; model {model.card.get('name')} {model.card.get('version', '')}"
                  f"{f', {model.precision}' if getattr(model, 'precision', None) else ''})",
                  file=sys.stderr, flush=True)
            print(f"emotion-monitor: calls on ws://{args.host}:{daemon.port}/ingest (token "
                  f"required; max {args.max_calls} calls)" if ingest_token else
                  "emotion-monitor: call ingest (/ingest) is off until a token is set "
                  f"(--token, --ingest-token or {TOKEN_ENV})", file=sys.stderr, flush=True)
        return await task

    try:
        return asyncio.run(main())
    except OSError as exc:  # port in use, permission denied
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _devices(args: argparse.Namespace) -> int:
    from streamer.sources import SourceError, list_devices

    try:
        devices = list_devices()
    except SourceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if not devices:
        print("no input devices found")
        return 0
    for d in devices:
        mark = "*" if d["default"] else " "
        print(f"{mark} {d['index']:3d}  {d['name']}  ({d['hostapi']}, "
              f"{d['max_input_channels']} ch, {d['default_samplerate']:.0f} Hz)")
    return 0


# ----------------------------------------------------------------------------- sessions

def _register_sessions(sub: Any) -> None:
    p = add_command(sub, "sessions", help="list, show and export session logs",
                    description="Read the daemon's session logs (sessions/<id>.jsonl, or "
                                "<id>.jsonl.gz once the session has closed).",
                    example="emotion-monitor sessions list")
    ss = p.add_subparsers(dest="sessions_command", metavar="ACTION")
    for name, helptext, example, handler in (
        ("list", "list sessions with their streams and counts",
         "emotion-monitor sessions list", _sessions_list),
        ("show", "summarize one session (a unique id prefix is enough)",
         "emotion-monitor sessions show 20261121T2115", _sessions_show),
        ("export", "export a session's predictions (CSV to stdout or -o FILE)",
         "emotion-monitor sessions export 20261121T2115 --csv -o session.csv", _sessions_export),
    ):
        q = add_command(ss, name, help=helptext, description=helptext[0].upper() + helptext[1:]
                        + ".", example=example, handler=handler)
        q.add_argument("--sessions-dir", default=DEFAULT_SESSIONS,
                       help=f"session logs directory (default {DEFAULT_SESSIONS}/)")
        if name != "list":
            q.add_argument("id", help="session id or a unique prefix")
        if name == "show":
            q.add_argument("--json", action="store_true", help="machine-readable output")
        if name == "export":
            q.add_argument("--csv", action="store_true", default=True,
                           help="CSV, one row per window (the only format)")
            q.add_argument("--dynamics", action="store_true",
                           help="export the calls' conversation dynamics instead: one row per "
                           "call per second (dynamics messages)")
            q.add_argument("-o", "--output", default=None, help="file (default stdout)")


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


def _sessions_list(args: argparse.Namespace) -> int:
    from streamer.sessionlog import list_sessions, summarize

    paths = list_sessions(args.sessions_dir)
    if not paths:
        print(f"no sessions in {args.sessions_dir}/")
        return 0
    for path in paths:
        s = summarize(path)
        print(f"{s['session_id']}  {_when(s['started'])}  model={s['model']}  "
              f"streams={len(s['streams'])}  predictions={s['predictions']}  "
              f"explanations={s['explanations']}")
    return 0


def _sessions_show(args: argparse.Namespace) -> int:
    from streamer.sessionlog import session_path, summarize

    try:
        s = summarize(session_path(args.sessions_dir, args.id))
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(s, indent=2))
        return 0
    print(f"session {s['session_id']} ({s['path']})\n  model: {s['model']}\n"
          f"  from {_when(s['started'])} to {_when(s['ended'])}\n"
          f"  {s['messages']} messages, {s['predictions']} predictions, "
          f"{s['explanations']} explanations")
    for sid, st in s["streams"].items():
        labels = ", ".join(f"{k} {v}" for k, v in sorted(st["labels"].items(),
                                                         key=lambda kv: -kv[1]))
        print(f"  stream {sid}: {st['windows']} windows ({st['voiced']} voiced), "
              f"{st['t_end']:.1f} s; {labels or 'no voiced windows'}")
    for e in s["errors"]:
        print(f"  error: {e}")
    if s["partial_last_line"]:
        print("  (the last line was cut short, e.g. by a crash, and skipped)")
    return 0


def _sessions_export(args: argparse.Namespace) -> int:
    from streamer.sessionlog import export_csv, export_dynamics_csv, session_path

    export = export_dynamics_csv if args.dynamics else export_csv

    try:
        path = session_path(args.sessions_dir, args.id)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.output:
        with open(args.output, "w", newline="", encoding="utf-8") as f:
            n = export(path, f)
        print(f"{n} rows -> {args.output}", file=sys.stderr)
    else:
        export(path, sys.stdout)
    return 0
