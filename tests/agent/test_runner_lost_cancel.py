"""An attempt ends though a publish swallows the cancel of the task it runs in.

nats-py waits for a PubAck with asyncio.wait_for, which before Python 3.12 returns the result
instead of raising when the cancel lands as the ack arrives. The attempt cancelled its heartbeat
task and awaited it: when that cancel was lost the beats went on and the activity never completed
(seen as runs stuck for ever under load). The publisher here loses every cancel the same way."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

from agent_support import work_item

from trellis_agent.config import AgentConfig
from trellis_agent.executors.base import Outcome, Sink, Workspace
from trellis_agent.runner import ActivityRun
from trellis_core.events import ActivityHeartbeat, WorkItem


class LosesCancels:
    """Every publish takes a moment and, cancelled meanwhile, completes as if it had not been."""

    def __init__(self) -> None:
        self.kinds: list[str] = []
        self.in_heartbeat = asyncio.Event()
        self.losing = True

    async def _store(self, kind: str) -> None:
        try:
            await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            if not self.losing:
                raise
        self.kinds.append(kind)

    async def publish(self, subject: str, message: Any, *, msg_id: str | None = None) -> None:
        await self._store("log")

    async def publish_event(self, event: Any, *, route: str = "") -> None:
        if isinstance(event, ActivityHeartbeat):
            self.in_heartbeat.set()
        await self._store(event.kind)


class UntilABeat:
    """Runs until a heartbeat is being published, so that the attempt's end cancels it there."""

    def __init__(self, bus: LosesCancels) -> None:
        self.bus = bus

    async def run(self, work: WorkItem, workspace: Workspace, sink: Sink) -> Outcome:
        await self.bus.in_heartbeat.wait()
        return Outcome.succeeded()


async def test_an_attempt_whose_heartbeat_publish_swallows_the_cancel_still_ends(tmp_path: Path) -> None:
    bus = LosesCancels()
    config = AgentConfig.from_env({}, tenant="t", heartbeat_seconds=0.1)
    run = ActivityRun(work_item(tenant="t"), executor=UntilABeat(bus), publisher=bus, config=config,
                      data_dir=tmp_path)  # fmt: skip
    attempt = asyncio.create_task(run.run())
    done, _ = await asyncio.wait([attempt], timeout=5)  # not asyncio.timeout: its cancel would be lost too
    if not done:
        bus.losing = False
        attempt.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await attempt
    assert done, "the attempt did not end within 5 s"
    end = attempt.result()
    assert end.kind == "activity.completed"
    assert bus.kinds[-1] == "activity.completed"
