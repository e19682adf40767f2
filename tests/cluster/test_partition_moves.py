"""Partitioned scheduling while the replicas come and go: `trellis scheduler` processes with
TRELLIS_SCHEDULER_PARTITIONS=6 under a load of 12 runs (12 environments) of 8 activities, a
process agent running each as a script that appends to a ledger. One replica leads all six
partitions; two more join (each then leads two), and one of the three is killed (SIGKILL: no
hand-over) while runs are under way (the two left lead three each).

Checked afterwards: every run succeeded with one run.completed; every activity was dispatched
once and ran once, at its first attempt."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import msgspec
import pytest
from cluster_support import _serving, custom_task, environment, ledger_lines, ran_at_least, request_run

from running_agent import running_agent
from scheduler_processes import SchedulerProcess, lease_holders
from stored_events import stored_events
from trellis_core import subjects
from trellis_core.bus import Bus
from trellis_core.events import RunCompleted
from trellis_core.settings import Settings

RUNS, ACTIVITIES, PARTITIONS = 12, 8, 6
pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def templates(ledger: Path) -> str:
    script = f'echo "$TRELLIS_RUN_ID $TRELLIS_ACTIVITY_ID $TRELLIS_ATTEMPT" >> {ledger}\nsleep 0.4\n'
    resources = [f"r{n}" for n in range(ACTIVITIES)]
    docs = [custom_task(r, script) for r in resources]
    docs.append(environment("wide", resources, [f"e{n:02}" for n in range(RUNS)]))
    return "---\n".join(docs)


@asynccontextmanager
async def replicas() -> AsyncIterator[list[SchedulerProcess]]:
    """A list to start replicas into (`start`); each is stopped (SIGTERM) at the end."""
    started: list[SchedulerProcess] = []
    try:
        yield started
    finally:
        for r in started:
            if r.proc.returncode is None:
                r.proc.send_signal(signal.SIGTERM)
        for r in started:
            async with asyncio.timeout(30):
                await r.proc.wait()
            await r.reader


async def start(into: list[SchedulerProcess], settings: Settings, tenant: str) -> SchedulerProcess:
    replica = await SchedulerProcess.start(
        settings, tenant, TRELLIS_DATA_DIR=str(settings.data_dir), TRELLIS_SCHEDULER_PARTITIONS=str(PARTITIONS)
    )
    into.append(replica)
    async with asyncio.timeout(30):
        await replica.standby.wait()
    return replica


async def spread(bus: Bus, tenant: str, live: list[SchedulerProcess], within: float = 30.0) -> list[str]:
    """Wait until the `live` replicas, and only they, lead every partition, evenly."""
    want = {r.holder: PARTITIONS // len(live) for r in live}
    seen: list[str] = []
    try:
        async with asyncio.timeout(within):
            while True:
                seen = await lease_holders(bus, tenant, PARTITIONS)
                if Counter(seen) == want:
                    return seen
                await asyncio.sleep(0.2)
    except TimeoutError:
        raise AssertionError(f"partitions held {seen}, not {want} evenly, within {within:g} s") from None


async def counts(bus: Bus, tenant: str, kind: str) -> dict[str, int]:
    info = await bus.js.stream_info(subjects.STREAM_EVENTS, subjects_filter=f"{subjects.PREFIX}.{tenant}.run.*.{kind}")
    return {subject.split(".")[3]: n for subject, n in (info.state.subjects or {}).items()}


async def test_partitions_move_as_replicas_go_from_one_to_three_to_two_mid_load(
    bus: Bus, settings: Settings, unique: str, stack_dir: Path
) -> None:
    from trellis_compiler.service import serve as compiler

    tenant, ledger, total = unique, stack_dir / "ledger.txt", RUNS * ACTIVITIES
    async with AsyncExitStack() as stack:
        await _serving(stack, "the compiler", lambda stop, ready: compiler(bus, stop, ready=ready))
        agent_bus = await Bus.connect(settings, name="agent")
        stack.push_async_callback(agent_bus.close)
        await stack.enter_async_context(
            running_agent(agent_bus, stack_dir, tenant=tenant, executor="process", concurrency=4)
        )
        started = await stack.enter_async_context(replicas())
        first = await start(started, settings, tenant)
        await spread(bus, tenant, [first])

        run_ids = [await request_run(bus, tenant, templates(ledger), f"e{n:02}") for n in range(RUNS)]
        await ran_at_least(ledger, total // 6)
        second, third = await start(started, settings, tenant), await start(started, settings, tenant)
        await spread(bus, tenant, [first, second, third])
        assert len(ledger_lines(ledger)) < total, "the load ended before the replicas spread: make it longer"

        first.proc.send_signal(signal.SIGKILL)
        await first.proc.wait()
        await spread(bus, tenant, [second, third])
        assert len(ledger_lines(ledger)) < total, "the load ended before the partitions moved: make it longer"

        try:
            async with asyncio.timeout(120):
                while len(await counts(bus, tenant, "run.completed")) < RUNS:  # noqa: ASYNC110
                    await asyncio.sleep(0.2)
        except TimeoutError:
            ended = await counts(bus, tenant, "run.completed")
            stuck = {
                r: [f"{e.kind} {getattr(e, 'activity_id', '')}" for e in await stored_events(bus, tenant, r)]
                for r in run_ids
                if r not in ended
            }
            raise AssertionError(f"runs that did not complete, with their events: {stuck}") from None

    assert await counts(bus, tenant, "run.completed") == dict.fromkeys(run_ids, 1)
    for run_id in run_ids:
        msg = await bus.js.get_last_msg(subjects.STREAM_EVENTS, subjects.run_event(tenant, run_id, "run.completed"))
        done = msgspec.json.decode(msg.data, type=RunCompleted)
        assert done.status == "succeeded", (run_id, done.message)
    assert await counts(bus, tenant, "activity.dispatched") == dict.fromkeys(run_ids, ACTIVITIES)
    ran = Counter((run, activity) for run, activity, _ in (line.split() for line in ledger_lines(ledger)))
    assert len(ran) == total
    assert [key for key, n in ran.items() if n > 1] == []
    assert Counter(line.split()[2] for line in ledger_lines(ledger)) == {"1": total}
