"""The live emotion monitor: a Streamlit page over one or more capture daemons.

Start it with ``emotion-monitor dashboard [--url ws://127.0.0.1:8765 ...] [--token T]``, which
runs ``streamlit run dashboard/app.py -- ARGS``. The websocket feed runs in a thread of its own
(`dashboard.client.Feed`, kept in ``st.session_state``); the live view is a fragment that
redraws from a copy of the feed's store at most twice a second, so the page stays responsive
and a slow redraw never holds up incoming data. Never imports torch.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import streamlit as st

from dashboard import figures, smoothing, wallboard
from dashboard.alerts import (
    SIDE_CHOICES,
    Alert,
    AlertEngine,
    DeadAir,
    LouderThanUsual,
    SustainedFall,
    SustainedHigh,
    TalkShareAbove,
)
from dashboard.client import DEFAULT_URL, Feed
from dashboard.replay import DEFAULT_MAX_UPLOAD_BYTES, SPEEDS, check_path, check_upload
from dashboard.session import Session, list_sessions, predictions_csv, read_session
from dashboard.state import CANONICAL_CLASSES, StreamView, View, snapshot
from streamer import protocol

MAX_STREAMS_SHOWN = 4
MIN_REFRESH_S = 0.5  # at most two redraws a second
# Streamlit dims elements while a fragment reruns; a live view reruns all the time, so the
# dimming would only make it flicker. Plain CSS, no script.
PAGE_CSS = """<style>
div[data-stale="true"], [data-testid="stExpander"] details,
[data-testid="stExpander"] summary { opacity: 1 !important; transition: none !important; }
</style>"""
START_HINT = ("Start one with `emotion-monitor stream --replay examples/tess_stream --loop`, "
              "or run everything at once with `emotion-monitor demo`.")


# ----------------------------------------------------------------------------- settings

def parse_args(argv: list[str]) -> argparse.Namespace:
    """The options `emotion-monitor dashboard` passes through (after ``--``)."""
    p = argparse.ArgumentParser(prog="dashboard/app.py", add_help=False, allow_abbrev=False)
    p.add_argument("--url", action="append", default=None)
    p.add_argument("--token", default=os.environ.get("EMOTION_MONITOR_TOKEN"))
    p.add_argument("--sessions-dir", default="sessions")
    p.add_argument("--max-upload-mb", type=float, default=DEFAULT_MAX_UPLOAD_BYTES / 2**20)
    p.add_argument("--refresh", type=float, default=MIN_REFRESH_S)
    p.add_argument("--no-connect", action="store_true")
    args, _ = p.parse_known_args(argv)
    args.url = args.url or [DEFAULT_URL]
    args.refresh = max(MIN_REFRESH_S, args.refresh)
    return args


def config() -> argparse.Namespace:
    if "config" not in st.session_state:
        st.session_state.config = parse_args(sys.argv[1:])
    return st.session_state.config


def _session_alive() -> Any:
    """A callable telling the feed whether this browser session still exists."""
    try:
        from streamlit import runtime
        from streamlit.runtime.scriptrunner import get_script_run_ctx

        ctx = get_script_run_ctx()
        session_id = ctx.session_id if ctx else None
    except Exception:  # noqa: BLE001 - outside a running server (tests): no watchdog
        return None
    if session_id is None or not runtime.exists():
        return None

    def alive() -> bool:
        return runtime.get_instance().is_active_session(session_id)

    return alive


def get_feed(cfg: argparse.Namespace) -> Feed:
    feed = st.session_state.get("feed")
    if feed is None:
        feed = Feed(cfg.url, token=cfg.token, keepalive=_session_alive())
        if not cfg.no_connect:
            feed.start()
        st.session_state.feed = feed
    return feed


# ----------------------------------------------------------------------------- sidebar

def sidebar(cfg: argparse.Namespace, feed: Feed) -> dict[str, Any]:
    sb = st.sidebar
    sb.title("🎙️ Emotion monitor")
    navigation(sb)
    paused = sb.toggle("⏸ Pause view", key="paused",
                       help="Freeze the picture; data keeps arriving and nothing is lost.")
    minutes = sb.select_slider("Timeline shows the last", options=[0.5, 1, 2, 5, 10], value=2,
                               format_func=lambda m: f"{m:g} min")
    tau_s = sb.select_slider(
        "Average emotions over", options=smoothing.CHOICES_S, value=smoothing.DEFAULT_TAU_S,
        format_func=lambda t: "each window" if t == 0 else f"{t:g} s",
        help="The current emotion and the timeline average the windows' probabilities over "
             "about this much speech (one window alone is noisy on a new voice; measured in "
             "docs/results/crosscorpus.md). Alerts, exports and the session log use each "
             "window as it came.")
    floor_on = sb.toggle(
        "Say \"uncertain\" below the model's floor", value=True,
        help="When the averaged label's probability is below the confidence floor in the "
             "model's card, show it as uncertain (leaning towards the label): on new voices "
             "such labels are mostly wrong. Models without a floor show every label.")
    classes = feed.store.classes()
    with sb.expander("🚨 Alert rules", expanded=False):
        high_on = st.checkbox("High emotion for a while", value=True)
        emotions = st.multiselect("Emotions", classes,
                                  default=[c for c in ("angry", "fear") if c in classes])
        threshold = st.slider("At or above", 0.3, 0.95, 0.6, 0.05, format="%.2f")
        duration = st.number_input("For at least (seconds)", 0.0, 120.0, 3.0, 0.5)
        fall_on = st.checkbox("Sustained fall", value=False)
        fall_emotion = st.selectbox("Emotion falling", classes,
                                    index=classes.index("happy") if "happy" in classes else 0)
        drop = st.slider("Falls by", 0.1, 0.9, 0.3, 0.05, format="%.2f")
        span = st.number_input("Compared over (seconds)", 2.0, 300.0, 10.0, 1.0)
        st.caption("Calls (conversation dynamics)")
        loud_on = st.checkbox("Louder than usual", value=True,
                              help="the last 20 s of talk against the side's own earlier talk")
        loud_role = st.selectbox("Whose loudness", SIDE_CHOICES, index=0)
        loud_rise = st.number_input("Louder by at least (dB)", 1.0, 40.0, 8.0, 1.0)
        loud_for = st.number_input("Held for (seconds)", 0.0, 300.0, 10.0, 1.0)
        share_on = st.checkbox("Talk share above", value=True)
        share_role = st.selectbox("Whose talk share", SIDE_CHOICES, index=1)
        share = st.slider("Share above", 0.5, 0.95, 0.8, 0.05, format="%.2f")
        share_over = st.number_input("Over the last (seconds)", 10.0, 3600.0, 120.0, 10.0)
        dead_on = st.checkbox("Dead air", value=True)
        dead_min = st.number_input("Nobody talks for (seconds)", 1.0, 600.0, 15.0, 1.0)
    rules: list[Any] = []
    if high_on and emotions:
        rules.append(SustainedHigh(tuple(emotions), threshold=threshold, min_duration_s=duration))
    if fall_on:
        rules.append(SustainedFall(fall_emotion, drop=drop, span_s=span))
    if loud_on:
        rules.append(LouderThanUsual(loud_role, min_rise_db=loud_rise, for_s=loud_for))
    if share_on:
        rules.append(TalkShareAbove(share_role, share=share, over_s=share_over))
    if dead_on:
        rules.append(DeadAir(min_s=dead_min))
    with feed.store.lock:
        if rules != feed.store.alerts.rules:
            feed.store.alerts.set_rules(rules)
    with sb.expander("🔌 Daemons", expanded=False):
        urls = st.text_area("Websocket URLs, one per line", "\n".join(feed.urls))
        token = st.text_input("Token", value=feed.token or "", type="password")
        if st.button("Reconnect"):
            feed.stop()
            cfg.url = [u.strip() for u in urls.splitlines() if u.strip()] or [DEFAULT_URL]
            cfg.token = token or None
            new = Feed(cfg.url, token=cfg.token, keepalive=_session_alive())
            new.store.alerts.set_rules(rules)
            st.session_state.feed = new.start()
            st.session_state.pop("frozen", None)
            st.rerun()
    return {"paused": paused, "last_s": float(minutes) * 60.0, "rules": rules,
            "tau_s": float(tau_s), "floor_on": bool(floor_on)}


def floors(sources: list[Any], on: bool = True) -> dict[str, float]:
    """Each daemon's model confidence floor (its card in ``hello``; 0 when off or none)."""
    return {s.url: s.min_confidence if on else 0.0 for s in sources}


