"""The engine's semantics, one behaviour a test: readiness, failure, hooks, retries, timers."""

from __future__ import annotations

import msgspec
import pytest
from engine_support import Driver, act, ts, workflow

from trellis_core.events import (
    ActivityLost,
    ActivityTimedOut,
    ApprovalDecided,
    ApprovalRequested,
    RunCompleted,
    RunQueued,
    RunStarted,
)
from trellis_core.workflow import ApprovalSpec, RetryPolicy
from trellis_engine.backoff import backoff_seconds
from trellis_engine.commands import ScheduleWake
from trellis_engine.state import EngineConfig


def test_a_chain_runs_in_dependency_order_and_succeeds() -> None:
    d = Driver()
    d.compile(workflow(act("a"), act("b", "a"), act("c", "b")))
    assert isinstance(d.emitted[0], RunStarted)
    assert d.dispatched_ids() == ["a"]
    d.succeed("a")
    assert d.dispatched_ids() == ["a", "b"]
    done = d.run_to_end()
    assert done.status == "succeeded"
    assert d.dispatched_ids() == ["a", "b", "c"]


def test_independent_activities_are_dispatched_together() -> None:
    d = Driver()
    d.compile(workflow(act("a"), act("b"), act("c", "a", "b")))
    assert sorted(d.dispatched_ids()) == ["a", "b"]
    d.succeed("a")
    assert "c" not in d.dispatched_ids()
    d.succeed("b")
    assert d.dispatched_ids()[-1] == "c"


def test_a_failed_apply_skips_dependents_and_runs_on_failure_then_on_completion() -> None:
    d = Driver()
    d.compile(
        workflow(
            act("vpc/apply"),
            act("vpc/output", "vpc/apply"),
            act("app/apply", "vpc/output"),
            act("env/on-success", "app/apply"),
            act("env/on-failure", "app/apply", when="failure"),
            act("env/on-completion", "env/on-success", "env/on-failure", when="always"),
        )
    )
    d.fail("vpc/apply")
    assert d.status("vpc/output") == "skipped"
    assert d.status("app/apply") == "skipped"
    assert d.status("env/on-success") == "skipped"
    assert d.dispatched_ids() == ["vpc/apply", "env/on-failure"]
    d.succeed("env/on-failure")
    assert d.dispatched_ids()[-1] == "env/on-completion"
    d.succeed("env/on-completion")
    done = d.completion()
    assert done is not None
    assert done.status == "failed"
    assert "vpc/apply" in done.message


def test_failure_hooks_are_skipped_when_nothing_failed() -> None:
    d = Driver()
    d.compile(workflow(act("a"), act("on-failure", "a", when="failure"), act("done", "on-failure", when="always")))
    done = d.run_to_end()
    assert done.status == "succeeded"
    assert d.status("on-failure") == "skipped"
    assert d.dispatched_ids() == ["a", "done"]


def test_on_failure_continue_lets_dependents_run_and_the_run_succeed() -> None:
    d = Driver()
    d.compile(workflow(act("notify", on_failure="continue"), act("apply", "notify")))
    d.fail("notify")
    assert d.dispatched_ids() == ["notify", "apply"]
    assert d.run_to_end().status == "succeeded"


def test_a_tolerated_hook_failure_runs_on_success_hooks_and_not_on_failure_hooks() -> None:
    d = Driver()
    d.compile(
        workflow(
            act("notify", on_failure="continue"),
            act("env/on-success", "notify"),
            act("env/on-failure", "notify", when="failure"),
        )
    )
    d.fail("notify")
    assert d.run_to_end().status == "succeeded"
    assert d.status("env/on-success") == "succeeded"
    assert d.status("env/on-failure") == "skipped"


def test_a_retryable_failure_is_retried_after_a_deterministic_backoff() -> None:
    policy = RetryPolicy(max_attempts=3, initial_backoff_seconds=4.0, multiplier=2.0)
    d = Driver()
    d.compile(workflow(act("a", retry=policy)))
    first = d.last("a")
    cmds = d.feed(d.started(first), d.failed(first))
    delay = backoff_seconds(policy, 1, "r1/a/1")
    assert 2.0 <= delay < 4.0
    assert ScheduleWake(at=d.now + delay) in cmds
    d.tick(delay - 0.01)
    assert len(d.dispatches) == 1
    d.tick(0.02)
    assert d.last("a").attempt == 2
    d.fail("a", retryable=True)
    d.tick(100)
    assert d.last("a").attempt == 3
    d.fail("a", retryable=True)
    d.tick(100)
    assert len(d.dispatches) == 3
    assert d.status("a") == "failed"
    assert (done := d.completion()) is not None
    assert done.status == "failed"


