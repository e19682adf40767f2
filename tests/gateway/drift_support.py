"""What the drift tests share: a shell script named `tofu` standing in for OpenTofu (a deploy's plan,
apply and outputs; a drift plan that exits 2 and shows a plan document in which the VPC drifted and
its `vpc_id` output would change, or, with a file `in-sync` beside it, none), and a stack of one
OpenTofu resource and custom ones that read its outputs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

STAND_IN_TOFU = """#!/bin/sh
case "$1" in
  output) echo '{"vpc_id": {"value": "vpc-1", "type": "string", "sensitive": false}}' ;;
  plan)
    case "$*" in *-detailed-exitcode*) [ -f "$(dirname "$0")/in-sync" ] && exit 0; exit 2 ;; esac ;;
  show)
    if [ -f "$(dirname "$0")/in-sync" ]; then echo '{"resource_changes": []}'; exit 0; fi
    echo '{"resource_drift": [{"address": "aws_vpc.main", "change": {"actions": ["update"]}}],
           "resource_changes": [{"address": "aws_vpc.main", "change": {"actions": ["update"]}}],
           "output_changes": {"vpc_id": {"actions": ["update"]}}}' ;;
esac
"""

STACK = """\
apiVersion: trellis.dev/v1
kind: ResourceTemplate
metadata: {name: network}
spec:
  provider: opentofu
---
apiVersion: trellis.dev/v1
kind: ResourceTemplate
metadata: {name: database}
spec:
  provider: custom
  variables:
    - {name: vpc, value: "$(resource.network.output.vpc_id.value)$"}
  providerOptions:
    custom:
      tasks:
        - name: create
          type: script
          options:
            script:
              script: |
                printf '{"dsn": "db-in-%s"}' "$TRELLIS_VAR_vpc" > "$TRELLIS_OUTPUTS"
      driftCheck:
        name: compare
        type: script
        options:
          script:
            script: |
              echo "checking $TRELLIS_VAR_vpc"
              printf '{"driftChanges": "no"}' > "$TRELLIS_OUTPUTS"
---
apiVersion: trellis.dev/v1
kind: ResourceTemplate
metadata: {name: app}
spec:
  provider: custom
  variables:
    - {name: dsn, value: "$(resource.database.output.dsn.value)$"}
  providerOptions:
    custom:
      tasks: [{name: release, type: script, options: {script: {script: "echo release $TRELLIS_VAR_dsn"}}}]
---
apiVersion: trellis.dev/v1
kind: ResourceTemplate
metadata: {name: cache}
spec:
  provider: custom
  providerOptions:
    custom:
      tasks: [{name: up, type: script, options: {script: {script: "echo up"}}}]
---
apiVersion: trellis.dev/v1
kind: EnvironmentTemplate
metadata: {name: drift-stack}
spec:
  version: v1
  agents: [{name: default}]
  resources: [{name: network}, {name: database}, {name: app}, {name: cache}]
  hooks:
    onDrift:
      - name: notify
        type: script
        options: {script: {script: 'echo "drift in $(environment.name)$" > NOTIFY_FILE'}}
"""


def install_stand_in_tofu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Write the `tofu` stand-in under `tmp_path/bin` and put it first on the PATH the process agent
    passes on; the directory (touch `in-sync` there for a drift plan that finds nothing)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "tofu").write_text(STAND_IN_TOFU)
    (bindir / "tofu").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    return bindir
