"""The projection on the real nats-server and PostgreSQL: real run events and log chunks published
on the bus, projected by `Projection.run`, read back as rows.

The helpers here (`deploy_run`, `publish`, `projecting`, `rows_of`) are shared by the other
test_projection*.py files and the store benchmark."""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import msgspec
import pytest

from trellis_core import subjects
from trellis_core.bus import Bus
from trellis_core.events import (
    ActivityCompleted,
    ActivityDispatched,
    ActivityFailed,
    ActivityHeartbeat,
    ActivityLogChunk,
    ActivityStarted,
    ApprovalDecided,
    ApprovalRequested,
    Event,
    Problem,
    RunCancelRequested,
    RunCompiled,
    RunCompleted,
    RunRejected,
    RunRequested,
    RunStarted,
    SourceFile,
    encode,
)
from trellis_core.ids import new_run_id
from trellis_core.settings import Settings
from trellis_core.workflow import Activity, ApprovalSpec, ContainerSpec, TemplateRef, Workflow
from trellis_store import projection_rows, retention
from trellis_store.migrate import migrate
from trellis_store.projection import Projection

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def fake_seal(tenant: str, plain: str) -> str:
    return f"sealed:{tenant}:" + base64.b64encode(plain.encode()[::-1]).decode()


# A request variable declared sensitive, as the compiler passes it on: a token (opaque to the store).
DB_PASSWORD_TOKEN = "[[trellis-sealed:v1:0123abcd:" + "A" * 48 + "]]"


# ---- shared helpers --------------------------------------------------------------------------


def workflow(environment: str, n: int, *, action: str = "deploy") -> Workflow:
    acts = [
        Activity(
            id=f"resource/r{i}/apply",
            kind="container",
            resource=f"r{i}",
            stage="apply",
            spec=ContainerSpec(command=("true",), env={"TOKEN": "s3cret", "REGION": "eu"}),
            depends_on=(f"resource/r{i - 1}/apply",) if i else (),
            inputs={"password": "hunter2", "size": 3},
            sensitive=("password", "TOKEN"),
        )
        for i in range(n)
    ]
    return Workflow(
        environment=environment,
        template=TemplateRef(name="stack", version="v1"),
        action=action,  # type: ignore[arg-type]
        activities=tuple(acts),
        scope={"environment": {"variables": {"db_password": "hunter2"}}},
        requested_variables={"db_password": DB_PASSWORD_TOKEN, "region": "eu"},
    )


class Clock:
    """Event times one millisecond apart, so rows hold times a replay reproduces."""

    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> datetime:
        self.t += timedelta(milliseconds=1)
        return self.t


def deploy_run(
    tenant: str, environment: str, n: int, *, action: str = "deploy", status: str = "succeeded", run_id: str = ""
) -> list[Event]:
    """A whole run's events in the order the services publish them: request, compile, start, each
    activity dispatched/started/heartbeat/completed, the run completed."""
    run_id = run_id or new_run_id()
    at = Clock()
    ids: dict[str, Any] = {"tenant": tenant, "run_id": run_id}
    wf = workflow(environment, n, action=action)
    events: list[Event] = [
        RunRequested(**ids, environment=environment, action=action, requested_by="ana",  # type: ignore[arg-type]
                     sources=(SourceFile(path="t.yaml", text="kind: x"),), variables={"db_password": "hunter2"},
                     occurred_at=at()),
        RunCompiled(**ids, workflow=wf, requested_by="ana", occurred_at=at()),
        RunStarted(**ids, occurred_at=at()),
    ]
    for a in wf.activities:
        act: dict[str, Any] = {**ids, "activity_id": a.id, "attempt": 1}
        events += [
            ActivityDispatched(**act, pool="default", occurred_at=at()),
            ActivityStarted(**act, agent="agent-1", occurred_at=at()),
            ActivityHeartbeat(**act, agent="agent-1", sequence=1, occurred_at=at()),
        ]
        if status == "succeeded":
            events.append(ActivityCompleted(**act, outputs={"id": a.resource}, exit_code=0, occurred_at=at()))
        else:
            events.append(ActivityFailed(**act, reason="exit code 2", exit_code=2, occurred_at=at()))
            break
    outputs = {"r0": {"id": {"value": "r0"}}} if status == "succeeded" else {}
    events.append(RunCompleted(**ids, status=status, outputs=outputs, occurred_at=at()))  # type: ignore[arg-type]
    return events


