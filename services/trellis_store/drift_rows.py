"""A drift check's rows: its plan when compiled, what each resource's check reported when it ends
(read from the check activities' rows), and the environment's last check for `Environment.drift`.

The results are computed again from the rows each time the run's end (or its compilation, when
written after the end: replicas, redeliveries) is projected, so a replay leaves the same rows.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import asyncpg
import msgspec

from trellis_core.workflow import Workflow
from trellis_store.drift_view import DriftStatus, EnvironmentDrift, ResourceDrift
from trellis_templates.drift_checks import CHANGED_OUTPUTS, CHANGED_RESOURCES, CHANGES, SUMMARY, checked_resources
from trellis_templates.drift_impact import impacted

DRIFT_COMPILED = """
INSERT INTO drift_checks (tenant, run_id, environment, readers, checks)
VALUES ($1, $2, $3, $4::jsonb, $5::jsonb)
ON CONFLICT (tenant, run_id) DO UPDATE SET readers = excluded.readers, checks = excluded.checks
"""
_ENDED = """
SELECT finished_at FROM runs WHERE tenant = $1 AND run_id = $2 AND status IN ('succeeded', 'failed', 'cancelled')
"""
_CHECK = """
SELECT environment, readers::text AS readers, checks::text AS checks FROM drift_checks WHERE tenant = $1 AND run_id = $2
"""
_ACTIVITIES = """
SELECT activity_id, status, outputs::text AS outputs, reason FROM activities
WHERE tenant = $1 AND run_id = $2 AND activity_id = ANY($3::text[])
"""
_CLEAR = "DELETE FROM drift_results WHERE tenant = $1 AND run_id = $2"
_RESULT = """
INSERT INTO drift_results (tenant, run_id, environment, resource, status, drifted, summary, changed_resources,
                           changed_outputs, impacted, checked_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb, $9::jsonb, $10::jsonb, $11)
"""
_FINISH = "UPDATE drift_checks SET status = $3, checked_at = $4 WHERE tenant = $1 AND run_id = $2"
_LAST = """
SELECT run_id, status, checked_at FROM drift_checks
WHERE tenant = $1 AND environment = $2 AND status <> 'running'
ORDER BY checked_at DESC NULLS LAST, run_id DESC LIMIT 1
"""
_RESULTS = """
SELECT resource, status, summary, changed_resources::text AS changed_resources,
       changed_outputs::text AS changed_outputs, impacted::text AS impacted
FROM drift_results WHERE tenant = $1 AND run_id = $2 ORDER BY resource
"""
_names = msgspec.json.Decoder(tuple[str, ...])


def compiled_row(tenant: str, run_id: str, workflow: Workflow) -> tuple[Any, ...]:
    """The drift_checks row of a drift run's compiled workflow: who reads which outputs, and which
    activity reports each resource ("" when the resource is not checked)."""
    checks = dict.fromkeys(workflow.output_readers, "") | checked_resources(workflow.activities)
    return (tenant, run_id, workflow.environment, json.dumps(workflow.output_readers), json.dumps(checks))


def resource_result(
    resource: str, activity: Mapping[str, Any] | None, readers: Mapping[str, Mapping[str, Any]], *, checked: bool
) -> ResourceDrift:
    """What one resource's check reported (its activity row; None: the check never ran)."""
    if not checked:
        return ResourceDrift(name=resource, status="not-checked",
                             summary="not checked: the resource defines no drift check")
    if activity is None or activity["status"] != "succeeded":
        state = activity["status"] if activity is not None else "not run"
        reason = activity["reason"] if activity is not None and activity["reason"] else ""
        summary = f"the check {state}" + (f": {reason}" if reason else "")
        return ResourceDrift(name=resource, status="error", summary=summary)
    outputs = json.loads(activity["outputs"])
    changes = _value(outputs.get(CHANGES))
    if changes not in ("yes", "no", True, False, "true", "false"):
        return ResourceDrift(name=resource, status="error",
                             summary=f"the check wrote no {CHANGES} output (yes or no), got {changes!r}")
    drifted = changes in ("yes", True, "true")
    changed_outputs = _names_of(outputs.get(CHANGED_OUTPUTS))
    return ResourceDrift(
        name=resource,
        status="drifted" if drifted else "in-sync",
        summary=str(_value(outputs.get(SUMMARY)) or ("drifted" if drifted else "no changes")),
        changed_resources=_names_of(outputs.get(CHANGED_RESOURCES)),
        changed_outputs=changed_outputs,
        impacted=impacted(readers, [(resource, o) for o in changed_outputs]) if drifted else (),
    )


def overall(results: list[ResourceDrift]) -> DriftStatus:
    if any(r.status == "drifted" for r in results):
        return "drifted"
    if any(r.status == "error" for r in results) or not any(r.status == "in-sync" for r in results):
        return "unknown"
    return "in-sync"


def _value(value: Any) -> Any:
    return value["value"] if isinstance(value, dict) and "value" in value else value


def _names_of(value: Any) -> tuple[str, ...]:
    value = _value(value)
    return tuple(str(v) for v in value) if isinstance(value, list) else ()


async def write_finished(conn: asyncpg.Connection, tenant: str, run_id: str) -> None:
    """A drift run's results, once the run has ended and its plan is written (else nothing yet)."""
    check = await conn.fetchrow(_CHECK, tenant, run_id)  # most runs are no drift check: asked first
    ended = await conn.fetchrow(_ENDED, tenant, run_id) if check is not None else None
    if ended is None or check is None:
        return
    readers, checks = json.loads(check["readers"]), json.loads(check["checks"])
    rows = await conn.fetch(_ACTIVITIES, tenant, run_id, [a for a in checks.values() if a])
    by_id = {row["activity_id"]: row for row in rows}
    results = [
        resource_result(resource, by_id.get(activity), readers, checked=bool(activity))
        for resource, activity in sorted(checks.items())
    ]
    at: datetime | None = ended["finished_at"]
    await conn.execute(_CLEAR, tenant, run_id)
    await conn.executemany(_RESULT, [
        (tenant, run_id, check["environment"], r.name, r.status,
         None if r.status in ("not-checked", "error") else r.status == "drifted", r.summary,
         json.dumps(r.changed_resources), json.dumps(r.changed_outputs), json.dumps(r.impacted), at)
        for r in results
    ])
    await conn.execute(_FINISH, tenant, run_id, overall(results), at)


async def last_check(conn: asyncpg.Connection | asyncpg.Pool, tenant: str, environment: str) -> EnvironmentDrift | None:
    """The environment's last finished drift check, None when it has had none."""
    last = await conn.fetchrow(_LAST, tenant, environment)
    if last is None:
        return None
    rows = await conn.fetch(_RESULTS, tenant, last["run_id"])
    resources = tuple(
        ResourceDrift(name=r["resource"], status=r["status"], summary=r["summary"],
                      changed_resources=_names.decode(r["changed_resources"]),
                      changed_outputs=_names.decode(r["changed_outputs"]), impacted=_names.decode(r["impacted"]))
        for r in rows
    )
    return EnvironmentDrift(status=last["status"], run_id=last["run_id"], checked_at=last["checked_at"],
                            resources=resources)
