"""The claim loop against a scripted subscription: how many items it asks for, and its slots."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import nats.errors
from agent_support import work_item

from trellis_agent.agent import Agent
from trellis_agent.config import AgentConfig
from trellis_agent.executors.base import Outcome, Sink, Workspace
from trellis_core.events import WorkItem, encode


class Noop:
    async def run(self, work: WorkItem, workspace: Workspace, sink: Sink) -> Outcome:
        return Outcome.succeeded()


class QuietBus:
    """Takes the runner's publishes and answers at once, like a bus with no latency."""

    def __init__(self) -> None:
        self.kinds: list[str] = []

    async def publish(self, subject: str, message: Any, *, msg_id: str | None = None) -> None:
        pass

    async def publish_event(self, event: Any, *, route: str = "") -> None:
        self.kinds.append(event.kind)


class Delivery:
    def __init__(self, work: WorkItem) -> None:
        self.data = encode(work)
        self.subject = "trellis.t.work.default"
        self.reply = "$JS.ACK.TRELLIS_WORK_t.agent-t-default.1.7.7.1764669600000000000.0"  # delivered once
        self.acked = False
        self.handed_back = False

    async def ack(self) -> None:
        self.acked = True

    async def ack_sync(self, timeout: float = 1.0) -> None:  # noqa: ASYNC109 - as nats-py's
        self.acked = True

    async def nak(self, delay: float | None = None) -> None:
        self.handed_back = True


class ScriptedSubscription:
    """Answers each fetch with the next scripted batch (None: a fetch that times out); when the
    script is done it stops the agent. Before answering it lets the work already handed out
    finish, so the free slots are the same on every run of the test."""

    def __init__(self, agent: Agent, stop: asyncio.Event, script: list[int | None]) -> None:
        self.agent, self.stop, self.script = agent, stop, list(script)
        self.asked: list[int] = []
        self.delivered: list[Delivery] = []

    async def fetch(self, batch: int, timeout: float) -> list[Delivery]:  # noqa: ASYNC109 - as nats-py's
        if self.agent._tasks:
            await asyncio.wait(set(self.agent._tasks))
        self.asked.append(batch)
        if not self.script:
            self.stop.set()
            raise nats.errors.TimeoutError
        size = self.script.pop(0)
        if size is None:
            raise TimeoutError  # as nats-py's fetch of more than one item does
        batch_of = [Delivery(work_item(tenant="t", activity_id=f"a{len(self.delivered) + i}")) for i in range(size)]
        self.delivered.extend(batch_of)
        return batch_of


async def claim(
    script: list[int | None], tmp_path: Path, concurrency: int, *, handed_back: int = 0
) -> tuple[Agent, ScriptedSubscription]:
    config = AgentConfig.from_env({}, tenant="t", concurrency=concurrency, heartbeat_seconds=5.0)
    agent = Agent(QuietBus(), config, Noop(), tmp_path)  # type: ignore[arg-type]
    stop = asyncio.Event()
    sub = ScriptedSubscription(agent, stop, script)
    async with asyncio.timeout(10):
        async with asyncio.TaskGroup() as work:
            await agent._claim(sub, stop, work)  # type: ignore[arg-type]
    assert sum(d.handed_back for d in sub.delivered) == handed_back
    return agent, sub


async def test_a_busy_subscription_asks_for_twice_what_it_got_up_to_the_free_slots(tmp_path: Path) -> None:
    # The items of the last batch still hold their slots when the next fetch asks.
    _, sub = await claim([1, 2, 4, 8, 8], tmp_path, concurrency=16)
    assert sub.asked[:5] == [1, 2, 4, 8, 8]


async def test_an_idle_subscription_goes_back_to_holding_one_slot(tmp_path: Path) -> None:
    _, sub = await claim([1, 2, None, 1], tmp_path, concurrency=8)
    assert sub.asked[:4] == [1, 2, 4, 1]


async def test_every_claimed_item_is_started_acked_and_completed(tmp_path: Path) -> None:
    agent, sub = await claim([1, 2, 3], tmp_path, concurrency=4)
    assert all(d.acked for d in sub.delivered)
    assert agent.bus.kinds.count("activity.completed") == 6  # type: ignore[attr-defined]
    assert agent.running == {}


async def test_items_beyond_the_free_slots_are_handed_back_not_run_over_the_concurrency(tmp_path: Path) -> None:
    # Asked for one, three come (left in the client's queue by an earlier pull): the two free
    # slots take two, the third goes back at once for whoever fetches next.
    agent, sub = await claim([3, 2], tmp_path, concurrency=2, handed_back=1)
    assert [d.acked for d in sub.delivered] == [True, True, False, True, True]
    assert agent.bus.kinds.count("activity.completed") == 4  # type: ignore[attr-defined]
    assert agent._slots.held == 0  # every slot given back, none twice
