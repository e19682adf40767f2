"""The engine's two functions: `fold(state, event) -> state` (re-exported from fold.py) and
`decide(state, now) -> (state, commands)`.

`decide` looks only at runs an event or a timer touched since the last call (`state.dirty`) and
at timers that are due, so its cost follows what happened, not the size of the graphs.
"""

from __future__ import annotations

import heapq
from typing import Any

from trellis_core.events import ActivityCancelled, ActivityLost, ActivityTimedOut
from trellis_engine.binding import CallbackMinter, Renderer
from trellis_engine.commands import Cancel, Command, ScheduleWake
from trellis_engine.fold import fold
from trellis_engine.runs import advance, emit, stamp
from trellis_engine.state import ACTIVE, TERMINAL_RUN, SchedulerState, Timer


def decide(
    st: SchedulerState, now: float, *, render: Renderer | None = None, mint: CallbackMinter | None = None
) -> tuple[SchedulerState, list[Command]]:
    """What to do at time `now` (epoch seconds): dispatches, cancels, the scheduler's own
    events (already folded into the state), and when to be called again. `render` binds
    late expressions; without it an activity that has some fails, saying so. `mint` gives an
    approval attempt its `approval.callback_url` (without it the expression is left as is)."""
    cmds: list[Command] = []
    _fire_timers(st, now, cmds)
    while st.dirty:
        batch = sorted(st.dirty)
        st.dirty.clear()
        for run_id in batch:
            run = st.runs.get(run_id)
            if run is not None and run.status not in TERMINAL_RUN:
                advance(st, run, now, cmds, render, mint)
    wake = st.next_wake()
    if wake is not None:
        cmds.append(ScheduleWake(at=wake))
    return st, cmds


def _fire_timers(st: SchedulerState, now: float, cmds: list[Command]) -> None:
    while st.timers and st.timers[0].at <= now:
        timer = heapq.heappop(st.timers)
        run = st.runs.get(timer.run_id)
        if run is None or run.status in TERMINAL_RUN:
            continue
        a = run.acts[timer.position]
        if a.attempt != timer.attempt:
            continue
        _fire(st, timer, now, cmds)


def _fire(st: SchedulerState, timer: Timer, now: float, cmds: list[Command]) -> None:
    run = st.runs[timer.run_id]
    i = timer.position
    a, activity = run.acts[i], run.activities[i]
    base: dict[str, Any] = {
        "tenant": run.tenant,
        "run_id": run.run_id,
        "activity_id": activity.id,
        "attempt": a.attempt,
    }
    key = f"{run.run_id}/{activity.id}/{a.attempt}"
    if timer.kind == "retry":
        if a.status == "ready" and a.retry_at and a.retry_at <= now:
            a.retry_at = 0.0
            run.push_ready(i)
            st.dirty.add(run.run_id)
        return
    if a.status not in ACTIVE:
        return
    if timer.kind == "heartbeat":
        if a.status != "running":
            return
        deadline = max(a.last_seen, st.heard_since) + st.config.heartbeat_timeout_seconds
        if deadline > now:
            st.add_timer(deadline, run.run_id, i, a.attempt, "heartbeat")
            return
        lost = ActivityLost(agent=a.agent, **base, **stamp(now, f"{key}/lost"))
        fold(st, lost)
        emit(cmds, lost)
    elif timer.kind == "timeout":
        timeout = activity.timeout_seconds or 0.0
        cmds.append(Cancel(tenant=run.tenant, run_id=run.run_id, activity_id=activity.id, attempt=a.attempt,
                           pool=activity.pool,
                           reason=f"timed out after {timeout:g}s"))  # fmt: skip
        timed_out = ActivityTimedOut(timeout_seconds=timeout, **base, **stamp(now, f"{key}/timed_out"))
        fold(st, timed_out)
        emit(cmds, timed_out)
    elif timer.kind == "pinned_start":
        if a.status != "dispatched":
            return
        reason = f"agent {a.agent} holding the workspace did not start it"
        cmds.append(Cancel(tenant=run.tenant, run_id=run.run_id, activity_id=activity.id, attempt=a.attempt,
                           pool=activity.pool, reason=reason))  # fmt: skip
        lost = ActivityLost(agent=a.agent, **base, **stamp(now, f"{key}/lost"))
        fold(st, lost)
        emit(cmds, lost)
    elif timer.kind == "cancel_grace":
        reason = "the agent did not confirm the cancel in time"
        cancelled = ActivityCancelled(reason=reason, **base, **stamp(now, f"{key}/cancelled"))
        fold(st, cancelled)
        emit(cmds, cancelled)


__all__ = ["decide", "fold"]