def navigation(sb: Any) -> None:
    """The wallboard (all calls) and the streams page (live / replay / review), as query
    parameters set from Python: each switch is a browser history entry, so Back works."""
    on_board = st.query_params.get(wallboard.VIEW_PARAM) == wallboard.WALLBOARD
    left, right = sb.columns(2)
    left.button("🧱 Wallboard", key="nav-wallboard", type="primary" if on_board else "secondary",
                on_click=wallboard.show_wallboard, width="stretch",
                help="One tile per live call, most urgent first.")
    right.button("📈 Streams", key="nav-streams", type="secondary" if on_board else "primary",
                 on_click=lambda: st.query_params.from_dict({}), width="stretch",
                 help="Live streams, replay a file, review a session.")


# ----------------------------------------------------------------------------- live view

def live_view(cfg: argparse.Namespace, opts: dict[str, Any]) -> None:
    feed: Feed = st.session_state.feed
    if opts["paused"]:
        if st.session_state.get("frozen") is None:
            st.session_state.frozen = snapshot(feed.store)
        view: View = st.session_state.frozen
        with feed.store.lock:
            waiting = feed.store.messages
        st.info(f"⏸ View paused at {_clock(view.taken_at)}. Data keeps arriving "
                f"({waiting} messages so far); switch the toggle off to catch up.")
    else:
        st.session_state.frozen = None
        view = snapshot(feed.store)

    connection_bar(view)
    call = st.query_params.get(wallboard.CALL_PARAM)
    # Opened from a wallboard tile: the call's streams, whatever was picked before.
    focus = wallboard.call_header(feed, call, opts["tau_s"], opts["floor_on"]) if call else []
    if not view.streams:
        if not any(s.state == "connected" for s in view.sources):
            st.warning(f"**No daemon connected.** {START_HINT}", icon="🔌")
        else:
            st.info("Connected. No stream yet: the daemon has nothing to analyse. "
                    "Start a replay in the **Replay a file** tab.", icon="⏳")
        return
    # Alerts are never paused: the banner always shows what holds now.
    with feed.store.lock:
        active, log = feed.store.alerts.active(), list(feed.store.alerts.log)
    if focus:  # this call's alerts only; the floor's are on the wallboard
        active = [a for a in active if a[1] in focus or a[1] == call]
    alert_banner(active, log, view)

    keys = list(view.streams)
    # Streams that appear while the page is open (a replay, the caller's channel) are added to
    # the picked ones; streams the user removed stay removed.
    seen: set[str] = st.session_state.get("seen_streams", set())
    new = [k for k in keys if k not in seen and not view.streams[k].ended]
    st.session_state.seen_streams = set(keys)
    previous = st.session_state.get("picked_streams")
    if focus:
        wanted = [k for k in focus if k in keys]
    elif previous is None:
        running = [k for k in keys if not view.streams[k].ended] or keys
        wanted = running[:MAX_STREAMS_SHOWN]
    else:
        kept = [k for k in previous if k in keys]
        wanted = (kept + [k for k in new if k not in kept])[:max(MAX_STREAMS_SHOWN, len(kept))]
    # The widget's key names the streams on offer: a new set of streams draws a fresh picker
    # with `wanted` as its default, and the user's choice persists while the set is the same.
    # (Writing a keyed picker's value through session_state from a fragment rerun left it
    # empty in the browser.)
    picked = st.multiselect(
        "Streams", keys, default=wanted, format_func=lambda k: view.streams[k].label,
        key="stream_picker:" + (f"call={call}:" if focus else "") + "|".join(keys),
        help="Agent and caller are separate streams when a call is split by channel.",
    )
    st.session_state.picked_streams = picked
    if not picked:
        st.caption("Pick a stream to show.")
    floor_of = floors(view.sources, opts["floor_on"])
    for key in picked:
        stream_card(view.streams[key], view.classes, opts["last_s"], opts["tau_s"],
                    floor_of.get(view.streams[key].source, 0.0))
    alert_log(view)


