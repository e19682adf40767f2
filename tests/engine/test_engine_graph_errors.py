"""The graph's own error paths: a workflow that cannot be walked fails its run with every reason,
and a snapshot that does not match its workflow is refused, not half-restored."""

from __future__ import annotations

import pytest
from engine_support import Driver, act, workflow

from trellis_core.workflow import ContainerSpec
from trellis_engine.graph import build_run, graph_problems, restore, snapshot


def test_duplicate_ids_and_unknown_dependencies_are_each_named() -> None:
    wf = workflow(act("a"), act("a"), act("b", "ghost", "a"), act("c", "phantom"))
    assert graph_problems(wf) == [
        "activity 'a' appears twice",
        "activity 'b' depends on unknown activity 'ghost'",
        "activity 'c' depends on unknown activity 'phantom'",
    ]


def test_a_cycle_is_named_with_the_activities_caught_in_it() -> None:
    wf = workflow(act("root"), act("x", "root", "z"), act("y", "x"), act("z", "y"), act("leaf", "root"))
    assert graph_problems(wf) == ["dependency cycle among x, y, z"]


def test_a_workflow_that_cannot_be_walked_fails_its_run_at_once_with_every_reason() -> None:
    d = Driver()
    d.compile(workflow(act("a"), act("a"), act("b", "ghost")))
    run = d.run_to_end()
    assert run.status == "failed"
    assert run.message == "activity 'a' appears twice; activity 'b' depends on unknown activity 'ghost'"
    assert d.dispatches == []


def test_a_snapshot_of_another_shape_than_its_workflow_is_refused() -> None:
    run = build_run("acme", "r1", workflow(act("a"), act("b", "a")), 1000.0, "me")
    snap = snapshot(run)
    with pytest.raises(ValueError, match="snapshot of run r1 has 2 activities, workflow has 3"):
        restore(snap, workflow(act("a"), act("b", "a"), act("c")))


def test_which_activities_need_rendering_is_found_in_each_of_them_alone() -> None:
    """The run's check encodes all its activities at once when none holds an expression: with
    some, each is still checked on its own (an expression in one never marks its neighbours)."""
    late = ContainerSpec(command=("echo", "$(resource.x.output.y.value)$"))
    plain = build_run("acme", "r1", workflow(act("a"), act("b", "a"), act("c", "b")), 1000.0, "me")
    assert plain.needs_render == [False, False, False]
    mixed = workflow(act("a"), act("b", "a", spec=late), act("c", "b"), act("d", inputs={"q": "$(x)$"}))
    assert build_run("acme", "r2", mixed, 1000.0, "me").needs_render == [False, True, False, True]
    # restore indexes the same way
    assert restore(snapshot(plain), plain.workflow).needs_render == [False, False, False]
