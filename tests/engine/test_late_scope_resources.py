"""A late scope's `resource`: what expressions read of the outputs recorded so far, and of the last
deploy's under them, through the real template renderer; looked up by name, never copied whole."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from trellis_core.workflow import Activity, ContainerSpec
from trellis_engine.binding import RenderError, late_scope, render_activity
from trellis_templates.expressions import LATE


def echo(*args: str) -> Activity:
    return Activity(id="app/apply", kind="container", spec=ContainerSpec(command=("echo", *args)))


def rendered(activity: Activity, recorded: dict[str, Any], deployed: dict[str, Any] | None = None) -> tuple[str, ...]:
    run: Any = SimpleNamespace(workflow=SimpleNamespace(scope={}), outputs=recorded)
    spec = render_activity(activity, late_scope(run, activity, deployed=deployed), LATE).spec
    assert isinstance(spec, ContainerSpec)
    return spec.command


def test_the_runs_own_outputs_shadow_the_last_deploys_name_by_name() -> None:
    recorded = {"db": {"host": {"value": "new-host"}}}
    deployed = {"db": {"host": {"value": "old-host"}, "port": {"value": 5432}}, "vpc": {"id": {"value": "vpc-1"}}}
    activity = echo("$(resource.db.output.host.value)$", "$(resource.db.output.port.value)$",
                    "$(resource.vpc.output.id.value)$", "$(resource | list | sort | join(','))$")  # fmt: skip
    assert rendered(activity, recorded, deployed) == ("echo", "new-host", "5432", "vpc-1", "db,vpc")


def test_an_unknown_resource_is_a_render_error_naming_it() -> None:
    with pytest.raises(RenderError, match="nope"):
        rendered(echo("$(resource.nope.output.x.value)$"), {"db": {"host": {"value": "h"}}})


def test_an_expression_cannot_change_what_was_recorded() -> None:
    recorded = {"db": {"host": {"value": "h"}}}
    with pytest.raises(RenderError):
        rendered(echo("$(resource.db.output.update({'host': 1}))$"), recorded)
    assert recorded == {"db": {"host": {"value": "h"}}}
