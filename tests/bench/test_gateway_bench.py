"""`GET /v1/runs/{id}` latency for big runs, through the whole path a caller sees: the real store
(its query, its answer chunked over core NATS) and the real gateway over HTTP.

A run of 700 and one of 7,000 activities (a realistic compiled workflow in layers, each activity
depending on two of the layer before; the workflow stored by reference as the compiler stores
it) is published on the bus with every activity started and completed with small outputs, and
projected by the store. Then each run is read once (the first read) and 30 more times; p50 and
p90 per size, the response size and the 7,000/700 ratio are printed with whether the p50 meets
the target (under 50 ms on a 2-core machine). Nothing is asserted on time. Run with `make bench`
(or `pytest -m bench tests/bench/test_gateway_bench.py -s`).
"""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import statistics
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import msgspec
import pytest

from trellis_compiler.service import by_reference
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
from trellis_core.workflow import Activity, ContainerSpec, TemplateRef, Workflow

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "gateway"))
from gateway_support import Api, create_tenant

pytestmark = pytest.mark.bench
SIZES = (700, 7_000)
WIDTH = 70  # activities per layer
REPEATS = 30
TARGET_MS = 50.0
START_SECONDS = 60.0
PROJECT_SECONDS = 300.0
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def layered_workflow(environment: str, n: int) -> Workflow:
    """`n` activities in layers of WIDTH; each depends on two activities of the layer before."""
    acts: list[Activity] = []
    for i in range(n):
        layer, slot = divmod(i, WIDTH)
        before = (
            (f"resource/r{layer - 1}x{slot}/apply", f"resource/r{layer - 1}x{(slot + 1) % WIDTH}/apply")
            if layer
            else ()
        )
        acts.append(
            Activity(
                id=f"resource/r{layer}x{slot}/apply",
                kind="container",
                resource=f"r{layer}x{slot}",
                stage="apply",
                spec=ContainerSpec(
                    image="registry.example/tools/terraform:1.9",
                    command=("terraform", "apply", "-auto-approve"),
                    env={"TF_VAR_region": "eu-west-1", "TOKEN": "s3cret"},
                ),
                depends_on=before,
                inputs={"region": "eu-west-1", "size": "small", "password": "hunter2"},
                sensitive=("password", "TOKEN"),
            )
        )
    return Workflow(
        environment=environment,
        template=TemplateRef(name="big-stack", version="v1"),
        action="deploy",
        activities=tuple(acts),
        scope={"environment": {"name": environment}},
        requested_variables={"region": "eu-west-1"},
    )


async def publish_run(bus: Bus, tenant: str, environment: str, n: int) -> str:
    """A whole succeeded run of `n` activities on the bus, as the services publish it; its id."""
    run_id = new_run_id()
    ids: dict[str, Any] = {"tenant": tenant, "run_id": run_id}
    clock = iter(T0 + timedelta(milliseconds=i) for i in range(10 * n + 100))
    wf = layered_workflow(environment, n)
    compiled = await by_reference(bus, RunCompiled(**ids, workflow=wf, requested_by="ana", occurred_at=next(clock)))
    head: list[Event] = [
        RunRequested(
            **ids,
            environment=environment,
            action="deploy",
            requested_by="ana",
            sources=(SourceFile(path="t.yaml", text="kind: x"),),
            occurred_at=next(clock),
        ),
        compiled,
        RunStarted(**ids, occurred_at=next(clock)),
    ]
    for event in head:
        await bus.publish_event(event)
    for start in range(0, n, WIDTH):  # a layer: all started, then all completed
        layer = wf.activities[start : start + WIDTH]
        started = [
            ActivityStarted(**ids, activity_id=a.id, attempt=1, agent="agent-1", occurred_at=next(clock)) for a in layer
        ]
        await asyncio.gather(*(bus.publish_event(e) for e in started))
        done = [
            ActivityCompleted(
                **ids,
                activity_id=a.id,
                attempt=1,
                exit_code=0,
                occurred_at=next(clock),
                outputs={"id": f"{a.resource}-0123456789", "arn": f"arn:aws:x:eu:1:{a.resource}"},
            )
            for a in layer
        ]
        await asyncio.gather(*(bus.publish_event(e) for e in done))
    await bus.publish_event(
        RunCompleted(**ids, status="succeeded", outputs={"r0x0": {"id": {"value": "x"}}}, occurred_at=next(clock))
    )
    return run_id


