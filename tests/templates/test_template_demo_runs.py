"""The demo's tasks are plain POSIX sh: run them in order, as the process executor would, and see
outputs travel from one resource to the next through late-bound expressions."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from trellis_core.workflow import ContainerSpec, Workflow
from trellis_templates.compiler import compile_bundle, load_bundle
from trellis_templates.expressions import render_late

DEMO = str(Path(__file__).resolve().parents[2] / "examples" / "demo")


def compiled(action: str) -> Workflow:
    docs, problems = load_bundle([DEMO])
    assert not problems.errors
    result = compile_bundle(docs, "demo", {}, action, run_id="run-1")  # type: ignore[arg-type]
    assert result.workflow is not None
    return result.workflow


def run_containers(
    wf: Workflow, tmp_path: Path, recorded: dict[str, dict[str, Any]] | None = None
) -> dict[str, dict[str, Any]]:
    """Run every container activity on the success path in order (http hooks are left out), as the
    process executor would; return the outputs, `{resource: {key: {"value": v}}}`."""
    outputs: dict[str, dict[str, Any]] = {r: dict(o) for r, o in (recorded or {}).items()}
    for activity in wf.activities:
        if not isinstance(activity.spec, ContainerSpec) or activity.when != "success":
            continue
        scope = {**wf.scope, "variables": activity.inputs, "resource": {r: {"output": o} for r, o in outputs.items()}}
        spec = render_late(_as_dict(activity.spec), scope)
        out_file = tmp_path / f"{activity.id.replace('/', '_')}.json"
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **spec.get("env", {}), "TRELLIS_OUTPUTS": str(out_file)}
        argv = [*spec.get("command", []), *spec.get("args", [])]
        done = subprocess.run(argv, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=10, check=False)
        assert done.returncode == 0, (activity.id, done.stderr)
        if out_file.exists() and out_file.read_text().strip():
            for key, value in json.loads(out_file.read_text()).items():
                outputs.setdefault(activity.resource, {})[key] = {"value": value}
    return outputs


def _as_dict(spec: ContainerSpec) -> dict[str, Any]:
    return {"command": list(spec.command), "args": list(spec.args), "env": dict(spec.env)}


@pytest.mark.skipif(shutil.which("sh") is None, reason="needs a POSIX sh")
def test_the_demo_deploys_and_passes_outputs_along(tmp_path: Path) -> None:
    outputs = run_containers(compiled("deploy"), tmp_path)
    assert outputs["network"]["network_id"] == {"value": "net-demo"}
    assert outputs["database"]["dsn"] == {"value": "postgres://db.net-demo.internal:5432/app"}
    assert outputs["app"]["url"] == {"value": "http://app.demo.example"}
    assert outputs["app"]["replicas"] == {"value": 2}


@pytest.mark.skipif(shutil.which("sh") is None, reason="needs a POSIX sh")
def test_the_demo_destroys_with_the_outputs_of_the_last_deploy(tmp_path: Path) -> None:
    deployed = run_containers(compiled("deploy"), tmp_path)
    # a destroy run reads the outputs recorded by the last deploy (the scheduler seeds them)
    after = run_containers(compiled("destroy"), tmp_path, recorded=deployed)
    assert after["database"]["dsn"] == deployed["database"]["dsn"]
