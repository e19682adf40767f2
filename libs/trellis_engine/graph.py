"""Building a run's graph indices from its workflow, and snapshot / restore of a run."""

from __future__ import annotations

import heapq

import msgspec

from trellis_core.workflow import Activity, Workflow
from trellis_engine.state import IN_FLIGHT, TERMINAL, ActivityState, RunSnapshot, RunState

_LATE = b"$("
_encoder = msgspec.json.Encoder()


def graph_problems(workflow: Workflow) -> list[str]:
    """What makes a workflow impossible to walk: duplicate ids, unknown dependencies, cycles."""
    problems: list[str] = []
    index: dict[str, int] = {}
    for i, a in enumerate(workflow.activities):
        if a.id in index:
            problems.append(f"activity {a.id!r} appears twice")
        index[a.id] = i
    for a in workflow.activities:
        problems.extend(f"activity {a.id!r} depends on unknown activity {d!r}" for d in a.depends_on if d not in index)
    if problems:
        return problems
    indegree = [len(set(a.depends_on)) for a in workflow.activities]
    dependents: list[list[int]] = [[] for _ in workflow.activities]
    for i, a in enumerate(workflow.activities):
        for d in set(a.depends_on):
            dependents[index[d]].append(i)
    queue = [i for i, n in enumerate(indegree) if n == 0]
    seen = 0
    while queue:
        i = queue.pop()
        seen += 1
        for j in dependents[i]:
            indegree[j] -= 1
            if indegree[j] == 0:
                queue.append(j)
    if seen != len(workflow.activities):
        stuck = sorted(workflow.activities[i].id for i, n in enumerate(indegree) if n > 0)
        problems.append(f"dependency cycle among {', '.join(stuck[:10])}")
    return problems


def build_run(tenant: str, run_id: str, workflow: Workflow, compiled_at: float, requested_by: str) -> RunState:
    """A fresh run with every activity pending and its dependency counters set."""
    run = RunState(tenant=tenant, run_id=run_id, workflow=workflow, compiled_at=compiled_at, requested_by=requested_by)
    _index(run)
    run.acts = [ActivityState(unfinished=len(d)) for d in run.deps]
    run.remaining = len(run.acts)
    return run


def _index(run: RunState) -> None:
    acts = run.workflow.activities
    run.activities = acts
    run.index = {a.id: i for i, a in enumerate(acts)}
    run.deps = [sorted({run.index[d] for d in a.depends_on}) for a in acts]
    run.dependents = [[] for _ in acts]
    for i, deps in enumerate(run.deps):
        for d in deps:
            run.dependents[d].append(i)
    run.by_workspace = {}
    for i, a in enumerate(acts):
        if a.workspace:
            run.by_workspace.setdefault(a.workspace, []).append(i)
    run.needs_render = _needs_render(acts)


def _needs_render(acts: tuple[Activity, ...]) -> list[bool]:
    """Which activities hold a late-bound expression. The array's encoding is its activities'
    joined by commas, so when it holds none, no activity does: one encode, not one each."""
    if _LATE not in _encoder.encode(acts):
        return [False] * len(acts)
    return [_LATE in _encoder.encode(a) for a in acts]


def snapshot(run: RunState) -> RunSnapshot:
    return RunSnapshot(
        tenant=run.tenant,
        run_id=run.run_id,
        status=run.status,
        compiled_seq=run.compiled_seq,
        last_seq=run.last_seq,
        compiled_at=run.compiled_at,
        requested_by=run.requested_by,
        queue_reason=run.queue_reason,
        queued_emitted=run.queued_emitted,
        started_at=run.started_at,
        finished_at=run.finished_at,
        cancel_requested=run.cancel_requested,
        cancel_reason=run.cancel_reason,
        failed=run.failed,
        message=run.message,
        outputs=run.outputs,
        workspaces=run.workspaces,
        acts=run.acts,
    )


def restore(snap: RunSnapshot, workflow: Workflow) -> RunState:
    """The run as it was at the snapshot; the caller registers it (locks, slots, timers)."""
    run = RunState(
        tenant=snap.tenant,
        run_id=snap.run_id,
        workflow=workflow,
        compiled_at=snap.compiled_at,
        requested_by=snap.requested_by,
        status=snap.status,
        queue_reason=snap.queue_reason,
        queued_emitted=snap.queued_emitted,
        started_at=snap.started_at,
        finished_at=snap.finished_at,
        cancel_requested=snap.cancel_requested,
        cancel_reason=snap.cancel_reason,
        failed=snap.failed,
        message=snap.message,
        outputs=dict(snap.outputs),
        workspaces=dict(snap.workspaces),
        compiled_seq=snap.compiled_seq,
        last_seq=snap.last_seq,
    )
    _index(run)
    if len(snap.acts) != len(run.activities):
        raise ValueError(
            f"snapshot of run {snap.run_id} has {len(snap.acts)} activities, workflow has {len(run.activities)}"
        )
    run.acts = list(snap.acts)
    run.remaining = sum(1 for a in run.acts if a.status not in TERMINAL)
    run.inflight = sum(1 for a in run.acts if a.status in IN_FLIGHT)
    run.ready = [i for i, a in enumerate(run.acts) if a.status == "ready" and a.retry_at == 0.0]
    heapq.heapify(run.ready)
    return run
