"""`fold(state, event) -> state`: apply one run event. Duplicates, late events and events of
stale attempts change nothing, so the stream can be replayed over a snapshot at will."""

from __future__ import annotations

from trellis_core.events import (
    ActivityCancelled,
    ActivityCompleted,
    ActivityDispatched,
    ActivityEvent,
    ActivityFailed,
    ActivityHeartbeat,
    ActivityLost,
    ActivityStarted,
    ActivityTimedOut,
    ApprovalDecided,
    ApprovalRequested,
    Event,
    RunCancelRequested,
    RunCompiled,
    RunCompleted,
    RunQueued,
    RunStarted,
)
from trellis_core.workflow import Workflow
from trellis_engine import limits
from trellis_engine.backoff import backoff_seconds
from trellis_engine.bounds import workflow_problems
from trellis_engine.graph import build_run
from trellis_engine.state import ACTIVE, IN_FLIGHT, TERMINAL, TERMINAL_RUN, RunState, SchedulerState
from trellis_engine.transitions import (
    close_run,
    finish,
    promotion,
    recount,
    reset_workspace,
    set_status,
    start_run,
)


def fold(st: SchedulerState, event: Event) -> SchedulerState:
    """Apply `event` to the state (in place) and return it."""
    if isinstance(event, RunCompiled):
        _compiled(st, event)
        return st
    run = st.runs.get(event.run_id)
    if run is None or run.status in TERMINAL_RUN or run.tenant != event.tenant:
        return st  # another tenant's event can never touch this run, whatever its run id
    st.dirty.add(run.run_id)
    if isinstance(event, ActivityEvent):
        _activity_event(st, run, event)
    elif isinstance(event, RunStarted):
        if run.status == "queued":
            limits.take(st, run)
            start_run(st, run, event.occurred_at.timestamp())
    elif isinstance(event, RunQueued):
        run.queued_emitted = True
        run.queue_reason = event.reason
    elif isinstance(event, RunCancelRequested):
        if not run.cancel_requested:
            run.cancel_requested = True
            run.cancel_reason = event.reason or f"cancelled by {event.requested_by or 'request'}"
    elif isinstance(event, RunCompleted):
        close_run(st, run, event.occurred_at.timestamp(), event.status)
    return st


def _compiled(st: SchedulerState, event: RunCompiled) -> None:
    at = event.occurred_at.timestamp()
    if event.run_id in st.runs or not st.finished.admits(event.run_id, at):
        return
    problems = workflow_problems(event.workflow)
    workflow = event.workflow
    if problems:
        workflow = Workflow(
            environment=workflow.environment,
            template=workflow.template,
            action=workflow.action,
            activities=(),
        )
    run = build_run(event.tenant, event.run_id, workflow, at, event.requested_by)
    if problems:
        run.failed = True
        run.message = "; ".join(problems)
    st.runs[run.run_id] = run
    limits.enqueue(st, run)
    st.dirty.add(run.run_id)


def _current(run: RunState, event: ActivityEvent) -> int | None:
    """The activity's position if the event is about its current attempt, else None. An event
    of a later attempt than we know (replay over an older snapshot) means that attempt was
    dispatched: catch up — even from `pending`, since what made it ready may have been a decision
    that left no event of its own (a skip condition, a cancel), which `decide` will make again."""
    i = run.index.get(event.activity_id)
    if i is None:
        return None
    a = run.acts[i]
    if event.attempt == a.attempt and a.status in ACTIVE:
        return i
    if event.attempt > a.attempt and a.status in ("pending", "ready"):
        a.attempt = event.attempt
        a.retry_at = 0.0
        a.dispatched_at = event.occurred_at.timestamp()
        return i
    return None


def _activity_event(st: SchedulerState, run: RunState, event: ActivityEvent) -> None:
    i = _current(run, event)
    if i is None:
        return
    a = run.acts[i]
    if a.status in ("pending", "ready"):  # caught up above
        set_status(st, run, i, "dispatched")
    t = event.occurred_at.timestamp()
    match event:
        case ActivityDispatched():
            _dispatched(run, i, event)
        case ActivityStarted():
            _started(st, run, i, event, t)
        case ActivityHeartbeat():
            run.acts[i].last_seen = max(run.acts[i].last_seen, t)
        case ActivityCompleted():
            _completed(st, run, i, event, t)
        case ActivityFailed():
            fail_attempt(st, run, i, t, event.reason, retryable=event.retryable, timed_out=event.timed_out)
        case ActivityTimedOut():
            reason = f"timed out after {event.timeout_seconds:g}s"
            fail_attempt(st, run, i, t, reason, retryable=True, timed_out=True)
        case ActivityCancelled():
            finish(st, run, i, "cancelled", t, event.reason or "cancelled")
        case ActivityLost():
            _lost(st, run, i, event, t)
        case ApprovalRequested():
            if run.acts[i].status != "waiting":
                set_status(st, run, i, "waiting")
        case ApprovalDecided():
            _approval_decided(st, run, i, event, t)


