"""The store's run-side API: run records with idempotency keys, run details in workflow order
(fast for 7,000 activities), run lists, logs, approvals, callback tokens, the deploy record,
replies over 1 MiB, and PostgreSQL going away."""

from __future__ import annotations

import asyncio
import statistics
import time
from datetime import UTC, datetime, timedelta

import msgspec
import structlog
from store_api_support import (
    RunningStore,
    TcpProxy,
    env_put,
    running_store,
    seed_run,
    store,
    tenant_with_template,
)

from trellis_core.bus import Bus
from trellis_core.sealed import MasterKeyring, new_master_key
from trellis_core.settings import Settings
from trellis_core.workflow import Activity, ContainerSpec, Workflow
from trellis_core.workflow import TemplateRef as WorkflowTemplate
from trellis_store.api import (
    Approval,
    ApprovalGet,
    AuditEntries,
    AuditList,
    CallbackRedeem,
    DeployRecord,
    DeployRecordGet,
    Environment,
    LogChunks,
    LogsGet,
    Ping,
    Pong,
    Redeemed,
    RunCreate,
    RunCreated,
    RunDetail,
    RunGet,
    RunList,
    Runs,
    StoreError,
)
from trellis_store.client import StoreClient
from trellis_store.service import serve

__all__ = ["store"]


def run_create(tenant: str, run_id: str, **kw: object) -> RunCreate:
    return RunCreate(tenant=tenant, run_id=run_id, environment="dev", action="deploy", requested_by="bob", **kw)  # type: ignore[arg-type]


async def seed_activities(store: RunningStore, tenant: str, run_id: str, count: int, *, outputs: str = "{}") -> None:
    """`count` activities as the projection writes them, ordinal i named a{i}, inserted out of order."""
    await store.sql(
        "INSERT INTO activities (tenant, run_id, activity_id, ordinal, kind, resource, stage, depends_on, status, "
        "attempts, agent, started_at, outputs, reason, exit_code) "
        "SELECT $1, $2, 'resource/r' || i || '/apply', i, 'container', 'r' || i, 'apply', "
        "CASE WHEN i > 0 THEN ARRAY['resource/r' || (i - 1) || '/apply'] ELSE '{}' END, "
        "CASE WHEN i % 2 = 0 THEN 'succeeded' ELSE 'running' END, 1, 'agent-1', now(), $3::jsonb, '', "
        "CASE WHEN i % 2 = 0 THEN 0 END "
        "FROM generate_series($4 - 1, 0, -1) AS i",
        tenant,
        run_id,
        outputs,
        count,
    )


async def env_ready(store: RunningStore, tenant: str) -> None:
    await tenant_with_template(store, tenant)
    await store.ask(env_put(tenant), Environment)


# ---- run records ---------------------------------------------------------------------------------------------


async def test_a_retried_run_request_answers_the_first_run_and_another_request_is_a_conflict(
    store: RunningStore, unique: str
) -> None:
    await env_ready(store, unique)
    first = await store.ask(run_create(unique, "r1", idempotency_key="k1", request_digest="d1"), RunCreated)
    assert first == RunCreated(run_id="r1", created=True)
    retry = await store.ask(run_create(unique, "r2", idempotency_key="k1", request_digest="d1"), RunCreated)
    assert retry == RunCreated(run_id="r1", created=False)
    other = await store.refused(run_create(unique, "r3", idempotency_key="k1", request_digest="d2"))
    assert (other.code, other.path) == ("conflict", "idempotency_key")
    assert "r1" in other.message
    same_id = await store.refused(run_create(unique, "r1"))
    assert (same_id.code, same_id.path) == ("conflict", "run_id")
    listed = await store.ask(RunList(tenant=unique), Runs)
    assert [r.run_id for r in listed.runs] == ["r1"]
    assert (listed.runs[0].status, listed.runs[0].requested_by) == ("requested", "bob")
    audit = await store.ask(AuditList(tenant=unique), AuditEntries)
    assert [e.action for e in audit.entries].count("run.create") == 1


