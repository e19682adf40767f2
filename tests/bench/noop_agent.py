"""A real Trellis agent whose only executor does nothing: `python noop_agent.py URL TENANT N`
(N: its concurrency; 0: the lean test-only double below instead of the real agent).

The benchmark runs it in its own process so that the agent and the scheduler do not share
one event loop (on a laptop they would not either)."""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

import msgspec
import nats.errors
from nats.js import api as js_api

from trellis_agent.agent import Agent
from trellis_agent.config import AgentConfig
from trellis_agent.executors.base import Outcome, Sink, Workspace
from trellis_core import subjects
from trellis_core.bus import Bus, ensure_work_stream, stop_on_signals
from trellis_core.events import ActivityCompleted, ActivityStarted, WorkItem
from trellis_core.logs import configure
from trellis_core.settings import Settings


class Noop:
    async def run(self, work: WorkItem, workspace: Workspace, sink: Sink) -> Outcome:
        return Outcome.succeeded()


async def lean(bus: Bus, tenant: str, stop: asyncio.Event) -> None:
    """A test-only agent double: claims work in batches and reports each item started and
    completed at once, so the benchmark can show the scheduler's own capacity."""
    config = js_api.ConsumerConfig(
        durable_name=f"lean-{tenant}", ack_policy=js_api.AckPolicy.EXPLICIT, max_ack_pending=4096,
        filter_subject=subjects.work(tenant, "default"),
    )  # fmt: skip
    await bus.js.add_consumer(subjects.work_stream(tenant), config)
    sub = await bus.js.pull_subscribe_bind(durable=f"lean-{tenant}", stream=subjects.work_stream(tenant))
    decode = msgspec.json.Decoder(WorkItem).decode
    while not stop.is_set():
        try:
            msgs = await sub.fetch(256, timeout=0.5)
        except (TimeoutError, nats.errors.TimeoutError):
            continue
        sends = []
        for msg in msgs:
            w = decode(msg.data)
            ids = {"tenant": w.tenant, "run_id": w.run_id, "activity_id": w.activity.id, "attempt": w.attempt}
            sends.append(bus.publish_event(ActivityStarted(agent="lean", **ids)))
            sends.append(bus.publish_event(ActivityCompleted(**ids)))
        await asyncio.gather(*sends)
        for msg in msgs:
            await msg.ack()


async def main(url: str, tenant: str, concurrency: int) -> None:
    settings = Settings.from_env({}, nats_url=url, stream_storage="memory", log_level="error")
    configure(settings)  # as the real services do: otherwise every activity prints two lines
    stop = asyncio.Event()
    stop_on_signals(stop)
    bus = await Bus.connect(settings, name="bench-agent", inbox_prefix=subjects.inbox_prefix(tenant))
    try:
        await ensure_work_stream(bus, tenant)  # the scheduler would, on its first dispatch: not yet here
        if concurrency == 0:
            await lean(bus, tenant, stop)
            return
        config = AgentConfig.from_env({}, tenant=tenant, concurrency=concurrency, heartbeat_seconds=5.0)
        with tempfile.TemporaryDirectory() as data:
            await Agent(bus, config, Noop(), Path(data)).run(stop)
    finally:
        await bus.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
