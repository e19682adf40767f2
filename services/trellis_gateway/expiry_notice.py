"""The notification hooks of a time to live (docs/schedules.md): when its expiry is announced, a
run of the template's `onExpiring` hooks (RunPurpose.expiring) on the deployed environment,
requested by `schedule/<name>`, with the expiry time in its trigger."""

from __future__ import annotations

from datetime import datetime

import nats.errors

from trellis_core.logs import get_logger
from trellis_core.workflow import RunPurpose
from trellis_gateway.context import ApiProblem, Gateway
from trellis_gateway.launch import start_run
from trellis_store.api import DueSchedule

EXPIRING = RunPurpose(expiring=True)
log = get_logger("gateway.schedules")


def notice_trigger(schedule: str, expires_at: datetime) -> dict[str, object]:
    """What the hooks read as `trigger.*`: `trigger.payload.expires_at` is the expiry (ISO 8601)."""
    payload = {"schedule": schedule, "expires_at": expires_at.isoformat()}
    return {"type": "schedule", "schedule": schedule, "payload": payload}


async def start_expiry_notice(gateway: Gateway, item: DueSchedule, actor: str) -> str:
    """Start the run of the `onExpiring` hooks for the expiry at `item.next_due_at`; its run id,
    or "" when the template has none or the run could not be started (logged, not retried: the
    audit entry is the notice then). One expiry starts one run (an idempotency key of its own)."""
    expires_at = item.next_due_at
    if not item.schedule.expiry_hooks or expires_at is None:
        return ""
    name = item.schedule.name
    key = f"expiring:{item.environment}:{name}:{expires_at.isoformat()}"
    try:
        created = await start_run(
            gateway,
            actor,
            item.tenant,
            item.environment,
            "deploy",
            idempotency_key=key,
            purpose=EXPIRING,
            trigger=notice_trigger(name, expires_at),
        )
    except ApiProblem as exc:
        error = exc.problem.detail
    except (nats.errors.Error, OSError, TimeoutError) as exc:
        error = repr(exc)
    else:
        return created.run_id
    log.error(
        "expiry_notice_not_started", tenant=item.tenant, environment=item.environment, schedule=name, error=error
    )
    return ""