async def test_concurrent_retries_of_one_request_create_one_run(store: RunningStore, unique: str) -> None:
    await env_ready(store, unique)
    answers = await asyncio.gather(
        *(
            store.client.ask(run_create(unique, f"c{i}", idempotency_key="same", request_digest="d"), RunCreated)
            for i in range(8)
        )
    )
    assert all(isinstance(a, RunCreated) for a in answers), answers
    created = [a for a in answers if isinstance(a, RunCreated) and a.created]
    assert len(created) == 1
    assert {a.run_id for a in answers if isinstance(a, RunCreated)} == {created[0].run_id}


async def test_a_run_of_an_unknown_environment_or_without_an_id_is_refused(store: RunningStore, unique: str) -> None:
    await env_ready(store, unique)
    unknown = await store.refused(
        RunCreate(tenant=unique, run_id="r1", environment="nope", action="deploy", requested_by="bob")
    )
    assert (unknown.code, unknown.path) == ("not_found", "environment")
    no_id = await store.refused(run_create(unique, ""))
    assert (no_id.code, no_id.path) == ("invalid", "run_id")


async def test_a_run_shows_every_activity_in_workflow_order_and_its_workflow_on_request(
    store: RunningStore, unique: str
) -> None:
    await env_ready(store, unique)
    workflow = Workflow(
        environment="dev",
        template=WorkflowTemplate(name="web", version="1"),
        action="deploy",
        activities=(Activity(id="resource/r0/apply", kind="container", spec=ContainerSpec(image="alpine")),),
    )
    await seed_run(store, unique, "r1", workflow=msgspec.json.encode(workflow).decode())
    await seed_activities(store, unique, "r1", 5, outputs='{"url": "http://x", "n": 3}')
    detail = await store.ask(RunGet(tenant=unique, run_id="r1"), RunDetail)
    assert [a.id for a in detail.activities] == [f"resource/r{i}/apply" for i in range(5)]
    first, second = detail.activities[0], detail.activities[1]
    assert (first.status, first.exit_code, first.depends_on) == ("succeeded", 0, ())
    assert (second.status, second.exit_code, second.depends_on) == ("running", None, ("resource/r0/apply",))
    assert first.outputs == {"url": "http://x", "n": 3}
    assert first.started_at is not None
    assert (first.attempts, first.agent, first.resource, first.stage) == (1, "agent-1", "r0", "apply")
    assert detail.workflow is None
    with_workflow = await store.ask(RunGet(tenant=unique, run_id="r1", with_workflow=True), RunDetail)
    assert with_workflow.workflow == workflow


async def test_runs_list_newest_first_by_environment_in_pages(store: RunningStore, unique: str) -> None:
    await env_ready(store, unique)
    for i in range(5):
        await seed_run(store, unique, f"0190000{i}", environment="dev" if i % 2 == 0 else "prod")
    everything = await store.ask(RunList(tenant=unique), Runs)
    assert [r.run_id for r in everything.runs] == [f"0190000{i}" for i in (4, 3, 2, 1, 0)]
    dev = await store.ask(RunList(tenant=unique, environment="dev", limit=2), Runs)
    assert [r.run_id for r in dev.runs] == ["01900004", "01900002"]
    older = await store.ask(RunList(tenant=unique, environment="dev", limit=2, before="01900002"), Runs)
    assert [r.run_id for r in older.runs] == ["01900000"]
    bad = await store.refused(RunList(tenant=unique, limit=100_000))
    assert (bad.code, bad.path) == ("invalid", "limit")


async def test_another_tenants_runs_logs_and_approvals_are_not_found(store: RunningStore, unique: str) -> None:
    await env_ready(store, unique)
    other = unique + "x"
    await env_ready(store, other)
    await seed_run(store, unique, "r1")
    await seed_activities(store, unique, "r1", 2)
    await store.sql(
        "INSERT INTO approvals (tenant, run_id, activity_id, attempt) VALUES ($1, 'r1', 'environment/gate', 1)", unique
    )
    assert (await store.refused(RunGet(tenant=other, run_id="r1"))).code == "not_found"
    assert (await store.refused(LogsGet(tenant=other, run_id="r1"))).code == "not_found"
    refused = await store.refused(ApprovalGet(tenant=other, run_id="r1", activity_id="environment/gate"))
    assert refused.code == "not_found"
    assert (await store.ask(RunList(tenant=other), Runs)).runs == ()


# ---- a big run -------------------------------------------------------------------------------------------------