def connection_bar(view: View) -> None:
    now = time.time()
    parts = []
    for s in view.sources:
        if s.state == "connected":
            model = ((s.hello or {}).get("model") or {}).get("name", "?")
            since = _ago(now - (s.connected_since or now))
            parts.append(f"🟢 **{s.url}** connected {since} · model `{model}`"
                         + (f" · {s.clients} client(s)" if s.clients is not None else ""))
        elif s.state == "connecting" and s.detail:
            # A retry in flight keeps the last failure on screen, so the reason does not
            # flicker away for the fraction of a second each attempt takes.
            parts.append(f"🟡 **{s.url}** retrying now (last attempt: {s.detail})")
        elif s.state == "connecting":
            parts.append(f"🟡 **{s.url}** connecting…")
        elif s.state == "retrying":
            wait = max(0.0, (s.next_retry_at or now) - now)
            parts.append(f"🔴 **{s.url}** {s.detail} — retrying in {wait:.0f} s")
        else:
            parts.append(f"⚪ **{s.url}** {s.state} {s.detail}")
    st.markdown("  \n".join(parts) or "⚪ no daemon configured")


def alert_banner(active: list[tuple[str, str]], log: list[Alert], view: View) -> None:
    if not active:
        return
    latest = {(a.rule, a.stream): a for a in log}
    for rule, stream in active:
        a = latest.get((rule, stream))
        text = a.message if a else rule
        label = view.streams[stream].label if stream in view.streams else stream
        st.error(f"**ALERT · {label}** — {text}  \n_rule: {rule}_", icon="🚨")


