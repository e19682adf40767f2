"""Agents on a real nats-server: claiming, reporting, cancels, shutdown and tenant isolation."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec
import nats.js.errors
import pytest
from agent_support import read_pid, shell, wait_for_file, wait_until_gone, work_item

from running_agent import running_agent
from trellis_agent.agent import AGENT_ACKS, Agent, agent_jetstream_api, executors_for
from trellis_agent.config import AgentConfig
from trellis_core import subjects
from trellis_core.bus import Bus, ensure_work_stream, get_bundle, put_bundle
from trellis_core.events import (
    ActivityCancelled,
    ActivityCompleted,
    ActivityFailed,
    ActivityHeartbeat,
    ActivityLogChunk,
    ActivityStarted,
    ApprovalDecided,
    ApprovalRequested,
    CancelActivity,
    DeadLetter,
    RunEvent,
    WorkItem,
    decode_run_event,
    encode,
)
from trellis_core.workflow import ApprovalSpec


class Recorder:
    """Every run event and log chunk of one tenant, as they arrive on core NATS."""

    def __init__(self) -> None:
        self.events: list[RunEvent] = []
        self.chunks: list[ActivityLogChunk] = []
        self._changed = asyncio.Condition()

    async def on_event(self, msg: Any) -> None:
        async with self._changed:
            self.events.append(decode_run_event(msg.data))
            self._changed.notify_all()

    async def on_log(self, msg: Any) -> None:
        async with self._changed:
            self.chunks.append(msgspec.json.decode(msg.data, type=ActivityLogChunk))
            self._changed.notify_all()

    def of(self, kind: type[Any], run_id: str | None = None) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind) and (run_id is None or e.run_id == run_id)]

    async def wait(self, predicate: Callable[[], bool], within: float = 15.0) -> None:
        async with asyncio.timeout(within), self._changed:
            await self._changed.wait_for(predicate)

    async def first(self, kind: type[Any], run_id: str, within: float = 15.0) -> Any:
        await self.wait(lambda: bool(self.of(kind, run_id)), within)
        return self.of(kind, run_id)[0]


@asynccontextmanager
async def recording(bus: Bus, tenant: str) -> AsyncIterator[Recorder]:
    recorder = Recorder()
    events = await bus.nc.subscribe(subjects.all_run_events(tenant), cb=recorder.on_event)
    logs = await bus.nc.subscribe(f"{subjects.PREFIX}.{tenant}.logs.>", cb=recorder.on_log)
    await bus.nc.flush()
    try:
        yield recorder
    finally:
        await events.unsubscribe()
        await logs.unsubscribe()


async def dispatch(bus: Bus, work: WorkItem, pool: str = "default", agent: str | None = None) -> None:
    await bus.publish(subjects.work(work.tenant, pool, agent), work, msg_id=work.msg_id())


async def test_an_agent_runs_work_and_reports_started_heartbeats_logs_and_completion(
    bus: Bus, unique: str, tmp_path: Path
) -> None:
    gate = tmp_path / "release"
    script = f'echo hello; {wait_for_file(gate)}; echo \'{{"answer": 42}}\' > "$TRELLIS_OUTPUTS"'
    work = work_item(shell(script), tenant=unique)
    async with recording(bus, unique) as rec, running_agent(bus, tmp_path, tenant=unique) as agent:
        await dispatch(bus, work)
        await rec.first(ActivityHeartbeat, work.run_id)  # beats while the command runs
        gate.touch()
        done = await rec.first(ActivityCompleted, work.run_id)
        await rec.wait(lambda: "hello\n" in "".join(c.data for c in rec.chunks))
    assert done.outputs == {"answer": 42}
    assert done.exit_code == 0
    started = rec.of(ActivityStarted, work.run_id)
    assert [s.agent for s in started] == [agent.config.agent_id]
    beats = rec.of(ActivityHeartbeat, work.run_id)
    assert beats
    assert [b.sequence for b in beats] == list(range(1, len(beats) + 1))
    kinds = [type(e) for e in rec.events if e.run_id == work.run_id]
    assert kinds[0] is ActivityStarted
    assert kinds[-1] is ActivityCompleted
    assert [c.sequence for c in rec.chunks] == list(range(len(rec.chunks)))
    assert {c.activity_id for c in rec.chunks} == {"resource/app/task/build"}


async def test_a_failing_command_is_reported_with_its_exit_code(bus: Bus, unique: str, tmp_path: Path) -> None:
    work = work_item(shell("exit 4"), tenant=unique)
    async with recording(bus, unique) as rec, running_agent(bus, tmp_path, tenant=unique):
        await dispatch(bus, work)
        failed = await rec.first(ActivityFailed, work.run_id)
    assert failed.exit_code == 4
    assert failed.retryable


async def test_work_pinned_to_an_agent_reaches_that_agent_not_another_of_its_pool(
    bus: Bus, unique: str, tmp_path: Path
) -> None:
    work = work_item(shell("echo pinned"), tenant=unique)
    async with (
        recording(bus, unique) as rec,
        running_agent(bus, tmp_path, tenant=unique, pool="p1"),
        running_agent(bus, tmp_path, tenant=unique, pool="p1") as pinned,
    ):
        await dispatch(bus, work, pool="p1", agent=pinned.config.agent_id)
        done = await rec.first(ActivityCompleted, work.run_id)
        await rec.wait(lambda: "pinned\n" in "".join(c.data for c in rec.chunks))
    assert [s.agent for s in rec.of(ActivityStarted, work.run_id)] == [pinned.config.agent_id]
    assert done.exit_code == 0


async def test_an_agent_of_tenant_a_never_receives_tenant_b_work(bus: Bus, unique: str, tmp_path: Path) -> None:
    tenant_a, tenant_b = f"{unique}a", f"{unique}b"
    works_a = [work_item(shell("echo a"), tenant=tenant_a) for _ in range(3)]
    works_b = [work_item(shell("echo b"), tenant=tenant_b) for _ in range(3)]
    async with (
        recording(bus, tenant_a) as rec_a,
        recording(bus, tenant_b) as rec_b,
        running_agent(bus, tmp_path, tenant=tenant_a) as agent_a,
        running_agent(bus, tmp_path, tenant=tenant_b) as agent_b,
    ):
        for a, b in zip(works_a, works_b, strict=True):
            await dispatch(bus, a)
            await dispatch(bus, b)
        await rec_a.wait(lambda: len(rec_a.of(ActivityCompleted)) == 3)
        await rec_b.wait(lambda: len(rec_b.of(ActivityCompleted)) == 3)
    assert {e.agent for e in rec_a.of(ActivityStarted)} == {agent_a.config.agent_id}
    assert {e.agent for e in rec_b.of(ActivityStarted)} == {agent_b.config.agent_id}
    assert {e.run_id for e in rec_a.of(ActivityCompleted)} == {w.run_id for w in works_a}
    assert {e.run_id for e in rec_b.of(ActivityCompleted)} == {w.run_id for w in works_b}


async def test_work_of_another_tenant_on_its_subject_is_dead_lettered_not_run(
    bus: Bus, unique: str, tmp_path: Path
) -> None:
    intruder = work_item(shell("echo should not run"), tenant=f"{unique}other")
    subject = subjects.work(unique, "default")
    letters = await bus.nc.subscribe(subjects.deadletter(subject))
    async with recording(bus, intruder.tenant) as rec, running_agent(bus, tmp_path, tenant=unique):
        await bus.publish(subject, intruder, msg_id=intruder.msg_id())
        letter = msgspec.json.decode((await letters.next_msg(timeout=15)).data, type=DeadLetter)
    await letters.unsubscribe()
    assert "reached an agent of" in letter.reason
    assert rec.events == []


@pytest.mark.parametrize("run_id", ["../../../escaped", "a.b", ""])
async def test_work_whose_run_id_is_not_one_token_is_dead_lettered_not_run(
    bus: Bus, unique: str, tmp_path: Path, run_id: str
) -> None:
    """The run id names the workspace's directory: "../../../escaped" would put it outside the data dir."""
    marker = tmp_path / "ran"
    hostile = msgspec.structs.replace(work_item(shell(f"touch {marker}"), tenant=unique), run_id=run_id)
    subject = subjects.work(unique, "default")
    letters = await bus.nc.subscribe(subjects.deadletter(subject))
    async with running_agent(bus, tmp_path / "agent", tenant=unique):
        await bus.publish(subject, hostile, msg_id=hostile.msg_id())
        letter = msgspec.json.decode((await letters.next_msg(timeout=15)).data, type=DeadLetter)
    await letters.unsubscribe()
    assert f"the work item's run id {run_id!r} cannot be used in a subject" in letter.reason
    assert not marker.exists()
    assert not (tmp_path / "escaped").exists()