def test_a_non_retryable_failure_is_not_retried() -> None:
    d = Driver()
    d.compile(workflow(act("a", retry=RetryPolicy(max_attempts=5))))
    d.fail("a", retryable=False)
    d.tick(1000)
    assert len(d.dispatches) == 1
    assert d.status("a") == "failed"


def test_an_activity_past_its_timeout_is_cancelled_and_timed_out() -> None:
    d = Driver(EngineConfig(heartbeat_timeout_seconds=20.0))
    d.compile(workflow(act("slow", timeout_seconds=30.0)))
    first = d.last("slow")
    d.feed(d.started(first))
    d.tick(15)
    d.feed(d.heartbeat(first))
    d.tick(15.5)
    timed_out = [e for e in d.emitted if isinstance(e, ActivityTimedOut)]
    assert len(timed_out) == 1
    assert d.cancels[0].activity_id == "slow"
    assert d.status("slow") == "timed_out"
    assert (done := d.completion()) is not None
    assert done.status == "failed"


def test_heartbeat_loss_retries_the_activity_as_a_new_attempt() -> None:
    d = Driver(EngineConfig(heartbeat_timeout_seconds=10.0))
    d.compile(workflow(act("a")))
    first = d.last("a")
    d.feed(d.started(first, agent="dead"))
    d.tick(5)
    d.feed(d.heartbeat(first, agent="dead"))
    d.tick(9)
    assert len(d.dispatches) == 1
    d.tick(2)
    lost = [e for e in d.emitted if isinstance(e, ActivityLost)]
    assert [(e.attempt, e.agent) for e in lost] == [(1, "dead")]
    second = d.last("a")
    assert second.attempt == 2
    assert second.agent == ""
    d.feed(d.completed(first))  # the presumed-dead agent answers late: ignored
    assert d.status("a") == "dispatched"
    d.feed(d.started(second, agent="alive"), d.completed(second))
    assert (done := d.completion()) is not None
    assert done.status == "succeeded"


def test_the_heartbeat_timeout_counts_from_when_the_scheduler_could_hear_again() -> None:
    """The scheduler's own connection was down: the agent's beats went nowhere through no fault of
    the agent's, and the timeout runs from when the scheduler could hear again."""
    d = Driver(EngineConfig(heartbeat_timeout_seconds=10.0))
    d.compile(workflow(act("a")))
    first = d.last("a")
    d.feed(d.started(first))
    d.st.heard_since = d.now + 25  # the bus came back 25 s later
    d.tick(30)
    assert [e for e in d.emitted if isinstance(e, ActivityLost)] == []
    d.feed(d.heartbeat(first))  # the agent is heard again
    d.tick(9)
    assert [e for e in d.emitted if isinstance(e, ActivityLost)] == []
    d.tick(10)  # and then falls silent: lost, a timeout after it was last heard
    assert [(e.attempt, e.activity_id) for e in d.emitted if isinstance(e, ActivityLost)] == [(1, "a")]
    assert d.last("a").attempt == 2


def test_losing_the_agent_holding_a_workspace_reruns_the_resource_from_its_checkout() -> None:
    d = Driver(EngineConfig(heartbeat_timeout_seconds=10.0))
    stages = ["checkout", "init", "plan", "apply"]
    acts = [act(f"vpc/{s}", *([f"vpc/{stages[n - 1]}"] if n else []), workspace="vpc") for n, s in enumerate(stages)]
    d.compile(workflow(*acts))
    d.feed(d.started(d.last("vpc/checkout"), agent="a1"), d.completed(d.last("vpc/checkout")))
    init = d.last("vpc/init")
    assert init.agent == "a1"  # pinned to the workspace's agent
    d.feed(d.started(init, agent="a1"), d.completed(init))
    plan = d.last("vpc/plan")
    d.feed(d.started(plan, agent="a1"))
    d.tick(11)
    checkout2 = d.last("vpc/checkout")
    assert (checkout2.attempt, checkout2.agent) == (2, "")
    assert d.status("vpc/init") == "pending"
    assert d.status("vpc/plan") == "pending"
    d.feed(d.started(checkout2, agent="a2"), d.completed(checkout2))
    assert d.last("vpc/init").agent == "a2"
    d.succeed("vpc/init")
    assert d.last("vpc/plan").attempt == 2
    assert d.run_to_end().status == "succeeded"


