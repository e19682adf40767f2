"""Temporal's side of `make bench-peers`: one workflow that runs any DAG of noop activities (a regular
activity: a Python `async def` run by the worker), and the times each activity saw itself start and end.

The workflow gets the DAG as its input ({activity: [its dependencies]}, in topological order), so both
engines run exactly the same shapes. Imported by Temporal's workflow sandbox too: nothing but the SDK."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

from temporalio import activity, workflow

# (workflow id, activity) -> (its start, its end), as time.time() in the worker's process.
STAMPS: dict[tuple[str, str], tuple[float, float]] = {}


@activity.defn
async def noop(name: str) -> None:
    start = time.time()
    STAMPS[(activity.info().workflow_id, name)] = (start, time.time())


@workflow.defn
class Dag:
    @workflow.run
    async def run(self, dag: dict[str, list[str]]) -> int:
        tasks: dict[str, asyncio.Task[None]] = {}

        async def one(name: str, parents: list[str]) -> None:
            if parents:
                await asyncio.gather(*(tasks[p] for p in parents))
            await workflow.execute_activity(noop, name, start_to_close_timeout=timedelta(seconds=60))

        for name, parents in dag.items():
            tasks[name] = asyncio.create_task(one(name, parents))
        await asyncio.gather(*tasks.values())
        return len(tasks)
