"""Fault injection: the agent rides out a NATS restart in the middle of an activity."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
import pytest
from agent_support import shell, work_item
from test_agent_on_the_bus import dispatch, recording, running_agent

from trellis_core import subjects
from trellis_core.bus import Bus, ensure_work_stream
from trellis_core.embedded import EmbeddedNats
from trellis_core.events import ActivityCompleted, ActivityLogChunk
from trellis_core.settings import Settings

pytestmark = pytest.mark.slow

OUTAGE_SECONDS = 1.5  # how long the server stays down: the fault itself, not a wait for something


async def _stored_chunks(bus: Bus, tenant: str, run_id: str) -> list[ActivityLogChunk]:
    """Every log chunk of the run as JetStream stored it."""
    sub = await bus.js.pull_subscribe(subjects.run_logs(tenant, run_id), stream=subjects.STREAM_LOGS)
    chunks: list[ActivityLogChunk] = []
    while True:
        try:
            msgs = await sub.fetch(100, timeout=1)
        except TimeoutError:  # nats.errors.TimeoutError, or the bare one fetch raises past its deadline
            break
        for msg in msgs:
            chunks.append(msgspec.json.decode(msg.data, type=ActivityLogChunk))
            await msg.ack()
    await sub.unsubscribe()
    return chunks


async def test_an_activity_outlives_a_nats_restart_with_its_logs_whole_and_its_end_reported(
    tmp_path: Path,
) -> None:
    server = EmbeddedNats(tmp_path / "nats")
    server.start()
    settings = Settings.from_env({}, nats_url=server.url, log_format="json", log_level="warning")
    bus = await Bus.connect(settings, name="faults")
    try:
        await bus.ensure_streams()
        await ensure_work_stream(bus, "faulty")
        work = work_item(shell("for i in $(seq 1 30); do echo line-$i; sleep 0.1; done"), tenant="faulty")
        async with recording(bus, "faulty") as rec, running_agent(bus, tmp_path, tenant="faulty"):
            await dispatch(bus, work)
            await rec.wait(lambda: "line-3\n" in "".join(c.data for c in rec.chunks))
            server.kill()
            await asyncio.sleep(OUTAGE_SECONDS)
            server.start()
            await rec.first(ActivityCompleted, work.run_id, within=60)
        chunks = sorted(await _stored_chunks(bus, "faulty", work.run_id), key=lambda c: c.sequence)
    finally:
        await bus.close()
        server.stop()
    assert [c.sequence for c in chunks] == list(range(len(chunks)))
    assert "".join(c.data for c in chunks).splitlines() == [f"line-{i}" for i in range(1, 31)]
