"""Projection throughput: run events per second written into PostgreSQL by the store's projection.

A run of 100 and one of 1,000 activities (each activity dispatched, started, two heartbeats,
completed; the run requested, compiled, started, completed) is published first, then a fresh
projection catches up with it from its durable; events/s is the run's events over the time
from the moment its consumers are up until every one is projected (heartbeats count: they are
fetched and acked like the rest).
Median of a few repeats, printed with whether it meets the target of 5,000 events/s on a
2-core machine; nothing is asserted on time. Run with `make bench`
(or `pytest -m bench tests/bench/test_store_bench.py -s`).
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import asyncpg
import msgspec
import pytest

from trellis_core.bus import Bus
from trellis_core.events import ActivityHeartbeat, Event
from trellis_core.settings import Settings
from trellis_store.migrate import migrate

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "store"))
from test_projection import deploy_run, projecting, publish  # the store tests' helpers

pytestmark = pytest.mark.bench
REPEATS = 3
TARGET = 5_000


def with_more_heartbeats(events: list[Event]) -> list[Event]:
    """Two heartbeats an activity, as a minute-long activity with 30 s heartbeats sends."""
    out: list[Event] = []
    for event in events:
        out.append(event)
        if isinstance(event, ActivityHeartbeat):
            out.append(msgspec.structs.replace(event, sequence=2))
    return out


@pytest.mark.parametrize("activities", [100, 1000])
async def test_projection_events_per_second(
    bus: Bus, settings: Settings, database_url: str, unique: str, activities: int
) -> None:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
    try:
        await migrate(pool)
        rates: list[float] = []
        for repeat in range(REPEATS):
            tenant = f"{unique}r{repeat}"
            events = with_more_heartbeats(deploy_run(tenant, f"env{activities}", activities))
            last = await publish(bus, events)
            async with projecting(bus, pool, settings, tenant) as projection:
                start = time.perf_counter()  # from the moment its consumers are up
                assert await projection.wait_projected(last, 300)
                span = time.perf_counter() - start
            assert await pool.fetchval("SELECT count(*) FROM activities WHERE tenant = $1 AND status = 'succeeded'",
                                       tenant) == activities
            rates.append(len(events) / span)
        rate = statistics.median(rates)
        print(f"\nprojection, run of {activities} activities ({len(events)} events): median {rate:,.0f} events/s "
              f"over {REPEATS} repeats ({', '.join(f'{r:,.0f}' for r in rates)})")
        print(f"target >= {TARGET:,} events/s: {'met' if rate >= TARGET else 'MISSED'}")
    finally:
        await pool.close()
