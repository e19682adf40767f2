"""The bounds the engine holds what comes off the bus to: ids that can be subject tokens, retry
policies, timeouts and counts within limits. Pure; each problem names the field that is wrong."""

from __future__ import annotations

from trellis_core import subjects
from trellis_core.events import ActivityEvent, ActivityStarted, Event, RunCompiled
from trellis_core.workflow import Activity, RetryPolicy, Workflow
from trellis_engine.graph import graph_problems

MAX_ACTIVITIES = 20_000
MAX_ATTEMPTS = 1_000  # a retry policy's `maxAttempts`
MAX_ATTEMPT_NUMBER = 1_000_000  # an event's `attempt`: retries plus re-runs after lost agents
MAX_BACKOFF_SECONDS = 86_400.0
MAX_MULTIPLIER = 100.0
MAX_TIMEOUT_SECONDS = 366 * 86_400.0
MAX_REPORTED = 20


def refusal(event: Event) -> str:
    """Why `event` must be dead-lettered rather than folded; "" if it may be folded. A run whose
    ids cannot be subject tokens can never have an event of its own, not even its failure."""
    try:
        if isinstance(event, RunCompiled):
            subjects.tenant_token(event.tenant)
            subjects.token(event.run_id, "run id")
        if isinstance(event, ActivityStarted):  # work pinned to its workspace goes to its agent's subject
            subjects.token(event.agent, "agent id")
    except subjects.InvalidSubjectToken as exc:
        return str(exc)
    if isinstance(event, ActivityEvent) and not 1 <= event.attempt <= MAX_ATTEMPT_NUMBER:
        return _out_of_bounds("attempt", event.attempt, 1, MAX_ATTEMPT_NUMBER)
    return ""


def workflow_problems(workflow: Workflow) -> list[str]:
    """What makes a workflow impossible to walk: fields out of bounds, else the graph's problems
    (duplicate ids, unknown dependencies, cycles)."""
    if len(workflow.activities) > MAX_ACTIVITIES:
        return [f"the workflow has {len(workflow.activities)} activities: at most {MAX_ACTIVITIES} are allowed"]
    problems = [problem for activity in workflow.activities for problem in activity_problems(activity)]
    if len(problems) > MAX_REPORTED:  # the run's failure message must fit in one event
        problems[MAX_REPORTED:] = [f"and {len(problems) - MAX_REPORTED} more problems"]
    return problems or graph_problems(workflow)


def activity_problems(activity: Activity) -> list[str]:
    """Each field of one activity that is out of bounds, named as in the compiled workflow."""
    problems: list[str] = []
    try:
        subjects.activity_token(activity.id)
    except subjects.InvalidSubjectToken as exc:
        problems.append(str(exc))
    for n, pool in enumerate(activity.agents):
        try:
            subjects.token(pool, "pool")
        except subjects.InvalidSubjectToken as exc:
            problems.append(f"activity {activity.id!r}: agents[{n}]: {exc}")
    timeout = activity.timeout_seconds
    if timeout is not None and not 0 <= timeout <= MAX_TIMEOUT_SECONDS:
        problems.append(
            f"activity {activity.id!r}: {_out_of_bounds('timeoutSeconds', timeout, 0, MAX_TIMEOUT_SECONDS)}"
        )
    problems.extend(f"activity {activity.id!r}: {problem}" for problem in retry_problems(activity.retry))
    return problems


def retry_problems(retry: RetryPolicy) -> list[str]:
    if (  # the common case, checked without building the report (a run checks every activity's)
        1 <= retry.max_attempts <= MAX_ATTEMPTS
        and 0 <= retry.initial_backoff_seconds <= MAX_BACKOFF_SECONDS
        and 0 <= retry.max_backoff_seconds <= MAX_BACKOFF_SECONDS
        and 1 <= retry.multiplier <= MAX_MULTIPLIER
    ):
        return []
    checks: list[tuple[str, float, float, float]] = [
        ("retry.maxAttempts", retry.max_attempts, 1, MAX_ATTEMPTS),
        ("retry.initialBackoffSeconds", retry.initial_backoff_seconds, 0, MAX_BACKOFF_SECONDS),
        ("retry.maxBackoffSeconds", retry.max_backoff_seconds, 0, MAX_BACKOFF_SECONDS),
        ("retry.multiplier", retry.multiplier, 1, MAX_MULTIPLIER),
    ]
    # Written `not lo <= value <= hi` so that NaN, which compares false with anything, is refused.
    return [_out_of_bounds(field, value, lo, hi) for field, value, lo, hi in checks if not lo <= value <= hi]


def _out_of_bounds(field: str, value: float, lo: float, hi: float) -> str:
    return f"{field} {value:g} is out of bounds: use {lo:g} to {hi:g}"
