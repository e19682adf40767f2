"""Sizes through the real compiler, scheduler and agent on the real nats-server: a 10,000-activity
run is stored once and referenced, a work item too large for the bus fails its activity, a
workflow over the limit is rejected, and the publisher never retries what can never be sent."""

from __future__ import annotations

import asyncio
import hashlib
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import msgspec
import pytest
from scheduler_support import recording, running_agent, running_scheduler, sh, submit, workflow

from trellis_agent.agent import Agent
from trellis_agent.config import AgentConfig
from trellis_agent.executors.base import Outcome, Sink, Workspace
from trellis_compiler.service import serve as serve_compiler
from trellis_core import subjects
from trellis_core.bus import Bus, ensure_work_stream, put_workflow, stored_workflow
from trellis_core.events import (
    ActivityCompleted,
    ActivityFailed,
    ActivityStarted,
    RunCompiled,
    RunRejected,
    RunRequested,
    SourceFile,
    WorkItem,
    encode,
)
from trellis_core.ids import new_run_id
from trellis_core.settings import MAX_OUTPUT_BYTES, WORKFLOW_INLINE_MAX_BYTES, Settings
from trellis_core.workflow import Activity, ContainerSpec
from trellis_scheduler.kv import run_state_bucket
from trellis_scheduler.publisher import PipelinedPublisher
from trellis_scheduler.store import run_key

NODE = """\
apiVersion: trellis.dev/v1
kind: ResourceTemplate
metadata: {name: node}
spec:
  provider: custom
  providerOptions:
    custom:
      tasks:
        - name: make
          type: script
          options:
            script:
              script: "true"
"""
BIG_OUTPUT = 600_000
WRITE_BIG = f"{{ printf '{{\"blob\": {{\"value\": \"'; head -c {BIG_OUTPUT} /dev/zero | tr '\\0' x; printf '\"}}}}'; }}"
BLOB = "$(resource.big.output.blob.value)$"


def wide(resources: int) -> tuple[SourceFile, ...]:
    """An environment `wide` of `resources` independent resources, one no-op task each."""
    lines = ["apiVersion: trellis.dev/v1", "kind: EnvironmentTemplate", "metadata: {name: wide}", "spec:"]
    lines += ["  resources:", *(f"    - {{name: r{i}, template: {{name: node}}}}" for i in range(resources))]
    environment = "---\napiVersion: trellis.dev/v1\nkind: Environment\nmetadata: {name: wide}\n"
    environment += "spec:\n  template: {name: wide}\n"
    return (
        SourceFile(path="node.yaml", text=NODE),
        SourceFile(path="wide.yaml", text="\n".join(lines) + "\n" + environment),
    )


class Noop:
    async def run(self, work: WorkItem, workspace: Workspace, sink: Sink) -> Outcome:
        return Outcome.succeeded()


@asynccontextmanager
async def noop_agent(bus: Bus, tmp_path: Path, tenant: str) -> AsyncIterator[None]:
    config = AgentConfig.from_env({}, tenant=tenant, concurrency=64, heartbeat_seconds=5.0, log_flush_seconds=0.05)
    stop, ready = asyncio.Event(), asyncio.Event()
    await ensure_work_stream(bus, tenant)  # the control plane's job: here the test is the control plane
    task = asyncio.create_task(Agent(bus, config, Noop(), tmp_path / "noop").run(stop, ready=ready))
    async with asyncio.timeout(10):
        await ready.wait()
    try:
        yield
    finally:
        stop.set()
        async with asyncio.timeout(30):
            await task


@asynccontextmanager
async def compiler(bus: Bus) -> AsyncIterator[None]:
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(serve_compiler(bus, stop, ready=ready))
    async with asyncio.timeout(15):
        await ready.wait()
    try:
        yield
    finally:
        stop.set()
        async with asyncio.timeout(15):
            await task