async def test_a_work_item_handed_back_too_often_is_parked_and_its_attempt_reported_failed(
    bus: Bus, unique: str, tmp_path: Path
) -> None:
    """Each hand-back (a slot race, a drain, an agent that died) is a delivery; the sixth is parked
    unread. Only pinned work has a start timeout: unless the agent says the attempt failed, the
    scheduler waits for it for ever, and its run with it."""
    subject = subjects.work(unique, "default")
    work = work_item(shell(f"touch {tmp_path}/ran"), tenant=unique)
    async with recording(bus, unique) as rec:
        async with running_agent(bus, tmp_path, tenant=unique, concurrency=1):
            pass  # its durables exist; now it is gone
        await bus.publish(subject, work, msg_id=work.msg_id())
        sub = await bus.js.pull_subscribe_bind(durable=f"agent-{unique}-default", stream=subjects.work_stream(unique))
        for _ in range(5):  # what consume._hand_back does with an item it has no slot for
            [msg] = await sub.fetch(1, timeout=5)
            await msg.nak()
        await sub.unsubscribe()
        async with running_agent(bus, tmp_path, tenant=unique, concurrency=1):
            failed = await rec.first(ActivityFailed, work.run_id)
    assert (failed.activity_id, failed.attempt, failed.retryable) == (work.activity.id, work.attempt, False)
    assert failed.reason.endswith("could not take its work item, dead-lettered: delivered 6 times without an ack")
    assert [type(e) for e in rec.events if e.run_id == work.run_id] == [ActivityFailed]
    assert not (tmp_path / "ran").exists()


