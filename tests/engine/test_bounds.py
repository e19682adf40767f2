"""What the engine accepts off the bus: the bounds, a table per field, and properties over any
retry policy (accepted ones never break backoff; refused ones name their field)."""

from __future__ import annotations

import math

import pytest
from engine_support import Driver, act, workflow
from hypothesis import given
from hypothesis import strategies as st

from trellis_core.events import ActivityCompleted, ActivityStarted, Event, RunCompiled, RunStarted
from trellis_core.workflow import RetryPolicy
from trellis_engine.backoff import backoff_seconds
from trellis_engine.bounds import (
    MAX_ACTIVITIES,
    MAX_ATTEMPTS,
    MAX_BACKOFF_SECONDS,
    MAX_MULTIPLIER,
    activity_problems,
    refusal,
    retry_problems,
    workflow_problems,
)

WF = workflow(act("a"))


@pytest.mark.parametrize(
    ("retry", "field"),
    [
        (RetryPolicy(multiplier=1e200), "retry.multiplier 1e+200"),
        (RetryPolicy(multiplier=0.5), "retry.multiplier 0.5"),
        (RetryPolicy(max_attempts=0), "retry.maxAttempts 0"),
        (RetryPolicy(max_attempts=MAX_ATTEMPTS + 1), f"retry.maxAttempts {MAX_ATTEMPTS + 1}"),
        (RetryPolicy(initial_backoff_seconds=-1.0), "retry.initialBackoffSeconds -1"),
        (RetryPolicy(max_backoff_seconds=1e300), "retry.maxBackoffSeconds 1e+300"),
        (RetryPolicy(multiplier=math.nan), "retry.multiplier nan"),
    ],
)
def test_a_retry_policy_out_of_bounds_is_named_by_its_field(retry: RetryPolicy, field: str) -> None:
    [problem] = retry_problems(retry)
    assert problem.startswith(f"{field} is out of bounds: use ")


@pytest.mark.parametrize(
    ("activity", "expected"),
    [
        (act("a", timeout_seconds=-5.0), "activity 'a': timeoutSeconds -5 is out of bounds"),
        (act("a", timeout_seconds=1e12), "activity 'a': timeoutSeconds 1e+12 is out of bounds"),
        (act("a", agents=("pool.x",)), "activity 'a': agents[0]: pool 'pool.x' cannot be used in a subject"),
        (act("a b"), "activity id 'a b' cannot be used in a subject"),
        (act("a", retry=RetryPolicy(multiplier=1e200)), "activity 'a': retry.multiplier 1e+200 is out of bounds"),
    ],
)
def test_an_activity_out_of_bounds_is_named_with_its_field(activity: object, expected: str) -> None:
    [problem] = activity_problems(activity)  # type: ignore[arg-type]
    assert problem.startswith(expected)


def test_ordinary_activities_are_within_bounds() -> None:
    ok = act("resource/vpc/apply", timeout_seconds=3600.0, agents=("default", "gpu-pool"), retry=RetryPolicy(
        max_attempts=101, initial_backoff_seconds=0.0, max_backoff_seconds=600.0, multiplier=1.0))  # fmt: skip
    assert activity_problems(ok) == []
    assert workflow_problems(workflow(ok, act("b", "resource/vpc/apply"))) == []


def test_too_many_activities_or_problems_are_reported_in_a_bounded_message() -> None:
    many = workflow(*(act(f"a{i}") for i in range(MAX_ACTIVITIES + 1)))
    assert workflow_problems(many) == [f"the workflow has {MAX_ACTIVITIES + 1} activities: at most 20000 are allowed"]
    bad = workflow(*(act(f"a{i}", timeout_seconds=-1.0) for i in range(100)))
    problems = workflow_problems(bad)
    assert len(problems) == 21
    assert problems[-1] == "and 80 more problems"


def test_graph_problems_still_come_when_the_fields_are_in_bounds() -> None:
    assert workflow_problems(workflow(act("a", "ghost"))) == ["activity 'a' depends on unknown activity 'ghost'"]


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        (RunCompiled(tenant="t", run_id="/etc", workflow=WF), "run id '/etc' cannot be used in a subject"),
        (RunCompiled(tenant="deadletter", run_id="r", workflow=WF), "tenant 'deadletter' is a reserved name"),
        (RunCompiled(tenant="t.x", run_id="r", workflow=WF), "tenant 't.x' cannot be used in a subject"),
        (ActivityStarted(tenant="t", run_id="r", activity_id="a", attempt=1, agent="a.b"), "agent id 'a.b'"),
        (ActivityCompleted(tenant="t", run_id="r", activity_id="a", attempt=0), "attempt 0 is out of bounds"),
        (RunCompiled(tenant="t", run_id="r-1", workflow=WF), ""),
        (ActivityStarted(tenant="t", run_id="r", activity_id="a", attempt=2, agent="host-1_x"), ""),
        (RunStarted(tenant="t", run_id="r"), ""),
    ],
)
def test_an_event_that_cannot_be_folded_is_refused_naming_the_field(event: Event, expected: str) -> None:
    reason = refusal(event)
    assert reason.startswith(expected) if expected else reason == ""


def test_a_run_compiled_out_of_bounds_fails_the_run_naming_the_field() -> None:
    d = Driver()
    d.compile(workflow(act("a", retry=RetryPolicy(max_attempts=3, multiplier=1e200))))
    done = d.completion()
    assert done is not None
    assert done.status == "failed"
    assert "activity 'a': retry.multiplier 1e+200 is out of bounds: use 1 to 100" in done.message
    assert d.dispatches == []


policies = st.builds(
    RetryPolicy,
    max_attempts=st.integers(-5, 2 * MAX_ATTEMPTS),
    initial_backoff_seconds=st.floats(allow_nan=True, allow_infinity=True),
    max_backoff_seconds=st.floats(allow_nan=True, allow_infinity=True),
    multiplier=st.floats(allow_nan=True, allow_infinity=True),
)


@given(policies, st.integers(1, 2 * MAX_ATTEMPTS))
def test_any_accepted_policy_gives_a_finite_backoff_within_its_cap(policy: RetryPolicy, failed: int) -> None:
    if retry_problems(policy):
        return
    delay = backoff_seconds(policy, failed, "r/a/1")
    assert 0.0 <= delay <= min(policy.max_backoff_seconds, MAX_BACKOFF_SECONDS)


@given(policies)
def test_every_refused_policy_names_a_field_and_its_bounds(policy: RetryPolicy) -> None:
    for problem in retry_problems(policy):
        assert problem.startswith("retry.")
        assert " is out of bounds: use " in problem
    within = (
        1 <= policy.max_attempts <= MAX_ATTEMPTS
        and 0 <= policy.initial_backoff_seconds <= MAX_BACKOFF_SECONDS
        and 0 <= policy.max_backoff_seconds <= MAX_BACKOFF_SECONDS
        and 1 <= policy.multiplier <= MAX_MULTIPLIER
    )
    assert within == (retry_problems(policy) == [])


@given(st.floats(min_value=1.0, max_value=1e308), st.integers(1, 10_000))
def test_backoff_never_overflows_whatever_the_multiplier(multiplier: float, failed: int) -> None:
    policy = RetryPolicy(max_attempts=10_000, multiplier=multiplier, max_backoff_seconds=60.0)
    assert 0.0 <= backoff_seconds(policy, failed, "k") <= 60.0
