"""A drift run's end projected into drift results: per resource what differs and what it reaches
downstream, the environment's status and outputs left alone; real nats-server and PostgreSQL."""

from __future__ import annotations

from typing import Any

import asyncpg
from test_projection import Clock, deploy_run, pool, projecting, publish

from trellis_core.bus import Bus
from trellis_core.events import (
    ActivityCompleted,
    ActivityFailed,
    Event,
    RunCompiled,
    RunCompleted,
    RunRequested,
    RunStarted,
    SourceFile,
)
from trellis_core.ids import new_run_id
from trellis_core.settings import Settings
from trellis_core.workflow import Activity, ContainerSpec, IacSpec, RunPurpose, TemplateRef, Workflow
from trellis_store.drift_rows import last_check

__all__ = ["pool"]  # the fixture, shared

DRIFT = RunPurpose(drift=True)
READERS = {"app": {}, "db": {"dsn": ("app",)}, "dns": {}, "net": {"vpc_id": ("db", "dns"), "cidr": ("dns",)}}


def drift_workflow(environment: str) -> Workflow:
    def plan(resource: str) -> Activity:
        return Activity(id=f"resource/{resource}/plan", kind="container", resource=resource, stage="plan",
                        spec=IacSpec(tool="opentofu", stage="plan", drift=True))

    check = Activity(id="resource/app/drift-check", kind="container", resource="app", stage="drift-check",
                     spec=ContainerSpec(command=("true",)))
    return Workflow(environment=environment, template=TemplateRef(name="stack", version="v1"), action="deploy",
                    activities=(plan("net"), plan("db"), check), purpose=DRIFT, output_readers=READERS)


def drift_run(tenant: str, environment: str, outputs: dict[str, dict[str, Any] | None]) -> list[Event]:
    """A drift run whose check activities end with `outputs` (None: the check failed)."""
    run_id, at = new_run_id(), Clock()
    ids: dict[str, Any] = {"tenant": tenant, "run_id": run_id}
    wf = drift_workflow(environment)
    events: list[Event] = [
        RunRequested(**ids, environment=environment, action="deploy", requested_by="cron", purpose=DRIFT,
                     sources=(SourceFile(path="t.yaml", text="kind: x"),), occurred_at=at()),
        RunCompiled(**ids, workflow=wf, requested_by="cron", occurred_at=at()),
        RunStarted(**ids, occurred_at=at()),
    ]
    for activity in wf.activities:
        written = outputs[activity.resource]
        act: dict[str, Any] = {**ids, "activity_id": activity.id, "attempt": 1}
        if written is None:
            events.append(ActivityFailed(**act, reason="exit code 1", exit_code=1, occurred_at=at()))
        else:
            events.append(ActivityCompleted(**act, outputs=written, exit_code=0, occurred_at=at()))
    status = "failed" if None in outputs.values() else "succeeded"
    events.append(RunCompleted(**ids, status=status, occurred_at=at()))  # type: ignore[arg-type]
    return events


NET_DRIFTED = {"driftChanges": "yes", "driftResources": ["aws_vpc.main"], "driftOutputs": ["vpc_id"],
               "driftSummary": "1 resource(s) differ: aws_vpc.main; outputs that would change: vpc_id"}
IN_SYNC = {"driftChanges": "no", "driftResources": [], "driftOutputs": [], "driftSummary": "no changes"}


async def test_a_drift_run_records_each_resource_and_the_resources_downstream_of_changing_outputs(
    bus: Bus, pool: asyncpg.Pool, settings: Settings, unique: str
) -> None:
    deploy = deploy_run(unique, "web", 1)
    drift = drift_run(unique, "web", {"net": NET_DRIFTED, "db": IN_SYNC, "app": None})
    async with projecting(bus, pool, settings, unique) as projection:
        assert await projection.wait_projected(await publish(bus, [*deploy, *drift]), 10)

    found = await last_check(pool, unique, "web")
    assert found is not None
    assert (found.status, found.run_id) == ("drifted", drift[0].run_id)
    assert found.checked_at == drift[-1].occurred_at
    by_name = {r.name: r for r in found.resources}
    assert list(by_name) == ["app", "db", "dns", "net"]
    net = by_name["net"]
    assert (net.status, net.changed_resources, net.changed_outputs) == ("drifted", ("aws_vpc.main",), ("vpc_id",))
    assert net.impacted == ("app", "db", "dns")  # db and dns read vpc_id; app reads db's outputs
    assert net.summary.startswith("1 resource(s) differ")
    assert (by_name["db"].status, by_name["db"].impacted) == ("in-sync", ())
    assert by_name["app"].status == "error"
    assert "failed: exit code 1" in by_name["app"].summary
    assert by_name["dns"].status == "not-checked"

    env = await pool.fetchrow("SELECT status, last_run_id, outputs::text AS o FROM environments "
                              "WHERE tenant = $1 AND name = 'web'", unique)
    assert env is not None
    assert (env["status"], env["last_run_id"]) == ("deployed", deploy[0].run_id)  # the check moved nothing
    assert env["o"] == '{"r0": {"id": {"value": "r0"}}}'


async def test_a_replay_writes_the_same_results_and_the_latest_check_is_shown(
    bus: Bus, pool: asyncpg.Pool, settings: Settings, unique: str
) -> None:
    first = drift_run(unique, "web", {"net": NET_DRIFTED, "db": IN_SYNC, "app": IN_SYNC})
    second = drift_run(unique, "web", {"net": IN_SYNC, "db": IN_SYNC, "app": {"driftChanges": {"value": "no"}}})
    async with projecting(bus, pool, settings, unique) as projection:
        assert await projection.wait_projected(await publish(bus, [*deploy_run(unique, "web", 1), *first]), 10)
        before = await pool.fetch("SELECT * FROM drift_results WHERE tenant = $1 ORDER BY resource", unique)
        assert await projection.wait_projected(await publish(bus, second), 10)
    found = await last_check(pool, unique, "web")
    assert found is not None
    assert (found.status, found.run_id) == ("in-sync", second[0].run_id)
    assert {r.name: r.status for r in found.resources} == {
        "app": "in-sync", "db": "in-sync", "dns": "not-checked", "net": "in-sync",
    }
    async with projecting(bus, pool, settings, unique, events_durable=f"{unique}_again_events",
                          logs_durable=f"{unique}_again_logs") as again:
        assert await again.wait_projected(await again.events_last_seq(), 10)  # the whole stream again
    after = await pool.fetch("SELECT * FROM drift_results WHERE tenant = $1 AND run_id = $2 ORDER BY resource",
                             unique, first[0].run_id)
    assert [dict(r) for r in after] == [dict(r) for r in before]


async def test_a_check_that_writes_no_answer_is_an_error_and_the_environment_unknown(
    bus: Bus, pool: asyncpg.Pool, settings: Settings, unique: str
) -> None:
    drift = drift_run(unique, "web", {"net": IN_SYNC, "db": IN_SYNC, "app": {"other": 1}})
    async with projecting(bus, pool, settings, unique) as projection:
        assert await projection.wait_projected(await publish(bus, [*deploy_run(unique, "web", 1), *drift]), 10)
    found = await last_check(pool, unique, "web")
    assert found is not None
    assert found.status == "unknown"
    app = next(r for r in found.resources if r.name == "app")
    assert app.status == "error"
    assert "wrote no driftChanges output" in app.summary
