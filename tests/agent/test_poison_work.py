"""A poison work item on the real nats-server: dead-lettered with the reason, and the agent
goes on claiming and running work."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import msgspec
from agent_support import shell, work_item

from running_agent import running_agent
from trellis_core import subjects
from trellis_core.bus import Bus
from trellis_core.events import ActivityCompleted, DeadLetter, WorkItem, decode_run_event, encode

DEEP = 5000


async def test_a_work_item_nested_5000_deep_is_dead_lettered_and_the_agent_keeps_working(
    bus: Bus, unique: str, tmp_path: Path
) -> None:
    subject = subjects.work(unique, "default")
    letters = await bus.nc.subscribe(subjects.deadletter(subject))
    completed: asyncio.Queue[Any] = asyncio.Queue()

    async def on_event(msg: Any) -> None:
        event = decode_run_event(msg.data)
        if isinstance(event, ActivityCompleted):
            await completed.put(event)

    events = await bus.nc.subscribe(subjects.all_run_events(unique), cb=on_event)
    try:
        async with running_agent(bus, tmp_path, tenant=unique, concurrency=2):
            poison = encode(work_item(tenant=unique))[:-1] + b',"x":' + b"[" * DEEP + b"]" * DEEP + b"}"
            await bus.publish(subject, poison, msg_id=f"{unique}/deep")
            letter = msgspec.json.decode((await letters.next_msg(timeout=15)).data, type=DeadLetter)
            ordinary: WorkItem = work_item(shell("echo fine"), tenant=unique)
            await bus.publish(subject, ordinary, msg_id=ordinary.msg_id())
            done = await asyncio.wait_for(completed.get(), 15)
    finally:
        await letters.unsubscribe()
        await events.unsubscribe()
    assert letter.reason.startswith("undecodable: RecursionError: maximum recursion depth exceeded")
    assert letter.deliveries == 1
    assert done.run_id == ordinary.run_id