def stream_card(s: StreamView, classes: list[str], last_s: float,
                tau_s: float = smoothing.DEFAULT_TAU_S, floor: float = 0.0) -> None:
    with st.container(border=True):
        state = f" · ended ({s.ended})" if s.ended else ""
        title, action = st.columns([6, 1], vertical_alignment="center")
        title.subheader(f"{s.label}{state}")
        feed: Feed = st.session_state.feed
        if not s.ended and s.source in feed.connected() and action.button(
                "■ Stop", key=f"stop-{s.key}", help="Ask the daemon to end this stream."):
            try:
                feed.send(s.source, protocol.stop_stream(s.stream_id, id=f"stop-{s.stream_id}"))
                st.toast(f"Asked the daemon to stop {s.stream_id}")
            except (ValueError, ConnectionError) as exc:
                st.error(str(exc))
        health_row(s, tau_s, floor)
        left, right = st.columns([3, 2])
        left.plotly_chart(figures.timeline_figure(s.predictions, classes, last_s=last_s,
                                                  tau_s=tau_s, floor=floor),
                          key=f"timeline-{s.key}", config={"displayModeBar": False})
        right.plotly_chart(figures.distribution_figure(s.counts, classes),
                           key=f"dist-{s.key}", config={"displayModeBar": False})
        explanation_block(s.explanation, key=f"expl-{s.key}")


