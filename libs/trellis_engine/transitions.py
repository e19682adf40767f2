"""Status changes and what they ripple into: slot counts, dependents' counters, skips; and a
run's start and close (both fold and decide use them, so they live here, below both).

Every status change goes through `set_status` so the per-run and per-tenant in-flight counts and
the run's count of unfinished activities stay exact. Propagation uses a work list, not
recursion, so a 500-long chain of skips cannot overflow the stack.
"""

from __future__ import annotations

from typing import Any

from trellis_core.events import TerminalRunStatus
from trellis_engine import limits
from trellis_engine.state import (
    ACTIVE,
    IN_FLIGHT,
    NO_OP_SKIPS,
    TERMINAL,
    TERMINAL_RUN,
    ActivityStatus,
    RunState,
    SchedulerState,
    SkipKind,
)


def set_status(st: SchedulerState, run: RunState, i: int, new: ActivityStatus) -> None:
    a = run.acts[i]
    old = a.status
    if old == new:
        return
    was_in, now_in = old in IN_FLIGHT, new in IN_FLIGHT
    if was_in != now_in:
        delta = 1 if now_in else -1
        run.inflight += delta
        st.tenant_inflight[run.tenant] = st.tenant_inflight.get(run.tenant, 0) + delta
        if not now_in:
            st.dirty.add(run.run_id)
            starved = st.starved.pop(run.tenant, None)
            if starved:
                st.dirty.update(starved)
    was_t, now_t = old in TERMINAL, new in TERMINAL
    if was_t != now_t:
        run.remaining += -1 if now_t else 1
    a.status = new


def _effect(run: RunState, d: int) -> tuple[bool, bool]:
    """How a terminal dependency counts for a dependent: (blocks `success`, did not succeed)."""
    a = run.acts[d]
    if a.status == "succeeded" or (a.status == "skipped" and a.skip_kind in NO_OP_SKIPS):
        return False, False
    if a.status in ("failed", "timed_out") and run.activities[d].on_failure == "continue":
        # A failure its template chose to tolerate is not the run failing: it neither blocks
        # `success` dependents nor fires `failure` ones (else on-success and on-failure both run).
        return False, False
    if a.status in ("failed", "timed_out") and run.workflow.continue_past_failure:
        return False, True  # a force-destroy goes on past it; the run still fails
    return True, True


def finish(
    st: SchedulerState,
    run: RunState,
    i: int,
    status: ActivityStatus,
    now: float,
    reason: str = "",
    skip_kind: SkipKind = "",
) -> None:
    """Make activity `i` terminal and promote or skip whatever that unblocks, transitively."""
    work = [(i, status, reason, skip_kind)]
    while work:
        j, status, reason, skip_kind = work.pop()
        a = run.acts[j]
        if a.status in TERMINAL:
            continue
        set_status(st, run, j, status)
        a.finished_at = now
        a.reason = reason
        a.skip_kind = skip_kind
        a.retry_at = 0.0
        activity = run.activities[j]
        if (status in ("failed", "timed_out") and activity.on_failure == "fail") or (
            status == "cancelled" and not run.cancel_requested
        ):
            if not run.failed:
                run.message = f"{activity.id}: {reason or status}"
            run.failed = True
        blocks, unsucceeded = _effect(run, j)
        for k in run.dependents[j]:
            b = run.acts[k]
            if b.status != "pending":
                continue
            b.unfinished -= 1
            b.blocked += blocks
            b.unsucceeded += unsucceeded
            if b.unfinished <= 0:
                verdict = promotion(run, k)
                if verdict is not None:
                    work.append((k, "skipped", verdict[1], verdict[0]))
                else:
                    set_status(st, run, k, "ready")
                    run.push_ready(k)


def promotion(run: RunState, k: int) -> tuple[SkipKind, str] | None:
    """For a pending activity whose dependencies are all finished: None if it should run, else
    why it is skipped."""
    activity, b = run.activities[k], run.acts[k]
    if run.cancel_requested and activity.when != "always":
        return "cancel", "run cancelled"
    if activity.when == "success" and b.blocked:
        return "upstream", "a dependency did not succeed"
    if activity.when == "failure" and not b.unsucceeded:
        return "not_applicable", "nothing failed"
    return None


def promote_if_unblocked(st: SchedulerState, run: RunState, k: int, now: float) -> None:
    b = run.acts[k]
    if b.status != "pending" or b.unfinished > 0:
        return
    verdict = promotion(run, k)
    if verdict is None:
        set_status(st, run, k, "ready")
        run.push_ready(k)
    else:
        finish(st, run, k, "skipped", now, verdict[1], verdict[0])


