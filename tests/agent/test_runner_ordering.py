"""One attempt's events in order while ActivityStarted's PubAck is slow to come."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from agent_support import work_item

from trellis_agent.config import AgentConfig
from trellis_agent.executors.base import Outcome, Sink, Workspace
from trellis_agent.runner import ActivityRun
from trellis_core.events import ActivityStarted, WorkItem


class SlowStartedAck:
    """Stores events in publish order; ActivityStarted's ack waits for `release`."""

    def __init__(self) -> None:
        self.stored: list[str] = []
        self.release = asyncio.Event()

    async def publish(self, subject: str, message: Any, *, msg_id: str | None = None) -> None:
        self.stored.append("log")

    async def publish_event(self, event: Any, *, route: str = "") -> None:
        if isinstance(event, ActivityStarted):
            await self.release.wait()
        self.stored.append(event.kind)


class Chatty:
    def __init__(self) -> None:
        self.ran = asyncio.Event()

    async def run(self, work: WorkItem, workspace: Workspace, sink: Sink) -> Outcome:
        await sink.write("stdout", "done\n")
        self.ran.set()
        return Outcome.succeeded()


async def test_the_end_event_waits_for_activity_started_to_be_stored_though_the_executor_is_done(
    tmp_path: Path,
) -> None:
    bus, executor, acked = SlowStartedAck(), Chatty(), asyncio.Event()

    async def ack() -> None:
        acked.set()

    config = AgentConfig.from_env({}, tenant="t", heartbeat_seconds=5.0)
    run = ActivityRun(work_item(tenant="t"), executor=executor, publisher=bus, config=config, data_dir=tmp_path,
                      on_started=ack)  # fmt: skip
    attempt = asyncio.create_task(run.run())
    async with asyncio.timeout(5):
        await executor.ran.wait()
    assert not acked.is_set()  # the work item is acked only once ActivityStarted is stored
    assert "activity.completed" not in bus.stored
    bus.release.set()
    async with asyncio.timeout(5):
        end = await attempt
    assert end.kind == "activity.completed"
    assert acked.is_set()
    assert bus.stored.index("activity.started") < bus.stored.index("activity.completed")
    assert bus.stored.index("log") < bus.stored.index("activity.completed")
