"""Compiled late strings render at dispatch through the scheduler's own binding code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trellis_core.workflow import Activity, ContainerSpec, Workflow
from trellis_engine.binding import late_scope, render_activity, skip_condition_holds
from trellis_engine.graph import build_run
from trellis_templates.compiler import compile_bundle, load_bundle
from trellis_templates.expressions import LATE

DEMO = str(Path(__file__).resolve().parents[2] / "examples" / "demo")


def demo(action: str = "deploy") -> Workflow:
    docs, problems = load_bundle([DEMO])
    assert not problems.errors
    result = compile_bundle(docs, "demo", {"notify_url": "http://127.0.0.1:1/x"}, action)  # type: ignore[arg-type]
    assert result.workflow is not None
    return result.workflow


def scope_for(wf: Workflow, activity: Activity, outputs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The scope the scheduler renders `activity` with, once `outputs` are recorded (its own code)."""
    run = build_run("acme", "run-1", wf, 0.0, "tester")
    run.outputs = outputs
    return late_scope(run, activity)


def test_the_demo_passes_outputs_from_one_resource_to_the_next() -> None:
    wf = demo()
    provision = wf.by_id()["resource/database/task/provision"]
    outputs = {"network": {"network_id": {"value": "net-demo"}, "cidr": {"value": "10.42.0.0/16"}}}
    rendered = render_activity(provision, scope_for(wf, provision, outputs), LATE)
    assert isinstance(rendered.spec, ContainerSpec)
    assert rendered.spec.env["TRELLIS_VAR_network_id"] == "net-demo"
    assert rendered.inputs["network_id"] == "net-demo"


def test_a_json_output_reaches_a_text_variable_as_text() -> None:
    wf = demo()
    release = wf.by_id()["resource/app/task/release"]
    outputs = {"database": {"dsn": {"value": "postgres://db/app"}}}
    rendered = render_activity(release, scope_for(wf, release, outputs), LATE)
    assert isinstance(rendered.spec, ContainerSpec)
    assert rendered.spec.env["TRELLIS_VAR_dsn"] == "postgres://db/app"
    assert rendered.spec.env["TRELLIS_VAR_replicas"] == "2"


def test_compile_time_strings_need_no_rendering_at_dispatch() -> None:
    wf = demo()
    report = wf.by_id()["resource/network/on-success/report"]
    assert render_activity(report, scope_for(wf, report, {}), LATE) == report
    assert not skip_condition_holds("", {}, LATE)