async def wait_until(check: Callable[[], Awaitable[bool]], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {within:g}s")
        await asyncio.sleep(0.2)


async def started(task: asyncio.Task[None], ready: asyncio.Event, what: str) -> None:
    waiter = asyncio.create_task(ready.wait())
    done, _ = await asyncio.wait({task, waiter}, timeout=START_SECONDS, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    if task in done:
        task.result()
        pytest.fail(f"{what} stopped before it was ready")
    if waiter not in done:
        task.cancel()
        pytest.fail(f"{what} was not ready within {START_SECONDS:g}s")


@pytest.fixture
async def gateway_url(bus: Bus, settings: Settings, database_url: str, unique: str) -> AsyncIterator[tuple[str, str]]:
    """The store (projecting only this test's tenant, with durables of its own) and the gateway;
    (gateway URL, platform admin token)."""
    from trellis_gateway.app import serve as serve_gateway
    from trellis_store.service import serve as serve_store

    admin = secrets.token_urlsafe(32)
    configured = msgspec.structs.replace(
        settings,
        database_url=database_url,
        seal_key=base64.b64encode(secrets.token_bytes(32)).decode(),
        gateway_listen="127.0.0.1:0",
        admin_token=admin,
        callback_key=secrets.token_hex(32),
    )
    stop = asyncio.Event()
    store_ready, gateway_ready = asyncio.Event(), asyncio.Event()
    options = {"tenant": unique, "events_durable": f"{unique}_events", "logs_durable": f"{unique}_logs"}
    store = asyncio.create_task(serve_store(bus, configured, stop, store_ready, projection_options=options))
    await started(store, store_ready, "the state store")
    urls: list[str] = []
    gateway = asyncio.create_task(serve_gateway(bus, configured, stop, gateway_ready, bound=urls.append))
    await started(gateway, gateway_ready, "the gateway")
    try:
        yield urls[0], admin
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(store, gateway), START_SECONDS)


async def timed_get(session: aiohttp.ClientSession, url: str, token: str) -> tuple[float, bytes]:
    start = time.perf_counter()
    async with session.get(url, headers={"Authorization": f"Bearer {token}"}) as resp:
        body = await resp.read()
        assert resp.status == 200, (resp.status, body[:2000])
    return (time.perf_counter() - start) * 1000, body


def quantile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q * 100) - 1]


async def test_get_run_latency(bus: Bus, gateway_url: tuple[str, str], database_url: str, unique: str) -> None:
    url, admin = gateway_url
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        tenant = await create_tenant(Api(session, url), admin, unique)
        runs = {n: await publish_run(bus, unique, f"env{n}", n) for n in SIZES}
        conn = await asyncpg.connect(database_url)
        try:
            for n, run_id in runs.items():

                async def projected(run_id: str = run_id, n: int = n) -> bool:
                    done = await conn.fetchval(
                        "SELECT count(*) FILTER (WHERE status = 'succeeded') FROM activities "
                        "WHERE tenant = $1 AND run_id = $2",
                        unique,
                        run_id,
                    )
                    status = await conn.fetchval(
                        "SELECT status FROM runs WHERE tenant = $1 AND run_id = $2", unique, run_id
                    )
                    return bool(done == n and status == "succeeded")

                await wait_until(projected, PROJECT_SECONDS, f"the run of {n} activities projected")
        finally:
            await conn.close()

        load = os.getloadavg()[0]
        p50s: dict[int, float] = {}
        print(f"\nGET /v1/runs/{{id}} over HTTP (store + NATS + gateway), load average {load:.2f}")
        for n, run_id in runs.items():
            first, body = await timed_get(session, f"{url}/v1/runs/{run_id}", tenant.viewer)
            detail = msgspec.json.decode(body)
            assert len(detail["activities"]) == n
            assert detail["status"] == "succeeded"
            assert all(a["status"] == "succeeded" and a["outputs"]["id"] for a in detail["activities"])
            times = [(await timed_get(session, f"{url}/v1/runs/{run_id}", tenant.viewer))[0] for _ in range(REPEATS)]
            p50s[n] = statistics.median(times)
            print(
                f"  {n:>6,} activities: first {first:7.1f} ms, p50 {p50s[n]:7.1f} ms, "
                f"p90 {quantile(times, 0.9):7.1f} ms over {REPEATS} reads; response {len(body):,} bytes"
            )
        big, small = max(SIZES), min(SIZES)
        print(f"  ratio {big:,}/{small:,} p50: {p50s[big] / p50s[small]:.1f}x")
        print(f"  target p50 < {TARGET_MS:g} ms for {big:,} activities: {'met' if p50s[big] < TARGET_MS else 'MISSED'}")
