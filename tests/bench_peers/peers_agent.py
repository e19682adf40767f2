"""The real Trellis agent with an executor that does nothing, in its own process, for `make bench-peers`:
`python peers_agent.py URL TENANT CONCURRENCY STORAGE` (STORAGE: the stack's file or memory streams).

tests/bench/noop_agent.py's agent, with the stack's stream storage: this one creates the tenant's work
stream (the scheduler would only on its first dispatch) and it must match the rest of the stack."""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

from trellis_agent.agent import Agent
from trellis_agent.config import AgentConfig
from trellis_agent.executors.base import Outcome, Sink, Workspace
from trellis_core import subjects
from trellis_core.bus import Bus, ensure_work_stream, stop_on_signals
from trellis_core.events import WorkItem
from trellis_core.logs import configure
from trellis_core.settings import Settings


class Noop:
    async def run(self, work: WorkItem, workspace: Workspace, sink: Sink) -> Outcome:
        return Outcome.succeeded()


async def main(url: str, tenant: str, concurrency: int, storage: str) -> None:
    settings = Settings.from_env({}, nats_url=url, stream_storage=storage, log_level="error")
    configure(settings)  # as the real services do: otherwise every activity prints two lines
    stop = asyncio.Event()
    stop_on_signals(stop)
    bus = await Bus.connect(settings, name="bench-peers-agent", inbox_prefix=subjects.inbox_prefix(tenant))
    try:
        await ensure_work_stream(bus, tenant)
        config = AgentConfig.from_env({}, tenant=tenant, concurrency=concurrency, heartbeat_seconds=5.0)
        with tempfile.TemporaryDirectory() as data:
            await Agent(bus, config, Noop(), Path(data)).run(stop)
    finally:
        await bus.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]))
