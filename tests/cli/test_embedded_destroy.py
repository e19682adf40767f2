"""A destroy works from the environment's last successful deploy: its variables unless the
destroy gives its own, its outputs; and without a recorded deploy it says so."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import msgspec
from embedded_stack_support import DEMO, cli_env, trellis

from trellis_compiler.service import no_deploy_note, with_deploy_variables
from trellis_core.events import RunRequested
from trellis_store.api import DeployRecord

SIZED_TEMPLATE = """\
apiVersion: trellis.dev/v1
kind: ResourceTemplate
metadata: {name: box}
spec:
  provider: custom
  variables:
    - {name: size, valueType: text, value: small}
  providerOptions:
    custom:
      tasks:
        - name: record
          type: script
          options:
            script:
              script: printf '%s' "$TRELLIS_VAR_size" > "OUT/$TRELLIS_ACTION.txt"
---
apiVersion: trellis.dev/v1
kind: EnvironmentTemplate
metadata: {name: sized}
spec:
  version: v1
  agents: [{name: default}]
  resources: [{name: box}]
  variables:
    - {name: size, valueType: text, value: small}
---
apiVersion: trellis.dev/v1
kind: Environment
metadata: {name: sized}
spec:
  template: {name: sized, version: v1}
"""


def _run(stack_dir: Path, templates: Path, environment: str, *args: str) -> dict[str, object]:
    done = subprocess.run(
        trellis("run", str(templates), "--environment", environment, "--json", *args),
        capture_output=True, text=True, timeout=120, env=cli_env(stack_dir / "data"), cwd=stack_dir,
    )
    assert done.stdout, done.stderr[-3000:]
    result: dict[str, object] = json.loads(done.stdout)
    return result


def test_a_destroy_reuses_the_deploys_variables_unless_given_its_own(stack_dir: Path) -> None:
    templates = stack_dir / "sized"
    templates.mkdir()
    (templates / "templates.yaml").write_text(SIZED_TEMPLATE.replace("OUT", str(stack_dir)))
    assert _run(stack_dir, templates, "sized", "--var", "size=large")["status"] == "succeeded"
    assert (stack_dir / "deploy.txt").read_text() == "large"
    assert _run(stack_dir, templates, "sized", "--action", "destroy")["status"] == "succeeded"
    assert (stack_dir / "destroy.txt").read_text() == "large"
    assert _run(stack_dir, templates, "sized", "--var", "size=large")["status"] == "succeeded"
    destroyed = _run(stack_dir, templates, "sized", "--action", "destroy", "--var", "size=huge")
    assert destroyed["status"] == "succeeded"
    assert (stack_dir / "destroy.txt").read_text() == "huge"


def test_a_destroy_with_no_recorded_deploy_says_so(stack_dir: Path) -> None:
    result = _run(stack_dir, DEMO, "demo", "--action", "destroy")
    assert result["status"] == "failed"
    messages = [str(result.get("message", ""))]
    messages += [str(a.get("message", "")) for a in result["activities"]]  # type: ignore[attr-defined]
    assert any(
        "undefined name" in m and "no deploy of environment 'demo' is recorded" in m for m in messages
    ), messages


def test_the_destroy_variables_go_over_the_deploys() -> None:
    destroy = RunRequested(tenant="t", run_id="r", environment="e", action="destroy", variables={"a": "mine"})
    record = DeployRecord(deployed=True, variables={"a": "deployed", "b": "kept"})
    assert with_deploy_variables(destroy, record).variables == {"a": "mine", "b": "kept"}
    assert with_deploy_variables(destroy, None) is destroy
    deploy = msgspec.structs.replace(destroy, action="deploy")
    assert with_deploy_variables(deploy, record) is deploy
    assert no_deploy_note(destroy, record) == ()
    assert no_deploy_note(deploy, None) == ()
    assert "no deploy of environment 'e' is recorded for tenant 't'" in no_deploy_note(destroy, None)[0]
    destroyed = DeployRecord(deployed=False)  # destroyed since: nothing to reuse
    assert with_deploy_variables(destroy, destroyed) is destroy
    assert "no deploy of environment 'e'" in no_deploy_note(destroy, destroyed)[0]
