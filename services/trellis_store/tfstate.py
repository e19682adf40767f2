"""Managed OpenTofu/Terraform state: the SQL behind the gateway's HTTP backend (docs/state-backend.md).

Every save is a new `tf_state` row (the newest KEEP_HISTORY of a resource are kept), a delete adds
a `deleted` row, and `tf_state_lock` holds at most one lock per resource. Writes of one resource
are serialised by a transaction-scoped advisory lock. A request made with a run's credential
(`run_id` set) is refused once that run has ended or when it is another environment's run; a
lock left by an ended run is reported as such, never broken silently.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec

from trellis_core.logs import get_logger
from trellis_store.api import (
    StoreError,
    TfLockHolder,
    TfStateData,
    TfStateDelete,
    TfStateGet,
    TfStateLock,
    TfStatePut,
    TfStateResource,
    TfStateShow,
    TfStateSummary,
    TfStateUnlock,
    TfStateVersion,
    TfStateWritten,
)
from trellis_store.commands import audit, to_json
from trellis_store.context import StoreContext, error

log = get_logger("store.tfstate")

KEEP_HISTORY = 20  # saves kept per resource (the newest); older rows go on the next save
ENDED = frozenset({"rejected", "succeeded", "failed", "cancelled"})
_info = msgspec.json.Decoder(dict[str, Any])


class _StateHead(msgspec.Struct):
    """What the store reads of a state document: its serial and lineage."""

    serial: Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)] = 0  # PostgreSQL's bigint
    lineage: Annotated[str, msgspec.Meta(max_length=256)] = ""


_head = msgspec.json.Decoder(_StateHead)


def unlock_hint(environment: str, resource: str, lock_id: str) -> str:
    return f"unlock with: trellis env state {environment} {resource} --unlock {lock_id}"


async def _run_refusal(conn: Any, tenant: str, environment: str, run_id: str) -> StoreError | None:
    """Why the credential of `run_id` may not touch `environment`'s state now, or None."""
    if not run_id:
        return None
    row = await conn.fetchrow(
        "SELECT environment, status, finished_at FROM runs WHERE tenant = $1 AND run_id = $2", tenant, run_id
    )
    if row is None:
        return error("forbidden", f"the state credential names run {run_id}, which is not known")
    if row["environment"] != environment:
        return error("forbidden", f"the state credential of run {run_id} is not for environment {environment!r}")
    if row["status"] in ENDED:
        at = row["finished_at"].isoformat() if row["finished_at"] else "an unknown time"
        return error(
            "forbidden", f"the state credential of run {run_id} is revoked: the run ended {row['status']} at {at}"
        )
    return None


async def _serialise(conn: Any, req: TfStateGet | TfStatePut | TfStateDelete | TfStateLock | TfStateUnlock) -> None:
    key = f"tfstate/{req.tenant}/{req.environment}/{req.resource}"
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", key)


async def _holder(conn: Any, tenant: str, environment: str, resource: str) -> TfLockHolder | None:
    row = await conn.fetchrow(
        "SELECT l.lock_id, l.info::text AS info, l.locked_at, l.run_id, r.status, r.finished_at "
        "FROM tf_state_lock l LEFT JOIN runs r ON r.tenant = l.tenant AND r.run_id = l.run_id "
        "WHERE l.tenant = $1 AND l.environment = $2 AND l.resource = $3",
        tenant,
        environment,
        resource,
    )
    return None if row is None else _holder_of(row, environment, resource)


def _holder_of(row: Any, environment: str, resource: str) -> TfLockHolder:
    status = row["status"] or ""
    ended = status in ENDED
    return TfLockHolder(
        lock_id=row["lock_id"],
        info=_info.decode(row["info"]),
        locked_at=row["locked_at"],
        run_id=row["run_id"],
        run_status=status,
        run_finished_at=row["finished_at"],
        ended=ended,
        hint=unlock_hint(environment, resource, row["lock_id"]) if ended else "",
    )


async def tfstate_get(ctx: StoreContext, req: TfStateGet) -> TfStateData | StoreError:
    async with ctx.pool.acquire() as conn:
        if refusal := await _run_refusal(conn, req.tenant, req.environment, req.run_id):
            return refusal
        row = await conn.fetchrow(
            "SELECT state, serial, lineage, created_at, run_id, deleted FROM tf_state "
            "WHERE tenant = $1 AND environment = $2 AND resource = $3 ORDER BY id DESC LIMIT 1",
            req.tenant,
            req.environment,
            req.resource,
        )
    if row is None or row["deleted"]:
        return TfStateData(found=False)
    return TfStateData(
        found=True,
        state=bytes(row["state"]),
        serial=row["serial"],
        lineage=row["lineage"],
        saved_at=row["created_at"],
        run_id=row["run_id"],
    )


async def _write(
    ctx: StoreContext, req: TfStatePut | TfStateDelete, state: bytes | None
) -> TfStateWritten | StoreError:
    head = _StateHead()
    if state is not None:
        try:
            head = _head.decode(state)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return error("invalid", f"the state is not a Terraform state JSON object: {exc}", "state")
    async with ctx.pool.acquire() as conn, conn.transaction():
        if refusal := await _run_refusal(conn, req.tenant, req.environment, req.run_id):
            return refusal
        await _serialise(conn, req)
        holder = await _holder(conn, req.tenant, req.environment, req.resource)
        if holder is not None and holder.lock_id != req.lock_id:
            return TfStateWritten(done=False, holder=holder)
        await conn.execute(
            "INSERT INTO tf_state (tenant, environment, resource, serial, lineage, state, deleted, run_id) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            req.tenant,
            req.environment,
            req.resource,
            head.serial,
            head.lineage,
            state,
            state is None,
            req.run_id,
        )
        await conn.execute(
            "DELETE FROM tf_state WHERE tenant = $1 AND environment = $2 AND resource = $3 AND id < ("
            " SELECT min(id) FROM (SELECT id FROM tf_state WHERE tenant = $1 AND environment = $2 AND resource = $3"
            " ORDER BY id DESC LIMIT $4) AS kept)",
            req.tenant,
            req.environment,
            req.resource,
            KEEP_HISTORY,
        )
    return TfStateWritten(done=True)


