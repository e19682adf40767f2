"""Agent figures (run with `pytest -m bench -s tests/agent/test_agent_bench.py`); never asserted."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import pytest
from agent_support import ChunkCollector, environ_path, shell, work_item
from test_agent_on_the_bus import dispatch, recording, running_agent

from trellis_agent.executors.base import Workspace, execute
from trellis_agent.executors.process import ProcessExecutor
from trellis_agent.sink import LogSink
from trellis_core.bus import Bus
from trellis_core.events import ActivityCompleted

pytestmark = pytest.mark.bench


async def test_bench_log_throughput_of_the_process_executor(tmp_path: Path) -> None:
    lines = 200_000
    work = work_item(shell(f"seq 1 {lines} | sed 's/^/log line number /'"))
    collector = ChunkCollector()
    started = time.perf_counter()
    async with LogSink.for_work(work, collector) as sink:
        outcome = await execute(ProcessExecutor(environ=environ_path()), work, Workspace.for_work(tmp_path, work), sink)
    elapsed = time.perf_counter() - started
    assert outcome.ok
    size = sum(len(c.data) for c in collector.chunks) / 1e6
    print(
        f"\nprocess -> log sink: {lines} lines, {size:.1f} MB in {elapsed:.2f}s = "
        f"{lines / elapsed:,.0f} lines/s, {len(collector.chunks)} chunks"
    )


@pytest.mark.parametrize("concurrency", [1, 4])
async def test_bench_dispatch_to_completion_latency_on_the_bus(
    bus: Bus, unique: str, tmp_path: Path, concurrency: int
) -> None:
    latencies: list[float] = []
    async with recording(bus, unique) as rec, running_agent(bus, tmp_path, tenant=unique, concurrency=concurrency):
        for _ in range(20):
            work = work_item(shell("true"), tenant=unique)
            started = time.perf_counter()
            await dispatch(bus, work)
            done = await rec.first(ActivityCompleted, work.run_id)
            latencies.append((time.perf_counter() - started) * 1000)
            assert done.exit_code == 0  # a figure for work that did run (timings are never asserted)
    print(
        f"\ndispatch -> activity.completed (`true`, process executor, real NATS, concurrency {concurrency}): "
        f"median {statistics.median(latencies):.1f} ms, max {max(latencies):.1f} ms over {len(latencies)}"
    )
