"""Builders and a driver for engine tests: workflows in one line, events stamped with a fake clock."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import Any

from trellis_core.events import (
    ActivityCompleted,
    ActivityFailed,
    ActivityHeartbeat,
    ActivityStarted,
    Event,
    RunCancelRequested,
    RunCompiled,
    RunCompleted,
)
from trellis_core.workflow import Action, Activity, ContainerSpec, TemplateRef, Workflow
from trellis_engine.binding import CallbackMinter, Renderer
from trellis_engine.commands import Cancel, Command, Dispatch, PublishEvent
from trellis_engine.decide import decide, fold
from trellis_engine.state import EngineConfig, RunState, SchedulerState
from trellis_templates.expressions import LATE


def act(id: str, *deps: str, **kw: Any) -> Activity:
    spec = kw.pop("spec", ContainerSpec(command=("true",)))
    return Activity(id=id, kind=kw.pop("kind", "container"), spec=spec, depends_on=tuple(deps), **kw)


def workflow(*activities: Activity, env: str = "dev", action: Action = "deploy", **kw: Any) -> Workflow:
    return Workflow(environment=env, template=TemplateRef(name="t"), action=action, activities=activities, **kw)


def ts(at: float) -> datetime:
    return datetime.fromtimestamp(at, UTC)


class Driver:
    """Feeds events into the engine at a fake time and records every command it gets back."""

    def __init__(
        self,
        config: EngineConfig | None = None,
        *,
        render: Renderer | None = LATE,
        now: float = 1000.0,
        mint: CallbackMinter | None = None,
    ):
        self.st = SchedulerState(config=config or EngineConfig(heartbeat_timeout_seconds=10.0))
        self.now = now
        self.render = render
        self.mint = mint
        self.commands: list[Command] = []
        self.dispatches: list[Dispatch] = []
        self.cancels: list[Cancel] = []
        self.emitted: list[Event] = []
        self.dispatch_count: Counter[tuple[str, str, int]] = Counter()

    def feed(self, *events: Event) -> list[Command]:
        for event in events:
            fold(self.st, event)
        return self.tick()

    def tick(self, advance: float = 0.0) -> list[Command]:
        self.now += advance
        _, cmds = decide(self.st, self.now, render=self.render, mint=self.mint)
        self.commands.extend(cmds)
        for c in cmds:
            if isinstance(c, Dispatch):
                self.dispatches.append(c)
                self.dispatch_count[(c.run_id, c.activity.id, c.attempt)] += 1
            elif isinstance(c, Cancel):
                self.cancels.append(c)
            elif isinstance(c, PublishEvent):
                self.emitted.append(c.event)
        return cmds

    def compile(self, wf: Workflow, run_id: str = "r1", tenant: str = "acme") -> list[Command]:
        return self.feed(RunCompiled(tenant=tenant, run_id=run_id, workflow=wf, occurred_at=ts(self.now)))

    def run(self, run_id: str = "r1") -> RunState:
        return self.st.runs[run_id]

    def status(self, activity_id: str, run_id: str = "r1") -> str:
        run = self.st.runs[run_id]
        return run.acts[run.index[activity_id]].status

    def last(self, activity_id: str, run_id: str = "r1") -> Dispatch:
        return [d for d in self.dispatches if d.activity.id == activity_id and d.run_id == run_id][-1]

    def dispatched_ids(self, run_id: str = "r1") -> list[str]:
        return [d.activity.id for d in self.dispatches if d.run_id == run_id]

    def _base(self, d: Dispatch) -> dict[str, Any]:
        return {"tenant": d.tenant, "run_id": d.run_id, "activity_id": d.activity.id, "attempt": d.attempt,
                "occurred_at": ts(self.now)}  # fmt: skip

    def started(self, d: Dispatch, agent: str = "agent-1") -> ActivityStarted:
        return ActivityStarted(agent=agent, **self._base(d))

    def heartbeat(self, d: Dispatch, agent: str = "agent-1", seq: int = 1) -> ActivityHeartbeat:
        return ActivityHeartbeat(agent=agent, sequence=seq, **self._base(d))

    def completed(self, d: Dispatch, outputs: dict[str, Any] | None = None) -> ActivityCompleted:
        return ActivityCompleted(outputs=outputs or {}, exit_code=0, **self._base(d))

    def failed(self, d: Dispatch, reason: str = "exit 1", retryable: bool = True) -> ActivityFailed:
        return ActivityFailed(reason=reason, exit_code=1, retryable=retryable, **self._base(d))

    def succeed(self, activity_id: str, run_id: str = "r1", outputs: dict[str, Any] | None = None) -> None:
        d = self.last(activity_id, run_id)
        self.feed(self.started(d), self.completed(d, outputs))

    def fail(self, activity_id: str, run_id: str = "r1", retryable: bool = False) -> None:
        d = self.last(activity_id, run_id)
        self.feed(self.started(d), self.failed(d, retryable=retryable))

    def cancel(self, run_id: str = "r1") -> list[Command]:
        return self.feed(RunCancelRequested(tenant="acme", run_id=run_id, reason="stop", occurred_at=ts(self.now)))

    def completion(self, run_id: str = "r1") -> RunCompleted | None:
        done = [e for e in self.emitted if isinstance(e, RunCompleted) and e.run_id == run_id]
        assert len(done) <= 1, f"run {run_id} completed {len(done)} times"
        return done[0] if done else None

    def run_to_end(self, run_id: str = "r1", outputs: dict[str, dict[str, Any]] | None = None) -> RunCompleted:
        """Succeed every dispatched activity until the run completes."""
        for _ in range(10_000):
            done = self.completion(run_id)
            if done is not None:
                return done
            run = self.st.runs[run_id]
            active = [d for d in self.dispatches if d.run_id == run_id
                      and run.acts[run.index[d.activity.id]].attempt == d.attempt
                      and run.acts[run.index[d.activity.id]].status in ("dispatched", "running")]  # fmt: skip
            if not active:
                self.tick(1.0)
                continue
            d = active[0]
            self.feed(self.started(d), self.completed(d, (outputs or {}).get(d.activity.id)))
        raise AssertionError("run did not complete")
