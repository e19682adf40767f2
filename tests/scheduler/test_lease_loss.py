"""A leader whose lease is taken or deleted under it steps down at once and dispatches nothing
until it holds the lease again; the run it left goes on exactly once."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import structlog
from scheduler_support import engine_config, recording, running_agent, sh, submit, workflow

from trellis_core.bus import Bus
from trellis_core.events import ActivityDispatched
from trellis_core.settings import Settings
from trellis_scheduler.kv import leases_bucket
from trellis_scheduler.lease import LEASE_KEY, LeaseRecord
from trellis_scheduler.service import serve

TTL = 1.0


@contextlib.contextmanager
def watched_logs() -> Iterator[collections.defaultdict[str, asyncio.Event]]:
    """An event per log event name (warnings and above, as the tests configure), set when logged."""
    seen: collections.defaultdict[str, asyncio.Event] = collections.defaultdict(asyncio.Event)

    def note(_logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
        seen[event_dict["event"]].set()
        raise structlog.DropEvent

    previous = structlog.get_config()
    structlog.configure(processors=[note])
    try:
        yield seen
    finally:
        structlog.configure(**previous)


@contextlib.asynccontextmanager
async def leader(
    bus: Bus, settings: Settings, tenant: str
) -> AsyncIterator[collections.defaultdict[str, asyncio.Event]]:
    """One scheduler replica with a short lease, leading once this yields; yields its log events."""
    stop, ready = asyncio.Event(), asyncio.Event()
    with watched_logs() as logs:
        task = asyncio.create_task(
            serve(bus, settings, stop, tenant=tenant, config=engine_config(settings), lease_ttl=TTL, ready=ready)
        )
        try:
            async with asyncio.timeout(15):
                await ready.wait()
            yield logs
        finally:
            stop.set()
            async with asyncio.timeout(15):
                await task


async def logged(logs: collections.defaultdict[str, asyncio.Event], event: str, within: float = 10.0) -> None:
    async with asyncio.timeout(within):
        await logs[event].wait()


async def test_a_leader_whose_lease_is_taken_steps_down_and_dispatches_nothing(
    bus: Bus, settings: Settings, unique: str, tmp_path: Path
) -> None:
    kv = await leases_bucket(bus.js, settings)
    key = f"{LEASE_KEY}-{unique}"
    async with recording(bus, unique) as rec, running_agent(bus, tmp_path, unique), leader(
        bus, settings, unique
    ) as logs:
        intruder = LeaseRecord(holder="intruder", expires_at=time.time() + 3600)
        await kv.put(key, msgspec.json.encode(intruder))
        await logged(logs, "lease_taken")

        run_id = await submit(bus, unique, workflow(sh("a", "true")))
        with pytest.raises(TimeoutError):  # nobody leads: the run waits, nothing is dispatched
            await rec.first(ActivityDispatched, run_id, within=3 * TTL)

        await kv.delete(key)  # the intruder is gone: the old leader takes the lease back
        completed = await rec.completion(run_id)
    assert completed.status == "succeeded"
    assert [e.activity_id for e in rec.of(ActivityDispatched, run_id)] == ["a"]


async def test_a_lease_deleted_under_a_running_leader_costs_no_duplicate_dispatch(
    bus: Bus, settings: Settings, unique: str, tmp_path: Path
) -> None:
    kv = await leases_bucket(bus.js, settings)
    steps = [sh(f"s{i}", "sleep 0.2", *([f"s{i - 1}"] if i else [])) for i in range(6)]
    async with recording(bus, unique) as rec, running_agent(bus, tmp_path, unique), leader(
        bus, settings, unique
    ) as logs:
        run_id = await submit(bus, unique, workflow(*steps))
        await rec.first(ActivityDispatched, run_id, activity_id="s1")
        await kv.delete(f"{LEASE_KEY}-{unique}")
        await logged(logs, "lease_taken")
        completed = await rec.completion(run_id)
    assert completed.status == "succeeded"
    dispatched = collections.Counter((e.activity_id, e.attempt) for e in rec.of(ActivityDispatched, run_id))
    assert sorted(dispatched) == [(f"s{i}", 1) for i in range(6)]
    assert set(dispatched.values()) == {1}