async def seed_event(store: RunningStore, tenant: str, run_id: str, seq: int) -> None:
    """An events row as the projection writes one with the rows an event changed."""
    await store.sql(
        "INSERT INTO events (seq, event_id, tenant, run_id, kind, occurred_at, body) "
        "VALUES ($1, $2, $3, $4, 'activity.completed', now(), '{}')",
        seq,
        f"{tenant}-{run_id}-{seq}",
        tenant,
        run_id,
    )


async def p50_of_run_get(store: RunningStore, tenant: str, run_id: str, times: int = 10) -> float:
    timings = []
    for _ in range(times):
        started = time.perf_counter()
        detail = await store.ask(RunGet(tenant=tenant, run_id=run_id), RunDetail)
        timings.append(time.perf_counter() - started)
        assert len(detail.activities) == 7000
        assert detail.activities[6999].id == "resource/r6999/apply"
    return statistics.median(timings)


async def test_a_7000_activity_run_is_answered_fast_and_read_again_only_after_an_event(
    store: RunningStore, unique: str
) -> None:
    """GET /v1/runs/{id} of a 7,000-activity run must stay under 50 ms at the gateway (issue 16):
    the store's share, request to decoded answer over NATS, is measured here (printed with -s).
    Bounds are loose: this machine is shared; the figures are what matter."""
    await env_ready(store, unique)
    seq = 10_000 + int(unique[1:]) * 10
    await seed_run(store, unique, "big")
    await seed_activities(store, unique, "big", 7000, outputs='{"id": "vpc-0123456789"}')
    uncached = await p50_of_run_get(store, unique, "big")  # no event projected: read every time
    await seed_event(store, unique, "big", seq)
    await store.ask(RunGet(tenant=unique, run_id="big"), RunDetail)
    cached = await p50_of_run_get(store, unique, "big")
    print(f"run.get of 7,000 activities over NATS: p50 {uncached * 1000:.1f} ms read, {cached * 1000:.1f} ms cached")
    assert uncached < 2.0
    assert cached < 1.0
    await store.sql(
        "UPDATE activities SET status = 'failed', reason = 'boom' "
        "WHERE tenant = $1 AND activity_id = 'resource/r5/apply'",
        unique,
    )
    await seed_event(store, unique, "big", seq + 1)
    after = await store.ask(RunGet(tenant=unique, run_id="big"), RunDetail)
    assert (after.activities[5].status, after.activities[5].reason) == ("failed", "boom")


async def test_a_reply_over_1_mib_travels_in_chunks(store: RunningStore, unique: str, bus: Bus) -> None:
    await env_ready(store, unique)
    await seed_run(store, unique, "r1")
    blob = "x" * 200_000
    await store.sql(
        "INSERT INTO log_chunks (position, tenant, run_id, activity_id, attempt, sequence, stream, data, occurred_at) "
        "SELECT 1000000 + i, $1, 'r1', 'resource/a/apply', 1, i, 'stdout', $2 || i, now() "
        "FROM generate_series(0, 11) AS i",
        unique,
        blob,
    )
    logs = await store.ask(LogsGet(tenant=unique, run_id="r1"), LogChunks)
    assert sum(len(c.data) for c in logs.chunks) > 2 * bus.nc.max_payload
    assert [c.data for c in logs.chunks] == [blob + str(i) for i in range(12)]


# ---- logs ---------------------------------------------------------------------------------------------------------