async def request(bus: Bus, tenant: str, sources: tuple[SourceFile, ...]) -> str:
    run = RunRequested(tenant=tenant, run_id=new_run_id(), environment="wide", sources=sources)
    await bus.publish(f"{subjects.PREFIX}.{tenant}.runs.requested", run, msg_id=f"{run.run_id}/request")
    return run.run_id


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_a_10000_activity_run_is_stored_once_referenced_and_succeeds(
    bus: Bus, settings: Settings, unique: str, tmp_path: Path
) -> None:
    async with (
        recording(bus, unique) as rec,
        compiler(bus),
        running_scheduler(bus, settings, unique),
        noop_agent(bus, tmp_path, unique),
    ):
        run_id = await request(bus, unique, wide(10_000))
        compiled = await rec.first(RunCompiled, run_id, within=60)
        assert compiled.workflow_ref
        assert compiled.workflow.activities == ()
        stored = await stored_workflow(bus.js, compiled.workflow_ref)
        assert not isinstance(stored, str), stored
        assert len(stored.activities) == 10_000
        done = await rec.completion(run_id, within=240)
    assert done.status == "succeeded", done.message
    assert len(rec.of(ActivityCompleted, run_id)) >= 10_000
    kv = await run_state_bucket(bus.js, settings)
    tombstone = await kv.get(run_key(unique, run_id))
    assert tombstone.value is not None
    assert len(zlib.decompress(tombstone.value)) < 1024


@pytest.mark.timeout(120)
async def test_a_600_kb_output_bound_twice_fails_the_next_activity_and_an_ordinary_run_succeeds(
    bus: Bus, settings: Settings, unique: str, tmp_path: Path
) -> None:
    binder = Activity(
        id="resource/use/apply",
        kind="container",
        spec=ContainerSpec(command=("echo", BLOB, BLOB)),
        depends_on=("resource/big/apply",),
    )
    large = workflow(sh("resource/big/apply", f'{WRITE_BIG} > "$TRELLIS_OUTPUTS"', resource="big"), binder, env="big")
    async with (
        recording(bus, unique) as rec,
        running_scheduler(bus, settings, unique),
        running_agent(bus, tmp_path, unique, concurrency=4),
    ):
        large_id = await submit(bus, unique, large)
        ordinary_id = await submit(bus, unique, workflow(sh("resource/web/apply", "true"), env="ordinary"))
        large_done = await rec.completion(large_id, within=60)
        ordinary_done = await rec.completion(ordinary_id, within=60)
        failed = await rec.first(ActivityFailed, large_id, activity_id="resource/use/apply")
    assert ordinary_done.status == "succeeded", ordinary_done.message
    assert large_done.status == "failed"
    limit = bus.nc.max_payload - 1024
    assert failed.reason.startswith("work item is ")
    assert f"over the {limit}-byte limit" in failed.reason
    size = int(failed.reason.split()[3])
    assert size > 2 * BIG_OUTPUT
    assert not failed.retryable
    assert len(rec.of(ActivityFailed, large_id)) == 1  # failed once, never retried


@pytest.mark.timeout(90)
async def test_outputs_too_large_for_one_run_completed_are_left_out_of_it_saying_so(
    bus: Bus, settings: Settings, unique: str, tmp_path: Path
) -> None:
    two = workflow(
        sh("resource/one/apply", f'{WRITE_BIG} > "$TRELLIS_OUTPUTS"', resource="one"),
        sh("resource/two/apply", f'{WRITE_BIG} > "$TRELLIS_OUTPUTS"', resource="two"),
        env="two-big",
    )
    async with (
        recording(bus, unique) as rec,
        running_scheduler(bus, settings, unique),
        running_agent(bus, tmp_path, unique, concurrency=2),
    ):
        done = await rec.completion(await submit(bus, unique, two), within=60)
        ordinary = await rec.completion(await submit(bus, unique, workflow(sh("apply", "true"))), within=30)
    assert done.status == "succeeded"
    assert done.outputs == {}
    assert done.message.startswith("the run's outputs are left out: with them run.completed is ")
    assert ordinary.status == "succeeded", ordinary.message