async def test_a_work_item_this_agent_cannot_read_is_reported_failed_naming_why(
    bus: Bus, unique: str, tmp_path: Path
) -> None:
    """A spec kind from a newer scheduler, say: the item's attempt is still named, so it fails
    (on its partition's route) rather than waiting for ever."""
    work = msgspec.structs.replace(work_item(tenant=unique), route="p1of4")
    item = msgspec.json.decode(encode(work))
    item["activity"]["kind"] = "teleport"
    subject = subjects.work(unique, "default")
    routed = await bus.nc.subscribe(subjects.run_event(unique, work.run_id, "activity.failed", "p1of4"))
    async with running_agent(bus, tmp_path, tenant=unique):
        await bus.publish(subject, msgspec.json.encode(item), msg_id=work.msg_id())
        failed = msgspec.json.decode((await routed.next_msg(timeout=15)).data, type=ActivityFailed)
    await routed.unsubscribe()
    assert (failed.activity_id, failed.attempt, failed.retryable) == (work.activity.id, 1, False)
    assert "dead-lettered: undecodable:" in failed.reason
    assert "teleport" in failed.reason


async def test_a_cancel_that_comes_before_its_work_item_is_run_keeps_it_from_running(
    bus: Bus, unique: str, tmp_path: Path
) -> None:
    """The scheduler cancels (on core NATS), then withdraws the work item; an agent that fetched the
    item just before has the cancel first and the withdrawal fails to reach it. Told of an attempt
    it does not run yet, the agent keeps the cancel and acknowledges the item unrun."""
    work = work_item(shell(f"touch {tmp_path}/ran"), tenant=unique)
    command = CancelActivity(
        tenant=unique, run_id=work.run_id, activity_id=work.activity.id, attempt=work.attempt, reason="by test"
    )
    async with recording(bus, unique) as rec, running_agent(bus, tmp_path, tenant=unique) as agent:
        await bus.nc.publish(subjects.control(unique, "default"), encode(command))
        await bus.nc.flush()
        await dispatch(bus, work)
        async with asyncio.timeout(10):  # taken and acknowledged
            while True:
                info = await bus.js.consumer_info(subjects.work_stream(unique), agent.pool_durable)
                if not (info.num_pending or info.num_ack_pending):
                    break
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
    assert rec.of(ActivityStarted, work.run_id) == []
    assert not (tmp_path / "ran").exists()