async def publish(bus: Bus, events: Sequence[Event]) -> int:
    """Publish in order; the stream sequence of the last one."""
    seq = 0
    for event in events:
        if isinstance(event, ActivityLogChunk):
            ack = await bus.publish(subjects.logs(event.tenant, event.run_id, event.activity_id), event,
                                    msg_id=event.msg_id())
        else:
            ack = await bus.publish_event(event)
        seq = ack.seq
    return seq


@contextlib.asynccontextmanager
async def projecting(bus: Bus, pool: asyncpg.Pool, settings: Settings, name: str, **options: Any
                     ) -> AsyncIterator[Projection]:
    """A Projection of tenant `name`'s messages, running, with durables of its own."""
    options = {"events_durable": f"{name}_events", "logs_durable": f"{name}_logs", "tenant": name, **options}
    projection = Projection(bus, pool, settings, options.pop("sealer", fake_seal), **options)
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(projection.run(stop, ready))
    try:
        await asyncio.wait_for(ready.wait(), 10)
        yield projection
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)


async def delete_durables(bus: Bus, name: str) -> None:
    await bus.js.delete_consumer(subjects.STREAM_EVENTS, f"{name}_events")
    await bus.js.delete_consumer(subjects.STREAM_LOGS, f"{name}_logs")


TABLES = {
    "tenants": "name",
    "environments": "tenant, name",
    "runs": "tenant, run_id",
    "activities": "tenant, run_id, activity_id",
    "approvals": "tenant, run_id, activity_id",
    "events": "seq",
    "log_chunks": "position",
}


async def rows_of(pool: asyncpg.Pool) -> dict[str, list[dict[str, Any]]]:
    """Every projected table, ordered by its key."""
    return {t: [dict(r) for r in await pool.fetch(f"SELECT * FROM {t} ORDER BY {key}")] for t, key in TABLES.items()}


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
    await migrate(pool)
    yield pool
    await pool.close()


# ---- tests -----------------------------------------------------------------------------------


async def test_a_deploy_run_becomes_run_activity_environment_and_event_rows(
    bus: Bus, pool: asyncpg.Pool, settings: Settings, unique: str
) -> None:
    events = deploy_run(unique, "web", 3)
    run_id = events[0].run_id
    async with projecting(bus, pool, settings, unique) as projection:
        last = await publish(bus, events)
        assert await projection.wait_projected(last, 10)

    run = await pool.fetchrow("SELECT * FROM runs WHERE tenant = $1 AND run_id = $2", unique, run_id)
    assert run is not None
    assert (run["status"], run["environment"], run["action"], run["requested_by"]) == ("succeeded", "web", "deploy",
                                                                                       "ana")
    assert run["requested_at"] < run["started_at"] < run["finished_at"]
    assert msgspec.json.decode(run["outputs"]) == {"r0": {"id": {"value": "r0"}}}
    stored = msgspec.json.decode(run["workflow"], type=Workflow)
    assert [a.id for a in stored.activities] == [f"resource/r{i}/apply" for i in range(3)]
    first = stored.activities[0]
    assert first.inputs == {"password": "********", "size": 3}  # sensitive input masked, others kept
    assert first.spec.env == {"TOKEN": "********", "REGION": "eu"}  # type: ignore[union-attr]
    assert stored.scope == {}
    assert stored.requested_variables == {}
    assert "hunter2" not in run["workflow"]
    assert "hunter2" not in run["variables"]

    acts = await pool.fetch("SELECT * FROM activities WHERE run_id = $1 ORDER BY ordinal", run_id)
    assert [(a["activity_id"], a["ordinal"], a["status"], a["attempts"], a["agent"], a["exit_code"]) for a in acts] == [
        (f"resource/r{i}/apply", i, "succeeded", 1, "agent-1", 0) for i in range(3)
    ]
    assert acts[1]["depends_on"] == ["resource/r0/apply"]
    assert acts[1]["resource"] == "r1"
    assert msgspec.json.decode(acts[2]["outputs"]) == {"id": "r2"}
    assert all(a["started_at"] < a["finished_at"] for a in acts)

    env = await pool.fetchrow("SELECT * FROM environments WHERE tenant = $1 AND name = 'web'", unique)
    assert env is not None
    assert (env["status"], env["deployed"], env["template_name"], env["template_version"]) == ("deployed", True,
                                                                                                "stack", "v1")
    assert (env["last_run_id"], env["deploy_run_id"]) == (run_id, run_id)
    deployed = msgspec.json.decode(env["deployed_variables"])
    assert deployed == {"db_password": DB_PASSWORD_TOKEN, "region": "eu"}  # the token, as the compiler sent it
    assert await pool.fetchval("SELECT name FROM tenants WHERE name = $1", unique) == unique

    kinds = [r["kind"] for r in await pool.fetch("SELECT kind FROM events WHERE run_id = $1 ORDER BY seq", run_id)]
    assert "activity.heartbeat" not in kinds  # heartbeats are liveness only
    assert len(kinds) == len(events) - 3
    assert kinds[0] == "run.requested"
    body = msgspec.json.decode(await pool.fetchval("SELECT body FROM events WHERE kind = 'run.requested' "
                                                   "AND run_id = $1", run_id))
    assert (body["sources"], body["files"], body["variables"]) == ([], [], {})  # a request's bundle is not kept