def _dispatched(run: RunState, i: int, event: ActivityDispatched) -> None:
    if event.agent and not run.acts[i].agent:
        run.acts[i].agent = event.agent


def _started(st: SchedulerState, run: RunState, i: int, event: ActivityStarted, t: float) -> None:
    a, activity = run.acts[i], run.activities[i]
    if a.status != "dispatched":
        return
    set_status(st, run, i, "running")
    a.agent = event.agent
    a.started_at = a.last_seen = t
    if activity.workspace and activity.workspace not in run.workspaces:
        run.workspaces[activity.workspace] = event.agent
    if activity.timeout_seconds:
        st.add_timer(t + activity.timeout_seconds, run.run_id, i, a.attempt, "timeout")
    st.add_timer(t + st.config.heartbeat_timeout_seconds, run.run_id, i, a.attempt, "heartbeat")


def _completed(st: SchedulerState, run: RunState, i: int, event: ActivityCompleted, t: float) -> None:
    a, activity = run.acts[i], run.activities[i]
    if activity.kind == "approval":  # the notification went out: now wait for the decision
        if a.status != "waiting":
            set_status(st, run, i, "waiting")
        return
    a.outputs = event.outputs
    if activity.resource and event.outputs:
        recorded = run.outputs.setdefault(activity.resource, {})
        for key, value in event.outputs.items():
            recorded[key] = value if isinstance(value, dict) and "value" in value else {"value": value}
    finish(st, run, i, "succeeded", t)


def fail_attempt(
    st: SchedulerState, run: RunState, i: int, t: float, reason: str, *, retryable: bool, timed_out: bool
) -> None:
    """The current attempt failed: retry after a backoff if the policy allows, else finish."""
    a, activity = run.acts[i], run.activities[i]
    if retryable and a.attempt < activity.retry.max_attempts and not run.cancel_requested:
        a.reason = reason
        if _requeue_behind_redone_dependencies(st, run, i, t):
            return
        set_status(st, run, i, "ready")
        a.retry_at = t + backoff_seconds(activity.retry, a.attempt, f"{run.run_id}/{activity.id}/{a.attempt}")
        st.add_timer(a.retry_at, run.run_id, i, a.attempt, "retry")
        return
    finish(st, run, i, "timed_out" if timed_out else "failed", t, reason)


def _lost(st: SchedulerState, run: RunState, i: int, event: ActivityLost, t: float) -> None:
    """The agent stopped answering: run the attempt again elsewhere (a new attempt)."""
    a, activity = run.acts[i], run.activities[i]
    if a.status not in IN_FLIGHT:
        return
    a.losses += 1
    agent = event.agent or a.agent
    if a.losses > st.config.max_losses:
        finish(st, run, i, "failed", t, f"agent {agent or '?'} lost {a.losses} times")
        return
    if run.cancel_requested:
        finish(st, run, i, "cancelled", t, "agent lost while cancelling")
        return
    a.reason = f"agent {agent or '?'} lost"
    if activity.workspace and run.workspaces.get(activity.workspace) in (agent, None):
        a.agent = agent
        reset_workspace(st, run, activity.workspace, agent, t)
        return
    a.agent = ""
    if _requeue_behind_redone_dependencies(st, run, i, t):
        return
    set_status(st, run, i, "ready")
    run.push_ready(i)


def _requeue_behind_redone_dependencies(st: SchedulerState, run: RunState, i: int, t: float) -> bool:
    """Before another attempt, pass again the gate a pending activity passes: a dependency may
    have changed since this activity was promoted (its workspace was lost, so it is done again
    and may end differently this time). Wait for a dependency being redone; skip the activity if
    its dependencies now end so that it must not run (a redone `success` dependency failed).
    True if no attempt follows now."""
    recount(run, i)
    if run.acts[i].unfinished:
        set_status(st, run, i, "pending")
        return True
    verdict = promotion(run, i)
    if verdict is None:
        return False
    finish(st, run, i, "skipped", t, verdict[1], verdict[0])
    return True


def _approval_decided(st: SchedulerState, run: RunState, i: int, event: ApprovalDecided, t: float) -> None:
    if event.decision == "approved":
        finish(st, run, i, "succeeded", t, f"approved by {event.decided_by or '?'}")
        return
    comment = f": {event.comment}" if event.comment else ""
    finish(st, run, i, "failed", t, f"rejected by {event.decided_by or '?'}{comment}")


__all__ = ["TERMINAL", "fail_attempt", "fold"]
