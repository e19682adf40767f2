"""The projection beside others: a message PostgreSQL refuses in the middle of a batch, and two
store replicas sharing the durables."""

from __future__ import annotations

import contextlib

import asyncpg
import msgspec
from test_projection import deploy_run, pool, projecting, publish, rows_of

from trellis_core import subjects
from trellis_core.bus import Bus
from trellis_core.events import ActivityCompleted
from trellis_core.settings import Settings

__all__ = ["pool"]  # the fixture, shared


async def test_a_message_postgres_refuses_is_dead_lettered_and_the_rest_of_its_batch_written(
    bus: Bus, pool: asyncpg.Pool, settings: Settings, unique: str
) -> None:
    run = deploy_run(unique, "p", 3)
    i = next(n for n, e in enumerate(run) if isinstance(e, ActivityCompleted))
    poison = msgspec.structs.replace(run[i], exit_code=2**40, event_id="poison")  # no int column holds it
    events = [*run[:i], poison, *run[i + 1 :]]
    last = await publish(bus, events)  # all before the projection starts: one batch
    async with projecting(bus, pool, settings, unique) as projection:
        assert await projection.wait_projected(last, 10)
        assert projection.dead_lettered == 1
    letters = await bus.js.pull_subscribe(
        subjects.deadletter(subjects.run_event(unique, run[0].run_id, "activity.completed")),
        durable=None, stream=subjects.STREAM_DEADLETTER,
    )
    letter = msgspec.json.decode((await letters.fetch(1, timeout=5))[0].data)
    await letters.unsubscribe()
    assert letter["reason"].startswith("cannot be stored:")
    assert letter["consumer"] == f"{unique}_events"
    assert await pool.fetchval("SELECT status FROM runs WHERE run_id = $1", run[0].run_id) == "succeeded"
    statuses = [r["status"] for r in await pool.fetch(
        "SELECT status FROM activities WHERE run_id = $1 ORDER BY ordinal", run[0].run_id)]
    assert statuses == ["running", "succeeded", "succeeded"]  # the refused completion is the only one missing
    assert await pool.fetchval("SELECT count(*) FROM events WHERE event_id = 'poison'") == 0


async def test_two_replicas_sharing_the_durables_project_everything_once(
    bus: Bus, pool: asyncpg.Pool, settings: Settings, unique: str
) -> None:
    runs = [deploy_run(unique, f"env{n % 3}", 6) for n in range(8)]
    events = [e for run in runs for e in run]
    async with contextlib.AsyncExitStack() as stack:
        first = await stack.enter_async_context(projecting(bus, pool, settings, unique, batch=5))
        second = await stack.enter_async_context(projecting(bus, pool, settings, unique, batch=5))
        last = await publish(bus, events)
        # each sees the other's writes through the durables' ack floor
        assert await first.wait_projected(last, 20)
        assert await second.wait_projected(last, 20)
    rows = await rows_of(pool)
    assert len(rows["events"]) == len(events) - 8 * 6  # every event once, heartbeats aside
    assert {r["status"] for r in rows["runs"]} == {"succeeded"}
    assert {r["status"] for r in rows["activities"]} == {"succeeded"}
    assert len(rows["activities"]) == 8 * 6
    assert {r["status"] for r in rows["environments"]} == {"deployed"}