async def test_logs_come_in_position_order_after_a_position_by_activity(store: RunningStore, unique: str) -> None:
    await env_ready(store, unique)
    await seed_run(store, unique, "r1")
    now = datetime.now(UTC)
    # Positions far past the stream's: the store's projection also writes other tests' log chunks here.
    chunks = ((30, "a", 2), (10, "a", 0), (20, "b", 0), (40, "a", 3), (25, "b", 1))
    for position, activity, sequence in ((1_000_000 + p, a, q) for p, a, q in chunks):
        await store.sql(
            "INSERT INTO log_chunks (position, tenant, run_id, activity_id, attempt, sequence, stream, data, "
            "occurred_at) VALUES ($1, $2, 'r1', $3, 1, $4, 'stdout', $5, $6)",
            position,
            unique,
            activity,
            sequence,
            f"{activity}{sequence}\n",
            now,
        )
    every = await store.ask(LogsGet(tenant=unique, run_id="r1"), LogChunks)
    assert [c.data for c in every.chunks] == ["a0\n", "b0\n", "b1\n", "a2\n", "a3\n"]
    positions = [c.position for c in every.chunks]
    assert positions == sorted(positions)
    after = await store.ask(LogsGet(tenant=unique, run_id="r1", after=positions[1], limit=2), LogChunks)
    assert [c.data for c in after.chunks] == ["b1\n", "a2\n"]
    only_a = await store.ask(LogsGet(tenant=unique, run_id="r1", activity_id="a"), LogChunks)
    assert [c.data for c in only_a.chunks] == ["a0\n", "a2\n", "a3\n"]
    assert only_a.chunks[0].occurred_at == now
    none_yet = await store.ask(LogsGet(tenant=unique, run_id="r1", after=positions[-1]), LogChunks)
    assert none_yet.chunks == ()
    missing = await store.refused(LogsGet(tenant=unique, run_id="nope"))
    assert (missing.code, missing.path) == ("not_found", "run_id")
    bad = await store.refused(LogsGet(tenant=unique, run_id="r1", limit=0))
    assert (bad.code, bad.path) == ("invalid", "limit")
    negative = await store.refused(LogsGet(tenant=unique, run_id="r1", after=-1))
    assert (negative.code, negative.path) == ("invalid", "after")


# ---- approvals and callbacks --------------------------------------------------------------------------------------


async def test_an_approval_is_answered_as_the_projection_wrote_it(store: RunningStore, unique: str) -> None:
    await env_ready(store, unique)
    await seed_run(store, unique, "r1")
    expires = datetime.now(UTC) + timedelta(hours=1)
    await store.sql(
        "INSERT INTO approvals (tenant, run_id, activity_id, attempt, approvers, requested_at, expires_at) "
        "VALUES ($1, 'r1', 'environment/on-init/gate', 2, $2, now(), $3)",
        unique,
        ["ann@example.com", "ben@example.com"],
        expires,
    )
    approval = await store.ask(
        ApprovalGet(tenant=unique, run_id="r1", activity_id="environment/on-init/gate"), Approval
    )
    assert (approval.attempt, approval.approvers, approval.decision) == (
        2,
        ("ann@example.com", "ben@example.com"),
        "",
    )
    assert approval.expires_at == expires
    missing = await store.refused(ApprovalGet(tenant=unique, run_id="r1", activity_id="environment/other"))
    assert (missing.code, missing.path) == ("not_found", "activity_id")


async def test_a_callback_token_redeems_once(store: RunningStore, unique: str) -> None:
    expires = datetime.now(UTC) + timedelta(days=7)
    first = await store.ask(CallbackRedeem(tenant=unique, token_id=f"{unique}-cb", expires_at=expires), Redeemed)
    assert first.token_id == f"{unique}-cb"
    replay = await store.refused(CallbackRedeem(tenant=unique, token_id=f"{unique}-cb", expires_at=expires))
    assert (replay.code, replay.path) == ("conflict", "token_id")
    assert "already used" in replay.message
    empty = await store.refused(CallbackRedeem(tenant=unique, token_id="", expires_at=expires))
    assert (empty.code, empty.path) == ("invalid", "token_id")


# ---- the deploy record --------------------------------------------------------------------------------------------


async def test_the_deploy_record_answers_the_last_good_deploy_with_its_variables_as_stored(
    store: RunningStore, unique: str
) -> None:
    await env_ready(store, unique)
    never = await store.ask(DeployRecordGet(tenant=unique, environment="dev"), DeployRecord)
    assert never == DeployRecord(deployed=False)
    unknown = await store.ask(DeployRecordGet(tenant=unique, environment="nowhere"), DeployRecord)
    assert unknown.deployed is False
    token = MasterKeyring.from_settings(store.settings).for_tenant(unique).seal("pw")
    await store.sql(
        "UPDATE environments SET deployed = true, deploy_run_id = 'r9', status = 'deployed', "
        'outputs = \'{"vpc": {"id": "vpc-1"}}\', deployed_variables = jsonb_build_object(\'region\', \'eu\', '
        "'password', $2::text) WHERE tenant = $1",
        unique,
        token,
    )
    record = await store.ask(DeployRecordGet(tenant=unique, environment="dev"), DeployRecord)
    assert record == DeployRecord(  # the token as stored: the compiler passes it on, the agent opens it
        deployed=True, run_id="r9", outputs={"vpc": {"id": "vpc-1"}}, variables={"region": "eu", "password": token}
    )
    stranger = await store.ask(DeployRecordGet(tenant=unique + "s", environment="dev"), DeployRecord)
    assert stranger.deployed is False