def health_row(s: StreamView, tau_s: float = smoothing.DEFAULT_TAU_S,
               floor: float = 0.0) -> None:
    latest = s.predictions[-1] if s.predictions else None
    voiced = next((p for p in reversed(s.predictions) if p.voiced), None)
    now = smoothing.current(s.predictions, tau_s, floor)
    cols = st.columns(6)
    if latest is not None and latest.voiced and now is not None:
        averaged = (f"averaged over about the last {tau_s:g} s of speech; this window alone: "
                    f"{latest.label} {latest.confidence:.0%}") if tau_s else "this window"
        if now.uncertain:
            cols[0].metric("Current emotion", "🤔 uncertain",
                           help=f"leaning {now.label} ({now.confidence:.0%}), below the "
                                f"model's confidence floor of {floor:.0%}; {averaged}")
        else:
            cols[0].metric("Current emotion",
                           f"{figures.EMOTION_ICONS.get(now.label, '')} {now.label}",
                           help=averaged)
        cols[1].metric("Confidence", f"{now.confidence:.0%}")
    elif voiced is not None and latest is not None and now is not None:
        cols[0].metric("Current emotion", "🤫 no speech",
                       help=f"last speech: {now.label} at {voiced.t_end:.1f} s")
        cols[1].metric("Confidence", "—", help=f"last speech {latest.t_end - voiced.t_end:.1f} s "
                       f"ago: {now.label} {now.confidence:.0%}")
    else:
        cols[0].metric("Current emotion", "🤫 no speech" if latest else "—")
        cols[1].metric("Confidence", "—")
    lag = s.health.get("lag_s")
    cols[2].metric("Lag", "unpaced" if s.health and lag is None else
                   ("—" if lag is None else f"{lag:.2f} s"),
                   help="How far analysis trails real time (from the daemon's status).")
    dropped = s.health.get("dropped_windows")
    cols[3].metric("Dropped windows", "—" if dropped is None else f"{dropped}",
                   help=f"Skipped by the daemon; {s.gaps} more missing on the way here.")
    windows = s.health.get("windows") or s.n_windows
    voiced_n = s.health.get("voiced_windows") if s.health else s.n_voiced
    cols[4].metric("Voiced windows", "—" if not windows else f"{(voiced_n or 0) / windows:.0%}",
                   help=f"{voiced_n} of {windows} windows had speech.")
    lat = [p.latency_ms for p in s.predictions[-20:] if p.latency_ms is not None]
    cols[5].metric("Latency", f"{statistics.median(lat):.0f} ms" if lat else "—",
                   help="Median over the last 20 windows, daemon side.")


def explanation_block(msg: dict[str, Any] | None, key: str) -> None:
    if msg is None:
        st.caption("No explanation yet (the daemon sends one every `explain_every` voiced "
                   "windows).")
        return
    left, right = st.columns([3, 2])
    try:
        fig = figures.explanation_figure(msg)
    except (protocol.ProtocolError, KeyError, ValueError) as exc:
        left.warning(f"This explanation could not be drawn: {exc}")
    else:
        left.plotly_chart(fig, key=key, config={"displayModeBar": False})
    rows = figures.explanation_metrics(msg)
    right.markdown(f"**{figures.method_name(msg.get('method'))} Analysis for class: "
                   f"{msg.get('class')}**  \n"
                   f"method `{msg.get('method')}` · window #{msg.get('seq')}")
    right.table({"metric": list(rows), "value": list(rows.values())})


def alert_log(view: View) -> None:
    with st.expander(f"Alert log ({len(view.alert_log)}) and events ({len(view.events)})",
                     expanded=bool(view.alert_log)):
        if view.alert_log:
            rows = [{"time": _clock(a.wall), "stream": a.stream, "stream time": f"{a.t:.1f} s",
                     "rule": a.rule, "what": a.message} for a in reversed(view.alert_log)]
            st.dataframe(rows[:200], hide_index=True)
        else:
            st.caption("No alert so far.")
        for t, level, text in list(reversed(view.events))[:20]:
            icon = {"error": "❌", "warning": "⚠️"}.get(level, "ℹ️")
            st.caption(f"{icon} {_clock(t)} {text}")


# ----------------------------------------------------------------------------- replay tab

