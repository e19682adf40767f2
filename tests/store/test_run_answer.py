"""run.get answered as bytes: the encoded RunDetail built around a cached, already encoded
activity list (queries.run_detail_json, ActivityCache), and StoreClient.ask_raw, which hands
those bytes on without decoding them (the gateway's GET /v1/runs/{id}).

What must hold: the bytes are exactly what encoding the RunDetail gives; the cache never
answers an activity list older than the rows (a new event makes it read again; a version not
known complete is not kept); ask_raw answers the same bytes `ask` decodes, and errors as values.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import msgspec
import pytest
from store_api_support import RunningStore, env_put, seed_run, store, tenant_with_template

from trellis_core import rpc
from trellis_core.bus import Bus
from trellis_core.events import Problem
from trellis_core.sealed import MasterKeyring, new_master_key
from trellis_core.workflow import Activity, ContainerSpec, TemplateRef, Workflow
from trellis_store.api import ActivityRow, Environment, Ping, RunDetail, RunGet, RunSummary, StoreError, subject_of
from trellis_store.client import StoreClient
from trellis_store.context import ActivityCache, Encoded, StoreContext
from trellis_store.handlers import encode_reply
from trellis_store.migrate import migrate
from trellis_store.queries import _RunTail, run_detail_json, run_get

__all__ = ["store"]  # the fixture, imported for pytest

T0 = datetime(2026, 1, 1, 12, 0, 0, 1000, tzinfo=UTC)
_encoder = msgspec.json.Encoder()


def joined(answer: Encoded | StoreError) -> bytes:
    assert isinstance(answer, Encoded), answer
    return b"".join(answer.parts)


# ---- the bytes are RunDetail's -------------------------------------------------------------------------


@pytest.mark.parametrize("activities", [0, 1, 3])
@pytest.mark.parametrize(
    "tail",
    [
        _RunTail(),
        _RunTail(errors=(Problem(message="no such template", path="template"),)),
        _RunTail(outputs={"vpc": {"id": "vpc-1", "none": None}}),
        _RunTail(
            workflow=Workflow(
                environment="dev",
                template=TemplateRef(name="web", version="1"),
                action="deploy",
                activities=(Activity(id="resource/a/apply", kind="container", spec=ContainerSpec(image="x")),),
            )
        ),
    ],
)
def test_the_answer_is_byte_for_byte_the_encoded_run_detail(activities: int, tail: _RunTail) -> None:
    rows = tuple(
        ActivityRow(id=f"resource/r{i}/apply", kind="container", status="succeeded", started_at=T0, outputs={"i": i})
        for i in range(activities)
    )
    summary = RunSummary(run_id="r1", environment="dev", action="deploy", status="failed", requested_at=T0)
    expected = _encoder.encode(
        RunDetail(**msgspec.structs.asdict(summary), activities=rows, **msgspec.structs.asdict(tail))
    )
    built = joined(run_detail_json(summary, _encoder.encode(rows), tail))
    assert built == expected
    assert encode_reply(Encoded((built,))) == b'{"result":' + expected + b"}"


# ---- the cache ------------------------------------------------------------------------------------------


def test_the_cache_keeps_only_complete_versions_of_big_runs_within_its_bytes() -> None:
    cache = ActivityCache(max_bytes=100, min_run_size=2)
    cache.put("t", "r", 5, b"[1,2]", count=2, complete=False)
    assert cache.get("t", "r", 5) is None  # an earlier event may still be committing
    cache.put("t", "r", 0, b"[1,2]", count=2, complete=True)
    assert cache.get("t", "r", 0) is None  # no event to check it against
    cache.put("t", "r", 5, b"[1]", count=1, complete=True)
    assert cache.get("t", "r", 5) is None  # small: cheap to read again
    cache.put("t", "r", 5, b"[1,2]", count=2, complete=True)
    assert cache.get("t", "r", 5) == b"[1,2]"
    assert cache.get("t", "r", 6) is None  # another version: read again
    assert cache.get("u", "r", 5) is None  # another tenant's run
    cache.put("t", "big", 1, b"x" * 101, count=2, complete=True)
    assert cache.get("t", "big", 1) is None  # over the whole budget
    cache.put("t", "a", 1, b"a" * 60, count=2, complete=True)
    cache.put("t", "b", 1, b"b" * 60, count=2, complete=True)
    assert cache.get("t", "r", 5) is None  # the least recently read went first
    assert cache.get("t", "a", 1) is None
    assert cache.get("t", "b", 1) == b"b" * 60


@dataclass
class Progress:
    """A ProjectionView whose progress the test sets."""

    projected_events: int = 0
    projected_logs: int = 0

    async def wait_projected(self, seq: int, timeout: float) -> bool:  # noqa: ASYNC109
        return seq <= self.projected_events

    async def events_last_seq(self) -> int:
        return self.projected_events


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    await migrate(pool)
    yield pool
    await pool.close()


async def seed(pool: asyncpg.Pool, n: int) -> None:
    await pool.execute("INSERT INTO tenants (name) VALUES ('t')")
    await pool.execute(
        "INSERT INTO runs (tenant, run_id, environment, action, status, requested_by, requested_at) "
        "VALUES ('t', 'r', 'dev', 'deploy', 'running', 'ana', $1)",
        T0,
    )
    await pool.execute(
        "INSERT INTO activities (tenant, run_id, activity_id, ordinal, kind, status, started_at, outputs) "
        "SELECT 't', 'r', 'resource/r' || i || '/apply', i, 'container', 'succeeded', $1, '{\"id\": \"x\"}' "
        "FROM generate_series(0, $2 - 1) AS i",
        T0,
        n,
    )


async def add_event(pool: asyncpg.Pool, seq: int) -> None:
    await pool.execute(
        "INSERT INTO events (seq, event_id, tenant, run_id, kind, occurred_at, body) "
        "VALUES ($1, $2, 't', 'r', 'activity.completed', now(), '{}')",
        seq,
        f"e{seq}",
    )


async def fail_activity(pool: asyncpg.Pool, i: int) -> None:
    """Change a row as a projected event would, but without the event (to see what is cached)."""
    await pool.execute(
        "UPDATE activities SET status = 'failed', reason = 'boom' WHERE tenant = 't' AND activity_id = $1",
        f"resource/r{i}/apply",
    )


def statuses(answer: Encoded | StoreError) -> list[str]:
    return [a.status for a in msgspec.json.decode(joined(answer), type=RunDetail).activities]


async def test_a_big_run_is_read_again_after_a_new_event_and_cached_only_when_complete(pool: asyncpg.Pool) -> None:
    progress = Progress(projected_events=10)
    ctx = StoreContext(pool=pool, keyring=MasterKeyring(new_master_key()), projection=progress, schema_version=1)
    await seed(pool, 600)
    await add_event(pool, 5)
    first = await run_get(ctx, RunGet(tenant="t", run_id="r"))
    assert statuses(first) == ["succeeded"] * 600
    assert ctx.activities.get("t", "r", 5) is not None  # version 5 <= progress 10: complete, kept

    await fail_activity(pool, 3)  # no event: the cached list is answered (what proves the cache is read)
    assert statuses(await run_get(ctx, RunGet(tenant="t", run_id="r")))[3] == "succeeded"

    await add_event(pool, 6)  # the event that changed it: read again
    again = statuses(await run_get(ctx, RunGet(tenant="t", run_id="r")))
    assert again[3] == "failed"
    assert again.count("failed") == 1

    await add_event(pool, 12)  # past the projection's in-order progress: an earlier event may be in flight
    await fail_activity(pool, 4)
    assert statuses(await run_get(ctx, RunGet(tenant="t", run_id="r")))[4] == "failed"
    assert ctx.activities.get("t", "r", 12) is None  # answered, not kept
    progress.projected_events = 12
    await run_get(ctx, RunGet(tenant="t", run_id="r"))
    assert ctx.activities.get("t", "r", 12) is not None


async def test_a_missing_run_is_not_found(pool: asyncpg.Pool) -> None:
    ctx = StoreContext(pool=pool, keyring=MasterKeyring(new_master_key()), projection=Progress(), schema_version=1)
    missing = await run_get(ctx, RunGet(tenant="t", run_id="nope"))
    assert isinstance(missing, StoreError)
    assert (missing.code, missing.path) == ("not_found", "run_id")


# ---- ask_raw ------------------------------------------------------------------------------------------


async def test_ask_raw_answers_the_bytes_ask_decodes_and_errors_as_values(store: RunningStore, unique: str) -> None:
    await tenant_with_template(store, unique)
    await store.ask(env_put(unique), Environment)
    await seed_run(store, unique, "r1", requested_at=T0)
    raw = await store.client.ask_raw(RunGet(tenant=unique, run_id="r1"))
    assert isinstance(raw, memoryview), raw
    decoded = await store.ask(RunGet(tenant=unique, run_id="r1"), RunDetail)
    assert bytes(raw) == _encoder.encode(decoded)
    assert (decoded.run_id, decoded.status, decoded.requested_at) == ("r1", "running", T0)
    missing = await store.client.ask_raw(RunGet(tenant=unique, run_id="nope"))
    assert isinstance(missing, StoreError)
    assert (missing.code, missing.path) == ("not_found", "run_id")
    other = await store.client.ask_raw(RunGet(tenant=f"{unique}-other", run_id="r1"))
    assert isinstance(other, StoreError)
    assert other.code == "not_found"


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (b'{ "result" : {"a": 1} }', b'{"a": 1}'),  # framed otherwise: read as a whole Reply
        (
            b'{"error":{"code":"conflict","message":"taken","path":"name"}}',
            StoreError(code="conflict", message="taken", path="name"),
        ),
        (b'{"result":', "unreadable"),
        (b"{}", "with nothing"),
    ],
)
async def test_ask_raw_reads_any_reply_a_responder_sends(bus: Bus, reply: bytes, expected: Any) -> None:
    """A stand-in responder on the ping subject (no store runs in this test)."""

    async def answer(_: bytes) -> bytes:
        return reply

    sub = await rpc.serve(bus.nc, subject_of(Ping), answer, queue="stand-in")
    client = StoreClient(bus.nc, timeout=5)
    try:
        got = await client.ask_raw(Ping())
    finally:
        await sub.unsubscribe()
        await client.close()
    if isinstance(expected, bytes):
        assert isinstance(got, memoryview)
        assert bytes(got) == expected
    elif isinstance(expected, StoreError):
        assert got == expected
    else:
        assert isinstance(got, StoreError)
        assert got.code == "internal"
        assert expected in got.message


async def test_ask_raw_with_no_store_answers_unavailable(bus: Bus) -> None:
    client = StoreClient(bus.nc, timeout=2)
    try:
        got = await asyncio.wait_for(client.ask_raw(Ping()), 10)
    finally:
        await client.close()
    assert isinstance(got, StoreError)
    assert got.code == "unavailable"


def test_encode_reply_frames_a_struct_as_reply_does() -> None:
    detail = RunDetail(run_id="r", environment="e", action="deploy", status="running")
    assert encode_reply(detail) == b'{"result":' + _encoder.encode(detail) + b"}"
    assert encode_reply(StoreError(code="invalid", message="m")) == b'{"error":{"code":"invalid","message":"m"}}'
