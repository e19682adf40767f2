"""Scheduler partitions: the stable hash, the balanced assignment, the names, the setting, and
two replicas sharing four partitions on the real bus."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import msgspec
import nats.js.errors
import pytest
from nats.js import api as js_api
from scheduler_support import engine_config, recording, running_agent, sh, submit, workflow

from trellis_core import subjects
from trellis_core.bus import Bus
from trellis_core.errors import ConfigError
from trellis_core.events import ActivityDispatched, DeadLetter
from trellis_core.ids import new_run_id
from trellis_core.settings import Settings
from trellis_scheduler.kv import run_state_bucket
from trellis_scheduler.lease import LeaseRecord
from trellis_scheduler.partitions import Partition, assignment, partition_of, scope_tenant_error
from trellis_scheduler.service import serve


async def _replica(bus: Bus, settings: Settings, tenant: str, count: int) -> tuple[asyncio.Event, asyncio.Task[None]]:
    """A replica leading `count` partitions of `tenant`, once it is ready (fails if it never is)."""
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(
        serve(bus, settings, stop, tenant=tenant, config=engine_config(settings), ready=ready, partitions=count)
    )
    try:
        async with asyncio.timeout(20):
            await ready.wait()
    except TimeoutError:
        stop.set()
        await task
        raise AssertionError(f"a replica of {count} partition(s) never led them") from None
    return stop, task


def test_an_environments_partition_is_the_same_in_every_release() -> None:
    # Pinned: another hash would move every live run to a partition that does not know it.
    assert [partition_of("acme", env, 8) for env in ("prod", "staging", "dev", "qa")] == [7, 4, 2, 5]
    assert partition_of("acme", "prod", 1) == 0
    assert len({partition_of(f"tenant-{n}", "prod", 8) for n in range(40)}) > 1  # the tenant is hashed too
    spread = Counter(partition_of("t", f"env-{n}", 8) for n in range(800))
    assert set(spread) == set(range(8))
    assert max(spread.values()) < 2 * min(spread.values())


def owners(assigned: dict[str, set[int]]) -> dict[int, str]:
    return {index: member for member, indexes in assigned.items() for index in indexes}


def test_the_assignment_is_balanced_the_same_from_any_order_and_moves_few_partitions() -> None:
    three = assignment(["c", "a", "b"], 12)
    assert three == assignment(["a", "b", "c", "a"], 12)
    assert sorted(len(p) for p in three.values()) == [4, 4, 4]
    assert sorted(set().union(*three.values())) == list(range(12))
    four = assignment(["a", "b", "c", "d"], 12)
    moved = [i for i in range(12) if owners(three)[i] != owners(four)[i]]
    assert sorted(moved) == sorted(four["d"])  # a joining replica takes its share, nothing else moves
    two = assignment(["a", "c"], 12)
    assert sorted(len(p) for p in two.values()) == [6, 6]
    assert owners(two).items() >= {i: m for i, m in owners(three).items() if m != "b"}.items()  # only b's move
    more = assignment(["a", "b", "c"], 2)  # more replicas than partitions: one stands by
    assert sorted(len(p) for p in more.values()) == [0, 1, 1]
    assert assignment([], 4) == {}


def test_one_partition_keeps_the_names_of_the_single_scheduler() -> None:
    assert (Partition(0, 1).name, Partition(0, 1).snapshot_prefix) == ("scheduler", "run")
    assert Partition(0, 1, "acme").name == "scheduler-acme"
    assert (Partition(3, 8, "acme").name, Partition(3, 8).snapshot_prefix) == ("scheduler-acme-p3of8", "run-p3of8")


@pytest.mark.parametrize("tenant", ["acme-p0of2", "p3of8"])
async def test_a_replica_is_not_narrowed_to_a_tenant_named_like_a_partition(
    bus: Bus, settings: Settings, tenant: str
) -> None:
    """Its names would be another scheduler's partition names: `scheduler-acme-p0of2` is partition
    0 of 2 of tenant acme, `scheduler-p3of8` partition 3 of 8 of every tenant."""
    with pytest.raises(ConfigError, match=f"cannot be narrowed to tenant '{tenant}'"):
        await serve(bus, settings, asyncio.Event(), tenant=tenant)


def test_tenants_that_merely_hold_p_and_of_may_have_their_own_replica() -> None:
    assert [t for t in ("p0of2x", "acme-p0", "shop-of2", "pof", "acme_p0of2") if scope_tenant_error(t)] == []


@pytest.mark.parametrize("value", ["0", "257", "many"])
def test_a_bad_partition_count_names_the_variable(value: str) -> None:
    with pytest.raises(ConfigError, match="TRELLIS_SCHEDULER_PARTITIONS"):
        Settings.from_env({"TRELLIS_SCHEDULER_PARTITIONS": value})


async def test_two_replicas_share_four_partitions_and_each_run_is_scheduled_by_its_own(
    bus: Bus, settings: Settings, unique: str, tmp_path: Path
) -> None:
    tenant, count = unique, 4
    stops = [asyncio.Event(), asyncio.Event()]
    readies = [asyncio.Event(), asyncio.Event()]
    replicas = [
        asyncio.create_task(
            serve(bus, settings, stop, tenant=tenant, config=engine_config(settings), ready=ready, partitions=count)
        )
        for stop, ready in zip(stops, readies, strict=True)
    ]
    try:
        async with asyncio.timeout(20):
            for ready in readies:
                await ready.wait()
        leases = await bus.js.key_value(subjects.KV_LEASES)
        async with asyncio.timeout(20):
            while True:  # the second replica's arrival moves half the partitions to it
                entries = [await leases.get(Partition(i, count, tenant).name) for i in range(count)]
                holders = Counter(msgspec.json.decode(e.value or b"", type=LeaseRecord).holder for e in entries)
                if sorted(holders.values()) == [2, 2]:
                    break
                await asyncio.sleep(0.2)

        envs = [f"env{n}" for n in range(8)]
        assert len({partition_of(tenant, env, count) for env in envs}) > 1
        async with recording(bus, tenant) as rec, running_agent(bus, tmp_path, tenant):
            runs = {
                env: await submit(bus, tenant, workflow(sh("a", "true"), sh("b", "true", "a"), env=env)) for env in envs
            }
            for run_id in runs.values():
                assert (await rec.completion(run_id)).status == "succeeded"
            dispatched = Counter((e.run_id, e.activity_id) for e in rec.of(ActivityDispatched))
            assert dispatched == {(run_id, a): 1 for run_id in runs.values() for a in ("a", "b")}

        # The agent sent each run's events to its partition only (WorkItem.route after the type).
        info = await bus.js.stream_info(
            subjects.STREAM_EVENTS, subjects_filter=f"{subjects.PREFIX}.{tenant}.run.*.activity.completed.>"
        )
        routed = {subject.split(".")[3]: subject.rsplit(".", 1)[1] for subject in info.state.subjects or {}}
        assert routed == {
            run_id: Partition(partition_of(tenant, env, count), count, tenant).route for env, run_id in runs.items()
        }

        kv = await run_state_bucket(bus.js, settings)
        for env, run_id in runs.items():  # each run's tombstone is under its own partition's prefix
            prefix = Partition(partition_of(tenant, env, count), count, tenant).snapshot_prefix
            async with asyncio.timeout(10):
                while True:
                    try:
                        await kv.get(f"{prefix}.{tenant}.{run_id}")
                        break
                    except nats.js.errors.KeyNotFoundError:
                        await asyncio.sleep(0.1)
    finally:
        for stop in stops:
            stop.set()
        async with asyncio.timeout(20):
            await asyncio.gather(*replicas)


async def _runs_across_counts(
    bus: Bus, settings: Settings, tenant: str, tmp_path: Path, counts: list[int]
) -> tuple[list[str], Counter[str]]:
    """A replica of each count in turn, each after the last has stopped, with one run each (the
    runs drained before the count changes, as docs/scaling.md asks); the run ids and how many
    dispatches each run had in all. The first run is 200 wide, so its history spans several of the
    scheduler's fetches (256 events): folded from the start again, the first fetch would leave
    activities to dispatch again."""
    runs: list[str] = []
    async with recording(bus, tenant) as rec, running_agent(bus, tmp_path, tenant):
        for n, count in enumerate(counts):
            stop, task = await _replica(bus, settings, tenant, count)
            try:
                width = 200 if n == 0 else 1
                wf = workflow(*(sh(f"a{i}", "true") for i in range(width)), env=f"env{n}")
                runs.append(await submit(bus, tenant, wf))
                assert (await rec.completion(runs[-1])).status == "succeeded"
                await asyncio.sleep(1.0 if n else 0)  # what an old run started again would dispatch meanwhile
            finally:
                stop.set()
                await task
    return runs, Counter(e.run_id for e in rec.of(ActivityDispatched))


async def test_a_new_partition_count_does_not_start_the_old_layouts_runs_again(
    bus: Bus, settings: Settings, unique: str, tmp_path: Path
) -> None:
    """The count changed after the runs of the old one ended (docs/scaling.md), then changed back: each
    layout's durables start after what the one before handled, not at the start of the stream nor
    where they stood when their layout last ran (the single partition's durable, left behind, is
    behind what three partitions handled since; resumed where it stood, it would start `new` again)."""
    (old, new, back), dispatched = await _runs_across_counts(bus, settings, unique, tmp_path, [1, 3, 1])
    assert dispatched == {old: 200, new: 1, back: 1}


async def test_with_partitions_an_unreadable_event_is_dead_lettered_once_whoever_reads_it(
    bus: Bus, settings: Settings, unique: str, tmp_path: Path
) -> None:
    """As a single scheduler does: garbage on a run's subject is parked, with several partitions too,
    and kept once. A plain subject is read by every partition (partition 0 checks those of runs it does not
    know; the run's own partition, when it walks it, too); a routed one by its partition only."""
    tenant, count = unique, 4
    env = next(f"env{n}" for n in range(50) if partition_of(tenant, f"env{n}", count) != 0)
    route = Partition(partition_of(tenant, env, count), count, tenant).route
    letters: list[DeadLetter] = []

    async def collect(msg: Any) -> None:
        letters.append(msgspec.json.decode(msg.data, type=DeadLetter))

    sub = await bus.nc.subscribe(subjects.tenant_deadletters(tenant), cb=collect)
    stop, replica = await _replica(bus, settings, tenant, count)
    try:
        async with recording(bus, tenant) as rec, running_agent(bus, tmp_path, tenant):
            walked = await submit(bus, tenant, workflow(sh("wait", "sleep 1.5"), env=env))
            await rec.wait(lambda: any(e.run_id == walked for e in rec.of(ActivityDispatched)))
            unknown = new_run_id()
            garbage = {
                "plain, a run no partition walks": subjects.run_event(tenant, unknown, "activity.completed"),
                "routed, a run no partition walks": subjects.run_event(tenant, unknown, "activity.failed", route),
                "plain, a run partition 0 does not walk": subjects.run_event(tenant, walked, "activity.completed"),
            }
            for n, subject in enumerate(garbage.values()):
                await bus.publish(subject, b"{not json", msg_id=f"{unique}/garbage/{n}")
            assert (await rec.completion(walked)).status == "succeeded"  # the garbage touched nothing
            async with asyncio.timeout(15):
                while {letter.subject for letter in letters} != set(garbage.values()):  # noqa: ASYNC110
                    await asyncio.sleep(0.1)
            await asyncio.sleep(1.0)  # what else comes of them comes meanwhile
    finally:
        stop.set()
        await sub.unsubscribe()
        async with asyncio.timeout(20):
            await replica
    assert {letter.subject for letter in letters} == set(garbage.values())
    assert all(letter.reason.startswith("undecodable:") for letter in letters)
    assert {letter.consumer for letter in letters} == {f"scheduler-{tenant}"}
    # Two partitions parked the walked run's plain one: the stream kept one letter (same msg id).
    info = await bus.js.stream_info(subjects.STREAM_DEADLETTER, subjects_filter=subjects.tenant_deadletters(tenant))
    assert info.state.subjects == {subjects.deadletter(subject): 1 for subject in garbage.values()}


async def test_after_a_count_change_a_restarted_partition_is_led_again(
    bus: Bus, settings: Settings, unique: str, tmp_path: Path
) -> None:
    """The new count's durables were made to start after the old count's: a later term (a restart,
    a handover, a failover) must not ask the server to move that start (it refuses, and the term
    failed on every tick, the partition led by no one)."""
    tenant = unique
    async with recording(bus, tenant) as rec, running_agent(bus, tmp_path, tenant):
        stop, task = await _replica(bus, settings, tenant, 1)
        before = await submit(bus, tenant, workflow(sh("a", "true"), env="before"))
        assert (await rec.completion(before)).status == "succeeded"
        stop.set()
        await task
        for _ in range(2):  # the new count's first term, then a restart with a run waiting for it
            waiting = await submit(bus, tenant, workflow(sh("a", "true"), env="while-down"))
            stop, task = await _replica(bus, settings, tenant, 2)
            try:
                assert (await rec.completion(waiting, within=15)).status == "succeeded"
            finally:
                stop.set()
                await task


@pytest.mark.parametrize("count", [1, 2])
async def test_a_run_compiled_in_the_batch_of_a_leader_that_died_is_not_lost(
    bus: Bus, settings: Settings, unique: str, tmp_path: Path, count: int
) -> None:
    """The leader fetched a run.compiled and died before it saved the run or acked anything. Its
    successor is handed what comes after (the dead one's batch waits out the ack wait), and its
    first ack acknowledges everything before (AckPolicy.ALL): the run would never start."""
    tenant, env = unique, "dev"
    stop, task = await _replica(bus, settings, tenant, count)  # makes the durables
    stop.set()
    await task
    durable = Partition(partition_of(tenant, env, count), count, tenant).name
    async with recording(bus, tenant) as rec, running_agent(bus, tmp_path, tenant):
        lost = await submit(bus, tenant, workflow(sh("a", "true"), env=env))
        dying = await Bus.connect(settings, name="dying-leader")
        try:
            sub = await dying.js.pull_subscribe_bind(durable, stream=subjects.STREAM_EVENTS)
            fetched = await sub.fetch(1, timeout=5)
            assert [m.subject for m in fetched] == [subjects.run_event(tenant, lost, "run.compiled")]
        finally:
            await dying.close()
        stop, task = await _replica(bus, settings, tenant, count)  # the successor
        try:
            other = await submit(bus, tenant, workflow(sh("a", "true"), env=env))
            assert (await rec.completion(other)).status == "succeeded"
            assert (await rec.completion(lost, within=5)).status == "succeeded"  # not after the 10 s ack wait
        finally:
            stop.set()
            await task
    assert Counter(e.run_id for e in rec.of(ActivityDispatched)) == {lost: 1, other: 1}


async def test_other_counts_durables_are_found_among_more_consumers_than_one_listing_holds(
    bus: Bus, settings: Settings, unique: str, tmp_path: Path
) -> None:
    """The server lists at most 256 consumers at a time; names before `scheduler-…` (approval waits,
    say) fill the first page. Missed, the old count's floor reads as 0 and the new count's durables
    read the stream from its start, every old run.compiled starting its run again."""
    fillers = [f"a-filler-{unique}-{n:03}" for n in range(300)]
    for name in fillers:
        await bus.js.add_consumer(
            subjects.STREAM_EVENTS,
            js_api.ConsumerConfig(durable_name=name, filter_subject=f"{subjects.PREFIX}.{unique}x.run.*.filler"),
        )
    try:
        (old, new), dispatched = await _runs_across_counts(bus, settings, unique, tmp_path, [1, 2])
        assert dispatched == {old: 200, new: 1}
    finally:
        for name in fillers:
            await bus.js.delete_consumer(subjects.STREAM_EVENTS, name)
