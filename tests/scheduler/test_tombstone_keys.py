"""A finished run's snapshot key (its tombstone) keeps the finish time, and the next leader deletes
the keys of runs finished longer ago than the engine keeps tombstones."""

from __future__ import annotations

import time

import nats.js.errors
import pytest
from scheduler_support import sh, workflow

from trellis_core.bus import Bus
from trellis_core.settings import Settings
from trellis_engine.graph import build_run
from trellis_engine.state import EngineConfig, SchedulerState
from trellis_scheduler.kv import run_state_bucket
from trellis_scheduler.store import SnapshotStore, encode_snapshot, run_key

DAY = 86400.0


async def test_the_next_leader_deletes_expired_tombstone_keys_and_keeps_recent_ones(
    bus: Bus, settings: Settings, unique: str
) -> None:
    kv = await run_state_bucket(bus.js, settings)
    # The real clock: the bucket is the session's, and another test's scheduler recovering all
    # tenants with the real clock must also find `recent` recent.
    now = time.time()
    for run_id, finished_at in (("old", now - 8 * DAY), ("recent", now - 1 * DAY)):
        run = build_run(unique, run_id, workflow(sh("a", "true")), finished_at - 60, "tester")
        run.status, run.finished_at = "succeeded", finished_at
        await kv.put(run_key(unique, run_id), encode_snapshot(run))

    st = SchedulerState(config=EngineConfig(tombstone_seconds=7 * DAY))
    assert await SnapshotStore(kv, bus.js).load_all(st, now, tenant=unique) == 0

    assert "recent" in st.finished
    assert "old" not in st.finished
    assert (await kv.get(run_key(unique, "recent"))).value
    with pytest.raises(nats.js.errors.KeyNotFoundError):
        await kv.get(run_key(unique, "old"))
