"""TRELLIS_STREAM_REPLICAS reaches every stream and bucket Trellis makes: the shared streams, the
tenant's work stream, the scheduler's KV buckets (run snapshots, leases) and both object stores
(a run's bundle files, a workflow too large to travel inline), and their consumers. A whole
control plane runs one run that needs all of them on a fresh nats-server (1 replica), then on a
three-node cluster (3); every stream on the server is listed and checked, so one a later change
adds without the setting fails here."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from cluster_support import control_plane, custom_task, environment, request_run, wait_runs_ended

from trellis_core import subjects
from trellis_core.bus import Bus
from trellis_core.embedded import EmbeddedNats, EmbeddedNatsCluster
from trellis_core.events import BundleFile
from trellis_core.settings import Settings

# Three tasks with 100 KiB scripts (an argument of sh -c stays under Linux's 128 KiB a string):
# the compiled workflow is over WORKFLOW_INLINE_MAX_BYTES (256 KiB) and goes to the object store.
PADDING = "# " + "x" * (100 * 1024)
TEMPLATES = (
    custom_task("big", f"{PADDING}\ncat notes.txt")
    .replace("        - name: run\n", "        - name: first\n", 1)
    .replace("      tasks:\n", "      tasks:\n" + "".join(
        f"        - name: pad{n}\n          type: script\n          options: {{script: {{script: {PADDING!r}}}}}\n"
        for n in range(2)
    ), 1)
    + "---\n"
    + environment("big-stack", ["big"], ["big"])
)


@pytest.fixture
def single_nats() -> Iterator[EmbeddedNats]:
    path = Path(tempfile.mkdtemp(prefix="trellis-nats-"))
    server = EmbeddedNats(path)
    server.start()
    yield server
    server.stop()
    shutil.rmtree(path, ignore_errors=True)


def expected_streams(tenant: str) -> set[str]:
    return {
        subjects.STREAM_RUNS,
        subjects.STREAM_EVENTS,
        subjects.STREAM_LOGS,
        subjects.STREAM_DEADLETTER,
        subjects.work_stream(tenant),
        f"KV_{subjects.KV_RUN_STATE}",
        f"KV_{subjects.KV_LEASES}",
        f"OBJ_{subjects.bundles_bucket(tenant)}",
        "OBJ_trellis_workflows",
    }


async def run_everything(url: str, replicas: int, database_url: str, tenant: str, data_dir: Path) -> None:
    settings = Settings.from_env(
        {}, nats_url=url, stream_replicas=replicas, data_dir=data_dir, log_format="json", log_level="warning"
    )
    async with control_plane(settings, database_url, tenant, data_dir) as bus:
        notes = (BundleFile(path="notes.txt", data=b"beside the templates\n"),)
        run_id = await request_run(bus, tenant, TEMPLATES, "big", files=notes)
        db = await asyncpg.connect(database_url)
        try:
            assert await wait_runs_ended(db, tenant, [run_id], within=60) == {run_id: "succeeded"}
        finally:
            await db.close()
        await check_replicas(bus, tenant, replicas)


async def check_replicas(bus: Bus, tenant: str, replicas: int) -> None:
    streams = await bus.js.streams_info()
    names = {s.config.name for s in streams}
    assert expected_streams(tenant) <= names, f"missing: {expected_streams(tenant) - names}"
    wrong = {s.config.name: s.config.num_replicas for s in streams if s.config.num_replicas != replicas}
    assert not wrong, f"streams not at {replicas} replicas: {wrong}"
    if replicas == 1:
        return
    durables = 0
    for stream in streams:  # really placed on `replicas` nodes, and so is each durable consumer
        assert stream.cluster is not None
        assert len(stream.cluster.replicas or []) == replicas - 1, (stream.config.name, stream.cluster)
        for consumer in await bus.js.consumers_info(stream.config.name):
            if not consumer.config.durable_name:  # ephemeral (a KV read, an ordered consumer): R1 by design
                continue
            durables += 1
            assert consumer.cluster is not None
            assert len(consumer.cluster.replicas or []) == replicas - 1, (stream.config.name, consumer.name)
    assert durables >= 6  # compiler, scheduler, store (events, logs), the agent's pool and pinned


async def test_one_replica_for_everything_on_a_single_server(
    single_nats: EmbeddedNats, database_url: str, unique: str, stack_dir: Path
) -> None:
    await run_everything(single_nats.url, 1, database_url, unique, stack_dir)


async def test_three_replicas_for_everything_on_a_three_node_cluster(
    nats_cluster: EmbeddedNatsCluster, database_url: str, unique: str, stack_dir: Path
) -> None:
    await run_everything(nats_cluster.url, 3, database_url, unique, stack_dir)


async def test_buckets_made_with_one_replica_are_scaled_to_the_setting(
    nats_cluster: EmbeddedNatsCluster, unique: str, stack_dir: Path
) -> None:
    """An installation moving to a cluster keeps its KV buckets and object stores: made with
    one replica, they are scaled to TRELLIS_STREAM_REPLICAS when the services bind to them."""
    from trellis_core.bus import bundle_store
    from trellis_scheduler.kv import leases_bucket

    base = Settings.from_env({}, nats_url=nats_cluster.url, data_dir=stack_dir, log_format="json")
    one = await Bus.connect(base, name="old")
    try:
        await leases_bucket(one.js, base)
        await bundle_store(one, unique)
        for name in (f"KV_{subjects.KV_LEASES}", f"OBJ_{subjects.bundles_bucket(unique)}"):
            assert (await one.js.stream_info(name)).config.num_replicas == 1
    finally:
        await one.close()
    three = await Bus.connect(Settings.from_env({}, nats_url=nats_cluster.url, stream_replicas=3), name="new")
    try:
        await leases_bucket(three.js, three.settings)
        await bundle_store(three, unique)
        for name in (f"KV_{subjects.KV_LEASES}", f"OBJ_{subjects.bundles_bucket(unique)}"):
            assert (await three.js.stream_info(name)).config.num_replicas == 3
    finally:
        await three.close()