async def test_log_chunks_are_kept_in_order_and_expired_ones_are_not_brought_back(
    bus: Bus, pool: asyncpg.Pool, settings: Settings, unique: str
) -> None:
    run_id = new_run_id()
    now = datetime.now(UTC)
    chunks = [
        ActivityLogChunk(tenant=unique, run_id=run_id, activity_id="resource/vpc/plan", attempt=1, sequence=i,
                         data=f"line {i}\x00\n", occurred_at=now)
        for i in range(5)
    ]
    old = ActivityLogChunk(tenant=unique, run_id=run_id, activity_id="resource/vpc/plan", attempt=0, sequence=0,
                           data="ancient", occurred_at=now - timedelta(days=settings.store_logs_retention_days + 1))
    async with projecting(bus, pool, settings, unique) as projection:
        last = await publish(bus, [old, *chunks])
        assert await projection.wait_logs_projected(last, 10)
    got = await pool.fetch("SELECT * FROM log_chunks WHERE run_id = $1 ORDER BY position", run_id)
    assert [r["data"] for r in got] == [f"line {i}\ufffd\n" for i in range(5)]  # NUL kept readable, not refused
    assert [r["sequence"] for r in got] == list(range(5))
    assert got[0]["stream"] == "stdout"


async def test_failed_run_keeps_the_last_deploy_and_a_destroy_clears_it(
    bus: Bus, pool: asyncpg.Pool, settings: Settings, unique: str
) -> None:
    good = deploy_run(unique, "db", 2)
    bad = deploy_run(unique, "db", 2, status="failed")
    async with projecting(bus, pool, settings, unique) as projection:
        assert await projection.wait_projected(await publish(bus, good), 10)
        assert await projection.wait_projected(await publish(bus, bad), 10)
        env = await pool.fetchrow("SELECT * FROM environments WHERE tenant = $1", unique)
        assert env is not None
        assert (env["status"], env["deployed"], env["last_run_id"], env["deploy_run_id"]) == (
            "failed", True, bad[0].run_id, good[0].run_id)
        assert msgspec.json.decode(env["outputs"]) == {"r0": {"id": {"value": "r0"}}}
        failed = await pool.fetch("SELECT activity_id, status, reason FROM activities WHERE run_id = $1 "
                                  "ORDER BY ordinal", bad[0].run_id)
        assert [tuple(r) for r in failed] == [("resource/r0/apply", "failed", "exit code 2"),
                                              ("resource/r1/apply", "skipped", "")]

        destroy = deploy_run(unique, "db", 1, action="destroy")
        requested_only = destroy[:1]
        assert await projection.wait_projected(await publish(bus, requested_only), 10)
        status = await pool.fetchval("SELECT status FROM environments WHERE tenant = $1", unique)
        assert status == "destroying"
        assert await projection.wait_projected(await publish(bus, destroy[1:]), 10)
    env = await pool.fetchrow("SELECT * FROM environments WHERE tenant = $1", unique)
    assert env is not None
    assert (env["status"], env["deployed"], env["outputs"], env["deployed_variables"]) == ("destroyed", False,
                                                                                          "{}", "{}")


