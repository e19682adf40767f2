"""The schedule loop (docs/schedules.md): one gateway replica at a time (a lease on JetStream KV)
syncs environments' schedules, claims each due firing once in the store and starts its run as an
ordinary run requested by `schedule/<name>` (a detectDrift slot: a drift check, schedule_slots.py);
it announces expiries before they come (running the template's onExpiring hooks, expiry_notice.py).

It wakes at the earliest due time, at most every `max_sleep` seconds. A slot due while every
replica was down is found on return and fired once: the next slot is the first after now.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import nats.errors

from trellis_core.ids import uuid7
from trellis_core.logs import get_logger
from trellis_gateway.context import ApiProblem, Gateway
from trellis_gateway.expiry_notice import start_expiry_notice
from trellis_gateway.launch import audit
from trellis_gateway.schedule_slots import (
    NotDeployed,
    actor_of,
    deployed_for,
    skip_not_deployed,
    slot_run,
    start_slot_run,
)
from trellis_gateway.schedule_sync import key_of, sync_stale
from trellis_scheduler.kv import leases_bucket
from trellis_scheduler.lease import Lease
from trellis_store.api import (
    DueSchedule,
    DueSchedules,
    Ok,
    ScheduleClaim,
    ScheduleClaimed,
    ScheduleDue,
    ScheduleMark,
    StoreError,
)
from trellis_templates.schedules import next_due

LEASE_KEY = "schedules"
MAX_SLEEP_SECONDS = 30.0
PAGE = 100  # stale environments, and due schedules, read a pass
STORE_RETRY = timedelta(seconds=1)
Clock = Callable[[], datetime]
log = get_logger("gateway.schedules")


def replica_id() -> str:
    return f"gateway-{socket.gethostname()}-{os.getpid()}-{uuid7()[-6:]}"


def utc_now() -> datetime:
    return datetime.now(UTC)


def idempotency_key(run_id: str) -> str:
    """The key that ties the run recorded with the claim to the gateway's start_run."""
    return f"schedule:{run_id}"


async def run_schedules(
    gateway: Gateway,
    stop: asyncio.Event,
    *,
    clock: Clock = utc_now,
    max_sleep: float = MAX_SLEEP_SECONDS,
    lease_ttl: float = 3.0,
    lease_key: str = LEASE_KEY,
) -> None:
    """Lead the schedule loop whenever this replica holds the lease, until `stop`. A failure is
    logged and the loop starts again after a pause: the gateway serves on regardless."""
    while not stop.is_set():
        try:
            await _take_turns(gateway, stop, clock, max_sleep, lease_ttl, lease_key)
        except Exception:
            log.exception("schedule_loop_failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=max_sleep)


async def _take_turns(
    gateway: Gateway, stop: asyncio.Event, clock: Clock, max_sleep: float, lease_ttl: float, lease_key: str
) -> None:
    kv = await leases_bucket(gateway.bus.js, gateway.settings)
    lease = Lease(kv, replica_id(), ttl_seconds=lease_ttl, key=lease_key)
    while not stop.is_set():
        if not await lease.try_acquire():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=lease_ttl / 3)
            continue
        log.info("schedule_lease_taken", replica=lease.holder)
        lost = asyncio.Event()
        term_over = asyncio.Event()
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(lease.keep(lost, term_over))
                tasks.create_task(_lead(ScheduleRunner(gateway, clock), stop, lost, term_over, max_sleep))
        finally:
            if stop.is_set() or not lost.is_set():
                await lease.release()


async def _lead(
    runner: ScheduleRunner, stop: asyncio.Event, lost: asyncio.Event, term_over: asyncio.Event, max_sleep: float
) -> None:
    """Tick until stopped or the lease is lost; sleep until the next due time in between."""
    try:
        while not stop.is_set() and not lost.is_set():
            try:
                upcoming = await runner.tick()
            except (nats.errors.Error, OSError, TimeoutError) as exc:
                log.warning("schedule_tick_failed", error=repr(exc))
                upcoming = None
            await _sleep(stop, lost, runner.seconds_until(upcoming, max_sleep))
    finally:
        term_over.set()


async def _sleep(stop: asyncio.Event, lost: asyncio.Event, seconds: float) -> None:
    waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(lost.wait())]
    try:
        await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()