def test_cancel_stops_running_skips_the_rest_and_still_runs_always_hooks() -> None:
    d = Driver(EngineConfig(cancel_grace_seconds=5.0))
    d.compile(workflow(act("a"), act("b", "a"), act("hook", "b", when="always")))
    a = d.last("a")
    d.feed(d.started(a))
    d.cancel()
    assert [(c.activity_id, c.attempt) for c in d.cancels] == [("a", 1)]
    assert d.status("b") == "skipped"
    assert d.run().status == "cancelling"
    d.tick(5.1)  # the agent never confirms: cancelled after the grace
    assert d.status("a") == "cancelled"
    assert d.dispatched_ids()[-1] == "hook"
    d.succeed("hook")
    assert (done := d.completion()) is not None
    assert done.status == "cancelled"


def test_a_second_run_on_the_environment_queues_until_the_first_finishes() -> None:
    d = Driver()
    d.compile(workflow(act("a")), run_id="r1")
    d.now += 1
    d.compile(workflow(act("a")), run_id="r2")
    queued = [e for e in d.emitted if isinstance(e, RunQueued)]
    assert len(queued) == 1
    assert "r1" in queued[0].reason
    assert d.run("r2").status == "queued"
    assert d.dispatched_ids("r2") == []
    d.run_to_end("r1")
    assert d.run("r2").status == "running"
    assert d.run_to_end("r2").status == "succeeded"


def test_runs_on_other_environments_do_not_wait() -> None:
    d = Driver()
    d.compile(workflow(act("a"), env="dev"), run_id="r1")
    d.compile(workflow(act("a"), env="prod"), run_id="r2")
    assert d.dispatched_ids("r2") == ["a"]


def test_parallelism_is_limited_per_run_and_per_tenant() -> None:
    d = Driver(EngineConfig(max_parallel_per_run=2, max_parallel_per_tenant=3))
    d.compile(workflow(*[act(f"a{n}") for n in range(5)], env="e1"), run_id="r1")
    d.compile(workflow(*[act(f"a{n}") for n in range(5)], env="e2"), run_id="r2")
    assert len(d.dispatched_ids("r1")) == 2
    assert len(d.dispatched_ids("r2")) == 1
    d.succeed("a0", "r1")
    assert len(d.dispatched_ids("r1")) + len(d.dispatched_ids("r2")) == 4
    d.run_to_end("r1")
    d.run_to_end("r2")
    assert len(d.dispatched_ids("r1")) == len(d.dispatched_ids("r2")) == 5


def test_an_approval_waits_until_approved() -> None:
    d = Driver()
    d.compile(workflow(act("approve", kind="approval", spec=ApprovalSpec()), act("apply", "approve")))
    a = d.last("approve")
    d.feed(d.started(a), ApprovalRequested(tenant="acme", run_id="r1", activity_id="approve", attempt=1))
    assert d.status("approve") == "waiting"
    d.feed(d.completed(a))
    assert d.status("approve") == "waiting"
    d.tick(3600)
    assert d.dispatched_ids() == ["approve"]
    d.feed(ApprovalDecided(tenant="acme", run_id="r1", activity_id="approve", attempt=1, decision="approved"))
    assert d.dispatched_ids() == ["approve", "apply"]


def test_a_rejected_approval_fails_the_run() -> None:
    d = Driver()
    d.compile(workflow(act("approve", kind="approval", spec=ApprovalSpec()), act("apply", "approve")))
    d.feed(d.started(d.last("approve")))
    d.feed(
        ApprovalDecided(
            tenant="acme",
            run_id="r1",
            activity_id="approve",
            attempt=1,
            decision="rejected",
            decided_by="lee",
        )
    )
    done = d.completion()
    assert done is not None
    assert done.status == "failed"
    assert "rejected by lee" in done.message


def test_events_of_a_stale_attempt_and_duplicates_change_nothing() -> None:
    d = Driver()
    d.compile(workflow(act("a", retry=RetryPolicy(max_attempts=2, initial_backoff_seconds=0.0)), act("b", "a")))
    first = d.last("a")
    d.feed(d.started(first), d.failed(first))
    d.tick(0.001)
    second = d.last("a")
    assert second.attempt == 2
    d.feed(d.completed(first), d.failed(first), d.started(first))
    assert d.status("a") == "dispatched"
    done = d.completed(second)
    d.feed(d.started(second), done, done, d.started(second))
    assert d.dispatched_ids() == ["a", "a", "b"]
    assert max(d.dispatch_count.values()) == 1


