"""The scheduler with real agents on a real nats-server: whole runs, failures, cancels, lost
agents and a scheduler killed mid-run."""

from __future__ import annotations

import asyncio
import collections
from pathlib import Path
from typing import Any

from scheduler_support import (
    Process,
    recording,
    running_agent,
    running_scheduler,
    sh,
    submit,
    workflow,
)

from trellis_core.bus import Bus
from trellis_core.events import (
    ActivityCancelled,
    ActivityDispatched,
    ActivityLost,
    ActivityStarted,
    RunCancelRequested,
    SourceFile,
)
from trellis_core.ids import new_run_id
from trellis_core.settings import Settings
from trellis_templates.compiler import compile_sources

DEMO = Path(__file__).resolve().parents[2] / "examples" / "demo"


def demo(tenant: str, run_id: str, action: str) -> object:
    sources = [SourceFile(path=str(p), text=p.read_text()) for p in sorted(DEMO.glob("*.yaml"))]
    result = compile_sources(sources, "demo", {}, action, tenant=tenant, run_id=run_id)  # type: ignore[arg-type]
    assert not result.errors, result.errors
    return result.workflow


async def test_a_three_resource_environment_deploys_and_then_destroys(
    bus: Bus, settings: Settings, unique: str, tmp_path: Path
) -> None:
    async with (
        recording(bus, unique) as rec,
        running_scheduler(bus, settings, unique),
        running_agent(bus, tmp_path, unique, concurrency=4),
    ):
        deploy_id = new_run_id()
        await submit(bus, unique, demo(unique, deploy_id, "deploy"), deploy_id)  # type: ignore[arg-type]
        deployed = await rec.completion(deploy_id, within=60)
        destroy_id = new_run_id()
        await submit(bus, unique, demo(unique, destroy_id, "destroy"), destroy_id)  # type: ignore[arg-type]
        destroyed = await rec.completion(destroy_id, within=60)
    assert deployed.status == "succeeded", deployed.message
    assert set(deployed.outputs) >= {"network", "database", "app"}
    assert destroyed.status == "succeeded", destroyed.message
    started = [e.activity_id for e in rec.of(ActivityStarted, destroy_id)]
    assert started.index("resource/app/task/build") < started.index("resource/network/task/allocate")


async def test_a_failing_apply_skips_dependents_and_runs_on_failure_then_on_completion(
    bus: Bus, settings: Settings, unique: str, tmp_path: Path
) -> None:
    wf = workflow(
        sh("resource/vpc/apply", "echo boom >&2; exit 3"),
        sh("resource/app/apply", "true", "resource/vpc/apply"),
        sh("environment/on-failure/page", "true", "resource/app/apply", when="failure"),
        sh("environment/on-completion/tidy", "true", "environment/on-failure/page", when="always"),
    )
    async with (
        recording(bus, unique) as rec,
        running_scheduler(bus, settings, unique),
        running_agent(bus, tmp_path, unique),
    ):
        run_id = await submit(bus, unique, wf)
        done = await rec.completion(run_id)
    assert done.status == "failed"
    assert "resource/vpc/apply" in done.message
    started = [e.activity_id for e in rec.of(ActivityStarted, run_id)]
    assert started == [
        "resource/vpc/apply",
        "environment/on-failure/page",
        "environment/on-completion/tidy",
    ]


async def test_cancel_mid_run_stops_the_running_activity_and_still_runs_on_completion(
    bus: Bus, settings: Settings, unique: str, tmp_path: Path
) -> None:
    wf = workflow(
        sh("resource/vpc/apply", "sleep 30"),
        sh("resource/app/apply", "true", "resource/vpc/apply"),
        sh("environment/on-completion/tidy", "true", "resource/app/apply", when="always"),
    )
    async with (
        recording(bus, unique) as rec,
        running_scheduler(bus, settings, unique),
        running_agent(bus, tmp_path, unique),
    ):
        run_id = await submit(bus, unique, wf)
        await rec.first(ActivityStarted, run_id, activity_id="resource/vpc/apply")
        await bus.publish_event(RunCancelRequested(tenant=unique, run_id=run_id, reason="changed my mind"))
        done = await rec.completion(run_id)
    assert done.status == "cancelled"
    assert rec.of(ActivityCancelled, run_id)[0].activity_id == "resource/vpc/apply"
    started = [e.activity_id for e in rec.of(ActivityStarted, run_id)]
    assert started == ["resource/vpc/apply", "environment/on-completion/tidy"]


