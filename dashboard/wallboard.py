"""The wallboard: one tile per live call for a supervisor watching a floor.

Tiles are built by `dashboard.calls.tiles` (pure Python: definitions and order) and drawn
here as HTML into one Streamlit component (``st.components.v2``, no iframe): 100 tiles are a
few hundred kilobytes of HTML a second, while 100 Plotly figures would be 100 elements to
diff and lay out. The component's script updates only the tiles whose HTML changed, keeps
the order given (except while the pointer is on the board: tiles then keep their places, so
they never swap under the cursor), and sends a click back to Python as a trigger value;
Python then sets the ``call`` query parameter, which opens the call's streams on the live page
and pushes a browser history entry, so the Back button returns to the wallboard.
"""

from __future__ import annotations

import functools
import html
import time
from collections.abc import Sequence
from typing import Any

import streamlit as st

from dashboard import calls
from dashboard.calls import SPARK_WINDOW_S, Side, Tile, severity_rank
from dashboard.client import Feed
from dashboard.figures import EMOTION_ICONS
from dashboard.smoothing import DEFAULT_TAU_S

#: How often the tiles are rebuilt: under a second, so that with the jitter of a rerun they
#: still update at least once a second (dynamics arrive once a second).
REFRESH_S = 0.8
#: A trend within this many points per minute of zero is drawn as flat.
TREND_FLAT_PER_MIN = 0.05
#: The sparkline: SVG units per second of stream time, and its height.
SPARK_W = 120
SPARK_H = 28
VIEW_PARAM, CALL_PARAM, WALLBOARD = "view", "call", "wallboard"
SEVERITY_ICON = {"critical": "🚨", "warning": "⚠️", "info": "ℹ️"}
CALLER_COLOR = "#D55E00"
AGENT_COLOR = "#8C8C8C"
NO_CALL_HINT = ("Calls appear here when a phone platform (or `emotion-monitor push`) sends a "
                "call's audio to a daemon's ingest websocket. Streams that are not calls are on "
                "the **Streams** page.")

CSS = """
.wb-summary { font-size: 0.95rem; margin: 0 0 0.5rem 0; }
.wb-summary b { font-weight: 600; }
.wb { position: relative; }
.wb-held { position: absolute; top: 0; right: 0; font-size: 0.8rem; color: #6b6b6b;
  visibility: hidden; }  /* out of the flow: showing it moves no tile */
.wb.held .wb-held { visibility: visible; }
.wb-grid { display: grid; gap: 8px;
  grid-template-columns: repeat(auto-fill, minmax(250px, 1fr)); }
.wb-tile { border: 1px solid #d0d0d0; border-left: 6px solid #d0d0d0; border-radius: 6px;
  padding: 6px 8px; background: #fff; cursor: pointer; font-size: 12.5px; line-height: 1.35;
  contain: content; }
.wb-tile:hover, .wb-tile:focus { box-shadow: 0 0 0 2px #1c83e1; outline: none; }
.wb-tile.sev-3 { border-color: #e0443e; background: #fff4f3; }
.wb-tile.sev-2 { border-color: #f0a202; background: #fffaf0; }
.wb-tile.sev-1 { border-left-color: #1c83e1; }
.wb-head { display: flex; justify-content: space-between; align-items: baseline; gap: 6px; }
.wb-id { font-weight: 700; font-size: 13.5px; white-space: nowrap; overflow: hidden;
  text-overflow: ellipsis; }
.wb-dur { font-variant-numeric: tabular-nums; color: #555; }
.wb-meta { color: #777; font-size: 11px; white-space: nowrap; overflow: hidden;
  text-overflow: ellipsis; }
.wb-side { display: flex; justify-content: space-between; gap: 4px; white-space: nowrap; }
.wb-role { color: #555; width: 3.2em; display: inline-block; }
.wb-quiet { color: #999; }
.wb-neg { font-variant-numeric: tabular-nums; }
.wb-up { color: #c0392b; font-weight: 600; }
.wb-down { color: #1e8449; }
.wb-flat { color: #777; }
.wb-spark { display: block; width: 100%; height: 28px; margin: 1px 0; }
.wb-talk { display: flex; align-items: center; gap: 6px; }
.wb-bar { flex: 1; height: 6px; background: #cfcfcf; border-radius: 3px; overflow: hidden; }
.wb-bar > span { display: block; height: 100%; background: #D55E00; }
.wb-facts { color: #444; }
.wb-dead { color: #b03a2e; font-weight: 600; }
.wb-alert { font-weight: 600; color: #a93226; white-space: nowrap; overflow: hidden;
  text-overflow: ellipsis; }
.wb-alert.sev-2 { color: #9a6700; }
"""