def replay_tab(cfg: argparse.Namespace, feed: Feed) -> None:
    st.markdown("Have a daemon analyse a recording as a new stream. Upload a WAV or FLAC "
                "file, or name one inside the daemon's allowed directory (`--allowed-dir`).")
    connected = feed.connected()
    if not connected:
        # Watch for a daemon in a small fragment; once one is up, redraw the whole page.
        st.fragment(run_every=2.0)(_await_daemon)(feed)
        return
    url = st.selectbox("Daemon", connected) if len(connected) > 1 else connected[0]
    limits = (feed.store.source(url).hello or {}).get("limits") or {}
    # Over the inline limit (max_upload_bytes) a file goes as a chunked upload, when the
    # daemon takes those (it says so with max_chunked_upload_bytes).
    inline_max = int(limits.get("max_upload_bytes") or DEFAULT_MAX_UPLOAD_BYTES)
    max_bytes = int(min(cfg.max_upload_mb * 2**20,
                        limits.get("max_chunked_upload_bytes") or inline_max))
    how = st.radio("File", ["Upload", "Path on the daemon"], horizontal=True, key="replay_how")
    upload = path = None
    if how == "Upload":
        upload = st.file_uploader(f"WAV or FLAC, up to {max_bytes / 2**20:.0f} MiB",
                                  type=["wav", "flac"])
    else:
        path = st.text_input("Path (relative to the daemon's allowed directory)",
                             placeholder="tess_stream/YAF_dog_sad.flac", key="replay_path")
    c1, c2, c3 = st.columns(3)
    speed = c1.select_slider("Speed", options=list(SPEEDS), value=1.0,
                             format_func=lambda v: "as fast as possible" if v == 0 else f"{v:g}×")
    loop = c2.checkbox("Loop")
    split = c3.checkbox("Split channels (agent / caller)")
    if not st.button("▶ Replay", type="primary", key="replay_go"):
        return
    request_id = f"replay-{int(time.time() * 1000) % 10**9}"
    try:
        if upload is not None:
            data = upload.getvalue()
            check_upload(upload.name, data, max_bytes)
            if len(data) > inline_max:  # more than one frame may carry: in chunks
                feed.send_upload(url, upload.name, data, request_id, speed=speed, loop=loop,
                                 split_channels=split)
            else:
                feed.send(url, protocol.replay(upload_name=upload.name, upload_data=data,
                                               speed=speed, loop=loop, split_channels=split,
                                               id=request_id))
        elif path:
            feed.send(url, protocol.replay(path=check_path(path), speed=speed, loop=loop,
                                           split_channels=split, id=request_id))
        else:
            st.error("Choose a file first.")
            return
    except (ValueError, ConnectionError) as exc:
        st.error(str(exc))
        return
    reply = _await_reply(feed, request_id)
    if reply is None:
        st.info("Sent; the daemon has not answered yet. The new stream will appear in the "
                "Live tab.")
    elif reply["type"] == "error":
        st.error(f"The daemon refused: {reply['message']} ({reply['code']})")
    else:
        st.success(f"Replaying as stream `{reply.get('stream') or '?'}`: see the Live tab.")


def _await_daemon(feed: Feed) -> None:
    if feed.connected():
        st.rerun()
    st.warning(f"No daemon connected, so nothing can be replayed yet. {START_HINT}", icon="🔌")


def _await_reply(feed: Feed, request_id: str, timeout: float = 3.0) -> dict[str, Any] | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with feed.store.lock:
            reply = feed.store.replies.get(request_id)
        if reply is not None:
            if isinstance(reply.get("stream"), dict):  # stream_started carries the stream info
                reply = {**reply, "stream": reply["stream"].get("stream")}
            return reply
        time.sleep(0.05)
    return None


# ----------------------------------------------------------------------------- review tab

