"""The store's schedule ops (docs/schedules.md): sync an environment's schedules, list what is due,
claim one firing once (in the transaction that records its run), extend a time to live, show them.

Cron arithmetic is the caller's (trellis_templates.schedules): the store compares and moves
times. A time to live is armed here, in SQL, when the environment's deploy succeeds."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import msgspec

from trellis_core.events import Problem
from trellis_store.api import (
    DueSchedule,
    DueSchedules,
    Ok,
    RunCreate,
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
    StaleEnvironment,
    StaleEnvironments,
    StoreError,
    SyncedSchedule,
)
from trellis_store.commands import audit, to_json
from trellis_store.context import MAX_PAGE, StoreContext, error
from trellis_templates.schedules import EffectiveSchedule, format_duration, refusal

UNPUBLISHED_AFTER = timedelta(seconds=30)  # a fired run not marked published by then is published again
WARN_BEFORE = timedelta(hours=1)  # an expiry is announced this long before (a quarter of a short TTL)

_spec = msgspec.json.Decoder(EffectiveSchedule)
_problems = msgspec.json.Decoder(tuple[Problem, ...])

_STALE = """
SELECT e.tenant, e.name, e.revision FROM environments e
LEFT JOIN schedule_syncs s ON s.tenant = e.tenant AND s.environment = e.name
WHERE s.revision IS DISTINCT FROM e.revision
ORDER BY e.tenant, e.name LIMIT $1
"""

_OPTOUT_SUM = "(SELECT coalesce(sum(x::bigint), 0) FROM jsonb_array_elements_text(s.spec->'optouts') x)"

# A time to live starts when the environment's deploy succeeds (not before the schedule existed);
# with extend_on_deploy, each later successful deploy starts it again.
_ARM = f"""
UPDATE schedules AS s SET
    next_due_at = greatest(r.finished_at, s.synced_at)
                  + make_interval(secs => (s.spec->>'ttl_seconds')::bigint + {_OPTOUT_SUM} + s.optout_seconds),
    armed_by_run = e.deploy_run_id
FROM environments AS e JOIN runs AS r ON r.tenant = e.tenant AND r.run_id = e.deploy_run_id
WHERE s.kind = 'ttl' AND r.finished_at IS NOT NULL
  AND (s.next_due_at IS NULL OR coalesce((s.spec->>'extend_on_deploy')::boolean, false))
  AND e.tenant = s.tenant AND e.name = s.environment AND e.deployed
  AND e.deploy_run_id <> '' AND e.deploy_run_id <> s.armed_by_run
"""

# A time to live whose environment was destroyed meanwhile (by hand, not by the expiry) is
# disarmed: its old expiry must not destroy the next deploy early, nor the destroyed environment.
_DISARM = """
UPDATE schedules AS s SET next_due_at = NULL, warned_due_at = NULL
FROM environments AS e
WHERE s.kind = 'ttl' AND s.next_due_at IS NOT NULL
  AND e.tenant = s.tenant AND e.name = s.environment AND NOT e.deployed
"""

_UNPUBLISHED = "(last_run_id <> '' AND published_run_id <> last_run_id AND last_fired_at <= $2)"
_EXPIRING = (
    "(kind = 'ttl' AND next_due_at IS NOT NULL AND warned_due_at IS DISTINCT FROM next_due_at "
    "AND next_due_at - least($3::interval, make_interval(secs => (spec->>'ttl_seconds')::double precision / 4)) <= $1)"
)
_DUE = f"""
SELECT tenant, environment, spec::text AS spec, next_due_at, optout_until, last_due_at, last_run_id,
       CASE WHEN {_UNPUBLISHED} THEN 'unpublished' WHEN next_due_at <= $1 THEN 'due' ELSE 'expiring' END AS reason
