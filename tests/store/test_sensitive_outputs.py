"""Sensitive IaC outputs (`{"value", "type", "sensitive": true}` from OpenTofu's `output -json`)
through the real store: a run's events projected from the bus, then asked for over the bus.

What must hold: every answer to an API caller (environment.get, run.get, small or cached big run)
shows the value masked; deploy.record (for the compiler) answers the real value; no table keeps it
in clear (the run's and the environment's outputs hold it sealed, activity outputs and event
bodies hold it masked)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from store_api_support import RunningStore, running_store
from test_projection import publish, workflow

from trellis_core.bus import Bus
from trellis_core.events import ActivityCompleted, Event, RunCompiled, RunCompleted, RunRequested, RunStarted
from trellis_core.ids import new_run_id
from trellis_core.settings import Settings
from trellis_core.workflow import LastDeploy
from trellis_store.api import MASK, DeployRecord, DeployRecordGet, Environment, EnvironmentGet, RunDetail, RunGet


@pytest.fixture
async def projecting_store(bus: Bus, settings: Settings, database_url: str, unique: str) -> AsyncIterator[RunningStore]:
    """A store projecting this test's tenant from the bus, with durables of its own."""
    options = {"events_durable": f"{unique}_events", "logs_durable": f"{unique}_logs", "tenant": unique}
    async with running_store(bus, settings, database_url, projection=options) as running:
        yield running


def outputs_of(resource: str, secret: str) -> dict[str, Any]:
    return {
        "id": {"value": f"{resource}-id", "type": "string", "sensitive": False},
        "password": {"value": secret, "type": "string", "sensitive": True},
        "keys": {"value": {"k": secret}, "type": ["object", {"k": "string"}], "sensitive": True},
    }


def run_events(tenant: str, environment: str, n: int, secret: str) -> list[Event]:
    """A deploy of `n` activities: each completes with a sensitive output, as does the run."""
    run_id = new_run_id()
    ids: dict[str, Any] = {"tenant": tenant, "run_id": run_id}
    wf = workflow(environment, n)
    events: list[Event] = [
        RunRequested(**ids, environment=environment, action="deploy", requested_by="ana"),
        RunCompiled(**ids, workflow=wf, requested_by="ana"),
        RunStarted(**ids),
    ]
    events += [
        ActivityCompleted(**ids, activity_id=a.id, attempt=1, outputs=outputs_of(a.resource, secret), exit_code=0)
        for a in wf.activities
    ]
    run_outputs = {a.resource: outputs_of(a.resource, secret) for a in wf.activities[:2]}
    events.append(RunCompleted(**ids, status="succeeded", outputs=run_outputs))
    return events


def masked(resource: str) -> dict[str, Any]:
    return {
        "id": {"value": f"{resource}-id", "type": "string", "sensitive": False},
        "password": {"value": MASK, "type": "string", "sensitive": True},
        "keys": {"value": MASK, "type": ["object", {"k": "string"}], "sensitive": True},
    }


async def clear_copies(store: RunningStore, tenant: str, secret: str) -> dict[str, int]:
    """How many rows of each table hold the secret in clear."""
    found = {}
    for table, column in (
        ("runs", "outputs"),
        ("activities", "outputs"),
        ("events", "body"),
        ("environments", "outputs"),
        ("environments", "deployed_variables"),
        ("runs", "workflow"),
    ):
        rows = await store.sql(
            f"SELECT count(*) AS n FROM {table} WHERE tenant = $1 AND {column}::text LIKE $2", tenant, f"%{secret}%"
        )
        found[f"{table}.{column}"] = rows[0]["n"]
    return found


@pytest.mark.parametrize("activities", [2, 500])
async def test_sensitive_outputs_are_masked_in_answers_sealed_at_rest_and_opened_for_deploy_record(
    projecting_store: RunningStore, bus: Bus, unique: str, activities: int
) -> None:
    store, secret = projecting_store, f"secret-value-{unique}"
    events = run_events(unique, "dev", activities, secret)
    run_id = events[0].run_id
    await publish(bus, events)

    # deploy.record waits for the projection to catch up: the compiler gets the real values
    record = await store.ask(DeployRecordGet(tenant=unique, environment="dev"), DeployRecord)
    assert record.deployed
    assert record.run_id == run_id
    assert record.outputs == {"r0": outputs_of("r0", secret), "r1": outputs_of("r1", secret)}

    for reveal in (False, True):  # reveal opens sealed variables, never outputs
        env = await store.ask(EnvironmentGet(tenant=unique, name="dev", reveal=reveal), Environment)
        assert env.status == "deployed"
        assert env.outputs == {"r0": masked("r0"), "r1": masked("r1")}

    for _ in range(2):  # a big run's second answer comes from the activity cache
        raw = await store.client.ask_raw(RunGet(tenant=unique, run_id=run_id))
        assert isinstance(raw, memoryview), raw
        assert secret.encode() not in bytes(raw)
        detail = await store.ask(RunGet(tenant=unique, run_id=run_id), RunDetail)
        assert detail.status == "succeeded"
        assert detail.outputs == {"r0": masked("r0"), "r1": masked("r1")}
        assert len(detail.activities) == activities
        assert [a.outputs for a in detail.activities] == [masked(f"r{i}") for i in range(activities)]

    in_clear = await clear_copies(store, unique, secret)
    assert set(in_clear.values()) == {0}, in_clear
    sealed = await store.sql("SELECT outputs->'r0'->'password' AS p FROM runs WHERE tenant = $1", unique)
    assert '"sealed": "v1:' in sealed[0]["p"]  # kept sealed under the store's key, for deploy.record