def review_tab(cfg: argparse.Namespace, rules: list[Any],
               tau_s: float = smoothing.DEFAULT_TAU_S, floor_on: bool = True) -> None:
    directory = st.text_input("Session logs folder", value=cfg.sessions_dir,
                              help="Where the daemon writes sessions/<id>.jsonl, gzipped to "
                                   ".jsonl.gz once closed (its --sessions-dir).")
    files = list_sessions(directory)
    if not files:
        st.info(f"No session log in `{directory}` yet. The daemon writes one per run.")
        return
    path = st.selectbox("Session", files, format_func=lambda p: p.name,
                        help="Newest first. A session still running can be opened too.")
    st.caption(_session_name(path))
    try:
        session = _load_session(path, rules)
    except (OSError, ValueError) as exc:
        st.error(f"Cannot read {path.name}: {exc}")
        return
    store = session.store
    st.caption(f"Session `{session.session_id}` · {session.lines} lines"
               + (f" · {len(session.skipped)} skipped" if session.skipped else ""))
    if session.skipped:
        with st.expander("Skipped lines"):
            st.code("\n".join(session.skipped[:50]))
    if not store.streams:
        st.info("This session has no stream.")
        return
    view = snapshot(store)
    key = st.selectbox("Stream", list(view.streams), format_func=lambda k: view.streams[k].label,
                       key="review_stream")
    s = view.streams[key]
    preds = s.predictions
    cols = st.columns(4)
    cols[0].metric("Windows", f"{s.n_windows}")
    cols[1].metric("Voiced", f"{s.n_voiced / s.n_windows:.0%}" if s.n_windows else "—")
    cols[2].metric("Duration", f"{preds[-1].t_end:.1f} s" if preds else "—")
    alerts = [a for a in view.alert_log if a.stream == key]
    cols[3].metric("Alerts (current rules)", f"{len(alerts)}")
    left, right = st.columns([3, 2])
    left.plotly_chart(figures.timeline_figure(preds, view.classes, last_s=None, tau_s=tau_s,
                                              title="Whole session",
                                              floor=floors(view.sources, floor_on)
                                              .get(s.source, 0.0)),
                      key="review-timeline", config={"displayModeBar": False})
    right.plotly_chart(figures.distribution_figure(s.counts, view.classes), key="review-dist",
                       config={"displayModeBar": False})
    if alerts:
        st.dataframe([{"stream time": f"{a.t:.1f} s", "rule": a.rule, "what": a.message}
                      for a in alerts], hide_index=True)
    seqs = session.explained_seqs(s.stream_id)
    if seqs:
        seq = st.select_slider("Explanation of window", options=seqs, value=seqs[-1],
                               key="review_seq")
        pred = next((p for p in preds if p.seq == seq), None)
        if pred is not None and pred.voiced:
            st.caption(f"Window #{seq}: {pred.t_start:.1f}–{pred.t_end:.1f} s, "
                       f"{pred.label} {pred.confidence:.0%}")
        explanation_block(session.explanation(s.stream_id, seq), key="review-expl")
    else:
        st.caption("No explanation in this session for this stream.")
    st.download_button(
        "⬇ Export predictions as CSV",
        data=lambda: predictions_csv(preds, view.classes),
        file_name=f"{session.session_id}-{s.stream_id}.csv", mime="text/csv",
    )


def _load_session(path: Path, rules: list[Any]) -> Session:
    stat = path.stat()
    cache_key = (str(path), stat.st_mtime_ns, stat.st_size, tuple(map(repr, rules)))
    cached = st.session_state.get("review_cache")
    if cached is None or cached[0] != cache_key:
        cached = (cache_key, read_session(path, alerts=AlertEngine(rules)))
        st.session_state.review_cache = cached
    return cached[1]


def _session_name(path: Path) -> str:
    stat = path.stat()
    return (f"last written {datetime.fromtimestamp(stat.st_mtime):%Y-%m-%d %H:%M:%S} · "
            f"{stat.st_size / 1024:.0f} KiB")


# ----------------------------------------------------------------------------- helpers

def _clock(t: float) -> str:
    return datetime.fromtimestamp(t).strftime("%H:%M:%S")


def _ago(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s ago"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def live_csv(feed: Feed) -> str:
    view = snapshot(feed.store)
    preds = [p for s in view.streams.values() for p in s.predictions]
    return predictions_csv(preds, view.classes or list(CANONICAL_CLASSES))


# ----------------------------------------------------------------------------- page

def main() -> None:
    st.set_page_config(page_title="Emotion monitor", page_icon="🎙️", layout="wide")
    st.html(PAGE_CSS)
    cfg = config()
    feed = get_feed(cfg)
    opts = sidebar(cfg, feed)
    st.sidebar.download_button("⬇ Export live buffer as CSV", data=lambda: live_csv(feed),
                               file_name="emotion-monitor-live.csv", mime="text/csv")
    if st.query_params.get(wallboard.VIEW_PARAM) == wallboard.WALLBOARD:
        wallboard.page(feed, opts["tau_s"], opts["floor_on"])
        return
    live, replay, review = st.tabs(["📈 Live", "▶ Replay a file", "🗂 Review a session"])
    with live:
        st.fragment(run_every=cfg.refresh)(live_view)(cfg, opts)
    with replay:
        replay_tab(cfg, feed)
    with review:
        review_tab(cfg, opts["rules"], opts["tau_s"], opts["floor_on"])


if __name__ == "__main__":
    main()