async def test_an_activity_is_retried_on_another_agent_after_its_agent_is_killed(
    bus: Bus, settings: Settings, unique: str, tmp_path: Path
) -> None:
    wf = workflow(
        sh("resource/vpc/apply", "sleep 1; echo done"), sh("resource/app/apply", "true", "resource/vpc/apply")
    )
    async with recording(bus, unique) as rec, running_scheduler(bus, settings, unique):
        doomed = Process(settings, "agent", "--tenant", unique, "--pool", "default", "--agent-id", "doomed",
                         log=tmp_path / "doomed.log")  # fmt: skip
        try:
            run_id = await submit(bus, unique, wf)
            await rec.first(ActivityStarted, run_id, activity_id="resource/vpc/apply", agent="doomed")
        finally:
            doomed.kill()
        async with running_agent(bus, tmp_path, unique, agent_id="survivor"):
            lost = await rec.first(ActivityLost, run_id, within=20)
            done = await rec.completion(run_id)
    assert (lost.activity_id, lost.attempt, lost.agent) == ("resource/vpc/apply", 1, "doomed")
    assert done.status == "succeeded"
    retried = await rec.first(ActivityStarted, run_id, activity_id="resource/vpc/apply", attempt=2)
    assert retried.agent == "survivor"


async def test_a_scheduler_killed_mid_run_is_replaced_and_the_run_finishes_with_no_duplicate_dispatch(
    bus: Bus, settings: Settings, unique: str, tmp_path: Path
) -> None:
    ran = tmp_path / "ran.txt"
    chain = [sh(f"step{n}", f"echo step{n} >> {ran}; sleep 0.2", *([f"step{n - 1}"] if n else [])) for n in range(8)]
    wide = [sh(f"leaf{n}", f"echo leaf{n} >> {ran}", "step3") for n in range(6)]
    wf = workflow(*chain, *wide)
    first = Process(settings, "scheduler", "--tenant", unique, log=tmp_path / "scheduler1.log")
    second: Process | None = None
    try:
        async with recording(bus, unique) as rec, running_agent(bus, tmp_path, unique, concurrency=4):
            run_id = await submit(bus, unique, wf)
            await rec.first(ActivityStarted, run_id, activity_id="step3", within=30)
            first.kill()
            second = Process(settings, "scheduler", "--tenant", unique, log=tmp_path / "scheduler2.log")
            done = await rec.completion(run_id, within=60)
            await asyncio.sleep(0)
    finally:
        first.kill()
        if second is not None:
            second.stop()
    assert done.status == "succeeded", done.message
    runs = collections.Counter(ran.read_text().split())
    assert runs == {f"step{n}": 1 for n in range(8)} | {f"leaf{n}": 1 for n in range(6)}
    attempts = {(e.activity_id, e.attempt) for e in rec.of(ActivityDispatched, run_id)}
    assert {a for _, a in attempts} == {1}


async def test_a_standby_replica_takes_over_within_seconds_when_the_leader_dies(
    bus: Bus, settings: Settings, unique: str, tmp_path: Path
) -> None:
    from scheduler_support import engine_config

    from trellis_scheduler.service import serve

    wf = workflow(*[sh(f"step{n}", "sleep 0.3", *([f"step{n - 1}"] if n else [])) for n in range(6)])
    config = engine_config(settings)
    stop = asyncio.Event()
    leader_ready, standby_ready = asyncio.Event(), asyncio.Event()
    leader = asyncio.create_task(serve(bus, settings, stop, tenant=unique, config=config, lease_ttl=1.5,
                                       ready=leader_ready))  # fmt: skip
    async with asyncio.timeout(10):
        await leader_ready.wait()
    standby = asyncio.create_task(serve(bus, settings, stop, tenant=unique, config=config, lease_ttl=1.5,
                                        ready=standby_ready))  # fmt: skip
    try:
        async with recording(bus, unique) as rec, running_agent(bus, tmp_path, unique):
            run_id = await submit(bus, unique, wf)
            await rec.first(ActivityStarted, run_id, activity_id="step1")
            assert not standby_ready.is_set()
            leader.cancel()  # dies without handing the lease back
            async with asyncio.timeout(10):
                await standby_ready.wait()
            done = await rec.completion(run_id)
    finally:
        stop.set()
        leader.cancel()
        async with asyncio.timeout(15):
            await asyncio.gather(leader, standby, return_exceptions=True)
    assert done.status == "succeeded"
    assert sorted((e.activity_id, e.attempt) for e in rec.of(ActivityStarted, run_id)) == [
        (f"step{n}", 1) for n in range(6)
    ]


async def test_a_second_run_on_a_busy_environment_waits_says_why_and_runs_after_the_first(
    bus: Bus, settings: Settings, unique: str, tmp_path: Path
) -> None:
    from trellis_core.events import RunQueued

    async with (
        recording(bus, unique) as rec,
        running_scheduler(bus, settings, unique),
        running_agent(bus, tmp_path, unique),
    ):
        first = await submit(bus, unique, workflow(sh("apply", "sleep 0.5")))
        await rec.first(ActivityStarted, first)
        second = await submit(bus, unique, workflow(sh("apply", "true")))
        queued = await rec.first(RunQueued, second)
        first_done = await rec.completion(first)
        second_done = await rec.completion(second)
    assert first in queued.reason
    assert first_done.status == second_done.status == "succeeded"
    second_start = (await rec.first(ActivityStarted, second)).occurred_at
    assert second_start >= first_done.occurred_at