async def test_rejected_cancelled_and_approval_events_set_their_rows(
    bus: Bus, pool: asyncpg.Pool, settings: Settings, unique: str
) -> None:
    at = Clock()
    rejected = new_run_id()
    gated = new_run_id()
    gate = Activity(id="environment/on-init/gate", kind="approval", spec=ApprovalSpec(approvers=("bo@x.io",)))
    wf = Workflow(environment="app", template=TemplateRef(name="s", version="1"), action="deploy",
                  activities=(gate,))
    g: dict[str, Any] = {"tenant": unique, "run_id": gated, "activity_id": gate.id}
    events: list[Event] = [
        RunRequested(tenant=unique, run_id=rejected, environment="app", occurred_at=at()),
        RunRejected(tenant=unique, run_id=rejected, errors=(Problem(message="no such template", file="t.yaml",
                                                                    line=3, column=1),), occurred_at=at()),
        RunRequested(tenant=unique, run_id=gated, environment="app", occurred_at=at()),
        RunCompiled(tenant=unique, run_id=gated, workflow=wf, occurred_at=at()),
        RunStarted(tenant=unique, run_id=gated, occurred_at=at()),
        ApprovalRequested(**g, attempt=1, approvers=("bo@x.io",), expires_at=T0 + timedelta(days=1),
                          occurred_at=at()),
        ApprovalDecided(**g, attempt=1, decision="rejected", decided_by="bo@x.io", comment="not today",
                        occurred_at=at()),
        ApprovalDecided(**g, attempt=1, decision="approved", decided_by="eve@x.io", event_id="second",
                        occurred_at=at()),
        RunCancelRequested(tenant=unique, run_id=gated, reason="changed my mind", occurred_at=at()),
        ActivityFailed(**g, attempt=1, reason="rejected by bo@x.io", retryable=False, occurred_at=at()),
        RunCompleted(tenant=unique, run_id=gated, status="cancelled", message="cancelled", occurred_at=at()),
    ]
    async with projecting(bus, pool, settings, unique) as projection:
        last = 0
        for event in events:  # the second decision bypasses dedupe, as a late replay would
            last = (await bus.publish(subjects.run_event(event.tenant, event.run_id, event.kind), event)).seq
        assert await projection.wait_projected(last, 10)
    run = await pool.fetchrow("SELECT * FROM runs WHERE run_id = $1", rejected)
    assert run is not None
    assert run["status"] == "rejected"
    assert "t.yaml:3:1: no such template" in run["message"]
    assert msgspec.json.decode(run["errors"])[0]["message"] == "no such template"
    approval = await pool.fetchrow("SELECT * FROM approvals WHERE run_id = $1", gated)
    assert approval is not None
    assert (approval["decision"], approval["decided_by"], approval["comment"], approval["approvers"]) == (
        "rejected", "bo@x.io", "not today", ["bo@x.io"])  # the first decision stands
    assert await pool.fetchval("SELECT status FROM runs WHERE run_id = $1", gated) == "cancelled"
    assert await pool.fetchval("SELECT status FROM environments WHERE tenant = $1", unique) == "failed"


async def test_replaying_the_streams_twice_leaves_identical_rows(
    bus: Bus, pool: asyncpg.Pool, settings: Settings, unique: str
) -> None:
    events = [*deploy_run(unique, "a", 4), *deploy_run(unique, "a", 2, status="failed"),
              *deploy_run(unique, "b", 3), *deploy_run(unique, "a", 1, action="destroy")]
    chunks = [ActivityLogChunk(tenant=unique, run_id=events[0].run_id, activity_id="x", attempt=1, sequence=i,
                               data=f"{i}\n") for i in range(20)]
    async with projecting(bus, pool, settings, unique) as projection:
        last = await publish(bus, events)
        last_log = await publish(bus, chunks)
        assert await projection.wait_projected(last, 10)
        assert await projection.wait_logs_projected(last_log, 10)
    first = await rows_of(pool)
    assert len(first["events"]) > 30
    assert len(first["log_chunks"]) == 20

    for _ in range(2):  # a new durable sees every message again, in order, over rows already written
        await delete_durables(bus, unique)
        async with projecting(bus, pool, settings, unique, batch=7) as projection:
            assert await projection.wait_projected(last, 10)
            assert await projection.wait_logs_projected(last_log, 10)
        assert await rows_of(pool) == first


