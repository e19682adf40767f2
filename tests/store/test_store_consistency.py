"""The store with its projection: what the bus carried is what the API answers, and the deploy
record is a consistent read (asked right after a run's last event is published, it sees it)."""

from __future__ import annotations

from store_api_support import RunningStore, store
from test_projection import DB_PASSWORD_TOKEN, deploy_run, publish

from trellis_core.bus import Bus
from trellis_store.api import (
    DeployRecord,
    DeployRecordGet,
    Environment,
    EnvironmentGet,
    Ping,
    Pong,
    RunDetail,
    RunGet,
    RunList,
    Runs,
)

__all__ = ["store"]


async def test_a_deploy_just_published_is_the_deploy_record_and_the_run_the_api_shows(
    store: RunningStore, bus: Bus, unique: str
) -> None:
    events = deploy_run(unique, "dev", 3)
    run_id = events[0].run_id
    last = await publish(bus, events)
    record = await store.ask(DeployRecordGet(tenant=unique, environment="dev"), DeployRecord)
    assert record.deployed, "the barrier waited for the run's last event"
    assert record.run_id == run_id
    assert record.variables == {"db_password": DB_PASSWORD_TOKEN, "region": "eu"}  # tokens as stored
    assert record.outputs == {"r0": {"id": {"value": "r0"}}}
    pong = await store.ask(Ping(), Pong)
    assert pong.projected_events >= last
    detail = await store.ask(RunGet(tenant=unique, run_id=run_id, with_workflow=True), RunDetail)
    assert detail.status == "succeeded"
    assert [(a.id, a.status, a.attempts) for a in detail.activities] == [
        (f"resource/r{i}/apply", "succeeded", 1) for i in range(3)
    ]
    assert detail.workflow is not None
    assert "hunter2" not in str(detail.workflow), "sensitive inputs are masked in the stored workflow"
    env = await store.ask(EnvironmentGet(tenant=unique, name="dev"), Environment)
    assert (env.status, env.last_run_id) == ("deployed", run_id)
    runs = await store.ask(RunList(tenant=unique, environment="dev"), Runs)
    assert [r.run_id for r in runs.runs] == [run_id]
    failed = deploy_run(unique, "dev", 2, status="failed")
    await publish(bus, failed)
    after_failure = await store.ask(DeployRecordGet(tenant=unique, environment="dev"), DeployRecord)
    assert (after_failure.deployed, after_failure.run_id) == (True, run_id), "a failed run keeps the last deploy"
    destroyed = deploy_run(unique, "dev", 1, action="destroy")
    await publish(bus, destroyed)
    gone = await store.ask(DeployRecordGet(tenant=unique, environment="dev"), DeployRecord)
    assert gone == DeployRecord(deployed=False)
