"""A leader whose lease is taken or deleted under it steps down at once and dispatches nothing
until it holds the lease again; the run it left goes on exactly once. One the bus stops answering
steps down before its record expires; the lease is held until a term has wound down; a term that
is over decides nothing."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import structlog
from scheduler_support import engine_config, recording, running_agent, running_scheduler, sh, submit, workflow

from trellis_core import subjects
from trellis_core.bus import Bus
from trellis_core.embedded import EmbeddedNats
from trellis_core.events import ActivityDispatched
from trellis_core.settings import Settings
from trellis_scheduler.kv import leases_bucket
from trellis_scheduler.lease import LEASE_KEY, Lease, LeaseRecord
from trellis_scheduler.scheduler import Scheduler
from trellis_scheduler.service import _lead, serve

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
    async with (
        recording(bus, unique) as rec,
        running_agent(bus, tmp_path, unique),
        leader(bus, settings, unique) as logs,
    ):
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
    async with (
        recording(bus, unique) as rec,
        running_agent(bus, tmp_path, unique),
        leader(bus, settings, unique) as logs,
    ):
        run_id = await submit(bus, unique, workflow(*steps))
        await rec.first(ActivityDispatched, run_id, activity_id="s1")
        await kv.delete(f"{LEASE_KEY}-{unique}")
        await logged(logs, "lease_taken")
        completed = await rec.completion(run_id)
    assert completed.status == "succeeded"
    dispatched = collections.Counter((e.activity_id, e.attempt) for e in rec.of(ActivityDispatched, run_id))
    assert sorted(dispatched) == [(f"s{i}", 1) for i in range(6)]
    assert set(dispatched.values()) == {1}


async def test_a_holder_the_server_stops_answering_steps_down_before_its_record_expires(tmp_path: Path) -> None:
    """A frozen nats-server (SIGSTOP) answers no renewal: each would hang for its whole request
    timeout. The holder gives up in time: a standby takes the lease once the record has expired,
    and two must never lead at once."""
    server = EmbeddedNats(tmp_path / "nats")
    server.start()
    try:
        settings = Settings.from_env({}, nats_url=server.url, data_dir=tmp_path)
        bus = await Bus.connect(settings, name="frozen-lease")
        try:
            kv = await leases_bucket(bus.js, settings)
            lease = Lease(kv, "holder", ttl_seconds=3.0, key="frozen")
            assert await lease.try_acquire()
            lost, stop = asyncio.Event(), asyncio.Event()
            keeping = asyncio.create_task(lease.keep(lost, stop))
            await asyncio.sleep(1.5)  # a renewal or two go through
            assert server.proc is not None
            server.proc.send_signal(signal.SIGSTOP)
            try:
                async with asyncio.timeout(10):
                    await lost.wait()
                stepped_down, expires_at = time.time(), lease.expires_at
            finally:
                server.proc.send_signal(signal.SIGCONT)
            await keeping
        finally:
            await bus.close()
    finally:
        server.stop()
    assert stepped_down < expires_at, f"stepped down {stepped_down - expires_at:.2f} s after the record expired"


class WindingDown:
    """Stands in for the scheduler in `_lead`: a term whose wind-down (its last fetch waited out,
    its snapshots written) outlasts the lease's TTL."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    async def run(self, stop: asyncio.Event, *, ready: asyncio.Event | None = None) -> None:
        if ready is not None:
            ready.set()
        await stop.wait()
        await asyncio.sleep(self.seconds)


async def test_the_lease_is_renewed_until_the_term_has_wound_down(bus: Bus, settings: Settings, unique: str) -> None:
    kv = await leases_bucket(bus.js, settings)
    lease = Lease(kv, "holder", ttl_seconds=TTL, key=f"winding-{unique}")
    assert await lease.try_acquire()
    stop = asyncio.Event()
    term = asyncio.create_task(_lead(WindingDown(3 * TTL), lease, stop, None))  # type: ignore[arg-type]
    await asyncio.sleep(TTL / 2)
    stop.set()
    held: list[bool] = []
    while not term.done():  # a standby reading the lease meanwhile
        entry = await kv.get(lease.key)
        record = msgspec.json.decode(entry.value or b"", type=LeaseRecord)
        held.append(record.holder == "holder" and record.expires_at > time.time())
        await asyncio.sleep(TTL / 4)
    assert await term is False  # not lost
    assert len(held) >= 8
    assert all(held), held


async def test_a_term_that_is_over_decides_nothing_and_the_next_leader_does(
    bus: Bus, settings: Settings, unique: str, tmp_path: Path
) -> None:
    """The leader fetched a run.compiled but was told to end (handed over, or its lease lost) while
    it waited for its lock: it folds the run into the snapshot it leaves and dispatches nothing;
    its successor dispatches the run's activity, once."""
    async with recording(bus, unique) as rec, running_agent(bus, tmp_path, unique):
        stop, ready = asyncio.Event(), asyncio.Event()
        first = Scheduler(bus, settings, tenant=unique, config=engine_config(settings))
        term = asyncio.create_task(first.run(stop, ready=ready))
        async with asyncio.timeout(15):
            await ready.wait()
        async with first.lock:
            run_id = await submit(bus, unique, workflow(sh("a", "true")))
            async with asyncio.timeout(10):  # fetched: its batch now waits for the lock
                while not (await bus.js.consumer_info(subjects.STREAM_EVENTS, first.durable)).num_ack_pending:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
            stop.set()
        async with asyncio.timeout(15):
            await term
        assert rec.of(ActivityDispatched, run_id) == []
        async with running_scheduler(bus, settings, unique):
            assert (await rec.completion(run_id)).status == "succeeded"
    assert [e.activity_id for e in rec.of(ActivityDispatched, run_id)] == ["a"]