async def test_out_of_order_and_redelivered_events_never_regress_a_row(pool: asyncpg.Pool, unique: str) -> None:
    """Two replicas sharing a durable write batches out of stream order, and a redelivery brings an
    old event after newer ones: written newest first, the rows end as written oldest first."""
    events = [*deploy_run(unique, "c", 3), *deploy_run(unique, "c", 3, status="failed")]
    numbered = list(enumerate(events, start=1))
    async with pool.acquire() as conn:
        for seq, event in reversed(numbered):
            batch = projection_rows.Batch(seal=fake_seal)
            batch.add_event(event, seq)  # type: ignore[arg-type]
            await _write(conn, batch)
    backwards = await rows_of(pool)
    for table in ("runs", "activities", "environments", "events", "approvals"):
        await pool.execute(f"DELETE FROM {table}")
    async with pool.acquire() as conn:
        for seq, event in [*numbered, *numbered[:5]]:  # in order, then the first five again
            batch = projection_rows.Batch(seal=fake_seal)
            batch.add_event(event, seq)  # type: ignore[arg-type]
            await _write(conn, batch)
    forwards = await rows_of(pool)
    assert [r["status"] for r in forwards["runs"]] == ["succeeded", "failed"]
    assert sorted(a["status"] for a in forwards["activities"]) == ["failed", "skipped", "skipped", *["succeeded"] * 3]
    env = forwards["environments"][0]
    assert (env["status"], env["deployed"], env["deploy_run_id"]) == ("failed", True, events[0].run_id)
    assert _without_times(backwards) == _without_times(forwards)


