"""Helpers for template tests: a small valid bundle, mutations of it, and problem lookups."""

from __future__ import annotations

from collections.abc import Mapping

from trellis_core.events import Problem
from trellis_core.workflow import Action
from trellis_templates.compiler import CompileResult, compile_bundle
from trellis_templates.errors import Problems
from trellis_templates.loader import load_text
from trellis_templates.validate import parse_documents

FILE = "bundle.yaml"

BASE = """\
apiVersion: trellis.dev/v1
kind: ResourceTemplate
metadata: {name: vpc}
spec:
  provider: opentofu
  providerOptions:
    openTofu: {refresh: true}
  variables:
    - name: region
      value: eu-west-1
      options: {override: {type: restricted, restrictedValues: [eu-west-1, us-east-1]}}
    - {name: owner, value: platform, options: {override: {type: notallowed}}}
  hooks:
    onInit:
      - name: hello
        type: script
        options: {script: {script: "echo $(environment.name)$ in $(variables.region)$"}}
---
apiVersion: trellis.dev/v1
kind: ResourceTemplate
metadata: {name: app}
spec:
  provider: custom
  providerOptions:
    custom:
      tasks:
        - {name: build, type: script, options: {script: {script: "echo build"}}}
        - {name: publish, type: driver, dependsOn: [build], driver: {name: publisher}}
---
apiVersion: trellis.dev/v1
kind: Driver
metadata: {name: publisher}
spec:
  config: {type: container, container: {image: alpine, commands: [sh, -c], arguments: ["echo publish"]}}
---
apiVersion: trellis.dev/v1
kind: ConfigContext
metadata: {name: aws-creds}
spec:
  envs: [{key: AWS_REGION, value: eu-west-1}]
---
apiVersion: trellis.dev/v1
kind: EnvironmentTemplate
metadata: {name: web-stack}
spec:
  contexts: [{name: aws-creds}]
  resources:
    - name: vpc
    - name: app
      dependsOn: [{name: vpc}]
  variables:
    - {name: team, options: {required: true}}
---
apiVersion: trellis.dev/v1
kind: Environment
metadata: {name: dev}
spec:
  template: {name: web-stack}
  variables:
    - {name: team, value: a-team}
"""


def mutate(*edits: tuple[str, str], text: str = BASE) -> str:
    for old, new in edits:
        assert text.count(old) == 1, f"{old!r} occurs {text.count(old)} times"
        text = text.replace(old, new)
    return text


def run(
    text: str, environment: str = "dev", action: Action = "deploy", inputs: Mapping[str, str] | None = None
) -> CompileResult:
    problems = Problems()
    docs = parse_documents(load_text(text, FILE, problems), problems)
    if problems.errors:
        return CompileResult(None, tuple(problems.warnings), tuple(problems.errors))
    result = compile_bundle(docs, environment, inputs or {}, action)
    return CompileResult(result.workflow, (*problems.warnings, *result.warnings), result.errors)


def position(text: str, needle: str, nth: int = 0) -> tuple[int, int]:
    """1-based line and column of the `nth` occurrence of `needle` in `text`."""
    index = -1
    for _ in range(nth + 1):
        index = text.index(needle, index + 1)
    line = text.count("\n", 0, index) + 1
    column = index - (text.rfind("\n", 0, index) + 1) + 1
    return line, column


def only(problems: tuple[Problem, ...], path: str) -> Problem:
    found = [p for p in problems if p.path == path]
    assert len(found) == 1, f"expected one problem at {path}, got {[str(p) for p in problems]}"
    return found[0]
