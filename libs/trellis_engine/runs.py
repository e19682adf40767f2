"""Run-level decisions: take the environment lock or queue, dispatch what is ready within the
limits, cancel, and complete. Each emits the events the scheduler itself is the author of."""

from __future__ import annotations

import functools
import hashlib
import heapq
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from trellis_core.events import (
    ActivityDispatched,
    ActivityFailed,
    Event,
    RunCompleted,
    RunQueued,
    RunStarted,
    TerminalRunStatus,
)
from trellis_core.workflow import Activity
from trellis_engine import limits
from trellis_engine.binding import (
    CallbackMinter,
    Renderer,
    RenderError,
    late_scope,
    render_activity,
    skip_condition_holds,
)
from trellis_engine.commands import Cancel, Command, Dispatch, PublishEvent
from trellis_engine.state import IN_FLIGHT, TERMINAL_RUN, RunState, SchedulerState
from trellis_engine.transitions import (
    close_run,
    deployed_before,
    finish,
    last_deploy_outputs,
    set_status,
    start_run,
)


def stamp(now: float, key: str) -> dict[str, Any]:
    """`occurred_at` and a deterministic UUIDv7-shaped `event_id` for an event the engine emits:
    the same decision replayed yields the same id (the core draws no randomness)."""
    ms = int(now * 1000) & ((1 << 48) - 1)
    bits = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=10).digest(), "big")
    value = ms << 80 | 0x7 << 76 | ((bits >> 68) & 0xFFF) << 64 | 0b10 << 62 | (bits & ((1 << 62) - 1))
    h = f"{value:032x}"  # str(uuid.UUID(int=value)), without building the UUID
    return {"occurred_at": _at(now), "event_id": f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"}


@functools.lru_cache(maxsize=4)
def _at(now: float) -> datetime:
    """The datetime of `now`: one `decide` stamps every event it emits with the same `now`."""
    return datetime.fromtimestamp(now, UTC)


def emit(cmds: list[Command], event: Event) -> None:
    cmds.append(PublishEvent(event=event))  # type: ignore[arg-type]


def advance(
    st: SchedulerState,
    run: RunState,
    now: float,
    cmds: list[Command],
    render: Renderer | None,
    mint: CallbackMinter | None = None,
) -> None:
    """Move one run forward as far as it can go now."""
    if run.status == "queued":
        if run.failed or run.cancel_requested:
            complete_run(st, run, now, cmds)
            return
        waits_for = limits.acquire(st, run)
        if waits_for:
            if not run.queued_emitted:
                run.queued_emitted = True
                run.queue_reason = f"environment {run.environment} is locked by run {waits_for}"
                key = f"{run.run_id}/queued"
                emit(
                    cmds,
                    RunQueued(tenant=run.tenant, run_id=run.run_id, reason=run.queue_reason, **stamp(now, key)),
                )
            return
        emit(cmds, RunStarted(tenant=run.tenant, run_id=run.run_id, **stamp(now, f"{run.run_id}/started")))
        start_run(st, run, now)
    if run.status in TERMINAL_RUN:
        return
    if run.cancel_requested and run.status == "running":
        begin_cancel(st, run, now, cmds)
    dispatch_ready(st, run, now, cmds, render, mint)
    if run.remaining == 0:
        complete_run(st, run, now, cmds)


def begin_cancel(st: SchedulerState, run: RunState, now: float, cmds: list[Command]) -> None:
    """Stop what runs, skip what has not started, keep `when: always` activities (hooks)."""
    run.status = "cancelling"
    for i, a in enumerate(run.acts):
        activity = run.activities[i]
        if a.status in ("pending", "ready") and activity.when != "always":
            finish(st, run, i, "skipped", now, "run cancelled", "cancel")
        elif a.status == "waiting":
            finish(st, run, i, "cancelled", now, run.cancel_reason)
        elif a.status in IN_FLIGHT and not a.cancel_sent:
            a.cancel_sent = True
            cmds.append(
                Cancel(
                    tenant=run.tenant,
                    run_id=run.run_id,
                    activity_id=activity.id,
                    attempt=a.attempt,
                    pool=_pool(run, i),
                    reason=run.cancel_reason,
                )
            )
            st.add_timer(now + st.config.cancel_grace_seconds, run.run_id, i, a.attempt, "cancel_grace")


def _pool(run: RunState, i: int) -> str:
    return run.activities[i].pool


def dispatch_ready(
    st: SchedulerState,
    run: RunState,
    now: float,
    cmds: list[Command],
    render: Renderer | None,
    mint: CallbackMinter | None = None,
) -> None:
    while run.ready:
        if not limits.run_has_slot(st, run):
            return
        if not limits.tenant_has_slot(st, run.tenant):
            limits.wait_for_slot(st, run)
            return
        i = heapq.heappop(run.ready)
        a = run.acts[i]
        if a.status != "ready" or a.retry_at:
            continue
        _dispatch_one(st, run, i, now, cmds, render, mint)


def _skip_reason(st: SchedulerState, run: RunState, i: int, render: Renderer | None) -> tuple[str, str] | None:
    activity = run.activities[i]
    if activity.skip is not None and activity.skip.skip_on_destroy and run.action == "destroy":
        return "destroy", "skipOnDestroy"
    if activity.execute_once and run.action == "deploy" and deployed_before(st, run):
        return "execute_once", "executeOnce: the environment was deployed before"
    condition = activity.skip.condition if activity.skip is not None else ""
    if condition and skip_condition_holds(condition, late_scope(run, activity, deployed=_deployed(st, run)), render):
        return "condition", f"skip condition holds: {condition}"
    return None


def _deployed(st: SchedulerState, run: RunState) -> dict[str, dict[str, Any]] | None:
    """What a day-2 action (a workflows schedule's tasks, an expiry notice's hooks) reads under
    its own outputs: the environment's last deploy's (the run holds the environment, so no other
    run of it can change them meanwhile)."""
    return last_deploy_outputs(st, run) if run.workflow.purpose.reads_deploy else None


def _dispatch_one(
    st: SchedulerState,
    run: RunState,
    i: int,
    now: float,
    cmds: list[Command],
    render: Renderer | None,
    mint: CallbackMinter | None,
) -> None:
    activity, a = run.activities[i], run.acts[i]
    try:
        skip = _skip_reason(st, run, i, render)
        if skip is not None:
            finish(st, run, i, "skipped", now, skip[1], skip[0])  # type: ignore[arg-type]
            return
        if run.needs_render[i]:
            callback = _callback(run, activity, a.attempt + 1, now, mint)
            scope = late_scope(run, activity, callback, deployed=_deployed(st, run))
            activity = render_activity(activity, scope, render)
    except RenderError as exc:
        a.attempt += 1  # the failure is an event of its own attempt, so a replay sees it too
        reason = f"cannot render: {exc}"
        if run.action == "destroy" and not deployed_before(st, run):
            reason += f" (no deploy of environment {run.environment!r} is recorded: "
            reason += "a destroy renders with the last deploy's outputs)"
        key = f"{run.run_id}/{activity.id}/{a.attempt}/failed"
        emit(cmds, ActivityFailed(tenant=run.tenant, run_id=run.run_id, activity_id=activity.id, attempt=a.attempt,
                                  reason=reason, retryable=False, **stamp(now, key)))  # fmt: skip
        finish(st, run, i, "failed", now, reason)
        return
    a.attempt += 1
    set_status(st, run, i, "dispatched")
    a.dispatched_at = now
    a.cancel_sent = False
    a.agent = run.workspaces.get(activity.workspace, "") if activity.workspace else ""
    if a.agent:
        st.add_timer(now + st.config.pinned_start_timeout_seconds, run.run_id, i, a.attempt, "pinned_start")
    pool = _pool(run, i)
    cmds.append(
        Dispatch(
            tenant=run.tenant,
            run_id=run.run_id,
            environment=run.environment,
            action=run.action,
            activity=activity,
            attempt=a.attempt,
            pool=pool,
            agent=a.agent,
        )
    )
    key = f"{run.run_id}/{activity.id}/{a.attempt}/dispatched"
    emit(
        cmds,
        ActivityDispatched(
            tenant=run.tenant,
            run_id=run.run_id,
            activity_id=activity.id,
            attempt=a.attempt,
            pool=pool,
            agent=a.agent,
            **stamp(now, key),
        ),
    )


def _callback(
    run: RunState, activity: Activity, attempt: int, now: float, mint: CallbackMinter | None
) -> Callable[[], str] | None:
    """How an approval attempt gets its callback URL: minted when an expression first reads it."""
    if mint is None or activity.kind != "approval":
        return None
    return functools.partial(mint, run.tenant, run.run_id, activity, attempt, now)


def complete_run(
    st: SchedulerState,
    run: RunState,
    now: float,
    cmds: list[Command] | None,
    status: TerminalRunStatus | None = None,
) -> None:
    """The run is over: close it (transitions.close_run) and announce it (if `cmds`)."""
    status = close_run(st, run, now, status)
    if status is None:
        return
    if cmds is not None:
        message = run.message if status == "failed" else run.cancel_reason if status == "cancelled" else ""
        outputs = run.outputs if run.action == "deploy" else {}  # a destroyed environment has none
        emit(
            cmds,
            RunCompleted(
                tenant=run.tenant,
                run_id=run.run_id,
                status=status,
                message=message,
                outputs=outputs,
                **stamp(now, f"{run.run_id}/completed"),
            ),
        )


def forget(st: SchedulerState, run_id: str) -> None:
    """Drop a finished run from memory; its later events are ignored (see `state.Tombstones`:
    its id is kept for `tombstone_seconds` after it finished, measured by runs' finish times)."""
    run = st.runs.get(run_id)
    if run is not None and run.status in TERMINAL_RUN:
        del st.runs[run_id]
        st.finished.add(run_id, run.finished_at)
