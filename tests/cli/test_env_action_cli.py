"""`trellis env action` and `trellis env destroy --force` against a real `trellis dev up`: an
action's run read the deployed output and shows its own, listed per action; the environment
keeps its deploy; a force-destroy goes past a failed destroy."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from embedded_stack_support import servers_of
from gateway_cli_support import DevUp, start, write_templates

TEMPLATES = """\
apiVersion: trellis.dev/v1
kind: ResourceTemplate
metadata: {name: greeter}
spec:
  provider: custom
  providerOptions:
    custom:
      tasks:
        - name: say
          type: script
          options:
            script:
              script: |
                if [ "$TRELLIS_ACTION" = destroy ]; then echo "the greeter will not go" >&2; exit 4; fi
                printf '{"said": "%s"}' "$(environment.variables.greeting)$" > "$TRELLIS_OUTPUTS"
---
apiVersion: trellis.dev/v1
kind: ResourceTemplate
metadata: {name: base}
spec:
  provider: custom
  providerOptions:
    custom:
      tasks: [{name: lay, type: script, options: {script: {script: "echo base $TRELLIS_ACTION"}}}]
---
apiVersion: trellis.dev/v1
kind: EnvironmentTemplate
metadata: {name: greeting-stack}
spec:
  version: v1
  agents: [{name: default}]
  resources:
    - name: base
    - name: greeter
      dependsOn: [{name: base}]
  variables:
    - {name: greeting, value: hello}
  actions:
    - name: repeat
      type: workflows
      description: say it again, louder
      variables: [{name: times, value: "1"}]
      workflows:
        tasks:
          - name: again
            type: script
            options:
              script:
                script: |
                  echo "again: $(resource.greeter.output.said.value)$ x $TRELLIS_VAR_times"
                  printf '{"louder": "%s!"}' "$(resource.greeter.output.said.value)$" > "$TRELLIS_OUTPUTS"
"""

STARTED = re.compile(r"^run (\S+): (?:action \S+|force-destroy|deploy|destroy) of environment \S+ started$", re.M)


@pytest.fixture(scope="module")
def up() -> Iterator[DevUp]:
    root = Path(tempfile.mkdtemp(prefix="trellis-stack-"))  # outside basetemp: see conftest's stack_dir
    running = start(root / "data", root)
    write_templates(root / "templates", TEMPLATES)
    try:
        yield running
    finally:
        _out, err = running.stop()
        shutil.rmtree(root, ignore_errors=True)
    assert running.proc.returncode == 0, err[-3000:]
    assert not servers_of(root)


def _ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _run_id(output: str) -> str:
    found = STARTED.search(output)
    assert found is not None, output
    return found.group(1)


def test_an_action_runs_on_the_deployed_environment_and_a_force_destroy_goes_past_a_failure(up: DevUp) -> None:
    _ok(up.cli("template", "publish", str(up.cwd / "templates")))
    _ok(up.cli("env", "apply", "hi", "--template", "greeting-stack@v1", "--var", "greeting=bonjour"))
    early = up.cli("env", "action", "hi", "repeat")
    assert early.returncode == 1
    assert "hi is not deployed" in early.stderr
    deploy = _run_id(_ok(up.cli("env", "deploy", "hi")))

    acted = _ok(up.cli("env", "action", "hi", "repeat", "--var", "times=3"))
    action_run = _run_id(acted)
    assert f"run {action_run} succeeded" in acted
    assert "again: bonjour x 3" in _ok(up.cli("logs", action_run))
    listed = _ok(up.cli("env", "action", "hi"))
    assert re.search(rf"repeat\s+workflows\s+{action_run} succeeded", listed), listed
    assert "repeat.louder = bonjour!" in listed
    shown = _ok(up.cli("env", "show", "hi"))
    assert "environment hi: deployed" in shown
    assert "greeter.said = bonjour" in shown
    assert f"last run:  {deploy}" in shown  # the action did not become the environment's run

    unknown = up.cli("env", "action", "hi", "repaet")
    assert unknown.returncode == 1
    assert "environment 'hi' has no action 'repaet' (its actions: repeat)" in unknown.stderr

    forced = up.cli("env", "destroy", "hi", "--force")
    assert forced.returncode == 1, forced.stdout + forced.stderr  # the greeter's destroy failed
    forced_run = _run_id(forced.stdout)
    assert "force-destroy of environment hi started" in forced.stdout
    document = _ok(up.cli("runs", "show", forced_run))
    assert f"run {forced_run}: force-destroy of hi, failed: resource/greeter/task/say" in document
    assert f"run {action_run}: action:repeat of hi, succeeded" in _ok(up.cli("runs", "show", action_run))
    assert re.search(r"resource/greeter/task/say\s+failed", document), document
    assert re.search(r"resource/base/task/lay\s+succeeded", document), document  # destroyed all the same