async def test_a_cancel_command_kills_the_activity_and_reports_it_cancelled(
    bus: Bus, unique: str, tmp_path: Path
) -> None:
    work = work_item(shell("sleep 300 & echo $! > grandchild.pid; echo started; wait"), tenant=unique, workspace="ws")
    async with recording(bus, unique) as rec, running_agent(bus, tmp_path, tenant=unique) as agent:
        await dispatch(bus, work)
        await rec.wait(lambda: "started" in "".join(c.data for c in rec.chunks))
        command = CancelActivity(
            tenant=unique,
            run_id=work.run_id,
            activity_id=work.activity.id,
            attempt=work.attempt,
            reason="user",
        )
        await bus.nc.publish(subjects.control(unique, "default"), encode(command))
        cancelled = await rec.first(ActivityCancelled, work.run_id)
        pid_file = agent.data_dir / unique / work.run_id / "ws" / "grandchild.pid"
    assert cancelled.reason == "user"
    assert await wait_until_gone(read_pid(pid_file))
    assert not rec.of(ActivityCompleted, work.run_id)


async def test_on_stop_running_work_gets_the_grace_period_then_fails_retryably(
    bus: Bus, unique: str, tmp_path: Path
) -> None:
    quick = work_item(shell("echo started-quick; sleep 0.3"), tenant=unique)
    slow = work_item(shell("echo started-slow; sleep 300"), tenant=unique)
    async with (
        recording(bus, unique) as rec,
        running_agent(bus, tmp_path, tenant=unique, shutdown_grace_seconds=1.0, concurrency=2),
    ):
        await dispatch(bus, quick)
        await dispatch(bus, slow)
        # Both run when the agent is told to stop; the quick one needs 0.3 s of the 1 s grace.
        await rec.wait(lambda: {"started-quick", "started-slow"} <= set("".join(c.data for c in rec.chunks).split()))
    assert rec.of(ActivityCompleted, quick.run_id)
    failed = rec.of(ActivityFailed, slow.run_id)
    assert len(failed) == 1
    assert failed[0].retryable
    assert "shut down" in failed[0].reason


async def test_concurrency_limits_how_many_run_at_once(bus: Bus, unique: str, tmp_path: Path) -> None:
    gate = tmp_path / "release"
    works = [work_item(shell(wait_for_file(gate)), tenant=unique) for _ in range(4)]
    async with recording(bus, unique) as rec, running_agent(bus, tmp_path, tenant=unique, concurrency=2):
        for w in works:
            await dispatch(bus, w)
        await rec.wait(lambda: len(rec.of(ActivityStarted)) == 2)  # both slots taken, held by the gate
        gate.touch()
        await rec.wait(lambda: len(rec.of(ActivityCompleted)) == 4)
    running = 0
    peak = 0
    for event in rec.events:
        if isinstance(event, ActivityStarted):
            running += 1
        elif isinstance(event, ActivityCompleted):
            running -= 1
        peak = max(peak, running)
    assert peak == 2


async def test_an_approval_waits_for_the_decision_on_the_bus(bus: Bus, unique: str, tmp_path: Path) -> None:
    work = work_item(ApprovalSpec(approvers=("ops@example.com",)), kind="approval", tenant=unique, timeout_seconds=3600)
    async with recording(bus, unique) as rec, running_agent(bus, tmp_path, tenant=unique):
        await dispatch(bus, work)
        requested = await rec.first(ApprovalRequested, work.run_id)
        assert requested.approvers == ("ops@example.com",)
        assert requested.expires_at is not None
        assert requested.expires_at > requested.occurred_at
        assert not rec.of(ActivityCompleted, work.run_id)
        await bus.publish_event(
            ApprovalDecided(
                tenant=unique,
                run_id=work.run_id,
                activity_id=work.activity.id,
                attempt=work.attempt,
                decision="approved",
                decided_by="alice",
            )
        )
        done = await rec.first(ActivityCompleted, work.run_id)
    assert done.outputs["decision"] == "approved"
    assert done.outputs["decidedBy"] == "alice"


@pytest.mark.parametrize("decision", ["rejected"])
async def test_a_rejected_approval_fails_without_retry(bus: Bus, unique: str, tmp_path: Path, decision: str) -> None:
    work = work_item(ApprovalSpec(), kind="approval", tenant=unique)
    async with recording(bus, unique) as rec, running_agent(bus, tmp_path, tenant=unique):
        await dispatch(bus, work)
        await rec.first(ApprovalRequested, work.run_id)
        await bus.publish_event(
            ApprovalDecided(
                tenant=unique,
                run_id=work.run_id,
                activity_id=work.activity.id,
                attempt=work.attempt,
                decision="rejected",
                decided_by="bob",
                comment="not today",
            )
        )
        failed = await rec.first(ActivityFailed, work.run_id)
    assert failed.reason == "rejected by bob: not today"
    assert not failed.retryable