async def test_rows_holding_sensitive_outputs_in_clear_are_masked_in_answers(
    projecting_store: RunningStore, unique: str
) -> None:
    """Rows projected before outputs were sealed (or without a seal key) answer masked too."""
    store, secret = projecting_store, f"secret-value-{unique}"
    clear = '{"r0": ' + '{"password": {"value": "' + secret + '", "type": "string", "sensitive": true}}}'
    await store.sql("INSERT INTO tenants (name) VALUES ($1)", unique)
    await store.sql(
        "INSERT INTO environments (tenant, name, template_name, template_version, status, outputs) "
        "VALUES ($1, 'dev', 'web', '1', 'deployed', $2::jsonb)",
        unique,
        clear,
    )
    await store.sql(
        "INSERT INTO runs (tenant, run_id, environment, action, status, outputs, workflow) "
        "VALUES ($1, 'r1', 'dev', 'deploy', 'succeeded', $2::jsonb, $3::jsonb)",
        unique,
        clear,
        msgspec.json.encode(
            msgspec.structs.replace(workflow("dev", 1), last_deploy=LastDeploy(outputs=msgspec.json.decode(clear)))
        ).decode(),
    )
    await store.sql(
        "INSERT INTO activities (tenant, run_id, activity_id, ordinal, kind, status, outputs) "
        "VALUES ($1, 'r1', 'resource/r0/apply', 0, 'container', 'succeeded', $2::jsonb->'r0')",
        unique,
        clear,
    )
    want = {"password": {"value": MASK, "type": "string", "sensitive": True}}
    env = await store.ask(EnvironmentGet(tenant=unique, name="dev"), Environment)
    assert env.outputs == {"r0": want}
    raw = await store.client.ask_raw(RunGet(tenant=unique, run_id="r1"))
    assert isinstance(raw, memoryview), raw
    assert secret.encode() not in bytes(raw)
    detail = await store.ask(RunGet(tenant=unique, run_id="r1", with_workflow=True), RunDetail)
    assert detail.outputs == {"r0": want}
    assert detail.activities[0].outputs == want
    assert detail.workflow is not None
    assert detail.workflow.last_deploy == LastDeploy(outputs={"r0": want})


async def test_a_destroys_last_deploy_outputs_are_masked_in_its_stored_workflow(
    projecting_store: RunningStore, bus: Bus, unique: str
) -> None:
    """A destroy is compiled with deploy.record's outputs opened (`workflow.lastDeploy`): the run's
    workflow, as run.get answers it and as the rows keep it, holds them masked."""
    store, secret = projecting_store, f"secret-value-{unique}"
    run_id = new_run_id()
    ids: dict[str, Any] = {"tenant": unique, "run_id": run_id}
    last = LastDeploy(run_id="r0", outputs={"r0": outputs_of("r0", secret)})
    wf = msgspec.structs.replace(workflow("dev", 1, action="destroy"), last_deploy=last)
    await publish(
        bus,
        [
            RunRequested(**ids, environment="dev", action="destroy", requested_by="ana"),
            RunCompiled(**ids, workflow=wf, requested_by="ana"),
            RunCompleted(**ids, status="succeeded"),
        ],
    )
    await store.ask(DeployRecordGet(tenant=unique, environment="dev"), DeployRecord)  # waits for the projection
    detail = await store.ask(RunGet(tenant=unique, run_id=run_id, with_workflow=True), RunDetail)
    assert detail.workflow is not None
    assert detail.workflow.last_deploy == LastDeploy(run_id="r0", outputs={"r0": masked("r0")})
    in_clear = await clear_copies(store, unique, secret)
    assert set(in_clear.values()) == {0}, in_clear
