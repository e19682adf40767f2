"""Putting a restored run back under the engine: its lock or queue place, slots and timers."""

from __future__ import annotations

from trellis_engine import limits
from trellis_engine.state import ACTIVE, TERMINAL_RUN, RunState, SchedulerState


def adopt(st: SchedulerState, run: RunState, now: float) -> None:
    """Register a run rebuilt from a snapshot (and events replayed over it)."""
    if run.status in TERMINAL_RUN:
        st.finished.add(run.run_id, run.finished_at or now)
        return
    st.runs[run.run_id] = run
    if run.status == "queued":
        limits.enqueue(st, run)
    else:
        limits.take(st, run)
    st.tenant_inflight[run.tenant] = st.tenant_inflight.get(run.tenant, 0) + run.inflight
    hb = st.config.heartbeat_timeout_seconds
    for i, a in enumerate(run.acts):
        activity = run.activities[i]
        if a.status == "ready" and a.retry_at:
            st.add_timer(a.retry_at, run.run_id, i, a.attempt, "retry")
        if a.status == "running":
            st.add_timer(max(a.last_seen, a.started_at) + hb, run.run_id, i, a.attempt, "heartbeat")
        if a.status in ACTIVE and a.started_at and activity.timeout_seconds:
            st.add_timer(a.started_at + activity.timeout_seconds, run.run_id, i, a.attempt, "timeout")
        if a.status == "dispatched" and a.agent:
            at = a.dispatched_at + st.config.pinned_start_timeout_seconds
            st.add_timer(at, run.run_id, i, a.attempt, "pinned_start")
        if a.status in ACTIVE and a.cancel_sent:
            st.add_timer(now + st.config.cancel_grace_seconds, run.run_id, i, a.attempt, "cancel_grace")
    st.dirty.add(run.run_id)