AGENT_MAIN = (
    "import argparse, sys\n"
    "from trellis_cli import agent_cmd\n"
    "parser = argparse.ArgumentParser()\n"
    "agent_cmd.register(parser.add_subparsers())\n"
    "args = parser.parse_args(sys.argv[1:])\n"
    "sys.exit(args.func(args))\n"
)


async def test_sigterm_makes_the_agent_process_hand_back_its_work_and_exit(
    bus: Bus, nats_url: str, unique: str, tmp_path: Path
) -> None:
    env = {
        "PATH": os.environ["PATH"],
        "TRELLIS_NATS_URL": nats_url,
        "TRELLIS_AGENT_DATA_DIR": str(tmp_path),
        "TRELLIS_STREAM_STORAGE": "memory",
        "TRELLIS_LOG_LEVEL": "warning",
        "TRELLIS_AGENT_ID": f"{unique}-agent",
        "TRELLIS_AGENT_HEARTBEAT_SECONDS": "0.2",
        "TRELLIS_AGENT_SHUTDOWN_GRACE_SECONDS": "0.5",
        "TRELLIS_AGENT_KILL_GRACE_SECONDS": "0.5",
    }
    work = work_item(shell("sleep 300 & echo $! > child.pid; echo started; wait"), tenant=unique, workspace="ws")
    await ensure_work_stream(bus, unique)  # what the scheduler does before its first dispatch
    async with recording(bus, unique) as rec:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", AGENT_MAIN, "agent", "--tenant", unique, "--pool", "default", env=env
        )
        try:
            await dispatch(bus, work)
            await rec.wait(lambda: "started" in "".join(c.data for c in rec.chunks), within=30)
            proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(30):
                assert await proc.wait() == 0
            failed = await rec.first(ActivityFailed, work.run_id)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert failed.retryable
    assert "shut down" in failed.reason
    child = read_pid(tmp_path / unique / work.run_id / "ws" / "child.pid")
    assert await wait_until_gone(child)


async def test_two_agents_of_one_pool_share_its_work_each_item_once(bus: Bus, unique: str, tmp_path: Path) -> None:
    gate = tmp_path / "release"
    works = [work_item(shell(wait_for_file(gate)), tenant=unique) for _ in range(6)]
    async with (
        recording(bus, unique) as rec,
        running_agent(bus, tmp_path, tenant=unique, concurrency=1) as first,
        running_agent(bus, tmp_path, tenant=unique, concurrency=3) as second,
    ):
        for w in works:
            await dispatch(bus, w)
        await rec.wait(lambda: len(rec.of(ActivityStarted)) == 4)  # every slot of both agents is taken
        gate.touch()
        await rec.wait(lambda: len(rec.of(ActivityCompleted)) == 6)
    started = rec.of(ActivityStarted)
    assert sorted(s.run_id for s in started) == sorted(w.run_id for w in works)
    assert {s.agent for s in started} == {first.config.agent_id, second.config.agent_id}


async def test_cancelling_the_agent_cancels_its_work_and_kills_its_processes(
    bus: Bus, unique: str, tmp_path: Path
) -> None:
    config = AgentConfig.from_env({}, tenant=unique, heartbeat_seconds=0.2, kill_grace_seconds=0.5)
    work = work_item(shell("sleep 300 & echo $! > child.pid; echo started; wait"), tenant=unique, workspace="ws")
    async with recording(bus, unique) as rec, executors_for(config, bus) as router:
        await ensure_work_stream(bus, unique)
        agent = Agent(bus, config, router, tmp_path)
        ready = asyncio.Event()
        task = asyncio.create_task(agent.run(asyncio.Event(), ready=ready))
        async with asyncio.timeout(10):
            await ready.wait()
        await dispatch(bus, work)
        await rec.wait(lambda: "started" in "".join(c.data for c in rec.chunks))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert await wait_until_gone(read_pid(tmp_path / unique / work.run_id / "ws" / "child.pid"))


def _matches(subject: str, pattern: str) -> bool:
    """NATS subject matching: `*` one token, `>` the rest."""
    got, want = subject.split("."), pattern.split(".")
    for n, token in enumerate(want):
        if token == ">":
            return len(got) > n
        if n >= len(got) or (token != "*" and token != got[n]):
            return False
    return len(got) == len(want)