async def tfstate_put(ctx: StoreContext, req: TfStatePut) -> TfStateWritten | StoreError:
    return await _write(ctx, req, req.state)


async def tfstate_delete(ctx: StoreContext, req: TfStateDelete) -> TfStateWritten | StoreError:
    return await _write(ctx, req, None)


async def tfstate_lock(ctx: StoreContext, req: TfStateLock) -> TfStateWritten | StoreError:
    if not req.lock_id:
        return error("invalid", "the lock info has no ID", "info.ID")
    async with ctx.pool.acquire() as conn, conn.transaction():
        if refusal := await _run_refusal(conn, req.tenant, req.environment, req.run_id):
            return refusal
        await _serialise(conn, req)
        holder = await _holder(conn, req.tenant, req.environment, req.resource)
        if holder is not None:
            if holder.ended:
                await _report_ended_holder(conn, req, holder)
            return TfStateWritten(done=holder.lock_id == req.lock_id, holder=holder)
        await conn.execute(
            "INSERT INTO tf_state_lock (tenant, environment, resource, lock_id, info, run_id) "
            "VALUES ($1, $2, $3, $4, $5::jsonb, $6)",
            req.tenant,
            req.environment,
            req.resource,
            req.lock_id,
            to_json(req.info),
            req.run_id,
        )
    return TfStateWritten(done=True)


async def _report_ended_holder(conn: Any, req: TfStateLock, holder: TfLockHolder) -> None:
    """A lock left by a run that ended: said in the log and the audit trail, and left in place."""
    finished = holder.run_finished_at.isoformat() if holder.run_finished_at else ""
    log.warning(
        "tfstate_lock_held_by_ended_run",
        tenant=req.tenant,
        environment=req.environment,
        resource=req.resource,
        lock_id=holder.lock_id,
        holder_run=holder.run_id,
        holder_status=holder.run_status,
        run=req.run_id,
    )
    detail = {
        "lock_id": holder.lock_id,
        "holder_run": holder.run_id,
        "holder_status": holder.run_status,
        "holder_finished_at": finished,
        "refused_run": req.run_id,
        "hint": holder.hint,
    }
    target = f"{req.environment}/{req.resource}"
    await audit(conn, req.tenant, f"run:{req.run_id}", "tfstate.lock_refused_ended_holder", target, detail, "")


async def tfstate_unlock(ctx: StoreContext, req: TfStateUnlock) -> TfStateWritten | StoreError:
    async with ctx.pool.acquire() as conn, conn.transaction():
        if refusal := await _run_refusal(conn, req.tenant, req.environment, req.run_id):
            return refusal
        await _serialise(conn, req)
        holder = await _holder(conn, req.tenant, req.environment, req.resource)
        if holder is None:
            return TfStateWritten(done=True)
        if holder.lock_id != req.lock_id:
            return TfStateWritten(done=False, holder=holder)
        await conn.execute(
            "DELETE FROM tf_state_lock WHERE tenant = $1 AND environment = $2 AND resource = $3",
            req.tenant,
            req.environment,
            req.resource,
        )
        if req.force:
            detail = {"lock_id": holder.lock_id, "holder_run": holder.run_id, "holder_status": holder.run_status}
            target = f"{req.environment}/{req.resource}"
            await audit(conn, req.tenant, req.actor, "tfstate.force_unlock", target, detail, req.remote)
    return TfStateWritten(done=True)


async def tfstate_show(ctx: StoreContext, req: TfStateShow) -> TfStateSummary | StoreError:
    async with ctx.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT resource, serial, lineage, created_at, run_id, actor, deleted, "
            "coalesce(octet_length(state), 0) AS size FROM tf_state "
            "WHERE tenant = $1 AND environment = $2 AND ($3 = '' OR resource = $3) "
            "ORDER BY resource, id DESC",
            req.tenant,
            req.environment,
            req.resource,
        )
        locks = await conn.fetch(
            "SELECT l.resource, l.lock_id, l.info::text AS info, l.locked_at, l.run_id, r.status, r.finished_at "
            "FROM tf_state_lock l LEFT JOIN runs r ON r.tenant = l.tenant AND r.run_id = l.run_id "
            "WHERE l.tenant = $1 AND l.environment = $2 AND ($3 = '' OR l.resource = $3)",
            req.tenant,
            req.environment,
            req.resource,
        )
    history: dict[str, list[TfStateVersion]] = {}
    for row in rows:
        history.setdefault(row["resource"], []).append(_version_of(row))
    held = {row["resource"]: _holder_of(row, req.environment, row["resource"]) for row in locks}
    names = sorted(set(history) | set(held))
    if req.resource and not names:
        return error("not_found", f"environment {req.environment!r} has no managed state for resource {req.resource!r}")
    resources = tuple(
        TfStateResource(resource=name, history=tuple(history.get(name, ())), lock=held.get(name)) for name in names
    )
    return TfStateSummary(environment=req.environment, resources=resources)


def _version_of(row: Any) -> TfStateVersion:
    saved: datetime | None = row["created_at"]
    return TfStateVersion(
        serial=row["serial"],
        lineage=row["lineage"],
        saved_at=saved,
        run_id=row["run_id"],
        actor=row["actor"],
        deleted=row["deleted"],
        size=row["size"],
    )