class ScheduleRunner:
    """One pass of the loop at a time: sync, then act on what the store says is due."""

    def __init__(self, gateway: Gateway, clock: Clock) -> None:
        self.gateway = gateway
        self.clock = clock

    def seconds_until(self, upcoming: datetime | None, max_sleep: float) -> float:
        if upcoming is None:
            return max_sleep
        return min(max(0.05, (upcoming - self.clock()).total_seconds()), max_sleep)

    async def tick(self) -> datetime | None:
        """Sync stale environments, then fire, publish or announce what is due; the next due time."""
        synced = await sync_stale(self.gateway, self.clock(), limit=PAGE)
        due = await self.gateway.store.ask(ScheduleDue(now=self.clock(), limit=PAGE), DueSchedules)
        if isinstance(due, StoreError):
            if due.code == "unavailable":  # not up yet (the dev stack starts it beside the gateway)
                log.info("schedule_store_unavailable", error=due.message)
                return self.clock() + STORE_RETRY
            log.warning("schedule_due_failed", error=due.message)
            return None
        for item in due.due:
            try:
                await self.act(item)
            except (nats.errors.Error, OSError, TimeoutError):
                raise  # the bus or the store is away: the whole tick waits
            except Exception:  # one item's bug must not stop the others' slots
                log.exception("schedule_item_failed", tenant=item.tenant, environment=item.environment,
                              schedule=item.schedule.name, reason=item.reason)
        if synced >= PAGE or len(due.due) >= PAGE:  # more than a page: go on at once
            return self.clock()
        return due.next_due_at

    async def act(self, item: DueSchedule) -> None:
        match item.reason:
            case "due":
                await self.fire(item)
            case "unpublished":
                await self.publish(item, item.last_run_id, item.last_due_at)
            case "expiring":
                await self.announce(item)

    async def fire(self, item: DueSchedule) -> None:
        """Claim the slot due at `next_due_at`, moving it to the next one after now (skipped when
        an opt-out runs until later), and start its run."""
        schedule, due_at = item.schedule, item.next_due_at
        if due_at is None:
            return
        now = self.clock()
        following = next_due(schedule, now, key=key_of(item.tenant, item.environment), not_before=item.optout_until)
        skipped = item.optout_until is not None and due_at < item.optout_until
        undeployed = not skipped and not await deployed_for(self.gateway, item)
        run = None
        if not skipped and not undeployed:
            run_id = uuid7()
            run = slot_run(item, run_id, idempotency_key(run_id))
        claim = ScheduleClaim(
            tenant=item.tenant,
            environment=item.environment,
            name=schedule.name,
            due_at=due_at,
            next_due_at=following,
            run=run,
            now=now,
        )
        claimed = await self.gateway.store.ask(claim, ScheduleClaimed)
        if isinstance(claimed, StoreError):
            log.warning(
                "schedule_claim_failed",
                tenant=item.tenant,
                environment=item.environment,
                schedule=schedule.name,
                error=claimed.message,
            )
            return
        if not claimed.claimed:  # another replica took it, or the schedule changed meanwhile
            log.info("schedule_not_claimed", tenant=item.tenant, environment=item.environment, schedule=schedule.name)
            return
        if undeployed:
            await skip_not_deployed(self.gateway, item, due_at)
            return
        if run is None:
            log.info(
                "schedule_skipped",
                tenant=item.tenant,
                environment=item.environment,
                schedule=schedule.name,
                due=due_at.isoformat(),
                opted_out_until=str(item.optout_until),
            )
            return
        await self.publish(item, run.run_id, due_at)

    async def publish(self, item: DueSchedule, run_id: str, due_at: datetime | None) -> None:
        """Publish the claimed run through start_run (it finds the run by its idempotency key). A
        refusal (4xx, the template gone) is given up on and audited; the bus down is retried."""
        schedule = item.schedule
        payload = {"schedule": schedule.name, "due": _iso(due_at)}
        trigger = {"type": "schedule", "schedule": schedule.name, "payload": payload}  # as RunRequested.trigger says
        try:
            await start_slot_run(self.gateway, item, idempotency_key(run_id), trigger)
        except NotDeployed:  # a detectDrift slot: the environment was destroyed since the claim
            await skip_not_deployed(self.gateway, item, due_at, run_id)
        except ApiProblem as exc:
            if exc.problem.status >= 500 and exc.problem.status != 500:
                log.warning("schedule_publish_retry", tenant=item.tenant, run=run_id, error=exc.problem.detail)
                return
            log.error(
                "schedule_run_refused",
                tenant=item.tenant,
                environment=item.environment,
                run=run_id,
                schedule=schedule.name,
                error=exc.problem.detail,
            )
            await audit(
                self.gateway,
                item.tenant,
                actor_of(schedule.name),
                "schedule.failed",
                item.environment,
                {"schedule": schedule.name, "run_id": run_id, "error": exc.problem.detail},
                "",
            )
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            log.warning("schedule_publish_retry", tenant=item.tenant, run=run_id, error=repr(exc))
            return
        else:
            log.info(
                "schedule_fired",
                tenant=item.tenant,
                environment=item.environment,
                schedule=schedule.name,
                run=run_id,
                due=_iso(due_at),
            )
        await self._mark(
            item,
            ScheduleMark(
                tenant=item.tenant, environment=item.environment, name=schedule.name, mark="published", run_id=run_id
            ),
        )

    async def announce(self, item: DueSchedule) -> None:
        """The expiry warning, once per expiry: a run of the template's `onExpiring` hooks (when it
        has any; expiry_notice.py), an audit entry `schedule.expiring` and a log line."""
        schedule, expires_at = item.schedule, item.next_due_at
        run_id = await start_expiry_notice(self.gateway, item, actor_of(schedule.name))
        log.warning(
            "environment_expiring",
            tenant=item.tenant,
            environment=item.environment,
            schedule=schedule.name,
            expires_at=_iso(expires_at),
            run=run_id,
        )
        detail: dict[str, object] = {"schedule": schedule.name, "expires_at": _iso(expires_at)}
        if run_id:
            detail["run_id"] = run_id
        await audit(
            self.gateway, item.tenant, actor_of(schedule.name), "schedule.expiring", item.environment, detail, ""
        )
        await self._mark(
            item,
            ScheduleMark(
                tenant=item.tenant, environment=item.environment, name=schedule.name, mark="warned", due_at=expires_at
            ),
        )

    async def _mark(self, item: DueSchedule, mark: ScheduleMark) -> None:
        answer = await self.gateway.store.ask(mark, Ok)
        if isinstance(answer, StoreError):
            log.warning("schedule_mark_failed", tenant=item.tenant, environment=item.environment, error=answer.message)


def _iso(moment: datetime | None) -> str:
    return moment.isoformat() if moment is not None else ""