def recount(run: RunState, k: int) -> None:
    """Recompute a pending activity's dependency counters from its dependencies' statuses."""
    b = run.acts[k]
    b.unfinished = b.blocked = b.unsucceeded = 0
    for d in run.deps[k]:
        if run.acts[d].status not in TERMINAL:
            b.unfinished += 1
            continue
        blocks, unsucceeded = _effect(run, d)
        b.blocked += blocks
        b.unsucceeded += unsucceeded


def reset_workspace(st: SchedulerState, run: RunState, workspace: str, lost_agent: str, now: float) -> None:
    """The agent holding `workspace` died: everything done in it must be done again on another
    agent, from the workspace's first activity (its checkout) on."""
    run.workspaces.pop(workspace, None)
    reset: list[int] = []
    for i in run.by_workspace.get(workspace, ()):
        a = run.acts[i]
        if a.status == "succeeded" or a.status == "ready" or (a.status in ACTIVE and a.agent == lost_agent):
            set_status(st, run, i, "pending")
            a.agent = ""
            a.retry_at = 0.0
            a.cancel_sent = False
            reset.append(i)
    touched = set(reset)
    for i in reset:
        for k in run.dependents[i]:
            if run.acts[k].status == "ready":
                set_status(st, run, k, "pending")
                run.acts[k].retry_at = 0.0
            if run.acts[k].status == "pending":
                touched.add(k)
    for k in sorted(touched):
        recount(run, k)
    for k in sorted(touched):
        promote_if_unblocked(st, run, k, now)


def last_deploy_outputs(st: SchedulerState, run: RunState) -> dict[str, dict[str, Any]] | None:
    """The outputs of the run's environment's last successful deploy, None if it has none now:
    what this scheduler saw itself since it started, else what the state store knew when the run
    was compiled. (So a run of the environment that ended after this one was compiled but before
    this scheduler started is not seen here; the compiler has the same view for its variables.)"""
    if run.env_key in st.env_outputs:
        return st.env_outputs[run.env_key]
    last = run.workflow.last_deploy
    return last.outputs if last is not None else None


def deployed_before(st: SchedulerState, run: RunState) -> bool:
    """Whether the run's environment has a successful deploy that no destroy undid."""
    return last_deploy_outputs(st, run) is not None


def start_run(st: SchedulerState, run: RunState, now: float) -> None:
    """The run holds its environment: its root activities become ready."""
    run.status = "running"
    run.started_at = now
    # a destroy and a drift check render with what the last deploy produced
    if (run.action == "destroy" or run.workflow.purpose.drift) and not run.outputs:
        previous = last_deploy_outputs(st, run) or {}
        run.outputs = {resource: dict(outputs) for resource, outputs in previous.items()}
    for name, given in run.workflow.static.items():  # static resources: outputs given, not produced
        if given.outputs:
            run.outputs[name] = dict(given.outputs)
    for i, a in enumerate(run.acts):
        if a.status == "pending" and a.unfinished == 0:
            promote_if_unblocked(st, run, i, now)


def close_run(
    st: SchedulerState, run: RunState, now: float, status: TerminalRunStatus | None = None
) -> TerminalRunStatus | None:
    """The run is over: record its status, skip what never ran, free its environment and
    remember a deploy's outputs (a destroy's end forgets them). None if it had ended already."""
    if run.status in TERMINAL_RUN:
        return None
    if status is None:
        status = "cancelled" if run.cancel_requested else "failed" if run.failed else "succeeded"
    if run.remaining:  # never started, or completed by a replayed RunCompleted ahead of `decide`
        for i, a in enumerate(run.acts):
            if a.status not in TERMINAL:
                set_status(st, run, i, "skipped")
                a.skip_kind = "cancel" if run.cancel_requested else "upstream"
                a.reason = run.cancel_reason or run.message
    run.status = status
    run.finished_at = now
    limits.release(st, run)
    if status == "succeeded" and not run.workflow.purpose.ordinary:
        pass  # a day-2 action or a drift check: the environment's deploy stays what it was
    elif status == "succeeded" and run.action == "deploy":
        st.env_outputs[run.env_key] = run.outputs
    elif status == "succeeded" and run.action == "destroy":  # gone: a new deploy starts afresh
        st.env_outputs[run.env_key] = None
    starved = st.starved.get(run.tenant)
    if starved:
        starved.discard(run.run_id)
    return status
