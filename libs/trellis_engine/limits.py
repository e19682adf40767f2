"""Limits and locks: one active run per environment (later runs queue in order), and parallel
activity slots per run and per tenant."""

from __future__ import annotations

import heapq

from trellis_engine.state import RunState, SchedulerState


def enqueue(st: SchedulerState, run: RunState) -> None:
    heapq.heappush(st.env_queue.setdefault(run.env_key, []), (run.compiled_at, run.run_id))


def _head(st: SchedulerState, key: tuple[str, str]) -> str | None:
    queue = st.env_queue.get(key)
    while queue:
        run_id = queue[0][1]
        run = st.runs.get(run_id)
        if run is not None and run.status == "queued":
            return run_id
        heapq.heappop(queue)
    if queue is not None:
        del st.env_queue[key]
    return None


def acquire(st: SchedulerState, run: RunState) -> str:
    """Take the environment's lock for `run`, first come first served; '' if it now holds it,
    else the id of the run it waits for."""
    key = run.env_key
    holder = st.env_holder.get(key)
    if holder == run.run_id:
        return ""
    head = _head(st, key)
    if holder is None and head in (run.run_id, None):
        if head is not None:
            heapq.heappop(st.env_queue[key])
        st.env_holder[key] = run.run_id
        return ""
    return holder or head or ""


def take(st: SchedulerState, run: RunState) -> None:
    """Record that `run` holds its environment's lock (replaying its RunStarted)."""
    st.env_holder[run.env_key] = run.run_id


def release(st: SchedulerState, run: RunState) -> None:
    key = run.env_key
    if st.env_holder.get(key) == run.run_id:
        del st.env_holder[key]
    head = _head(st, key)
    if head is not None:
        st.dirty.add(head)


def run_has_slot(st: SchedulerState, run: RunState) -> bool:
    limit = st.config.max_parallel_per_run
    return limit <= 0 or run.inflight < limit


def tenant_has_slot(st: SchedulerState, tenant: str) -> bool:
    limit = st.config.max_parallel_per_tenant
    return limit <= 0 or st.tenant_inflight.get(tenant, 0) < limit


def wait_for_slot(st: SchedulerState, run: RunState) -> None:
    st.starved.setdefault(run.tenant, set()).add(run.run_id)
