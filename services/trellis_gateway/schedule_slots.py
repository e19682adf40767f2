"""What a schedule's slot starts (docs/schedules.md): the run the claim records and the call that
publishes it. A `detectDrift` slot starts a drift check (docs/drift.md), a `workflows` slot a run
of its tasks on the deployed environment; one of those due while the environment is not deployed
is consumed and skipped, logged at info and audited `schedule.skipped`."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from trellis_core.logs import get_logger
from trellis_core.workflow import NO_PURPOSE, Action, RunPurpose
from trellis_gateway.context import ApiProblem, Gateway
from trellis_gateway.drift_routes import DRIFT, start_drift_check
from trellis_gateway.launch import audit, request_digest, start_run
from trellis_store.api import DeployRecord, DeployRecordGet, DueSchedule, RunCreate, StoreError
from trellis_templates.schedules import DETECT_DRIFT, ON_DEPLOYED, WORKFLOWS, EffectiveSchedule

log = get_logger("gateway.schedules")
_NOT_DEPLOYED = {
    DETECT_DRIFT: "not deployed: a drift check compares the live infrastructure with a deploy",
    WORKFLOWS: "not deployed: a workflows schedule's tasks run on the deployed environment",
}


class NotDeployed(Exception):
    """A detectDrift or workflows slot found the environment not deployed: nothing to act on, the
    slot is skipped."""


def actor_of(schedule: str) -> str:
    """Who a fired run is requested by, in its history and the audit trail."""
    return f"schedule/{schedule}"


def run_action(schedule: EffectiveSchedule) -> Action:
    """The run's action: a drift check is a plan-only `deploy` (RunPurpose drift), a workflows
    slot's tasks a `deploy` that deploys nothing (RunPurpose scheduled_tasks)."""
    return "destroy" if schedule.type == "destroy" else "deploy"


def slot_purpose(schedule: EffectiveSchedule) -> RunPurpose:
    """What the slot's run is for beyond its action."""
    if schedule.type == DETECT_DRIFT:
        return DRIFT
    return RunPurpose(scheduled_tasks=schedule.name) if schedule.type == WORKFLOWS else NO_PURPOSE


def slot_run(item: DueSchedule, run_id: str, idempotency_key: str) -> RunCreate:
    """The run recorded with the claim, as start_run (or start_drift_check) records it, so that
    they find it by its idempotency key."""
    schedule = item.schedule
    purpose = slot_purpose(schedule)
    variables = {} if schedule.type == DETECT_DRIFT else schedule.variables
    return RunCreate(
        tenant=item.tenant,
        run_id=run_id,
        environment=item.environment,
        action=run_action(schedule),
        requested_by=actor_of(schedule.name),
        idempotency_key=idempotency_key,
        request_digest=request_digest(item.environment, run_action(schedule), purpose, variables),
        purpose=purpose.label,
    )


async def deployed_for(gateway: Gateway, item: DueSchedule) -> bool:
    """Whether the slot has something to act on: a detectDrift or workflows slot needs a deployed
    environment (others always do). A store error counts as deployed: the run then answers for
    itself."""
    if item.schedule.type not in ON_DEPLOYED:
        return True
    record = await gateway.store.ask(DeployRecordGet(tenant=item.tenant, environment=item.environment), DeployRecord)
    return isinstance(record, StoreError) or record.deployed


async def start_slot_run(gateway: Gateway, item: DueSchedule, idempotency_key: str, trigger: Mapping[str, Any]) -> None:
    """Publish the claimed run. Raises NotDeployed (a detectDrift slot, the environment not
    deployed) and what start_run raises."""
    schedule, actor = item.schedule, actor_of(item.schedule.name)
    if schedule.type != DETECT_DRIFT:
        await start_run(
            gateway,
            actor,
            item.tenant,
            item.environment,
            run_action(schedule),
            idempotency_key=idempotency_key,
            purpose=slot_purpose(schedule),
            variables=schedule.variables,
            trigger=trigger,
        )
        return
    try:
        await start_drift_check(
            gateway, item.tenant, item.environment, actor, trigger=trigger, idempotency_key=idempotency_key
        )
    except ApiProblem as exc:
        if exc.problem.status == 409 and exc.problem.path == "name":  # start_drift_check's "not deployed"
            raise NotDeployed(exc.problem.detail) from None
        raise


async def skip_not_deployed(gateway: Gateway, item: DueSchedule, due_at: datetime | None, run_id: str = "") -> None:
    """A detectDrift or workflows slot while the environment is not deployed: an info log and an
    audit entry (`run_id`: the run recorded with the claim when the environment went away in
    between)."""
    name = item.schedule.name
    log.info(
        "schedule_skipped_not_deployed",
        tenant=item.tenant,
        environment=item.environment,
        schedule=name,
        due=due_at.isoformat() if due_at is not None else "",
        run=run_id,
    )
    detail: dict[str, object] = {
        "schedule": name,
        "due": due_at.isoformat() if due_at is not None else "",
        "reason": _NOT_DEPLOYED.get(item.schedule.type, "not deployed"),
    }
    if run_id:
        detail["run_id"] = run_id
    await audit(gateway, item.tenant, actor_of(name), "schedule.skipped", item.environment, detail, "")
