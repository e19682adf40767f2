"""`serve`: one scheduler replica. It leads the partitions it is assigned, each for a term
(the partition's lease held, a `Scheduler` running), and stands by for the others.

With one partition every replica competes for its lease, as a single leader with standbys: a
standby takes over within a few seconds of the leader's death. With several, each replica
announces itself in the leases bucket (a record renewed every third of the lease's TTL), and
every replica computes the same balanced assignment of partitions to the live replicas
(`partitions.assignment`): it takes the leases of its own as they come free and hands over
those assigned elsewhere (the term ends, its last snapshots are written, then the lease is
released). A replica that dies stops renewing both its record and its leases: within the TTL
the others see it gone and take its partitions over.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import socket
import time
from dataclasses import dataclass, field

import msgspec
import nats.errors
import nats.js.errors
from nats.js.kv import KeyValue

from trellis_core.bus import Bus
from trellis_core.errors import ConfigError
from trellis_core.ids import uuid7
from trellis_core.logs import get_logger
from trellis_core.settings import Settings
from trellis_engine.state import EngineConfig
from trellis_scheduler.callbacks import CallbackMinter
from trellis_scheduler.kv import leases_bucket
from trellis_scheduler.lease import Lease
from trellis_scheduler.partitions import Partition, assignment, scope_tenant_error
from trellis_scheduler.scheduler import Scheduler

log = get_logger("scheduler.service")


def replica_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid7()[-6:]}"


class MemberRecord(msgspec.Struct, frozen=True):
    expires_at: float


_decode_member = msgspec.json.Decoder(MemberRecord).decode


async def serve(
    bus: Bus,
    settings: Settings,
    stop: asyncio.Event,
    *,
    tenant: str = "*",
    config: EngineConfig | None = None,
    lease_ttl: float = 3.0,
    ready: asyncio.Event | None = None,
    partitions: int | None = None,
) -> None:
    """Run one scheduler replica until `stop` is set. `tenant` narrows it to one tenant (tests);
    `partitions` overrides TRELLIS_SCHEDULER_PARTITIONS. `ready` is set once the replica leads
    every partition assigned to it. A TRELLIS_CALLBACK_KEY too short to sign with stops it here,
    before it takes a lease."""
    if why := scope_tenant_error(tenant):
        raise ConfigError(why)
    mint = CallbackMinter(settings)
    kv = await leases_bucket(bus.js, settings)
    count = partitions or settings.scheduler_partitions
    # What start-up allocated (modules, classes, settings) lives as long as the process: out of the
    # collector's sight, a full collection no longer walks it (one took 70 ms of a benchmark run).
    gc.collect()
    gc.freeze()
    replica = Replica(bus, settings, kv, mint, tenant=tenant, count=count, config=config, lease_ttl=lease_ttl)
    await replica.run(stop, ready)


@dataclass(slots=True)
class _Term:
    """One partition led: `end` ends it; `handed_over` when it ended to move the partition."""

    end: asyncio.Event = field(default_factory=asyncio.Event)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    handed_over: bool = False


class Replica:
    def __init__(
        self,
        bus: Bus,
        settings: Settings,
        kv: KeyValue,
        mint: CallbackMinter,
        *,
        tenant: str,
        count: int,
        config: EngineConfig | None,
        lease_ttl: float,
    ) -> None:
        self.bus = bus
        self.settings = settings
        self.kv = kv
        self.mint = mint
        self.config = config
        self.ttl = lease_ttl
        self.holder = replica_id()
        self.partitions = [Partition(index, count, tenant) for index in range(count)]
        self.leases = [Lease(kv, self.holder, ttl_seconds=lease_ttl, key=p.name) for p in self.partitions]
        self.members_prefix = f"{self.partitions[0].scope}-members"
        self.terms: dict[int, _Term] = {}
        self.wanted: set[int] = set()
        self.ready: asyncio.Event | None = None

    @property
    def member_key(self) -> str:
        return f"{self.members_prefix}.{self.holder}"

    async def run(self, stop: asyncio.Event, ready: asyncio.Event | None) -> None:
        self.ready = ready
        log.info("scheduler_standby", replica=self.holder, partitions=len(self.partitions))
        async with asyncio.TaskGroup() as tasks:
            try:
                while not stop.is_set():
                    await self._tick(stop, tasks)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), timeout=self.ttl / 3)
            finally:
                for term in self.terms.values():
                    term.end.set()
                if len(self.partitions) > 1:
                    with contextlib.suppress(nats.errors.Error, nats.js.errors.Error):
                        await self.kv.delete(self.member_key)

    async def _tick(self, stop: asyncio.Event, tasks: asyncio.TaskGroup) -> None:
        """Take the free leases of the partitions assigned here; hand over the others."""
        self.wanted = await self._assigned()
        for index in sorted(self.wanted - self.terms.keys()):
            if await _try_acquire(self.leases[index]):
                self.terms[index] = term = _Term()
                tasks.create_task(self._term(index, term, stop))
        for index in sorted(self.terms.keys() - self.wanted):
            term = self.terms[index]
            if not term.handed_over:
                log.info("scheduler_partition_handed_over", replica=self.holder, partition=str(self.partitions[index]))
                term.handed_over = True
                term.end.set()
        self._check_ready()

    async def _assigned(self) -> set[int]:
        """The partitions this replica should lead now: with one partition, that one (every
        replica competes for it); with several, its share among the live replicas."""
        if len(self.partitions) == 1:
            return {0}
        try:
            await self.kv.put(self.member_key, msgspec.json.encode(MemberRecord(time.time() + self.ttl)))
            members = await self._members()
        except (nats.errors.Error, nats.js.errors.Error) as exc:
            log.warning("scheduler_members_unavailable", replica=self.holder, error=repr(exc))
            return self.wanted  # keep what it leads; the leases decide if the bus stays away
        return assignment(members | {self.holder}, len(self.partitions)).get(self.holder, set())

    async def _members(self) -> set[str]:
        """The replicas whose records have not expired; a record expired for long is removed."""
        now, live = time.time(), set()
        watcher = await self.kv.watch(f"{self.members_prefix}.>", ignore_deletes=True)
        try:
            async for entry in watcher:
                if entry is None:  # the end of what the bucket holds now
                    break
                try:
                    expires_at = _decode_member(entry.value or b"").expires_at
                except (msgspec.DecodeError, msgspec.ValidationError):
                    expires_at = 0.0
                if expires_at > now:
                    live.add(entry.key.removeprefix(f"{self.members_prefix}."))
                elif expires_at < now - 10 * self.ttl:
                    with contextlib.suppress(nats.errors.Error, nats.js.errors.Error):
                        await self.kv.delete(entry.key, last=entry.revision)
        finally:
            await watcher.stop()  # type: ignore[no-untyped-call]
        return live

    def _check_ready(self) -> None:
        if (
            self.ready is not None
            and self.wanted
            and all(index in self.terms and self.terms[index].ready.is_set() for index in self.wanted)
        ):
            self.ready.set()

    async def _term(self, index: int, term: _Term, stop: asyncio.Event) -> None:
        """Lead partition `index` until stopped, handed over, or the lease is lost."""
        partition, lease = self.partitions[index], self.leases[index]
        log.info("scheduler_lease_taken", replica=self.holder, partition=str(partition))
        scheduler = Scheduler(self.bus, self.settings, partition=partition, config=self.config, mint=self.mint)
        failed: BaseException | None = None
        lost = False
        ready = asyncio.Event()
        watch_ready = asyncio.ensure_future(self._when_ready(ready, term))
        try:
            lost = await _lead(scheduler, lease, term.end, ready)
        except* nats.errors.Error as group:
            failed = group.exceptions[0]
        finally:
            watch_ready.cancel()
            del self.terms[index]
        if failed is not None:
            # The bus failed the term (a NATS node died and its streams are electing leaders):
            # stand by and lead again from the snapshots, as a successor would.
            log.warning("scheduler_term_failed", replica=self.holder, partition=str(partition), error=repr(failed))
            return
        if stop.is_set() or term.handed_over:
            await lease.release()
        log.info("scheduler_term_over", replica=self.holder, partition=str(partition), lease_lost=lost)

    async def _when_ready(self, ready: asyncio.Event, term: _Term) -> None:
        await ready.wait()
        term.ready.set()
        self._check_ready()


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

    async def lead() -> None:
        try:
            await scheduler.run(term_over, ready=ready)
        finally:
            done.set()

    # The lease is renewed until the term has wound down (its last fetch waited out, its snapshots
    # written), not only until it was told to end: a lease left to expire meanwhile would let a
    # successor start on older snapshots while this one still writes.
    done = asyncio.Event()
    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(lease.keep(lost, done))
        tasks.create_task(watch())
        tasks.create_task(lead())
    return lost.is_set()