async def test_cancelling_a_run_withdraws_work_no_agent_has_taken_yet(
    bus: Bus, settings: Settings, unique: str
) -> None:
    from trellis_core import subjects

    async with recording(bus, unique) as rec, running_scheduler(bus, settings, unique):  # no agent at all
        run_id = await submit(bus, unique, workflow(sh("apply", "true"), sh("after", "true", "apply")))
        await rec.first(ActivityDispatched, run_id)
        await bus.publish_event(RunCancelRequested(tenant=unique, run_id=run_id))
        done = await rec.completion(run_id, within=2.5)  # well inside the 5 s cancel grace
    assert done.status == "cancelled"
    cancelled = rec.of(ActivityCancelled, run_id)
    assert [(c.activity_id, c.attempt) for c in cancelled] == [("apply", 1)]
    assert "withdrawn" in cancelled[0].reason
    info = await bus.js.stream_info(subjects.work_stream(unique), subjects_filter=subjects.work(unique, "default"))
    assert not info.state.subjects


async def test_an_approval_waits_for_the_decision_then_the_run_goes_on(
    bus: Bus, settings: Settings, unique: str, tmp_path: Path
) -> None:
    from trellis_core.events import ApprovalDecided, ApprovalRequested
    from trellis_core.workflow import Activity, ApprovalSpec

    gate = Activity(id="environment/on-init/approve", kind="approval", spec=ApprovalSpec(approvers=("lee",)))
    wf = workflow(gate, sh("resource/vpc/apply", "true", "environment/on-init/approve"))
    async with (
        recording(bus, unique) as rec,
        running_scheduler(bus, settings, unique),
        running_agent(bus, tmp_path, unique),
    ):
        run_id = await submit(bus, unique, wf)
        asked = await rec.first(ApprovalRequested, run_id)
        assert not rec.of(ActivityStarted, run_id)[1:]  # nothing else runs while it waits
        decided = ApprovalDecided(
            tenant=unique, run_id=run_id, activity_id=asked.activity_id, attempt=asked.attempt,
            decision="approved", decided_by="lee",
        )  # fmt: skip
        await bus.publish_event(decided)
        done = await rec.completion(run_id)
    assert done.status == "succeeded"
    assert [e.activity_id for e in rec.of(ActivityStarted, run_id)] == [gate.id, "resource/vpc/apply"]


async def test_an_undecodable_event_is_dead_lettered_and_the_scheduler_goes_on(
    bus: Bus, settings: Settings, unique: str, tmp_path: Path
) -> None:
    import msgspec

    from trellis_core import subjects
    from trellis_core.events import DeadLetter

    poison = subjects.run_event(unique, "r-poison", "activity.started")
    letters = await bus.nc.subscribe(subjects.deadletter(poison))
    async with (
        recording(bus, unique) as rec,
        running_scheduler(bus, settings, unique),
        running_agent(bus, tmp_path, unique),
    ):
        await bus.publish(poison, b"{not json", msg_id=f"{unique}-poison")
        letter = msgspec.json.decode((await letters.next_msg(timeout=15)).data, type=DeadLetter)
        run_id = await submit(bus, unique, workflow(sh("apply", "true")))
        done = await rec.completion(run_id)
    await letters.unsubscribe()
    assert letter.reason.startswith("undecodable")
    assert done.status == "succeeded"


async def test_the_scheduler_creates_a_tenants_work_stream_once_before_its_first_dispatch(
    bus: Bus, settings: Settings, unique: str
) -> None:
    from trellis_core import subjects

    stream = subjects.work_stream(unique)
    calls: list[str] = []

    async def spy(msg: Any) -> None:
        calls.append(msg.subject)

    sub = await bus.nc.subscribe(f"$JS.API.STREAM.*.{stream}", cb=spy)
    async with recording(bus, unique) as rec, running_scheduler(bus, settings, unique):  # no agent at all
        first = await submit(bus, unique, workflow(sh("a", "true"), sh("b", "true"), sh("c", "true")))
        second = await submit(bus, unique, workflow(sh("d", "true"), env="other"))  # its own environment lock
        await rec.wait(lambda: len(rec.of(ActivityDispatched, first)) + len(rec.of(ActivityDispatched, second)) == 4)
    await sub.unsubscribe()
    info = await bus.js.stream_info(stream)
    assert info.state.messages == 4
    assert calls == [f"$JS.API.STREAM.INFO.{stream}", f"$JS.API.STREAM.CREATE.{stream}"]
