"""A node of a three-node NATS cluster dies mid-run, and later a second one: with
TRELLIS_STREAM_REPLICAS=3 the control plane (the store on PostgreSQL, the compiler, the
scheduler) and a process agent ride it out. 20 runs of 20 activities; each activity appends its
identity to a ledger file and prints a line. The first node killed is the leader of the events
stream, the second the leader of the tenant's work stream (another node if that is the same);
each comes back once the work has gone on without it.

Checked afterwards: every run succeeded, with exactly one run.completed in the events stream;
every activity ran exactly once (one ledger line each, no second attempt); every activity's line
is in the store's log chunks, whose sequences have no gap."""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter
from pathlib import Path

import asyncpg
import pytest
from cluster_support import (
    control_plane,
    custom_task,
    environment,
    ledger_lines,
    ran_at_least,
    request_run,
    wait_runs_ended,
)

from trellis_core import subjects
from trellis_core.bus import Bus
from trellis_core.embedded import EmbeddedNatsCluster
from trellis_core.settings import Settings

RUNS = 20
ACTIVITIES = 20
pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def templates(ledger: Path) -> str:
    script = (
        f'echo "$TRELLIS_RUN_ID $TRELLIS_ACTIVITY_ID $TRELLIS_ATTEMPT" >> {ledger}\n'
        'echo "ran $TRELLIS_RUN_ID $TRELLIS_ACTIVITY_ID"\n'
        "sleep 0.3\n"
    )
    resources = [f"r{n:02}" for n in range(ACTIVITIES)]
    docs = [custom_task(r, script) for r in resources]
    docs.append(environment("wide", resources, [f"e{n:02}" for n in range(RUNS)]))
    return "---\n".join(docs)


async def leader_of(bus: Bus, cluster: EmbeddedNatsCluster, stream: str, *, not_: int | None = None) -> int:
    """The index of the node leading `stream` (another one than `not_` if it leads)."""
    info = await bus.js.stream_info(stream)
    assert info.cluster is not None
    assert info.cluster.leader
    index = int(info.cluster.leader.rsplit("-n", 1)[1])
    return index if index != not_ else (index + 1) % cluster.size


async def test_killing_two_nodes_in_turn_loses_nothing_and_runs_nothing_twice(
    nats_cluster: EmbeddedNatsCluster, database_url: str, unique: str, stack_dir: Path
) -> None:
    tenant, ledger = unique, stack_dir / "ledger.txt"
    settings = Settings.from_env(
        {},
        nats_url=nats_cluster.url,
        stream_replicas=3,
        data_dir=stack_dir,
        log_format="json",
        log_level="warning",
        heartbeat_seconds=0.5,
    )
    total = RUNS * ACTIVITIES
    text = templates(ledger)
    async with control_plane(settings, database_url, tenant, stack_dir, concurrency=6, heartbeat_seconds=0.5) as bus:
        run_ids = [await request_run(bus, tenant, text, f"e{n:02}") for n in range(RUNS)]

        await ran_at_least(ledger, total // 8)
        first = await leader_of(bus, nats_cluster, subjects.STREAM_EVENTS)
        print(f"kill {first} {time.time():.1f} ran {len(ledger_lines(ledger))}", file=sys.stderr)
        await asyncio.to_thread(nats_cluster.kill, first)
        await ran_at_least(ledger, total * 3 // 8)  # on two nodes
        print(f"restart {first} {time.time():.1f} ran {len(ledger_lines(ledger))}", file=sys.stderr)
        await asyncio.to_thread(nats_cluster.start_node, first)
        print(f"back {first} {time.time():.1f} ran {len(ledger_lines(ledger))}", file=sys.stderr)

        await ran_at_least(ledger, total // 2)
        second = await leader_of(bus, nats_cluster, subjects.work_stream(tenant), not_=first)
        print(f"kill {second} {time.time():.1f} ran {len(ledger_lines(ledger))}", file=sys.stderr)
        await asyncio.to_thread(nats_cluster.kill, second)
        await ran_at_least(ledger, total * 5 // 8)
        print(f"restart {second} {time.time():.1f} ran {len(ledger_lines(ledger))}", file=sys.stderr)
        await asyncio.to_thread(nats_cluster.start_node, second)
        print(f"back {second} {time.time():.1f} ran {len(ledger_lines(ledger))}", file=sys.stderr)

        db = await asyncpg.connect(database_url)
        try:
            statuses = await wait_runs_ended(db, tenant, run_ids, within=90)
            assert statuses == dict.fromkeys(run_ids, "succeeded")
            await logs_projected(db, tenant, run_ids, within=60)
        finally:
            await db.close()
        completed = await bus.js.stream_info(
            subjects.STREAM_EVENTS, subjects_filter=f"{subjects.PREFIX}.{tenant}.run.*.run.completed"
        )
        assert completed.state.subjects == {subjects.run_event(tenant, r, "run.completed"): 1 for r in run_ids}

    ran = Counter((run, activity) for run, activity, _ in (line.split() for line in ledger_lines(ledger)))
    assert len(ran) == total, f"{len(ran)} activities ran, not {total}"
    twice = [key for key, n in ran.items() if n > 1]
    assert twice == [], [line for line in ledger_lines(ledger) if tuple(line.split()[:2]) in twice]
    attempts = Counter(line.split()[2] for line in ledger_lines(ledger))
    assert attempts == {"1": total}


async def logs_projected(db: asyncpg.Connection, tenant: str, run_ids: list[str], within: float) -> None:
    """`check_logs` once the store's log projection, which trails the runs' rows (another stream,
    another durable; far behind on a loaded machine after a failover), has caught up."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        try:
            await check_logs(db, tenant, run_ids)
            return
        except AssertionError:
            if asyncio.get_running_loop().time() > deadline:
                raise
        await asyncio.sleep(0.5)


async def check_logs(db: asyncpg.Connection, tenant: str, run_ids: list[str]) -> None:
    """Every activity's line is in the store, and each attempt's chunks are numbered 0..n-1."""
    rows = await db.fetch(
        "SELECT run_id, activity_id, attempt, sequence, data FROM log_chunks WHERE tenant = $1 AND run_id = ANY($2)",
        tenant,
        run_ids,
    )
    lines: set[str] = set()
    sequences: dict[tuple[str, str, int], list[int]] = {}
    for r in rows:
        lines.update(r["data"].splitlines())
        sequences.setdefault((r["run_id"], r["activity_id"], r["attempt"]), []).append(r["sequence"])
    activities = await db.fetch(
        "SELECT run_id, activity_id FROM activities WHERE tenant = $1 AND run_id = ANY($2)", tenant, run_ids
    )
    assert len(activities) == RUNS * ACTIVITIES
    missing = [f"ran {a['run_id']} {a['activity_id']}" for a in activities]
    missing = [line for line in missing if line not in lines]
    assert missing == [], f"{len(missing)} activities' lines are not in the store's logs: {missing[:5]}"
    gaps = {key: sorted(seqs) for key, seqs in sequences.items() if sorted(seqs) != list(range(len(seqs)))}
    assert gaps == {}
