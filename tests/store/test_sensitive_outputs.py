"""Sensitive IaC outputs (`{"value", "type", "sensitive": true}` from OpenTofu's `output -json`)
through the real store: a run's events projected from the bus, then asked for over the bus.

What must hold: a sensitive value is a sealed token wherever the store keeps or answers it. The
agent seals it (`{"value": "<token>", "sensitive": true}`) and the store keeps the token as it is;
an old agent's value in clear is sealed by the projection before it is stored. Every answer
(environment.get, run.get, small or cached big run, deploy.record) carries the token, which opens
to the value with the tenant's key; no table keeps the value in clear; a row stored in clear before
sealing answers `********`."""

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
from trellis_core.sealed import MasterKeyring, TenantKeys, is_token
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


def keys_of(store: RunningStore, tenant: str) -> TenantKeys:
    return MasterKeyring.from_settings(store.settings).for_tenant(tenant)


def opened(keys: TenantKeys, outputs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Run outputs with every sensitive value checked to be a token, and opened."""
    for named in outputs.values():
        for entry in named.values():
            if entry["sensitive"]:
                assert is_token(entry["value"]), entry
    result: dict[str, dict[str, Any]] = keys.open_value(outputs)
    return result


def as_opened(resource: str, secret: str) -> dict[str, Any]:
    """outputs_of as its tokens open: a non-string value was sealed as its JSON."""
    entries = outputs_of(resource, secret)
    entries["keys"] = {**entries["keys"], "value": msgspec.json.encode({"k": secret}).decode()}
    return entries


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
async def test_sensitive_outputs_in_clear_from_an_old_agent_are_stored_and_answered_as_tokens(
    projecting_store: RunningStore, bus: Bus, unique: str, activities: int
) -> None:
    store, secret = projecting_store, f"secret-value-{unique}"
    keys = keys_of(store, unique)
    events = run_events(unique, "dev", activities, secret)
    run_id = events[0].run_id
    await publish(bus, events)

    # deploy.record waits for the projection to catch up: the compiler gets the tokens, as stored
    record = await store.ask(DeployRecordGet(tenant=unique, environment="dev"), DeployRecord)
    assert record.deployed
    assert record.run_id == run_id
    assert opened(keys, record.outputs) == {"r0": as_opened("r0", secret), "r1": as_opened("r1", secret)}
    env = await store.ask(EnvironmentGet(tenant=unique, name="dev"), Environment)
    assert env.status == "deployed"
    assert env.outputs == record.outputs  # the same tokens, nothing opened

    for _ in range(2):  # a big run's second answer comes from the activity cache
        raw = await store.client.ask_raw(RunGet(tenant=unique, run_id=run_id))
        assert isinstance(raw, memoryview), raw
        assert secret.encode() not in bytes(raw)
        detail = await store.ask(RunGet(tenant=unique, run_id=run_id), RunDetail)
        assert detail.status == "succeeded"
        assert opened(keys, detail.outputs) == {"r0": as_opened("r0", secret), "r1": as_opened("r1", secret)}
        assert len(detail.activities) == activities
        assert [opened(keys, {"a": a.outputs})["a"] for a in detail.activities] == [
            as_opened(f"r{i}", secret) for i in range(activities)
        ]

    in_clear = await clear_copies(store, unique, secret)
    assert set(in_clear.values()) == {0}, in_clear


async def test_sensitive_outputs_sealed_by_the_agent_are_kept_as_the_tokens_they_are(
    projecting_store: RunningStore, bus: Bus, unique: str
) -> None:
    store, secret = projecting_store, f"secret-value-{unique}"
    keys = keys_of(store, unique)
    token = keys.seal(secret)
    events = run_events(unique, "dev", 1, secret)
    sealed = {"password": {"value": token, "type": "string", "sensitive": True}}
    events = [
        msgspec.structs.replace(e, outputs={"r0": sealed} if isinstance(e, RunCompleted) else sealed)
        if isinstance(e, ActivityCompleted | RunCompleted)
        else e
        for e in events
    ]
    await publish(bus, events)
    record = await store.ask(DeployRecordGet(tenant=unique, environment="dev"), DeployRecord)
    assert record.outputs == {"r0": sealed}  # the very token the agent sealed
    detail = await store.ask(RunGet(tenant=unique, run_id=events[0].run_id), RunDetail)
    assert detail.outputs == {"r0": sealed}
    assert detail.activities[0].outputs == sealed
    bodies = await store.sql("SELECT body::text AS b FROM events WHERE tenant = $1 AND kind = 'run.completed'", unique)
    assert token in bodies[0]["b"]
    assert set((await clear_copies(store, unique, secret)).values()) == {0}


async def test_rows_holding_sensitive_outputs_in_clear_are_masked_in_answers(
    projecting_store: RunningStore, unique: str
) -> None:
    """Rows projected before outputs were sealed (or without a seal key) answer masked, never in
    clear."""
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
    """A destroy's workflow carries deploy.record's outputs (`workflow.lastDeploy`): a sensitive
    one in clear (an old compiler) is masked in the run's workflow, as run.get answers it and as
    the rows keep it."""
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