# ---- PostgreSQL going away ------------------------------------------------------------------------------------------


async def test_postgresql_down_answers_unavailable_and_the_store_recovers(
    bus: Bus, settings: Settings, database_url: str, unique: str
) -> None:
    host_port = database_url.split("@", 1)[1].split("/", 1)[0]
    host, port = host_port.rsplit(":", 1)
    proxy = TcpProxy(host, int(port))
    await proxy.start()
    async with running_store(bus, settings, proxy.url(database_url)) as running:
        await running.ask(Ping(), Pong)
        await proxy.cut()
        deadline = time.monotonic() + 20
        with structlog.testing.capture_logs() as logged:
            answer: Pong | StoreError = await running.client.ask(Ping(), Pong)
            while isinstance(answer, Pong) and time.monotonic() < deadline:  # a pooled connection may look open
                answer = await running.client.ask(Ping(), Pong)
        assert isinstance(answer, StoreError), answer
        assert answer.code == "unavailable"
        assert answer.message == "the state store's database is unavailable"  # no host, port or driver text
        assert str(proxy.port) not in answer.message
        assert "127.0.0.1" not in answer.message
        details = [e for e in logged if e["event"] == "store_unavailable"]
        assert details, logged
        assert details[-1]["op"] == "ping"
        assert details[-1]["error"]  # the driver's words, for the operator
        refused = await running.client.ask(DeployRecordGet(tenant=unique, environment="dev"), DeployRecord)
        assert isinstance(refused, StoreError)
        assert refused.code == "unavailable"
        await proxy.restore()
        deadline = time.monotonic() + 20
        back = await running.client.ask(Ping(), Pong)
        while not isinstance(back, Pong) and time.monotonic() < deadline:
            back = await running.client.ask(Ping(), Pong)
        assert isinstance(back, Pong), back


async def test_a_store_started_while_postgresql_is_down_waits_for_it(
    bus: Bus, settings: Settings, database_url: str
) -> None:
    host_port = database_url.split("@", 1)[1].split("/", 1)[0]
    host, port = host_port.rsplit(":", 1)
    proxy = TcpProxy(host, int(port))
    await proxy.start()
    proxy.refusing = True
    store_settings = msgspec.structs.replace(settings, database_url=proxy.url(database_url), seal_key=new_master_key())
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(serve(bus, store_settings, stop, ready))
    try:
        async with asyncio.timeout(20):
            while proxy.refused < 2:  # it tried, and tried again
                proxy.refused_changed.clear()
                await proxy.refused_changed.wait()
        assert not ready.is_set()
        assert not task.done()
        proxy.refusing = False
        await asyncio.wait_for(ready.wait(), 30)
        client = StoreClient(bus.nc)
        answer = await client.ask(Ping(), Pong)
        await client.close()
        assert isinstance(answer, Pong), answer
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        await proxy.cut()


async def test_a_bug_answers_internal_with_a_logged_traceback_and_the_store_serves_on(
    store: RunningStore, unique: str
) -> None:
    await env_ready(store, unique)
    await seed_run(store, unique, "r1")
    await seed_activities(store, unique, "r1", 1)
    await store.sql("UPDATE activities SET status = 'bogus' WHERE tenant = $1", unique)  # no row may hold this
    with structlog.testing.capture_logs() as logged:
        broken = await store.refused(RunGet(tenant=unique, run_id="r1"))
    assert broken.code == "internal"
    assert "run.get failed: ValidationError" in broken.message
    assert "bogus" not in broken.message, "the details stay in the log"
    failures = [e for e in logged if e["event"] == "store_op_failed"]
    assert len(failures) == 1
    assert (failures[0]["op"], failures[0]["tenant"], failures[0]["exc_info"]) == ("run.get", unique, True)
    await store.ask(Ping(), Pong)
