"""Heartbeats go on until an attempt's end event is stored, not only while its command runs: the
last log chunks, and the end event behind them, may wait out an election of the logs stream
(the sink retries them for up to two minutes) for longer than the scheduler's heartbeat timeout,
which would declare a live attempt that succeeded lost and run it again. Slow (about 15 s)."""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any

import nats.errors
import pytest
from agent_support import shell, work_item

from trellis_agent.agent import executors_for
from trellis_agent.config import AgentConfig
from trellis_agent.runner import ActivityRun
from trellis_core.bus import Bus, ensure_work_stream
from trellis_core.events import ActivityCompleted, ActivityHeartbeat

pytestmark = pytest.mark.slow

HEARTBEAT_SECONDS = 2.0
LOGS_DOWN_AFTER_THE_COMMAND = 9.5  # the sink's retries come at +3.85, +8.85 and +13.85 s


class LogsElecting:
    """The real bus, but the logs stream has no leader (no responders) until `until`; every
    event is published and stored as ever. Records when each publish was stored."""

    def __init__(self, bus: Bus, until: float) -> None:
        self.bus, self.until = bus, until
        self.stored: list[tuple[float, str]] = []

    async def publish(self, subject: str, message: Any, *, msg_id: str | None = None) -> Any:
        if time.monotonic() < self.until:
            raise nats.errors.NoRespondersError
        ack = await self.bus.publish(subject, message, msg_id=msg_id)
        self.stored.append((time.monotonic(), "log"))
        return ack

    async def publish_event(self, event: Any, *, route: str = "") -> Any:
        ack = await self.bus.publish_event(event, route=route)
        self.stored.append((time.monotonic(), event.kind))
        return ack


async def test_heartbeats_go_on_while_the_last_log_lines_and_the_end_event_wait(
    bus: Bus, unique: str, tmp_path: Path
) -> None:
    await ensure_work_stream(bus, unique)
    config = AgentConfig.from_env({}, tenant=unique, heartbeat_seconds=HEARTBEAT_SECONDS, log_flush_seconds=0.05)
    work = work_item(shell("echo one; sleep 3.8; echo last line"), tenant=unique)
    publisher = LogsElecting(bus, until=time.monotonic() + 3.9 + LOGS_DOWN_AFTER_THE_COMMAND)
    async with executors_for(config, bus) as router:
        end = await ActivityRun(work, executor=router, publisher=publisher, config=config, data_dir=tmp_path).run()
    assert isinstance(end, ActivityCompleted)
    beats = [t for t, kind in publisher.stored if kind == ActivityHeartbeat.__struct_config__.tag]
    logs = [t for t, kind in publisher.stored if kind == "log"]
    terminal = next(t for t, kind in publisher.stored if kind == end.kind)
    assert logs, "the last lines were stored after the election"
    assert max(logs) < terminal  # the end still comes after the output
    signs_of_life = [t for t in beats if t < terminal] + [terminal]
    gaps = [b - a for a, b in itertools.pairwise(signs_of_life)]
    assert len(signs_of_life) > 6
    assert max(gaps) < 2 * HEARTBEAT_SECONDS + 1, f"{max(gaps):.1f} s without a stored heartbeat"
