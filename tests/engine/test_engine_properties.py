"""Property tests: random DAGs, agents that succeed, fail, vanish or answer late, and event
streams shuffled, duplicated and delayed. Whatever happens, every run ends exactly once, no
activity starts before its dependencies finish, and no attempt is dispatched twice."""

from __future__ import annotations

from typing import Any

import msgspec
from engine_support import Driver, act, ts, workflow
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trellis_core.events import ActivityCancelled, ActivityCompleted, Event, RunCancelRequested, RunCompiled
from trellis_core.workflow import RetryPolicy, Workflow
from trellis_engine.commands import Cancel, Dispatch, PublishEvent
from trellis_engine.decide import decide, fold
from trellis_engine.graph import restore, snapshot
from trellis_engine.recovery import adopt
from trellis_engine.state import TERMINAL, EngineConfig, RunSnapshot, SchedulerState
from trellis_engine.transitions import _effect

Outcome = str  # complete | fail | fail_final | hang (started, then silence: the agent died)


@st.composite
def dags(draw: Any) -> Workflow:
    n = draw(st.integers(1, 9))
    activities = []
    for i in range(n):
        deps = draw(st.lists(st.integers(0, i - 1), unique=True, max_size=3)) if i else []
        activities.append(
            act(
                f"a{i}",
                *[f"a{d}" for d in deps],
                when=draw(st.sampled_from(["success", "success", "success", "failure", "always"])),
                on_failure=draw(st.sampled_from(["fail", "fail", "continue"])),
                retry=RetryPolicy(
                    max_attempts=draw(st.integers(1, 3)),
                    initial_backoff_seconds=draw(st.sampled_from([0.0, 1.0, 4.0])),
                ),
                timeout_seconds=draw(st.sampled_from([None, None, 25.0])),
                workspace=draw(st.sampled_from(["", "", "w1", "w2"])),
            )
        )
    return workflow(*activities)


class Checker:
    """Drives the engine like a fleet of erratic agents and checks every command it emits."""

    def __init__(self, d: Driver, data: Any) -> None:
        self.d = d
        self.data = data
        self.seen = 0
        self.pending: list[Event] = []
        self.delivered: list[Event] = []
        self.last_attempt: dict[tuple[str, str], int] = {}
        self.completions: set[tuple[str, str, int]] = set()
        self.stream: list[Event] = []  # what JetStream would hold, in order (duplicates dropped)
        self._stored: set[str] = set()
        self.snapshot: tuple[int, dict[str, bytes]] | None = None

    def store(self, event: Event) -> None:
        if event.msg_id() not in self._stored:
            self._stored.add(event.msg_id())
            self.stream.append(event)

    def take_snapshot(self) -> None:
        """What the scheduler would have in KV now: every run's snapshot, and where the stream is."""
        snaps = {r.run_id: msgspec.json.encode(snapshot(r)) for r in self.d.st.runs.values()}
        self.snapshot = (len(self.stream), snaps)

    def after_commands(self) -> None:
        for cmd in self.d.commands[self.seen :]:
            if isinstance(cmd, PublishEvent):
                self.store(cmd.event)
            if isinstance(cmd, Dispatch):
                self.check_dispatch(cmd)
                self.agent_plays(cmd)
            elif isinstance(cmd, Cancel) and self.data.draw(st.booleans(), label="agent confirms cancel"):
                self.pending.append(
                    ActivityCancelled(
                        tenant=cmd.tenant,
                        run_id=cmd.run_id,
                        activity_id=cmd.activity_id,
                        attempt=cmd.attempt,
                        occurred_at=ts(self.d.now),
                    )
                )
        self.seen = len(self.d.commands)

    def check_dispatch(self, cmd: Dispatch) -> None:
        st_, run = self.d.st, self.d.st.runs[cmd.run_id]
        key = (cmd.run_id, cmd.activity.id)
        assert self.d.dispatch_count[(cmd.run_id, cmd.activity.id, cmd.attempt)] == 1, "attempt dispatched twice"
        assert cmd.attempt == self.last_attempt.get(key, 0) + 1, "attempts must count up one by one"
        self.last_attempt[key] = cmd.attempt
        assert run.status in ("running", "cancelling")
        holders = [r for r in st_.runs.values() if r.env_key == run.env_key and r.status in ("running", "cancelling")]
        assert len(holders) == 1, "two runs active on one environment"
        i = run.index[cmd.activity.id]
        effects = []
        for dep in run.deps[i]:
            assert run.acts[dep].status in TERMINAL, f"{cmd.activity.id} dispatched before {run.activities[dep].id}"
            effects.append(_effect(run, dep))
        if cmd.activity.when == "success":
            assert not any(blocks for blocks, _ in effects)
        if cmd.activity.when == "failure":
            assert any(unsucceeded for _, unsucceeded in effects)
        cfg = st_.config
        assert not cfg.max_parallel_per_run or run.inflight <= cfg.max_parallel_per_run
        assert not cfg.max_parallel_per_tenant or st_.tenant_inflight[run.tenant] <= cfg.max_parallel_per_tenant

    def agent_plays(self, cmd: Dispatch) -> None:
        outcome: Outcome = self.data.draw(
            st.sampled_from(["complete", "complete", "complete", "fail", "fail_final", "hang"]),
            label=f"outcome of {cmd.activity.id}#{cmd.attempt}",
        )
        self.pending.append(self.d.started(cmd, agent=f"agent-{cmd.attempt}"))
        if outcome == "complete":
            self.pending.append(self.d.completed(cmd))
        elif outcome in ("fail", "fail_final"):
            self.pending.append(self.d.failed(cmd, retryable=outcome == "fail"))

    def deliver(self, event: Event) -> None:
        self.delivered.append(event)
        self.store(event)
        if isinstance(event, ActivityCompleted):
            self.completions.add((event.run_id, event.activity_id, event.attempt))
        self.d.feed(event)
        self.after_commands()
        for run in self.d.st.runs.values():
            for i, a in enumerate(run.acts):
                if a.status == "succeeded":
                    assert (run.run_id, run.activities[i].id, a.attempt) in self.completions, "stale success"

    def tick(self, seconds: float) -> None:
        self.d.tick(seconds)
        self.after_commands()

    def all_done(self, run_ids: list[str]) -> bool:
        return all(self.d.completion(r) is not None for r in run_ids)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dags(), st.booleans(), st.data())
