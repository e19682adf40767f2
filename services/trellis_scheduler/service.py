"""`serve`: the scheduler service. Wait for the leader lease, lead until stopped or the lease
is lost, then stand by again; a standby takes over within a few seconds of a leader's death."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket

import nats.errors

from trellis_core.bus import Bus
from trellis_core.ids import uuid7
from trellis_core.logs import get_logger
from trellis_core.settings import Settings
from trellis_engine.state import EngineConfig
from trellis_scheduler.callbacks import CallbackMinter
from trellis_scheduler.kv import leases_bucket
from trellis_scheduler.lease import LEASE_KEY, Lease
from trellis_scheduler.scheduler import Scheduler

log = get_logger("scheduler.service")


def replica_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid7()[-6:]}"


async def serve(
    bus: Bus,
    settings: Settings,
    stop: asyncio.Event,
    *,
    tenant: str = "*",
    config: EngineConfig | None = None,
    lease_ttl: float = 3.0,
    ready: asyncio.Event | None = None,
) -> None:
    """Run one scheduler replica until `stop` is set. `tenant` narrows it to one tenant (tests).
    A TRELLIS_CALLBACK_KEY too short to sign with stops it here, before it takes the lease."""
    mint = CallbackMinter(settings)
    kv = await leases_bucket(bus.js, settings)
    key = LEASE_KEY if tenant == "*" else f"{LEASE_KEY}-{tenant}"
    lease = Lease(kv, replica_id(), ttl_seconds=lease_ttl, key=key)
    log.info("scheduler_standby", replica=lease.holder)
    while not stop.is_set():
        if not await _try_acquire(lease):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=lease_ttl / 3)
            continue
        log.info("scheduler_lease_taken", replica=lease.holder)
        failed: BaseException | None = None
        try:
            lost = await _lead(Scheduler(bus, settings, tenant=tenant, config=config, mint=mint), lease, stop, ready)
        except* nats.errors.Error as group:
            failed = group.exceptions[0]
        if failed is not None:
            # The bus failed the term (a NATS node died and its streams are electing leaders):
            # stand by and lead again from the snapshots, as a successor would.
            log.warning("scheduler_term_failed", replica=lease.holder, error=repr(failed))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=lease_ttl / 3)
            continue
        if stop.is_set():
            await lease.release()
        log.info("scheduler_term_over", replica=lease.holder, lease_lost=lost)


async def _try_acquire(lease: Lease) -> bool:
    """Take the lease if free; False too when the bus does not answer (try again later)."""
    try:
        return await lease.try_acquire()
    except nats.errors.Error as exc:
        log.warning("lease_unavailable", replica=lease.holder, error=repr(exc))
        return False


async def _lead(scheduler: Scheduler, lease: Lease, stop: asyncio.Event, ready: asyncio.Event | None) -> bool:
    """One term as leader: until `stop`, or until the lease cannot be renewed (then True)."""
    term_over = asyncio.Event()
    lost = asyncio.Event()

    async def watch() -> None:
        waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(lost.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
        term_over.set()

    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(lease.keep(lost, term_over))
        tasks.create_task(watch())
        tasks.create_task(scheduler.run(term_over, ready=ready))
    return lost.is_set()