# Runs in the page on every update: keyed update of the tiles, clicks back to Python, and
# timings kept in window.__wallboard for the benchmark and the browser test.
JS = """
export default function(component) {
  const { data, parentElement, setTriggerValue } = component;
  const t0 = performance.now();
  let root = parentElement.querySelector('.wb');
  if (!root) {
    root = document.createElement('div');
    root.className = 'wb';
    root.innerHTML = '<div class="wb-summary"></div><div class="wb-held">order held while ' +
      'the pointer is on the board</div><div class="wb-grid"></div>';
    parentElement.appendChild(root);
    const open = (e) => {
      const tile = e.target.closest('[data-call]');
      if (tile) setTriggerValue('open', tile.dataset.call);
    };
    root.addEventListener('click', open);
    root.addEventListener('keydown', (e) => { if (e.key === 'Enter') open(e); });
  }
  const summary = root.firstChild, grid = root.lastChild;
  if (summary.innerHTML !== data.summary) summary.innerHTML = data.summary;
  const old = new Map();
  for (const el of grid.children) old.set(el.dataset.call, el);
  // While the pointer is on the board (or a tile has the keyboard focus), tiles keep their
  // places, so the call under the cursor is the one a click opens; new calls go last. The
  // given order comes back at the first update after the pointer leaves.
  const held = grid.matches(':hover') || grid.matches(':focus-within');
  root.classList.toggle('held', held);
  let tiles = data.tiles;
  if (held) {
    const place = new Map(Array.from(old.keys(), (k, i) => [k, i]));
    const at = (k) => place.has(k) ? place.get(k) : place.size;
    tiles = [...data.tiles].sort((a, b) => at(a[0]) - at(b[0]));  // stable: new in order
  }
  const reordered = tiles.some(([k], i) => k !== data.tiles[i][0]);
  const tpl = document.createElement('template');
  let prev = null, changed = 0;
  for (const [key, html] of tiles) {
    let el = old.get(key);
    if (el && el.__html === html) {
      old.delete(key);
    } else {
      tpl.innerHTML = html;
      el = tpl.content.firstElementChild;
      el.__html = html;
      changed++;
    }
    const want = prev ? prev.nextSibling : grid.firstChild;
    if (el !== want) grid.insertBefore(el, want);
    prev = el;
  }
  for (const el of old.values()) el.remove();
  void grid.offsetHeight;  // lay out now, so the time below includes it
  const stats = window.__wallboard || (window.__wallboard = {renders: []});
  stats.renders.push({at: performance.now(), ms: performance.now() - t0, changed: changed,
                      tiles: data.tiles.length, build_ms: data.build_ms, built: data.built,
                      now: Date.now(), held: held, reordered: reordered});
  if (stats.renders.length > 2000) stats.renders.splice(0, 1000);
}
"""



@functools.cache
def _component() -> Any:
    """Registered on first use, inside a script run (at import it would warn in tests)."""
    return st.components.v2.component("emotion_monitor.wallboard", css=CSS, js=JS,
                                      isolate_styles=False)


# ----------------------------------------------------------------------------- Streamlit

def board() -> calls.CallBoard:
    """This browser session's board (it keeps the sides' recent points between redraws)."""
    if "callboard" not in st.session_state:
        st.session_state.callboard = calls.CallBoard()
    return st.session_state.callboard


def page(feed: Feed, tau_s: float = DEFAULT_TAU_S, floors: bool = True) -> None:
    """The wallboard page: redrawn every `REFRESH_S` by a fragment; emotions averaged over
    ``tau_s`` seconds and uncertain below the models' floors (the sidebar's settings)."""
    st.fragment(run_every=REFRESH_S)(_board)(feed, tau_s, floors)


def open_call(key: str) -> None:
    """Show that call's streams on the live page (a new history entry: Back returns)."""
    st.query_params.from_dict({CALL_PARAM: key})


def show_wallboard() -> None:
    st.query_params.from_dict({VIEW_PARAM: WALLBOARD})


def _board(feed: Feed, tau_s: float = DEFAULT_TAU_S, floors: bool = True) -> None:
    t0 = time.perf_counter()
    tiles = board().tiles(feed.store, tau_s=tau_s, floors=floors)
    with feed.store.lock:
        sources = [(s.url, s.state, s.detail) for s in feed.store.sources.values()]
    st.caption(sources_line(sources))
    if not tiles:
        if not any(state == "connected" for _, state, _ in sources):
            st.warning("**No daemon connected.** Start one with `emotion-monitor stream` "
                       "(calls arrive on its ingest websocket).", icon="🔌")
        else:
            st.info(f"No live call. {NO_CALL_HINT}", icon="📞")
        return
    data = board_data(tiles)
    data["build_ms"] = round((time.perf_counter() - t0) * 1000.0, 2)
    data["built"] = round(time.time() * 1000.0)
    result = _component()(data=data, key="wallboard", on_open_change=lambda: None)
    clicked = getattr(result, "open", None)
    if clicked:
        open_call(str(clicked))
        st.rerun(scope="app")


