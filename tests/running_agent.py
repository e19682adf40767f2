"""An in-process agent for tests on the real bus, with fast heartbeats and flushes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from trellis_agent.agent import Agent, executors_for
from trellis_agent.config import AgentConfig
from trellis_core.bus import Bus, ensure_work_stream

FAST = {"heartbeat_seconds": 0.2, "log_flush_seconds": 0.05, "kill_grace_seconds": 0.5}


@asynccontextmanager
async def running_agent(bus: Bus, data_dir: Path, **overrides: Any) -> AsyncIterator[Agent]:
    """An agent serving until the `async with` ends; it has drained when this returns."""
    config = AgentConfig.from_env({}, **(FAST | overrides))
    stop, ready = asyncio.Event(), asyncio.Event()
    await ensure_work_stream(bus, config.tenant)  # the control plane's job: the tests are that here
    async with executors_for(config, bus) as router:
        agent = Agent(bus, config, router, data_dir / config.agent_id)
        task = asyncio.create_task(agent.run(stop, ready=ready))
        async with asyncio.timeout(10):
            await ready.wait()
        try:
            yield agent
        finally:
            stop.set()
            async with asyncio.timeout(30):
                await task
