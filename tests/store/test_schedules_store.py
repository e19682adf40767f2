"""Schedule state in the store: synced per environment revision, a due slot claimed exactly once
(two claimers, a restart), missed slots coalesced into one firing, a time to live armed by the
deploy, announced before it expires, and extended only within its optOutOptions."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import msgspec
from store_api_support import (
    RunningStore,
    env_put,
    running_store,
    seed_run,
    store,
    tenant_with_template,
)

from trellis_core.bus import Bus
from trellis_core.settings import Settings
from trellis_store.api import (
    DueSchedules,
    Environment,
    Ok,
    RunCreate,
    RunDetail,
    RunGet,
    ScheduleClaim,
    ScheduleClaimed,
    ScheduleDue,
    ScheduleExtend,
    ScheduleList,
    ScheduleMark,
    ScheduleStale,
    ScheduleState,
    ScheduleStates,
    ScheduleSync,
    StaleEnvironments,
    SyncedSchedule,
)
from trellis_templates.schedules import EffectiveSchedule

__all__ = ["store"]  # the fixture, imported for pytest

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
HOURLY = EffectiveSchedule(name="hourly", type="deploy", cron="0 * * * *")
TTL = EffectiveSchedule(
    name="ttl", type="destroy", ttl_seconds=8 * 3600, allow_opt_out=True, max_opt_out_seconds=4 * 3600, max_opt_outs=2
)


async def environment(store: RunningStore, tenant: str, name: str = "dev") -> None:
    await tenant_with_template(store, tenant)
    await store.ask(env_put(tenant, name, actor="alice"), Environment)


async def sync(store: RunningStore, tenant: str, *schedules: SyncedSchedule, now: datetime = T0) -> None:
    await store.ask(ScheduleSync(tenant=tenant, environment="dev", revision=1, schedules=schedules, now=now), Ok)


def scheduled_run(tenant: str, run_id: str, name: str = "hourly") -> RunCreate:
    return RunCreate(
        tenant=tenant,
        run_id=run_id,
        environment="dev",
        action="deploy",
        requested_by=f"schedule/{name}",
        idempotency_key=f"schedule:{run_id}",
    )


def claim(tenant: str, due: datetime, following: datetime | None, run_id: str, now: datetime) -> ScheduleClaim:
    return ScheduleClaim(
        tenant=tenant,
        environment="dev",
        name="hourly",
        due_at=due,
        next_due_at=following,
        run=scheduled_run(tenant, run_id),
        now=now,
    )


async def test_an_environment_is_stale_until_its_revision_is_synced(store: RunningStore, unique: str) -> None:
    await environment(store, unique)
    stale = await store.ask(ScheduleStale(), StaleEnvironments)
    assert [(e.tenant, e.name, e.revision) for e in stale.environments if e.tenant == unique] == [(unique, "dev", 1)]
    await sync(store, unique, SyncedSchedule(schedule=HOURLY, next_due_at=T0 + timedelta(hours=1)))
    stale = await store.ask(ScheduleStale(), StaleEnvironments)
    assert [e for e in stale.environments if e.tenant == unique] == []
    listed = await store.ask(ScheduleList(tenant=unique, environment="dev"), ScheduleStates)
    assert listed.synced
    [hourly] = listed.schedules
    assert (hourly.name, hourly.kind, hourly.cron, hourly.next_due_at) == (
        "hourly",
        "cron",
        "0 * * * *",
        T0 + timedelta(hours=1),
    )
    await store.ask(env_put(unique, "dev", if_match='"1"', actor="alice"), Environment)  # revision 2
    stale = await store.ask(ScheduleStale(), StaleEnvironments)
    assert [(e.name, e.revision) for e in stale.environments if e.tenant == unique] == [("dev", 2)]
    assert not (await store.ask(ScheduleList(tenant=unique, environment="dev"), ScheduleStates)).synced


async def test_two_claimers_of_one_slot_fire_it_once(store: RunningStore, unique: str) -> None:
    await environment(store, unique)
    due = T0 + timedelta(hours=1)
    await sync(store, unique, SyncedSchedule(schedule=HOURLY, next_due_at=due))
    now = due + timedelta(seconds=1)
    answers = await asyncio.gather(
        *(store.ask(claim(unique, due, due + timedelta(hours=1), f"run-{i}", now), ScheduleClaimed) for i in range(2))
    )
    assert sorted(a.claimed for a in answers) == [False, True]
    [winner] = [a.run_id for a in answers if a.claimed]
    rows = await store.sql("SELECT run_id, requested_by, status FROM runs WHERE tenant = $1", unique)
    assert [(r["run_id"], r["requested_by"], r["status"]) for r in rows] == [(winner, "schedule/hourly", "requested")]
    audit = await store.sql("SELECT actor, action FROM audit WHERE tenant = $1 AND actor LIKE 'schedule/%'", unique)
    assert sorted((a["actor"], a["action"]) for a in audit) == [
        ("schedule/hourly", "run.create"),
        ("schedule/hourly", "schedule.fire"),
    ]


async def test_slots_missed_while_down_fire_once_after_a_restart(
    bus: Bus, settings: Settings, database_url: str, unique: str
) -> None:
    due = T0 + timedelta(hours=1)
    back = T0 + timedelta(hours=5, minutes=30)  # four slots missed while nothing ran
    async with running_store(bus, settings, database_url) as store:
        await environment(store, unique)
        await sync(store, unique, SyncedSchedule(schedule=HOURLY, next_due_at=due))
    async with running_store(bus, settings, database_url) as store:
        found = await store.ask(ScheduleDue(now=back), DueSchedules)
        [item] = [d for d in found.due if d.tenant == unique]
        assert (item.reason, item.next_due_at) == ("due", due)
        answer = await store.ask(claim(unique, due, T0 + timedelta(hours=6), "run-1", back), ScheduleClaimed)
        assert answer.claimed
    async with running_store(bus, settings, database_url) as store:  # restarted again: nothing left to fire
        found = await store.ask(ScheduleDue(now=back), DueSchedules)
        assert [d for d in found.due if d.tenant == unique and d.reason == "due"] == []
        assert found.next_due_at == T0 + timedelta(hours=6)
        again = await store.ask(claim(unique, due, T0 + timedelta(hours=6), "run-2", back), ScheduleClaimed)
        assert not again.claimed
        rows = await store.sql("SELECT run_id FROM runs WHERE tenant = $1", unique)
        assert [r["run_id"] for r in rows] == ["run-1"]


async def test_a_fired_run_not_marked_published_is_listed_again(store: RunningStore, unique: str) -> None:
    await environment(store, unique)
    due = T0 + timedelta(hours=1)
    await sync(store, unique, SyncedSchedule(schedule=HOURLY, next_due_at=due))
    await store.ask(claim(unique, due, due + timedelta(hours=1), "run-1", due), ScheduleClaimed)
    soon = await store.ask(ScheduleDue(now=due + timedelta(seconds=5)), DueSchedules)
    assert [d for d in soon.due if d.tenant == unique] == []
    later = await store.ask(ScheduleDue(now=due + timedelta(seconds=40)), DueSchedules)
    [item] = [d for d in later.due if d.tenant == unique]
    assert (item.reason, item.last_run_id, item.last_due_at) == ("unpublished", "run-1", due)
    mark = ScheduleMark(tenant=unique, environment="dev", name="hourly", mark="published", run_id="run-1")
    await store.ask(mark, Ok)
    after = await store.ask(ScheduleDue(now=due + timedelta(seconds=40)), DueSchedules)
    assert [d for d in after.due if d.tenant == unique] == []


async def deployed(store: RunningStore, tenant: str, finished: datetime, run_id: str = "deploy-1") -> None:
    """The environment as the projection leaves it after a successful deploy run."""
    await seed_run(store, tenant, run_id, status="succeeded")
    await store.sql("UPDATE runs SET finished_at = $2 WHERE tenant = $1 AND run_id = $3", tenant, finished, run_id)
    await store.sql(
        "UPDATE environments SET deployed = true, status = 'deployed', deploy_run_id = $2 WHERE tenant = $1",
        tenant,
        run_id,
    )


async def test_a_time_to_live_starts_at_the_deploy_and_is_announced_before_it_ends(
    store: RunningStore, unique: str
) -> None:
    await environment(store, unique)
    await sync(store, unique, SyncedSchedule(schedule=TTL))
    assert [d for d in (await store.ask(ScheduleDue(now=T0), DueSchedules)).due if d.tenant == unique] == []
    listed = await store.ask(ScheduleList(tenant=unique, environment="dev"), ScheduleStates)
    assert listed.schedules[0].expires_at is None  # not deployed yet: no expiry
    await deployed(store, unique, T0 + timedelta(minutes=10))
    expiry = T0 + timedelta(hours=8, minutes=10)
    assert [d for d in (await store.ask(ScheduleDue(now=T0), DueSchedules)).due if d.tenant == unique] == []
    listed = await store.ask(ScheduleList(tenant=unique, environment="dev"), ScheduleStates)
    assert (listed.schedules[0].expires_at, listed.schedules[0].time_to_live) == (expiry, "8h")
    warn = await store.ask(ScheduleDue(now=expiry - timedelta(minutes=30)), DueSchedules)
    [item] = [d for d in warn.due if d.tenant == unique]
    assert (item.reason, item.next_due_at) == ("expiring", expiry)
    await store.ask(ScheduleMark(tenant=unique, environment="dev", name="ttl", mark="warned", due_at=expiry), Ok)
    quiet = await store.ask(ScheduleDue(now=expiry - timedelta(minutes=30)), DueSchedules)
    assert [d for d in quiet.due if d.tenant == unique] == []
    [due] = [d for d in (await store.ask(ScheduleDue(now=expiry), DueSchedules)).due if d.tenant == unique]
    assert (due.reason, due.schedule.type) == ("due", "destroy")


async def test_extending_a_time_to_live_moves_the_expiry_within_the_limits(store: RunningStore, unique: str) -> None:
    await environment(store, unique)
    await sync(store, unique, SyncedSchedule(schedule=TTL))
    await deployed(store, unique, T0)
    await store.ask(ScheduleDue(now=T0), DueSchedules)  # arms it
    extend = ScheduleExtend(tenant=unique, environment="dev", seconds=2 * 3600, actor="ann", now=T0)
    state = await store.ask(extend, ScheduleState)
    assert (state.name, state.expires_at, state.optouts) == ("ttl", T0 + timedelta(hours=10), 1)
    too_long = await store.refused(ScheduleExtend(tenant=unique, environment="dev", seconds=5 * 3600, now=T0))
    assert (too_long.code, too_long.path) == ("invalid", "duration")
    assert "maxAllowedDuration 4h" in too_long.message
    await store.ask(extend, ScheduleState)
    third = await store.refused(extend)
    assert "maxAllowedTimes is 2" in third.message
    unknown = await store.refused(ScheduleExtend(tenant=unique, environment="nope", seconds=60, now=T0))
    assert unknown.code == "not_found"
    audit = await store.sql("SELECT actor, detail FROM audit WHERE tenant = $1 AND action = 'schedule.extend'", unique)
    assert [a["actor"] for a in audit] == ["ann", "ann"]


async def test_a_changed_cadence_rearms_and_a_removed_schedule_goes(store: RunningStore, unique: str) -> None:
    await environment(store, unique)
    await sync(store, unique, SyncedSchedule(schedule=HOURLY, next_due_at=T0 + timedelta(hours=1)))
    await store.ask(
        claim(unique, T0 + timedelta(hours=1), T0 + timedelta(hours=2), "run-1", T0 + timedelta(hours=1)),
        ScheduleClaimed,
    )
    kept = SyncedSchedule(schedule=HOURLY, next_due_at=T0 + timedelta(hours=9))
    await sync(store, unique, kept)  # same cadence: its state stays
    [state] = (await store.ask(ScheduleList(tenant=unique, environment="dev"), ScheduleStates)).schedules
    assert (state.next_due_at, state.last_run_id) == (T0 + timedelta(hours=2), "run-1")
    changed = EffectiveSchedule(name="hourly", type="deploy", cron="30 * * * *")
    await sync(store, unique, SyncedSchedule(schedule=changed, next_due_at=T0 + timedelta(minutes=30)))
    [state] = (await store.ask(ScheduleList(tenant=unique, environment="dev"), ScheduleStates)).schedules
    assert (state.cron, state.next_due_at) == ("30 * * * *", T0 + timedelta(minutes=30))
    await sync(store, unique)
    assert (await store.ask(ScheduleList(tenant=unique, environment="dev"), ScheduleStates)).schedules == ()


async def test_a_run_recorded_by_a_claim_is_an_ordinary_requested_run(store: RunningStore, unique: str) -> None:
    await environment(store, unique)
    due = T0 + timedelta(hours=1)
    await sync(store, unique, SyncedSchedule(schedule=HOURLY, next_due_at=due))
    await store.ask(claim(unique, due, None, "run-1", due), ScheduleClaimed)
    run = await store.ask(RunGet(tenant=unique, run_id="run-1"), RunDetail)
    assert (run.status, run.action, run.requested_by) == ("requested", "deploy", "schedule/hourly")


async def test_a_redeploy_restarts_a_time_to_live_only_when_the_template_says_so(
    store: RunningStore, unique: str
) -> None:
    await environment(store, unique)
    await sync(store, unique, SyncedSchedule(schedule=TTL))
    await deployed(store, unique, T0)
    await store.ask(ScheduleDue(now=T0), DueSchedules)
    await deployed(store, unique, T0 + timedelta(hours=3), run_id="deploy-2")
    await store.ask(ScheduleDue(now=T0 + timedelta(hours=3)), DueSchedules)
    [state] = (await store.ask(ScheduleList(tenant=unique, environment="dev"), ScheduleStates)).schedules
    assert state.expires_at == T0 + timedelta(hours=8)  # the first deploy's lifetime stands
    renewing = msgspec.structs.replace(TTL, extend_on_deploy=True)
    await sync(store, unique, SyncedSchedule(schedule=renewing), now=T0 - timedelta(hours=1))
    await store.ask(ScheduleDue(now=T0 + timedelta(hours=3)), DueSchedules)
    [state] = (await store.ask(ScheduleList(tenant=unique, environment="dev"), ScheduleStates)).schedules
    assert state.expires_at == T0 + timedelta(hours=11)  # from deploy-2's finish
    await deployed(store, unique, T0 + timedelta(hours=5), run_id="deploy-3")
    await store.ask(ScheduleDue(now=T0 + timedelta(hours=5)), DueSchedules)
    [state] = (await store.ask(ScheduleList(tenant=unique, environment="dev"), ScheduleStates)).schedules
    assert state.expires_at == T0 + timedelta(hours=13)


async def test_a_destroy_by_hand_disarms_a_time_to_live_and_the_next_deploy_starts_a_new_one(
    store: RunningStore, unique: str
) -> None:
    await environment(store, unique)
    await sync(store, unique, SyncedSchedule(schedule=TTL))
    await deployed(store, unique, T0)
    await store.ask(ScheduleDue(now=T0), DueSchedules)
    await store.sql("UPDATE environments SET deployed = false, status = 'destroyed' WHERE tenant = $1", unique)
    later = T0 + timedelta(hours=9)  # past the first deploy's expiry: nothing to destroy any more
    assert [d for d in (await store.ask(ScheduleDue(now=later), DueSchedules)).due if d.tenant == unique] == []
    [state] = (await store.ask(ScheduleList(tenant=unique, environment="dev"), ScheduleStates)).schedules
    assert state.expires_at is None
    await deployed(store, unique, later, run_id="deploy-2")
    await store.ask(ScheduleDue(now=later), DueSchedules)
    [state] = (await store.ask(ScheduleList(tenant=unique, environment="dev"), ScheduleStates)).schedules
    assert state.expires_at == later + timedelta(hours=8)


async def test_a_schedule_asking_for_approval_is_postponed_by_an_admin_only(store: RunningStore, unique: str) -> None:
    await environment(store, unique)
    await sync(store, unique, SyncedSchedule(schedule=msgspec.structs.replace(TTL, approval=True)))
    refused = await store.refused(ScheduleExtend(tenant=unique, environment="dev", seconds=60, now=T0))
    assert (refused.code, refused.path) == ("forbidden", "name")
    assert "optOutOptions.approval" in refused.message
    state = await store.ask(
        ScheduleExtend(tenant=unique, environment="dev", seconds=60, admin=True, now=T0), ScheduleState
    )
    assert state.optouts == 1