def sources_line(sources: Sequence[tuple[str, str, str]]) -> str:
    icons = {"connected": "🟢", "connecting": "🟡", "retrying": "🔴"}
    return " · ".join(f"{icons.get(state, '⚪')} {url}" + (f" ({detail})" if detail else "")
                      for url, state, detail in sources) or "⚪ no daemon configured"


def call_header(feed: Feed, key: str, tau_s: float = DEFAULT_TAU_S,
                floors: bool = True) -> list[str]:
    """Above the live page's cards when it was opened from a tile: which call, its dynamics,
    and the way back (its alerts are in the page's banner). Returns the call's stream keys
    ([] if unknown)."""
    tile = calls.tile(feed.store, key, tau_s, floors)
    left, right = st.columns([6, 1], vertical_alignment="center")
    if right.button("← Wallboard", key="back-to-wallboard",
                    help="Back to all calls (the browser's Back button works too)."):
        show_wallboard()
        st.rerun(scope="app")
    if tile is None:
        left.warning(f"Call `{key}` is not on any connected daemon (it ended some time ago, "
                     "or its daemon restarted).", icon="📞")
        return []
    left.markdown(f"#### 📞 Call `{tile.key}` · {duration(tile.duration_s)}  \n"
                  + facts_text(tile))
    return list(tile.streams)


# ----------------------------------------------------------------------------- HTML

def board_data(tiles: Sequence[Tile]) -> dict[str, Any]:
    """What the component draws: a summary line and (key, HTML) per tile, in order."""
    return {"summary": summary_html(tiles), "tiles": [[t.key, tile_html(t)] for t in tiles]}


def summary_html(tiles: Sequence[Tile]) -> str:
    by_sev = {"critical": 0, "warning": 0}
    for t in tiles:
        if t.severity in by_sev:
            by_sev[t.severity] += 1
    dead = sum(1 for t in tiles if t.dead_air_now)
    parts = [f"<b>{len(tiles)}</b> live call{'s' if len(tiles) != 1 else ''}",
             f"🚨 <b>{by_sev['critical']}</b> critical",
             f"⚠️ <b>{by_sev['warning']}</b> warning",
             f"🔇 <b>{dead}</b> in dead air now",
             "ordered by alert, then by how fast the caller turns negative · click a call "
             "for its detail"]
    return " · ".join(parts)


def tile_html(t: Tile) -> str:
    """One tile. Every value from the wire is escaped."""
    esc = html.escape
    rank = severity_rank(t.severity)
    trend = "" if t.caller_trend is None else f"{t.caller_trend:.4f}"
    rows = [
        f'<div class="wb-tile sev-{rank}" data-call="{esc(t.key, quote=True)}" '
        f'data-severity="{rank}" data-trend="{trend}" role="button" tabindex="0" '
        f'title="{esc(_title(t), quote=True)}">',
        f'<div class="wb-head"><span class="wb-id">{esc(t.key)}</span>'
        f'<span class="wb-dur">{duration(t.duration_s)}</span></div>',
        _side_html("Caller", t.caller),
        sparkline_svg(t.caller, t.agent),
        _side_html("Agent", t.agent),
        _talk_html(t),
        f'<div class="wb-facts">{_facts_html(t)}</div>',
    ]
    for a in t.alerts[:2]:
        rows.append(f'<div class="wb-alert sev-{severity_rank(a.severity)}">'
                    f'{SEVERITY_ICON.get(a.severity, "🚨")} {esc(a.message)}</div>')
    if len(t.alerts) > 2:
        rows.append(f'<div class="wb-alert">+{len(t.alerts) - 2} more</div>')
    rows.append("</div>")
    return "".join(rows)


def _title(t: Tile) -> str:
    """Tooltip: the streams and the call's custom parameters are not worth tile space."""
    return f"{t.call_id} on {t.source} · streams: {', '.join(t.streams)}"


def _side_html(name: str, s: Side | None) -> str:
    esc = html.escape
    if s is None:
        return f'<div class="wb-side"><span><span class="wb-role">{name}</span>' \
               f'<span class="wb-quiet">—</span></span></div>'
    if s.label and s.uncertain:
        emo = (f'<span class="wb-quiet" title="below the model\'s confidence floor">🤔 '
               f'{esc(s.label)}? {s.confidence or 0:.0%}</span>')
    elif s.label:
        emo = f'{EMOTION_ICONS.get(s.label, "")} {esc(s.label)} {s.confidence or 0:.0%}'
    elif s.last_label:
        emo = f'<span class="wb-quiet">🤫 ({esc(s.last_label)})</span>'
    else:
        emo = '<span class="wb-quiet">🤫 no speech</span>'
    if s.ended:
        emo += ' <span class="wb-quiet">ended</span>'
    neg = "" if s.negative is None else f"neg {s.negative:.0%} "
    return (f'<div class="wb-side"><span><span class="wb-role">{name}</span>{emo}</span>'
            f'<span class="wb-neg">{neg}{trend_html(s.trend_per_min)}</span></div>')


