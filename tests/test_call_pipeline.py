"""The call floor end to end, without a browser: a two-track call pushed over /ingest as a phone
platform sends it (Media Streams, 8-kHz mu-law) -> the daemon's streams, predictions and
conversation dynamics -> a protocol-v1 client -> the dashboard's Store, alert rules and the
wallboard's tile. Each part has its own tests; this one checks they fit together (the call id,
roles and dynamics figures survive every hop)."""

from __future__ import annotations

import asyncio

import numpy as np
import soxr

from dashboard.alerts import DeadAir
from dashboard.calls import CallBoard
from dashboard.state import Store
from streamer.ingest import IngestConfig
from streamer.push import push_call
from tests.call_fixture import RATE as CALL_RATE
from tests.call_fixture import two_speaker_call
from tests.streamer_harness import client, make_config, running

TOKEN = "floor-s3cret"
PHONE_RATE = 8000
SOURCE = "ws://daemon-under-test"


def test_pushed_call_reaches_the_wallboard_with_its_dynamics(tmp_path, tiny_model_path,
                                                             tess_dir):
    call = two_speaker_call(tess_dir)  # channel 0 = A (caller), channel 1 = B (agent)
    audio = soxr.resample(call.audio, CALL_RATE, PHONE_RATE).astype(np.float32)
    cfg = make_config(tmp_path, tiny_model_path, token=TOKEN, dead_air_s=10.0,
                      ingest=IngestConfig(max_ahead_s=120.0))

    async def main():
        async with running(cfg) as daemon, client(
                f"ws://127.0.0.1:{daemon.port}/?token={TOKEN}") as c:
            await push_call(f"ws://127.0.0.1:{daemon.port}/ingest", audio, PHONE_RATE,
                            token=TOKEN, speed=0, call_id="CAfloor")
            await c.until(lambda m: m["type"] == "dynamics" and m.get("final"), timeout=30)
            return c

    c = asyncio.run(main())
    finals = [m for m in c.of("dynamics") if m["call"] == "CAfloor" and m.get("final")]
    assert len(finals) == 1
    final = finals[0]
    sides = {s["role"]: s for s in final["sides"]}
    assert set(sides) == {"caller", "agent"}
    assert sides["caller"]["stream"] == "CAfloor-caller"
    # the telephone band and the resampler do not change the figures the fixture was built for
    for role, side in (("caller", 0), ("agent", 1)):
        assert abs(sides[role]["talk_s"] - call.talk_s(side)) < 1.0
        assert sides[role]["interruptions"] == 1
    assert final["dead_air"] == 1
    assert abs(final["longest_silence_s"] - 12.0) < 1.0

    store = Store()
    store.alerts.set_rules([DeadAir(min_s=10.0)])
    raised = []
    for msg in c.msgs:
        raised += store.apply(SOURCE, msg)
    assert any(a.rule == DeadAir(min_s=10.0).name for a in raised)
    tiles = CallBoard().tiles(store, live_only=False)
    assert [t.call_id for t in tiles] == ["CAfloor"]
    tile = tiles[0]
    assert tile.caller is not None and tile.agent is not None
    assert tile.caller.role == "caller" and tile.agent.role == "agent"
    assert tile.dead_air == 1 and tile.caller.interruptions == 1
    assert abs(tile.caller.talk_share + tile.agent.talk_share - 1.0) < 1e-6
    assert not CallBoard().tiles(store)  # the call has ended: off the live board
