"""PostgreSQL stopped mid-run: the projection acks nothing while it is away, retries, and once it
is back every event published meanwhile is projected. A PostgreSQL of the test's own (stopped and
started on the same data dir and port), outside pytest's basetemp for the reason `stack_dir` gives."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
from test_projection import deploy_run, projecting, publish

from trellis_core import subjects
from trellis_core.bus import Bus
from trellis_core.embedded import EmbeddedPostgres
from trellis_core.settings import Settings
from trellis_store.migrate import migrate


@pytest.fixture
def own_postgres() -> Iterator[EmbeddedPostgres]:
    path = Path(tempfile.mkdtemp(prefix="trellis-pg-outage-"))
    server = EmbeddedPostgres(path, durable=False)
    server.start()
    yield server
    server.stop()
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def outage_pool(own_postgres: EmbeddedPostgres) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(own_postgres.url, min_size=1, max_size=4)
    await migrate(pool)
    yield pool
    await pool.close()


async def _outage(
    bus: Bus, pool: asyncpg.Pool, server: EmbeddedPostgres, settings: Settings, name: str, seconds: float
) -> None:
    before = [deploy_run(name, "web", 5) for _ in range(3)]
    during = [deploy_run(name, "web", 5) for _ in range(5)]
    async with projecting(bus, pool, settings, name, retry=(0.2, 0.5, 1.0)) as projection:
        assert await projection.wait_projected(await publish(bus, [e for run in before for e in run]), 10)
        await asyncio.to_thread(server.stop)
        down_at = time.monotonic()
        last = await publish(bus, [e for run in during for e in run])
        await asyncio.wait_for(projection.stalled.wait(), 10)  # it tried to write them, and could not
        assert not await projection.wait_projected(last, max(0.0, seconds - (time.monotonic() - down_at)))
        held = await bus.js.consumer_info(subjects.STREAM_EVENTS, projection.events.durable)
        assert held.num_ack_pending, "the batch PostgreSQL could not take was acked"
        await asyncio.to_thread(server.start)  # the same data dir, the same port
        assert await projection.wait_projected(last, 60)
    runs = await pool.fetch("SELECT run_id, status FROM runs WHERE tenant = $1", name)
    assert sorted(r["run_id"] for r in runs) == sorted(run[0].run_id for run in [*before, *during])
    assert {r["status"] for r in runs} == {"succeeded"}
    assert await pool.fetchval("SELECT count(*) FROM activities WHERE tenant = $1 AND status = 'succeeded'",
                               name) == 8 * 5
    expected_events = sum(len(run) - 5 for run in [*before, *during])  # heartbeats are not kept
    assert await pool.fetchval("SELECT count(*) FROM events WHERE tenant = $1", name) == expected_events


async def test_a_short_postgres_outage_loses_nothing(
    bus: Bus, outage_pool: asyncpg.Pool, own_postgres: EmbeddedPostgres, settings: Settings, unique: str
) -> None:
    await _outage(bus, outage_pool, own_postgres, settings, unique, seconds=2.5)


@pytest.mark.slow
async def test_a_twenty_second_postgres_outage_loses_nothing_and_the_projection_catches_up(
    bus: Bus, outage_pool: asyncpg.Pool, own_postgres: EmbeddedPostgres, settings: Settings, unique: str
) -> None:
    await _outage(bus, outage_pool, own_postgres, settings, unique, seconds=20)