FROM schedules
WHERE next_due_at <= $1 OR {_UNPUBLISHED} OR {_EXPIRING}
ORDER BY next_due_at NULLS LAST LIMIT $4
"""

_STATE_COLUMNS = (
    "name, kind, spec::text AS spec, next_due_at, optout_until, last_fired_at, last_run_id, optouts, document_optouts"
)


async def schedule_stale(ctx: StoreContext, req: ScheduleStale) -> StaleEnvironments:
    rows = await ctx.pool.fetch(_STALE, max(1, min(req.limit, MAX_PAGE)))
    return StaleEnvironments(
        environments=tuple(StaleEnvironment(tenant=r["tenant"], name=r["name"], revision=r["revision"]) for r in rows)
    )


async def schedule_sync(ctx: StoreContext, req: ScheduleSync) -> Ok | StoreError:
    """Arm new and changed schedules, keep the others' state (applying the Environment's opt-outs
    not applied yet), drop the ones no longer there; remember the revision."""
    async with ctx.pool.acquire() as conn, conn.transaction():
        if not await _environment_exists(conn, req.tenant, req.environment):
            return error("not_found", f"no environment {req.environment!r}", "environment")
        rows = await conn.fetch(
            "SELECT name, definition, document_optouts FROM schedules "
            "WHERE tenant = $1 AND environment = $2 FOR UPDATE",
            req.tenant,
            req.environment,
        )
        current = {r["name"]: r for r in rows}
        for synced in req.schedules:
            row = current.get(synced.schedule.name)
            if row is None or row["definition"] != synced.schedule.definition:
                await _arm(conn, req, synced)
            else:
                await _keep(conn, req, synced.schedule, row["document_optouts"])
        await conn.execute(
            "DELETE FROM schedules WHERE tenant = $1 AND environment = $2 AND NOT (name = ANY($3::text[]))",
            req.tenant,
            req.environment,
            [s.schedule.name for s in req.schedules],
        )
        await conn.execute(
            "INSERT INTO schedule_syncs (tenant, environment, revision, problems, synced_at) "
            "VALUES ($1, $2, $3, $4::jsonb, $5) ON CONFLICT (tenant, environment) DO UPDATE SET "
            "revision = excluded.revision, problems = excluded.problems, synced_at = excluded.synced_at",
            req.tenant,
            req.environment,
            req.revision,
            to_json(req.problems),
            req.now,
        )
    return Ok()


async def _arm(conn: Any, req: ScheduleSync, synced: SyncedSchedule) -> None:
    schedule = synced.schedule
    optout_until = req.now + timedelta(seconds=sum(schedule.optouts)) if schedule.cron and schedule.optouts else None
    await conn.execute(
        "INSERT INTO schedules (tenant, environment, name, kind, definition, spec, next_due_at, optout_until, "
        "document_optouts, synced_at) VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7, $8, $9, $10) "
        "ON CONFLICT (tenant, environment, name) DO UPDATE SET kind = excluded.kind, "
        "definition = excluded.definition, spec = excluded.spec, next_due_at = excluded.next_due_at, "
        "optout_until = excluded.optout_until, document_optouts = excluded.document_optouts, "
        "synced_at = excluded.synced_at, armed_by_run = '', optouts = 0, optout_seconds = 0, warned_due_at = NULL",
        req.tenant,
        req.environment,
        schedule.name,
        schedule.kind,
        schedule.definition,
        to_json(schedule),
        synced.next_due_at,
        optout_until,
        len(schedule.optouts),
        req.now,
    )


async def _keep(conn: Any, req: ScheduleSync, schedule: EffectiveSchedule, applied: int) -> None:
    """Same cadence: keep its times; opt-outs the Environment added since postpone it from now."""
    extra = sum(schedule.optouts[applied:])
    await conn.execute(
        "UPDATE schedules SET spec = $4::jsonb, document_optouts = $5, "
        "optout_until = CASE WHEN $6 > 0 AND kind = 'cron' "
        "  THEN greatest(coalesce(optout_until, $7), $7) + make_interval(secs => $6) ELSE optout_until END, "
        "next_due_at = CASE WHEN $6 > 0 AND kind = 'ttl' "
        "  THEN next_due_at + make_interval(secs => $6) ELSE next_due_at END "
        "WHERE tenant = $1 AND environment = $2 AND name = $3",
        req.tenant,
        req.environment,
        schedule.name,
        to_json(schedule),
        max(applied, len(schedule.optouts)),
        float(extra),
        req.now,
    )


async def schedule_due(ctx: StoreContext, req: ScheduleDue) -> DueSchedules:
    async with ctx.pool.acquire() as conn:
        await conn.execute(_DISARM)
        await conn.execute(_ARM)
        rows = await conn.fetch(
            _DUE, req.now, req.now - UNPUBLISHED_AFTER, WARN_BEFORE, max(1, min(req.limit, MAX_PAGE))
        )
        upcoming = await conn.fetchval("SELECT min(next_due_at) FROM schedules WHERE next_due_at > $1", req.now)
    return DueSchedules(
        due=tuple(
            DueSchedule(
                tenant=r["tenant"],
                environment=r["environment"],
                reason=r["reason"],
                schedule=_spec.decode(r["spec"]),
                next_due_at=r["next_due_at"],
                optout_until=r["optout_until"],
                last_due_at=r["last_due_at"],
                last_run_id=r["last_run_id"],
            )
            for r in rows
        ),
        next_due_at=upcoming,
    )


async def schedule_claim(ctx: StoreContext, req: ScheduleClaim) -> ScheduleClaimed | StoreError:
    """Move next_due_at on from `due_at`, and record the run, in one transaction: only the caller
    that finds next_due_at still at `due_at` fires."""
    run = req.run
    async with ctx.pool.acquire() as conn, conn.transaction():
        claimed = await conn.fetchval(
            "UPDATE schedules SET next_due_at = $5, last_due_at = $4, "
            "last_fired_at = CASE WHEN $6 <> '' THEN $7 ELSE last_fired_at END, "
            "last_run_id = CASE WHEN $6 <> '' THEN $6 ELSE last_run_id END, "
            "optouts = CASE WHEN kind = 'ttl' THEN 0 ELSE optouts END, "
            "optout_seconds = CASE WHEN kind = 'ttl' THEN 0 ELSE optout_seconds END "
            "WHERE tenant = $1 AND environment = $2 AND name = $3 AND next_due_at = $4 RETURNING name",
            req.tenant,
            req.environment,
            req.name,
            req.due_at,
            req.next_due_at,
            run.run_id if run is not None else "",
            req.now,
        )
        if claimed is None:
            return ScheduleClaimed(claimed=False)
        if run is not None:
            await _record_run(conn, run, req)
    return ScheduleClaimed(claimed=True, run_id=run.run_id if run is not None else "")


async def _record_run(conn: Any, run: RunCreate, req: ScheduleClaim) -> None:
    """The run row as `run.create` writes it (the gateway's start_run then finds it by its
    idempotency key and publishes it), audited like it plus the firing."""
    await conn.execute(
        "INSERT INTO runs (tenant, run_id, environment, action, status, requested_by, requested_at, "
        "idempotency_key, request_digest, purpose) VALUES ($1, $2, $3, $4, 'requested', $5, $6, $7, $8, $9)",
        run.tenant,
        run.run_id,
        run.environment,
        run.action,
        run.requested_by,
        req.now,
        run.idempotency_key or None,
        run.request_digest,
        run.purpose,
    )
    detail = {"action": run.action, "run_id": run.run_id}
    await audit(conn, run.tenant, run.requested_by, "run.create", run.environment, detail, "")
    fired = {"schedule": req.name, "due": req.due_at.isoformat(), "run_id": run.run_id}
    await audit(conn, run.tenant, run.requested_by, "schedule.fire", run.environment, fired, "")


async def schedule_mark(ctx: StoreContext, req: ScheduleMark) -> Ok:
    if req.mark == "published":
        await ctx.pool.execute(
            "UPDATE schedules SET published_run_id = $4 WHERE tenant = $1 AND environment = $2 AND name = $3",
            req.tenant,
            req.environment,
            req.name,
            req.run_id,
        )
    else:
        await ctx.pool.execute(
            "UPDATE schedules SET warned_due_at = $4 "
            "WHERE tenant = $1 AND environment = $2 AND name = $3 AND next_due_at = $4",
            req.tenant,
            req.environment,
            req.name,
            req.due_at,
        )
    return Ok()


async def schedule_list(ctx: StoreContext, req: ScheduleList) -> ScheduleStates | StoreError:
    async with ctx.pool.acquire() as conn:
        revision = await conn.fetchval(
            "SELECT revision FROM environments WHERE tenant = $1 AND name = $2", req.tenant, req.environment
        )
        if revision is None:
            return error("not_found", f"no environment {req.environment!r}", "environment")
        rows = await conn.fetch(
            f"SELECT {_STATE_COLUMNS} FROM schedules WHERE tenant = $1 AND environment = $2 ORDER BY name",
            req.tenant,
            req.environment,
        )
        sync = await conn.fetchrow(
            "SELECT revision, problems::text AS problems FROM schedule_syncs WHERE tenant = $1 AND environment = $2",
            req.tenant,
            req.environment,
        )
    return ScheduleStates(
        environment=req.environment,
        schedules=tuple(state_of(r) for r in rows),
        problems=_problems.decode(sync["problems"]) if sync is not None else (),
        synced=sync is not None and sync["revision"] == revision,
    )


def state_of(row: Any) -> ScheduleState:
    spec = _spec.decode(row["spec"])
    ttl = spec.kind == "ttl"
    return ScheduleState(
        name=spec.name,
        type=spec.type,
        kind=spec.kind,
        cron=spec.cron,
        timezone=spec.timezone if spec.cron else "",
        time_to_live=format_duration(spec.ttl_seconds) if ttl else "",
        staggered=spec.staggered,
        next_due_at=None if ttl else row["next_due_at"],
        expires_at=row["next_due_at"] if ttl else None,
        opted_out_until=row["optout_until"],
        last_fired_at=row["last_fired_at"],
        last_run_id=row["last_run_id"],
        optouts=row["optouts"] + len(spec.optouts),
        allow_opt_out=spec.allow_opt_out,
        max_allowed_duration=format_duration(spec.max_opt_out_seconds) if spec.max_opt_out_seconds else "",
        max_allowed_times=spec.max_opt_outs,
    )


async def schedule_extend(ctx: StoreContext, req: ScheduleExtend) -> ScheduleState | StoreError:
    """Postpone within the schedule's optOutOptions: a time to live's expiry moves on by `seconds`;
    a cron schedule skips its slots until `seconds` from now (or from the opt-out already running)."""
    if req.seconds <= 0:
        return error("invalid", "the duration must be positive", "duration")
    async with ctx.pool.acquire() as conn, conn.transaction():
        if not await _environment_exists(conn, req.tenant, req.environment):
            return error("not_found", f"no environment {req.environment!r}", "environment")
        row = await _schedule_for_update(conn, req)
        if isinstance(row, StoreError):
            return row
        spec = _spec.decode(row["spec"])
        if spec.approval and not req.admin:
            return error(
                "forbidden",
                f"schedule {spec.name!r} has optOutOptions.approval: only an admin may postpone it",
                "name",
            )
        if why := refusal(spec, req.seconds, already=row["optouts"] + len(spec.optouts)):
            return error("invalid", why, "duration")
        updated = await conn.fetchrow(
            "UPDATE schedules SET optouts = optouts + 1, optout_seconds = optout_seconds + $4::bigint, "
            "next_due_at = CASE WHEN kind = 'ttl' THEN next_due_at + make_interval(secs => $4::double precision) "
            "  ELSE next_due_at END, "
            "optout_until = CASE WHEN kind = 'cron' THEN greatest(coalesce(optout_until, $5), $5) "
            "  + make_interval(secs => $4::double precision) ELSE optout_until END "
            f"WHERE tenant = $1 AND environment = $2 AND name = $3 RETURNING {_STATE_COLUMNS}",
            req.tenant,
            req.environment,
            spec.name,
            req.seconds,
            req.now,
        )
        detail: dict[str, Any] = {"schedule": spec.name, "duration": format_duration(req.seconds)}
        if updated["next_due_at"] is not None:
            detail["next_due_at"] = updated["next_due_at"].isoformat()
        await audit(conn, req.tenant, req.actor, "schedule.extend", req.environment, detail, req.remote)
    return state_of(updated)


async def _schedule_for_update(conn: Any, req: ScheduleExtend) -> Any:
    if req.name:
        row = await conn.fetchrow(
            f"SELECT {_STATE_COLUMNS} FROM schedules WHERE tenant = $1 AND environment = $2 AND name = $3 FOR UPDATE",
            req.tenant,
            req.environment,
            req.name,
        )
        if row is None:
            return error("not_found", f"environment {req.environment!r} has no schedule {req.name!r}", "name")
        return row
    row = await conn.fetchrow(
        f"SELECT {_STATE_COLUMNS} FROM schedules WHERE tenant = $1 AND environment = $2 AND kind = 'ttl' "
        "ORDER BY name LIMIT 1 FOR UPDATE",
        req.tenant,
        req.environment,
    )
    if row is None:
        return error(
            "not_found",
            f"environment {req.environment!r} has no timeToLive schedule (or the schedule loop has not read it yet)",
            "name",
        )
    return row


async def _environment_exists(conn: Any, tenant: str, name: str) -> bool:
    return bool(
        await conn.fetchval("SELECT EXISTS (SELECT 1 FROM environments WHERE tenant = $1 AND name = $2)", tenant, name)
    )