@pytest.mark.timeout(90)
async def test_a_referenced_workflow_is_fetched_again_by_the_next_leader(
    bus: Bus, settings: Settings, unique: str, tmp_path: Path
) -> None:
    full = workflow(sh("resource/a/apply", "sleep 1"), sh("resource/b/apply", "true", "resource/a/apply"), env="ref")
    blob = encode(full)
    digest = hashlib.sha256(blob).hexdigest()
    await put_workflow(bus, digest, blob)
    header = msgspec.structs.replace(full, activities=())
    run_id = new_run_id()
    async with recording(bus, unique) as rec, running_agent(bus, tmp_path, unique):
        async with running_scheduler(bus, settings, unique):
            await bus.publish_event(RunCompiled(tenant=unique, run_id=run_id, workflow=header, workflow_ref=digest))
            await rec.first(ActivityStarted, run_id, activity_id="resource/a/apply")
        async with running_scheduler(bus, settings, unique):  # recovers the run from the store
            done = await rec.completion(run_id, within=30)
    assert done.status == "succeeded", done.message
    assert {e.activity_id for e in rec.of(ActivityCompleted, run_id)} == {"resource/a/apply", "resource/b/apply"}


@pytest.mark.timeout(120)
async def test_a_workflow_over_the_limit_is_rejected_naming_it(settings: Settings, unique: str) -> None:
    small = msgspec.structs.replace(settings, workflow_max_bytes=WORKFLOW_INLINE_MAX_BYTES * 2)
    bus = await Bus.connect(small, name="sizes-compiler")
    try:
        async with recording(bus, unique) as rec, compiler(bus):
            run_id = await request(bus, unique, wide(3_000))
            rejected = await rec.first(RunRejected, run_id, within=60)
    finally:
        await bus.close()
    (problem,) = rejected.errors
    assert problem.message.startswith("the compiled workflow is ")
    assert f"over the {WORKFLOW_INLINE_MAX_BYTES * 2}-byte limit (TRELLIS_WORKFLOW_MAX_BYTES" in problem.message
    assert "3000 activities" in problem.message


async def test_the_publisher_gives_up_on_a_message_over_max_payload_at_once(bus: Bus, unique: str) -> None:
    publisher = PipelinedPublisher(bus, confirm_timeout=5.0)
    await publisher.start()
    try:
        subject = subjects.run_event(unique, new_run_id(), "run.started")
        too_large = b"x" * (bus.nc.max_payload + 1)
        assert not await publisher.publish(subject, too_large, f"{unique}/large", track="large")
        assert await publisher.publish(subject, b"{}", f"{unique}/small", track="small")
        async with asyncio.timeout(10):
            await publisher.confirm()
    finally:
        await publisher.close()
    assert publisher.too_large == 1
    assert not publisher.pending
    assert not publisher.refused
    assert "small" in publisher.stored
    assert "large" not in publisher.stored


async def test_a_refused_publish_over_max_payload_is_not_retried(bus: Bus, unique: str) -> None:
    publisher = PipelinedPublisher(bus, confirm_timeout=5.0)
    subject = subjects.run_event(unique, new_run_id(), "run.started")
    publisher.refused.append((subject, b"x" * (bus.nc.max_payload + 1), f"{unique}/refused"))
    async with asyncio.timeout(10):  # before, this retried for ever
        await publisher.confirm()
    assert publisher.too_large == 1
    assert not publisher.refused


@pytest.mark.timeout(60)
async def test_outputs_over_the_limit_fail_their_activity_saying_so(
    bus: Bus, settings: Settings, unique: str, tmp_path: Path
) -> None:
    huge = WRITE_BIG.replace(str(BIG_OUTPUT), str(MAX_OUTPUT_BYTES))
    async with (
        recording(bus, unique) as rec,
        running_scheduler(bus, settings, unique),
        running_agent(bus, tmp_path, unique),
    ):
        run_id = await submit(bus, unique, workflow(sh("resource/big/apply", f'{huge} > "$TRELLIS_OUTPUTS"')))
        done = await rec.completion(run_id, within=30)
    (failed,) = rec.of(ActivityFailed, run_id)
    assert done.status == "failed"
    assert failed.reason.startswith("the activity's outputs are ")
    assert failed.reason.endswith(f"bytes, over the {MAX_OUTPUT_BYTES}-byte limit")
    assert not failed.retryable