def _without_times(rows: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    """Rows without the columns a backwards write can only approximate (times first seen)."""
    drop = {"created_at", "updated_at", "started_at", "requested_at"}
    return {t: [{k: v for k, v in r.items() if k not in drop} for r in rs] for t, rs in rows.items()}


async def _write(conn: asyncpg.Connection, batch: projection_rows.Batch) -> None:
    from trellis_store.projection import _execute

    async with conn.transaction():
        await _execute(conn, batch)


async def test_undecodable_and_forged_messages_are_dead_lettered_and_the_rest_projected(
    bus: Bus, pool: asyncpg.Pool, settings: Settings, unique: str
) -> None:
    run = deploy_run(unique, "d", 1)
    garbage_subject = subjects.run_event(unique, "r1", "run.started")
    forged = RunStarted(tenant="someone-else", run_id="r1")
    misrouted = ActivityLogChunk(tenant=unique, run_id="r2", activity_id="a", attempt=1, sequence=0, data="x")
    async with projecting(bus, pool, settings, unique) as projection:
        await bus.publish(garbage_subject, b"{not json")
        await bus.publish(subjects.run_event(unique, "r1", "run.started"), encode(forged))
        log_seq = (await bus.publish(subjects.logs(unique, "r1", "a"), encode(misrouted))).seq
        last = await publish(bus, run)
        assert await projection.wait_projected(last, 10)
        assert await projection.wait_logs_projected(log_seq, 10)
        assert projection.dead_lettered == 3
    assert await pool.fetchval("SELECT count(*) FROM log_chunks WHERE tenant = $1", unique) == 0
    letters = await bus.js.pull_subscribe(subjects.deadletter(garbage_subject), durable=None,
                                          stream=subjects.STREAM_DEADLETTER)
    reasons = [msgspec.json.decode(m.data)["reason"] for m in await letters.fetch(2, timeout=5)]
    assert reasons[0].startswith("undecodable:")
    assert "someone-else" in reasons[1]
    await letters.unsubscribe()
    assert await pool.fetchval("SELECT status FROM runs WHERE run_id = $1", run[0].run_id) == "succeeded"
    assert await pool.fetchval("SELECT count(*) FROM runs WHERE tenant = 'someone-else'") == 0


async def test_events_last_seq_is_the_streams_and_wait_projected_times_out_below_it(
    bus: Bus, pool: asyncpg.Pool, settings: Settings, unique: str
) -> None:
    async with projecting(bus, pool, settings, unique) as projection:
        last = await publish(bus, deploy_run(unique, "e", 1))
        assert await projection.events_last_seq() >= last
        assert await projection.wait_projected(last, 10)
        assert not await projection.wait_projected(last + 10_000_000, 0.3)
    progress = await pool.fetchval("SELECT seq FROM projection_progress WHERE stream = 'TRELLIS_EVENTS'")
    assert progress == last


async def test_a_sensitive_output_in_clear_is_sealed_by_the_projection_or_masked_without_keys(
    bus: Bus, pool: asyncpg.Pool, settings: Settings, unique: str
) -> None:
    """An old agent's sensitive output arrives in clear: the projection seals it with the tenant's
    key before anything is stored; a projection built without keys masks it. Never in clear."""
    secret = f"clear-{unique}"
    for sealer, name, want in ((fake_seal, f"{unique}a", fake_seal), (None, f"{unique}b", None)):
        events = deploy_run(name, "g", 1)
        outputs = {"pw": {"value": secret, "type": "string", "sensitive": True}}
        events = [
            msgspec.structs.replace(e, outputs={"r0": outputs} if isinstance(e, RunCompleted) else outputs)
            if isinstance(e, ActivityCompleted | RunCompleted)
            else e
            for e in events
        ]
        async with projecting(bus, pool, settings, name, sealer=sealer) as projection:
            assert await projection.wait_projected(await publish(bus, events), 10)
        value = "********" if want is None else want(name, secret)
        stored = await pool.fetchval("SELECT outputs::text FROM runs WHERE tenant = $1", name)
        assert msgspec.json.decode(stored) == {"r0": {"pw": {**outputs["pw"], "value": value}}}
        for table, column in (("runs", "outputs"), ("activities", "outputs"), ("events", "body"),
                              ("environments", "outputs")):  # fmt: skip
            rows = await pool.fetch(f"SELECT {column}::text AS c FROM {table} WHERE tenant = $1", name)
            assert rows, table
            assert not any(secret in r["c"] for r in rows), table


async def test_retention_deletes_only_log_chunks_older_than_the_setting(pool: asyncpg.Pool, unique: str) -> None:
    now = datetime.now(UTC)
    ages = {1: timedelta(days=40), 2: timedelta(days=31), 3: timedelta(days=29), 4: timedelta(0)}
    await pool.executemany(
        "INSERT INTO log_chunks (position, tenant, run_id, activity_id, attempt, sequence, stream, data, occurred_at)"
        " VALUES ($1::bigint, $2, 'r', 'a', 1, $1::int, 'stdout', 'x', $3)",
        [(position, unique, now - age) for position, age in ages.items()],
    )
    assert await retention.delete_expired_logs(pool, 30, slice_size=1) == 2  # in slices, until none is left
    assert [r["position"] for r in await pool.fetch("SELECT position FROM log_chunks ORDER BY 1")] == [3, 4]
    assert await retention.delete_expired_logs(pool, 30) == 0


@pytest.mark.parametrize(("action", "during"), [("deploy", "deploying"), ("destroy", "destroying")])
async def test_a_compiled_run_marks_its_environment_as_in_progress_until_it_ends(
    bus: Bus, pool: asyncpg.Pool, settings: Settings, unique: str, action: str, during: str
) -> None:
    """The run's request goes on TRELLIS_RUNS (the compiler's input), which the store does not read:
    the compiled run is what tells it a deploy or destroy is under way."""
    events = deploy_run(unique, "web", 2, action=action)[1:]  # as the store sees it: from run.compiled
    completed = events.pop()
    async with projecting(bus, pool, settings, unique) as projection:
        assert await projection.wait_projected(await publish(bus, events), 10)
        env = await pool.fetchrow("SELECT status, last_run_id FROM environments WHERE tenant = $1", unique)
        assert env is not None
        assert (env["status"], env["last_run_id"]) == (during, completed.run_id)
        assert await projection.wait_projected(await publish(bus, [completed]), 10)
    status = await pool.fetchval("SELECT status FROM environments WHERE tenant = $1", unique)
    assert status == ("deployed" if action == "deploy" else "destroyed")
