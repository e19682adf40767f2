"""A ConfigContext is visible only to the documents that attach it: the EnvironmentTemplate's to
every resource, a ResourceTemplate's own to that resource's activities and hooks, never another's."""

from __future__ import annotations

from trellis_core.events import SourceFile
from trellis_templates.compiler import CompileResult, compile_sources

BUNDLE = """\
apiVersion: trellis.dev/v1
kind: ConfigContext
metadata: {name: c1}
spec:
  variables: [{name: x, value: c1-value}]
---
apiVersion: trellis.dev/v1
kind: ConfigContext
metadata: {name: shared}
spec:
  variables: [{name: y, value: shared-value}]
---
apiVersion: trellis.dev/v1
kind: ResourceTemplate
metadata: {name: one}
spec:
  provider: custom
  contexts: [{name: c1}]
  hooks:
    onSuccess:
      - {name: after, type: script, options: {script: {script: "echo $(context.c1.variables.x)$"}}}
  providerOptions:
    custom:
      tasks:
        - name: own
          type: script
          options: {script: {script: "echo $(context.c1.variables.x)$ $(context.shared.variables.y)$"}}
---
apiVersion: trellis.dev/v1
kind: ResourceTemplate
metadata: {name: two}
spec:
  provider: custom
  providerOptions:
    custom:
      tasks:
        - name: peek
          type: script
          options: {script: {script: "OTHER"}}
---
apiVersion: trellis.dev/v1
kind: EnvironmentTemplate
metadata: {name: stack}
spec:
  version: v1
  agents: [{name: default}]
  contexts: [{name: shared}]
  resources: [{name: one}, {name: two}]
  hooks:
    onCompletion:
      - {name: report, type: script, options: {script: {script: "ENVHOOK"}}}
---
apiVersion: trellis.dev/v1
kind: Environment
metadata: {name: prod}
spec:
  template: {name: stack, version: v1}
"""


def line_of(marker: str) -> int:
    return next(n for n, line in enumerate(BUNDLE.splitlines(), 1) if marker in line)


def compiled(other: str = "echo $(context.shared.variables.y)$", env_hook: str = "echo done") -> CompileResult:
    text = BUNDLE.replace("OTHER", other).replace("ENVHOOK", env_hook)
    return compile_sources([SourceFile(path="stack.yaml", text=text)], "prod")


def test_a_resource_sees_its_own_contexts_and_the_environments_and_its_own_hooks_too() -> None:
    result = compiled()
    assert result.ok, result.errors
    assert result.workflow is not None
    scripts = {a.id: a.spec.command[-1] for a in result.workflow.activities}  # type: ignore[union-attr]
    assert scripts["resource/one/task/own"] == "echo c1-value shared-value"
    assert scripts["resource/one/on-success/after"] == "echo c1-value"
    assert scripts["resource/two/task/peek"] == "echo shared-value"
    assert set(result.workflow.scope["context"]) == {"shared"}  # what every activity shares


def test_another_resource_reading_a_resource_templates_own_context_is_an_error_at_its_line() -> None:
    result = compiled(other="echo $(context.c1.variables.x)$")
    assert result.workflow is None
    [error] = result.errors
    assert error.message.startswith("context 'c1' is not attached here")
    assert (error.file, error.line) == ("stack.yaml", line_of("OTHER"))
    assert error.path == "spec.providerOptions.custom.tasks[0].options.script.script"
    assert "c1-value" not in str(error)


def test_the_environments_hooks_do_not_see_a_resource_templates_own_context() -> None:
    result = compiled(env_hook="echo $(context['c1'].variables.x)$")
    [error] = result.errors
    assert error.message.startswith("context 'c1' is not attached here")
    assert error.line == line_of("ENVHOOK")


def test_a_string_rendered_at_dispatch_may_not_read_the_resources_own_context() -> None:
    text = BUNDLE.replace("OTHER", "echo").replace("ENVHOOK", "echo")
    text = text.replace(
        "$(context.c1.variables.x)$ $(context.shared.variables.y)$",
        "$(context.c1.variables.x)$ $(resource.two.output.z.value)$",
    )
    result = compile_sources([SourceFile(path="stack.yaml", text=text)], "prod")
    [error] = result.errors
    assert "context 'c1' of this resource's template is read by a string rendered at dispatch" in error.message
    assert "$(variables.…)$" in error.hint