def trend_html(per_min: float | None) -> str:
    if per_min is None:
        return '<span class="wb-flat">·</span>'
    if per_min > TREND_FLAT_PER_MIN:
        return f'<span class="wb-up">↑{per_min:+.2f}/min</span>'
    if per_min < -TREND_FLAT_PER_MIN:
        return f'<span class="wb-down">↓{per_min:+.2f}/min</span>'
    return '<span class="wb-flat">→</span>'


def _talk_html(t: Tile) -> str:
    share = t.caller.talk_share if t.caller else None
    if share is None:
        return '<div class="wb-talk wb-quiet">talk share —</div>'
    agent = t.agent.talk_share if t.agent and t.agent.talk_share is not None else 1.0 - share
    return (f'<div class="wb-talk" title="talk share: caller / agent"><span>talk</span>'
            f'<div class="wb-bar"><span style="width:{share:.0%}"></span></div>'
            f'<span>{share:.0%} / {agent:.0%}</span></div>')


def _facts_html(t: Tile) -> str:
    parts = []
    ci = t.caller.interruptions if t.caller else None
    ai = t.agent.interruptions if t.agent else None
    if ci is not None or ai is not None:
        parts.append(f'<span title="interruptions: caller cut in / agent cut in">⚡ '
                     f'{ci if ci is not None else "–"}/{ai if ai is not None else "–"}</span>')
    if t.dead_air is not None:
        parts.append(f'<span title="silences over {t.dead_air_s or 0:g} s so far">'
                     f'🔇 {t.dead_air}</span>')
    if t.dead_air_now:
        parts.append(f'<span class="wb-dead">silent {t.silence_s:.0f} s</span>')
    elif t.longest_silence_s:
        parts.append(f'<span title="longest silence">max {t.longest_silence_s:.0f} s</span>')
    return " · ".join(parts) or '<span class="wb-quiet">no dynamics yet</span>'


def facts_text(t: Tile) -> str:
    """The tile's dynamics as one line of Markdown (the detail page's header)."""
    bits = []
    if t.caller and t.caller.talk_share is not None:
        bits.append(f"caller talks {t.caller.talk_share:.0%}")
    if t.caller and t.caller.interruptions is not None and t.agent:
        bits.append(f"interruptions caller {t.caller.interruptions} / agent "
                    f"{t.agent.interruptions if t.agent.interruptions is not None else '–'}")
    if t.dead_air is not None:
        bits.append(f"dead air {t.dead_air}× (> {t.dead_air_s or 0:g} s)")
    if t.dead_air_now:
        bits.append(f"**silent for {t.silence_s:.0f} s now**")
    if t.caller and t.caller.trend_per_min is not None:
        bits.append(f"caller negative trend {t.caller.trend_per_min:+.2f}/min")
    return " · ".join(bits) or "no dynamics yet"


def sparkline_svg(caller: Side | None, agent: Side | None) -> str:
    """Negative mass of both sides over the last minute (caller in colour, agent grey); gaps
    where a side was silent. Inline SVG: no element of Streamlit's, no script."""
    paths = []
    end = max((s.spark[-1][0] for s in (caller, agent) if s and s.spark), default=None)
    if end is not None:
        for side, col in ((agent, AGENT_COLOR), (caller, CALLER_COLOR)):
            d = _path(side.spark, end) if side else ""
            if d:
                paths.append(f'<path d="{d}" fill="none" stroke="{col}" stroke-width="1.5"/>')
    mid = SPARK_H / 2
    return (f'<svg class="wb-spark" viewBox="0 0 {SPARK_W} {SPARK_H}" '
            f'preserveAspectRatio="none" aria-label="negative emotion, last minute">'
            f'<line x1="0" y1="{mid}" x2="{SPARK_W}" y2="{mid}" stroke="#e4e4e4" '
            f'stroke-width="1"/>{"".join(paths)}</svg>')


def _path(points: Sequence[tuple[float, float | None]], end: float) -> str:
    scale = SPARK_W / SPARK_WINDOW_S
    out, pen = [], "M"
    for t, v in points:
        if v is None:
            pen = "M"
            continue
        x = SPARK_W - (end - t) * scale
        if x < 0:
            continue
        y = SPARK_H - 1 - v * (SPARK_H - 2)
        out.append(f"{pen}{x:.1f} {y:.1f}")
        pen = "L"
    return "".join(out)


def duration(seconds: float) -> str:
    s = int(max(0.0, seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else \
        f"{s // 60:02d}:{s % 60:02d}"