def test_a_workflow_with_a_cycle_fails_without_dispatching() -> None:
    d = Driver()
    d.compile(workflow(act("a", "b"), act("b", "a")))
    done = d.completion()
    assert done is not None
    assert done.status == "failed"
    assert "cycle" in done.message
    assert d.dispatches == []


def test_a_run_cancelled_while_queued_never_starts() -> None:
    d = Driver()
    d.compile(workflow(act("a")), run_id="r1")
    d.compile(workflow(act("a")), run_id="r2")
    d.cancel("r2")
    done = d.completion("r2")
    assert done is not None
    assert done.status == "cancelled"
    assert d.dispatched_ids("r2") == []


def test_the_scheduler_emits_events_with_deterministic_ids() -> None:
    one, two = Driver(), Driver()
    for d in (one, two):
        d.compile(workflow(act("a")))
        d.run_to_end()
    assert [e.event_id for e in one.emitted] == [e.event_id for e in two.emitted]
    assert isinstance(one.emitted[-1], RunCompleted)
    assert one.emitted[-1].occurred_at == ts(one.now)


def test_pinned_work_no_agent_starts_redoes_the_workspace_on_another_agent() -> None:
    d = Driver(EngineConfig(heartbeat_timeout_seconds=10.0, pinned_start_timeout_seconds=60.0))
    d.compile(workflow(act("vpc/checkout", workspace="vpc"), act("vpc/init", "vpc/checkout", workspace="vpc")))
    checkout = d.last("vpc/checkout")
    d.feed(d.started(checkout, agent="a1"), d.completed(checkout))
    assert d.last("vpc/init").agent == "a1"
    d.tick(59)
    assert len(d.dispatches) == 2
    d.tick(2)  # a1 never took it: it is gone
    assert [(c.activity_id, c.attempt) for c in d.cancels] == [("vpc/init", 1)]
    again = d.last("vpc/checkout")
    assert (again.attempt, again.agent) == (2, "")
    d.feed(d.started(again, agent="a2"), d.completed(again))
    assert (d.last("vpc/init").attempt, d.last("vpc/init").agent) == (2, "a2")


@pytest.mark.parametrize("ends", ["fails", "is lost"])
def test_a_running_dependent_is_not_retried_once_its_redone_dependency_failed(ends: str) -> None:
    """Found by the property test: a0 succeeds in workspace w2 and a1 (no workspace) starts on
    it; a2 loses w2's agent, so a0 is redone, and fails. a1 ran on a0's first result; when its
    attempt then fails (or its agent goes), its retry must pass a0's verdict as a pending
    activity would: skipped, never dispatched after a failed `success` dependency."""
    d = Driver(EngineConfig(heartbeat_timeout_seconds=10.0, pinned_start_timeout_seconds=30.0))
    retry = RetryPolicy(max_attempts=3)
    d.compile(workflow(act("a0", workspace="w2"), act("a1", "a0", retry=retry), act("a2", "a0", workspace="w2")))
    a0 = d.last("a0")
    d.feed(d.started(a0, agent="agent-1"), d.completed(a0))
    a1, a2 = d.last("a1"), d.last("a2")
    d.feed(d.started(a1, agent="agent-3"), d.started(a2, agent="agent-1"))
    d.tick(9)
    d.feed(d.heartbeat(a1, agent="agent-3"))
    d.tick(2)  # a2's agent, which holds w2, is lost: a0 is redone there
    again = d.last("a0")
    assert again.attempt == 2
    assert d.status("a1") == "running"  # a1 is not in w2: it runs on
    d.feed(d.started(again, agent="agent-2"), d.failed(again, retryable=False))
    assert d.status("a2") == "skipped"
    if ends == "fails":
        d.feed(d.failed(a1, retryable=True))
    else:
        d.tick(10)  # no heartbeat from agent-3: a1's attempt is lost
    d.tick(60)
    assert [(x.activity.id, x.attempt) for x in d.dispatches if x.activity.id == "a1"] == [("a1", 1)]
    run = d.run()
    assert (d.status("a1"), run.acts[run.index["a1"]].skip_kind) == ("skipped", "upstream")
    assert (done := d.completion()) is not None
    assert done.status == "failed"
    assert run.inflight == 0


def test_an_event_of_another_tenant_never_touches_a_run_with_the_same_id() -> None:
    d = Driver()
    d.compile(workflow(act("a"), act("b", "a")))
    forged = d.completed(d.last("a"))
    d.feed(msgspec.structs.replace(forged, tenant="intruder"))
    assert d.status("a") != "succeeded"
    assert d.dispatched_ids() == ["a"]
