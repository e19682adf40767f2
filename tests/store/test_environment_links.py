"""Environments reading each other through static resources of kind environment: the projection
records the link when the reading deploy succeeds and removes it when the reader is destroyed; the
store refuses a destroy of an environment another reads (run.create, and deploy.record says who);
environment.get shows dependsOn and dependents; linked.outputs gives what the compiler reads."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
from store_api_support import RunningStore, running_store
from test_projection import publish

from trellis_core.bus import Bus
from trellis_core.events import (
    ActivityCompleted,
    ActivityStarted,
    Event,
    RunCompiled,
    RunCompleted,
    RunRequested,
    RunStarted,
    SourceFile,
)
from trellis_core.ids import new_run_id
from trellis_core.settings import Settings
from trellis_core.workflow import Activity, ContainerSpec, RunPurpose, StaticOutputs, TemplateRef, Workflow
from trellis_store.api import (
    DeployRecord,
    DeployRecordGet,
    Environment,
    EnvironmentGet,
    EnvironmentLink,
    LinkedOutputs,
    LinkedOutputsGet,
    LinkedState,
    RunCreate,
    RunCreated,
)

NETWORK_OUTPUTS = {"vpc": {"vpc_id": {"value": "vpc-1"}}}


@pytest.fixture
async def store(bus: Bus, settings: Settings, database_url: str, unique: str) -> AsyncIterator[RunningStore]:
    projection = {"tenant": unique, "events_durable": f"{unique}_events", "logs_durable": f"{unique}_logs"}
    async with running_store(bus, settings, database_url, projection=projection) as running:
        yield running


def run_events(
    tenant: str,
    environment: str,
    *,
    action: str = "deploy",
    status: str = "succeeded",
    reads: dict[str, str] | None = None,
    outputs: dict[str, dict[str, Any]] | None = None,
) -> list[Event]:
    """A run of one activity whose workflow has a static resource of kind environment per `reads`
    (resource -> the environment it reads), as the services publish it."""
    at = iter(datetime(2026, 1, 1, tzinfo=UTC) + timedelta(milliseconds=i) for i in range(100))
    ids: dict[str, Any] = {"tenant": tenant, "run_id": new_run_id()}
    static = {
        resource: StaticOutputs(kind="environment", environment=other, outputs={"vpc_id": {"value": "vpc-1"}})
        for resource, other in (reads or {}).items()
    }
    activity = Activity(id="resource/app/apply", kind="container", resource="app", stage="apply",
                        spec=ContainerSpec(command=("true",)))
    workflow = Workflow(environment=environment, template=TemplateRef(name="stack", version="v1"),
                        action=action, activities=(activity,), static=static)  # type: ignore[arg-type]
    act: dict[str, Any] = {**ids, "activity_id": activity.id, "attempt": 1}
    return [
        RunRequested(**ids, environment=environment, action=action, requested_by="ana",  # type: ignore[arg-type]
                     sources=(SourceFile(path="t.yaml", text="kind: x"),), occurred_at=next(at)),
        RunCompiled(**ids, workflow=workflow, requested_by="ana", occurred_at=next(at)),
        RunStarted(**ids, occurred_at=next(at)),
        ActivityStarted(**act, agent="agent-1", occurred_at=next(at)),
        ActivityCompleted(**act, exit_code=0, occurred_at=next(at)),
        RunCompleted(**ids, status=status, outputs=outputs or {}, occurred_at=next(at)),  # type: ignore[arg-type]
    ]


async def record(store: RunningStore, tenant: str, environment: str) -> DeployRecord:
    """The deploy record: a consistent read, after every event published so far is projected."""
    return await store.ask(DeployRecordGet(tenant=tenant, environment=environment), DeployRecord)


async def links(store: RunningStore, tenant: str) -> list[tuple[str, str, str]]:
    rows = await store.sql(
        "SELECT environment, depends_on_environment, resource FROM environment_links WHERE tenant = $1 "
        "ORDER BY environment, resource",
        tenant,
    )
    return [tuple(r) for r in rows]


def destroy(tenant: str, environment: str, purpose: str = "") -> RunCreate:
    return RunCreate(tenant=tenant, run_id=new_run_id(), environment=environment, action="destroy",
                     requested_by="bob", purpose=purpose)


async def test_a_successful_deploy_records_the_link_and_a_destroy_of_the_reader_removes_it(
    bus: Bus, store: RunningStore, unique: str
) -> None:
    await publish(bus, run_events(unique, "network", outputs=NETWORK_OUTPUTS))
    await publish(bus, run_events(unique, "app", reads={"shared-vpc": "network"}, status="failed"))
    await record(store, unique, "app")
    assert await links(store, unique) == []  # a failed deploy reads nothing durable

    await publish(bus, run_events(unique, "app", reads={"shared-vpc": "network"}))
    assert (await record(store, unique, "network")).dependents == ("app",)
    assert await links(store, unique) == [("app", "network", "shared-vpc")]

    await publish(bus, run_events(unique, "app", reads={"shared-vpc": "network"}, status="failed"))
    assert (await record(store, unique, "network")).dependents == ("app",)  # the last good deploy still reads it

    await publish(bus, run_events(unique, "app", action="destroy"))
    assert (await record(store, unique, "network")).dependents == ()
    assert await links(store, unique) == []


async def test_a_redeploy_without_the_static_resource_drops_its_link(
    bus: Bus, store: RunningStore, unique: str
) -> None:
    await publish(bus, run_events(unique, "network", outputs=NETWORK_OUTPUTS))
    await publish(bus, run_events(unique, "app", reads={"shared-vpc": "network"}))
    assert (await record(store, unique, "network")).dependents == ("app",)
    await publish(bus, run_events(unique, "app"))
    assert (await record(store, unique, "network")).dependents == ()


async def test_a_destroy_of_an_environment_another_reads_is_refused_naming_it_force_too(
    bus: Bus, store: RunningStore, unique: str
) -> None:
    await publish(bus, run_events(unique, "network", outputs=NETWORK_OUTPUTS))
    await publish(bus, run_events(unique, "app", reads={"shared-vpc": "network"}))
    await record(store, unique, "network")
    for purpose in ("", "force-destroy"):
        refused = await store.refused(destroy(unique, "network", purpose))
        assert refused.code == "conflict"
        assert "environment 'network' cannot be destroyed" in refused.message
        assert "app" in refused.message
        assert refused.path == "environment"
    assert await store.sql("SELECT run_id FROM runs WHERE tenant = $1 AND action = 'destroy'", unique) == []

    created = await store.ask(destroy(unique, "app"), RunCreated)  # the reader itself may go
    assert created.created
    await publish(bus, run_events(unique, "app", action="destroy"))
    await record(store, unique, "network")
    assert (await store.ask(destroy(unique, "network"), RunCreated)).created


async def test_the_environment_shows_what_it_depends_on_and_its_dependents_and_omits_them_when_empty(
    bus: Bus, store: RunningStore, unique: str
) -> None:
    await publish(bus, run_events(unique, "network", outputs=NETWORK_OUTPUTS))
    await publish(bus, run_events(unique, "app", reads={"shared-vpc": "network", "shared-dns": "network"}))
    await record(store, unique, "network")
    network = await store.ask(EnvironmentGet(tenant=unique, name="network"), Environment)
    app = await store.ask(EnvironmentGet(tenant=unique, name="app"), Environment)
    assert network.dependents == (
        EnvironmentLink(environment="app", resource="shared-dns"),
        EnvironmentLink(environment="app", resource="shared-vpc"),
    )
    assert network.depends_on is msgspec.UNSET
    assert app.depends_on == (
        EnvironmentLink(environment="network", resource="shared-dns"),
        EnvironmentLink(environment="network", resource="shared-vpc"),
    )
    encoded = msgspec.json.decode(msgspec.json.encode(network))
    assert "dependsOn" not in encoded
    assert encoded["dependents"][0] == {"environment": "app", "resource": "shared-dns"}
    assert msgspec.json.decode(msgspec.json.encode(app))["dependsOn"][1]["resource"] == "shared-vpc"


async def test_linked_outputs_answer_the_tenants_own_environments_only(
    bus: Bus, store: RunningStore, unique: str
) -> None:
    await publish(bus, run_events(unique, "network", outputs=NETWORK_OUTPUTS))
    await publish(bus, run_events(unique, "app", status="failed"))
    asked = LinkedOutputsGet(tenant=unique, environments=("network", "app", "nowhere"))
    answer = await store.ask(asked, LinkedOutputs)
    assert answer.environments == {
        "network": LinkedState(deployed=True, outputs=NETWORK_OUTPUTS),
        "app": LinkedState(deployed=False),
    }
    stranger = await store.ask(LinkedOutputsGet(tenant=unique + "x", environments=("network",)), LinkedOutputs)
    assert stranger.environments == {}
    too_many = await store.refused(LinkedOutputsGet(tenant=unique, environments=tuple(f"e{i}" for i in range(65))))
    assert too_many.code == "invalid"
    assert too_many.path == "environments"


async def test_force_destroy_of_the_reader_also_removes_its_links(bus: Bus, store: RunningStore, unique: str) -> None:
    await publish(bus, run_events(unique, "network", outputs=NETWORK_OUTPUTS))
    await publish(bus, run_events(unique, "app", reads={"shared-vpc": "network"}))
    assert (await record(store, unique, "network")).dependents == ("app",)
    forced = run_events(unique, "app", action="destroy")
    first = forced[0]
    assert isinstance(first, RunRequested)
    forced[0] = msgspec.structs.replace(first, purpose=RunPurpose(force=True))
    await publish(bus, forced)
    assert (await record(store, unique, "network")).dependents == ()
