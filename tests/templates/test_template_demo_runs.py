"""The demo's tasks are plain POSIX sh: run them in order through the agent's process executor,
rendered by the scheduler's late binding, and see outputs travel from one resource to the next."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from trellis_agent.executors.base import Workspace, execute
from trellis_agent.executors.process import ProcessExecutor
from trellis_agent.sink import LogStream
from trellis_core.events import WorkItem
from trellis_core.workflow import ContainerSpec, Workflow
from trellis_engine.binding import late_scope, render_activity
from trellis_engine.graph import build_run
from trellis_templates.compiler import compile_bundle, load_bundle
from trellis_templates.expressions import LATE

DEMO = str(Path(__file__).resolve().parents[2] / "examples" / "demo")


def compiled(action: str) -> Workflow:
    docs, problems = load_bundle([DEMO])
    assert not problems.errors
    result = compile_bundle(docs, "demo", {}, action, run_id="run-1")  # type: ignore[arg-type]
    assert result.workflow is not None
    return result.workflow


class _Lines:
    """Where the process executor writes what the commands print (kept for a failure's message)."""

    def __init__(self) -> None:
        self.text: list[str] = []

    async def write(self, stream: LogStream, text: str) -> None:
        self.text.append(text)

    async def system(self, text: str) -> None:
        self.text.append(text)


async def run_containers(
    wf: Workflow, tmp_path: Path, recorded: dict[str, dict[str, Any]] | None = None
) -> dict[str, dict[str, Any]]:
    """Run every container activity on the success path in order (http hooks are left out) with
    the scheduler's own late binding and the agent's process executor; return the recorded
    outputs, `{resource: {key: {"value": v}}}`."""
    run = build_run("acme", "run-1", wf, 0.0, "tester")
    run.outputs = {r: dict(o) for r, o in (recorded or {}).items()}
    executor = ProcessExecutor(kill_grace_seconds=1.0)
    for activity in wf.activities:
        if not isinstance(activity.spec, ContainerSpec) or activity.when != "success":
            continue
        rendered = render_activity(activity, late_scope(run, activity), LATE)
        work = WorkItem(
            tenant="acme", run_id="run-1", environment=wf.environment, action=wf.action, attempt=1, activity=rendered
        )
        lines = _Lines()
        outcome = await execute(executor, work, Workspace.for_work(tmp_path, work), lines)
        assert outcome.ok, (activity.id, outcome.reason, "".join(lines.text))
        for key, value in outcome.outputs.items():
            recorded_value = value if isinstance(value, dict) and "value" in value else {"value": value}
            run.outputs.setdefault(activity.resource, {})[key] = recorded_value
    return run.outputs


@pytest.mark.skipif(shutil.which("sh") is None, reason="needs a POSIX sh")
async def test_the_demo_deploys_and_passes_outputs_along(tmp_path: Path) -> None:
    outputs = await run_containers(compiled("deploy"), tmp_path)
    assert outputs["network"]["network_id"] == {"value": "net-demo"}
    assert outputs["database"]["dsn"] == {"value": "postgres://db.net-demo.internal:5432/app"}
    assert outputs["app"]["url"] == {"value": "http://app.demo.example"}
    assert outputs["app"]["replicas"] == {"value": 2}


@pytest.mark.skipif(shutil.which("sh") is None, reason="needs a POSIX sh")
async def test_the_demo_destroys_with_the_outputs_of_the_last_deploy(tmp_path: Path) -> None:
    deployed = await run_containers(compiled("deploy"), tmp_path)
    # a destroy run reads the outputs recorded by the last deploy (the scheduler seeds them)
    after = await run_containers(compiled("destroy"), tmp_path, recorded=deployed)
    assert after["database"]["dsn"] == deployed["database"]["dsn"]
