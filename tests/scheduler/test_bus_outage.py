"""The bus goes away for longer than the heartbeat timeout (nats-server frozen, as a host that
stops answering) while an activity runs: the agent's heartbeats reach nobody, and that is no sign
that the agent died. The scheduler decides nothing while it is cut off and counts the timeout from
when it hears again, so the attempt is not declared lost and run a second time. Slow (about 30 s)."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from scheduler_support import engine_config, recording, running_agent, sh, submit, workflow

from trellis_core.bus import Bus
from trellis_core.embedded import EmbeddedNats
from trellis_core.events import ActivityDispatched, ActivityLost, ActivityStarted
from trellis_core.settings import Settings
from trellis_scheduler.service import serve

pytestmark = pytest.mark.slow

HEARTBEAT_TIMEOUT = 8.0  # longer than a frozen connection takes to be noticed (about 6 s)
FROZEN_FOR = 12.0


@asynccontextmanager
async def own_server(tmp_path: Path) -> AsyncIterator[tuple[EmbeddedNats, Settings]]:
    server = EmbeddedNats(tmp_path / "nats")
    server.start()
    try:
        settings = Settings.from_env(
            {}, nats_url=server.url, data_dir=tmp_path / "data", stream_storage="file", log_format="json",
            log_level="warning", heartbeat_seconds=0.5, heartbeat_timeout_seconds=HEARTBEAT_TIMEOUT,
        )  # fmt: skip
        yield server, settings
    finally:
        server.stop()


async def test_a_frozen_bus_longer_than_the_heartbeat_timeout_loses_no_running_attempt(
    unique: str, tmp_path: Path
) -> None:
    async with own_server(tmp_path) as (server, settings):
        bus = await Bus.connect(settings, name="outage-test")
        await bus.ensure_streams()
        agent_bus = await Bus.connect(settings, name="outage-agent")
        stop, ready = asyncio.Event(), asyncio.Event()
        scheduler = asyncio.create_task(
            # A lease that outlasts the outage: this leader stays, rather than a new term starting after
            # it (a new term's timeouts count from its start).
            serve(bus, settings, stop, tenant=unique, config=engine_config(settings), ready=ready, lease_ttl=30.0)
        )
        try:
            async with asyncio.timeout(20):
                await ready.wait()
            async with recording(bus, unique) as rec, running_agent(agent_bus, tmp_path, unique):
                run_id = await submit(bus, unique, workflow(sh("a", f"sleep {FROZEN_FOR + 6:g}")))
                await rec.first(ActivityStarted, run_id)
                assert server.proc is not None
                server.proc.send_signal(signal.SIGSTOP)
                try:
                    await asyncio.sleep(FROZEN_FOR)
                finally:
                    server.proc.send_signal(signal.SIGCONT)
                done = await rec.completion(run_id, within=60)
        finally:
            stop.set()
            async with asyncio.timeout(30):
                await scheduler
            await agent_bus.close()
            await bus.close()
    assert done.status == "succeeded", done.message
    assert rec.of(ActivityLost, run_id) == []
    assert Counter((e.activity_id, e.attempt) for e in rec.of(ActivityDispatched, run_id)) == {("a", 1): 1}