async def test_an_agent_calls_only_its_listed_jetstream_api_with_replies_under_its_inbox_prefix(
    bus: Bus, settings: Any, unique: str, tmp_path: Path
) -> None:
    """Work fetch and ack, an approval wait, a bundle read and publish acks, spied on from a second
    connection: every JetStream API request is in agent_jetstream_api(tenant) and every reply
    comes back under `_INBOX_<tenant>` — what the nats-auth permissions are built from."""
    await ensure_work_stream(bus, unique)
    blob = os.urandom(300_000)  # three chunks
    await put_bundle(bus, unique, "sha256:" + "0" * 64, blob)
    seen: list[tuple[str, str]] = []

    async def spy_on(msg: Any) -> None:
        seen.append((msg.subject, msg.reply))

    spied = ("$JS.API.>", "$JS.ACK.>", f"trellis.{unique}.run.*.activity.>")
    spies = [await bus.nc.subscribe(s, cb=spy_on) for s in spied]
    await bus.nc.flush()
    agent_bus = await Bus.connect(settings, name="spied-agent", inbox_prefix=subjects.inbox_prefix(unique))
    shell_work = work_item(shell("echo hello"), tenant=unique)
    gate = work_item(ApprovalSpec(), kind="approval", tenant=unique, timeout_seconds=3600)
    config = AgentConfig.from_env({}, tenant=unique, heartbeat_seconds=0.2, log_flush_seconds=0.05)
    stop, ready = asyncio.Event(), asyncio.Event()
    try:
        async with recording(bus, unique) as rec, executors_for(config, agent_bus) as router:
            task = asyncio.create_task(Agent(agent_bus, config, router, tmp_path).run(stop, ready=ready))
            async with asyncio.timeout(10):
                await ready.wait()
            await dispatch(bus, shell_work)
            await dispatch(bus, gate)
            await rec.first(ActivityCompleted, shell_work.run_id)
            await rec.first(ApprovalRequested, gate.run_id)
            decided = ApprovalDecided(tenant=unique, run_id=gate.run_id, activity_id=gate.activity.id,
                                      attempt=gate.attempt, decision="approved")  # fmt: skip
            await bus.publish_event(decided)
            await rec.first(ActivityCompleted, gate.run_id)
            stop.set()
            async with asyncio.timeout(30):
                await task
        assert await get_bundle(agent_bus, unique, "sha256:" + "0" * 64) == blob
        await bus.nc.flush()
    finally:
        await agent_bus.close()
        for spy in spies:
            await spy.unsubscribe()
    allowed = agent_jetstream_api(unique)
    api = [(s, r) for s, r in seen if s.startswith("$JS.API.")]
    assert {s.split(".")[2] for s, _ in api} >= {"STREAM", "CONSUMER"}
    assert [s for s, _ in api if not any(_matches(s, p) for p in allowed)] == []
    assert [r for _, r in api if not r.startswith(f"_INBOX_{unique}.")] == []
    acks = [s for s, _ in seen if s.startswith("$JS.ACK.")]
    assert acks
    assert all(any(_matches(s, p.replace("<t>", unique)) for p in AGENT_ACKS) for s in acks)
    published = [r for s, r in seen if s.startswith(f"trellis.{unique}.run.")]
    assert published
    assert all(r.startswith(f"_INBOX_{unique}.") for r in published)
    assert any(s.startswith("$JS.API.CONSUMER.CREATE.TRELLIS_EVENTS.approval-") for s, _ in api)


async def test_an_agent_started_before_its_work_stream_waits_for_the_control_plane_to_create_it(
    bus: Bus, unique: str, tmp_path: Path
) -> None:
    config = AgentConfig.from_env({}, tenant=unique, heartbeat_seconds=0.2)
    stop, ready = asyncio.Event(), asyncio.Event()
    async with recording(bus, unique) as rec, executors_for(config, bus) as router:
        task = asyncio.create_task(Agent(bus, config, router, tmp_path).run(stop, ready=ready))
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.shield(ready.wait()), 0.5)
        with pytest.raises(nats.js.errors.NotFoundError):  # the agent created nothing
            await bus.js.stream_info(subjects.work_stream(unique))
        await ensure_work_stream(bus, unique)
        async with asyncio.timeout(10):
            await ready.wait()
        work = work_item(shell("echo late"), tenant=unique)
        await dispatch(bus, work)
        await rec.first(ActivityCompleted, work.run_id)
        stop.set()
        async with asyncio.timeout(30):
            await task