def test_any_dag_under_any_event_order_ends_once_and_respects_dependencies(
    wf: Workflow, two_runs: bool, data: Any
) -> None:
    config = EngineConfig(
        heartbeat_timeout_seconds=10.0,
        cancel_grace_seconds=5.0,
        max_losses=2,
        pinned_start_timeout_seconds=30.0,
        max_parallel_per_run=data.draw(st.sampled_from([0, 1, 2])),
        max_parallel_per_tenant=data.draw(st.sampled_from([0, 2, 3])),
    )
    d = Driver(config)
    c = Checker(d, data)
    runs = ["r1", "r2"] if two_runs else ["r1"]
    for r in runs:
        c.deliver(RunCompiled(tenant="acme", run_id=r, workflow=wf, occurred_at=ts(d.now)))
        d.now += 0.001
    cancelled: set[str] = set()
    for _ in range(150):
        if c.all_done(runs) and not c.pending:
            break
        move = data.draw(st.integers(0, 9), label="move")
        if c.pending and move < 6:
            c.deliver(c.pending.pop(data.draw(st.integers(0, len(c.pending) - 1), label="which event")))
        elif c.delivered and move == 6:
            c.deliver(data.draw(st.sampled_from(c.delivered), label="duplicate"))
        elif move == 7:
            c.tick(data.draw(st.sampled_from([0.5, 3.0, 11.0]), label="time passes"))
        elif move == 9 and c.snapshot is None:
            c.take_snapshot()
        elif move == 8:
            r = data.draw(st.sampled_from(runs), label="cancel")
            if r not in cancelled:
                cancelled.add(r)
                c.deliver(RunCancelRequested(tenant="acme", run_id=r, occurred_at=ts(d.now)))
        else:
            c.tick(0.0)
    for _ in range(400):  # let everything still in flight land, in order, as time goes by
        if c.all_done(runs):
            break
        while c.pending:
            c.deliver(c.pending.pop(0))
        c.tick(12.0)
    for r in runs:
        done = d.completion(r)
        assert done is not None, f"run {r} never finished"
        run = d.st.runs[r]
        assert run.status == done.status
        assert all(a.status in TERMINAL for a in run.acts)
        assert run.remaining == 0
        assert run.inflight == 0
        if r not in cancelled:
            assert done.status != "cancelled"
    assert d.st.tenant_inflight.get("acme", 0) == 0
    assert not d.st.env_holder
    if c.snapshot is not None:
        replay_matches(c, wf, config)


def replay_matches(c: Checker, wf: Workflow, config: EngineConfig) -> None:
    """A scheduler restarted from the snapshot, fed the stream after it, ends where the first one
    did and dispatches no attempt the first one did not."""
    at, snaps = c.snapshot or (0, {})
    st2 = SchedulerState(config=config)
    for raw in snaps.values():
        adopt(st2, restore(msgspec.json.decode(raw, type=RunSnapshot), wf), c.d.now)
    for event in c.stream[at:]:
        fold(st2, event)
    _, cmds = decide(st2, c.d.now + 1000.0)
    original = set(c.d.dispatch_count)
    assert {(x.run_id, x.activity.id, x.attempt) for x in cmds if isinstance(x, Dispatch)} <= original
    for run_id, run in c.d.st.runs.items():
        if run_id not in st2.runs:  # not compiled yet, or already over, at the snapshot
            continue
        again = st2.runs[run_id]
        assert again.status == run.status, f"{run_id}: {again.status} after replay, {run.status} before"
        assert [a.status for a in again.acts] == [a.status for a in run.acts]
