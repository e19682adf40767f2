"""`trellis template validate` reports every mistake of a bundle in one run, read and compile stages alike."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from template_support import position

from trellis_cli import template_cmd
from trellis_compiler.service import compile_request
from trellis_core.events import Problem, RunRequested, SourceFile
from trellis_templates.compiler import validate_bundle

MIXED = """\
apiVersion: trellis.dev/v1
kind: ResourceTemplate
metadata: {name: app}
spec:
  provider: custom
  descripton: read-stage, an unknown field
  providerOptions:
    custom:
      tasks:
        - name: build
          type: script
          dependOn: [fetch]
          options: {script: {script: "echo $(variables.regoin)$"}}
        - name: Publish_1
          type: script
          dependsOn: [biuld]
          options: {script: {script: "echo $(variables.region"}}
  variables:
    - {name: region, value: eu-west-1}
---
apiVersion: trellis.dev/v1
kind: ResourceTemplate
metadata: {name: db}
spec:
  provider: opentofoo
---
apiVersion: trellis.dev/v1
kind: EnvironmentTemplate
metadata: {name: stack}
spec:
  resources:
    - {name: app}
    - {name: app}
    - {name: db, dependsOn: [{name: app}]}
    - {name: cache, colour: blue}
    - {name: web, template: {name: app}, dependsOn: [{name: api}]}
    - {name: api, template: {name: app}, dependsOn: [{name: web}]}
---
apiVersion: trellis.dev/v1
kind: Environment
metadata: {name: dev}
spec:
  template: {name: stack}
"""


def trellis(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="trellis")
    template_cmd.register(parser.add_subparsers())
    args = parser.parse_args(list(argv))
    return int(args.func(args))


Checked = tuple[str, tuple[Problem, ...], tuple[Problem, ...]]


def validate(tmp_path: Path, text: str) -> Checked:
    """(the file, errors, warnings) of validating `text` as one file."""
    file = tmp_path / "bundle.yaml"
    file.write_text(text)
    _, errors, warnings = validate_bundle([str(file)])
    return str(file), errors, warnings


def test_one_validate_run_reports_read_and_compile_errors_together_sorted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "mixed.yaml"
    file.write_text(MIXED)
    assert trellis("template", "validate", "--json", str(file)) == 1
    errors = json.loads(capsys.readouterr().out)["errors"]
    got = [(e["file"], e["line"], e["column"], e["path"], e["message"], e.get("hint", "")) for e in errors]

    def at(needle: str, nth: int = 0) -> tuple[str, int, int]:
        return (str(file), *position(MIXED, needle, nth))

    tasks = "spec.providerOptions.custom.tasks"
    assert got == [
        (*at("descripton"), "spec.descripton", "unknown field 'descripton'", 'did you mean "description"?'),
        (*at("dependOn"), f"{tasks}[0].dependOn", "unknown field 'dependOn'", 'did you mean "dependsOn"?'),
        (
            *at('"echo $(variables.regoin'),
            f"{tasks}[0].options.script.script",
            "$(variables.regoin)$: undefined name 'variables.regoin'",
            'did you mean "region"?',
        ),
        (
            *at("Publish_1"),
            f"{tasks}[1].name",
            "'Publish_1' is not valid here: expected a DNS label: lowercase letters, digits and '-', at most 63",
            "",
        ),
        (*at("biuld"), f"{tasks}[1].dependsOn[0]", "unknown task 'biuld' in dependsOn", 'did you mean "build"?'),
        (
            *at('"echo $(variables.region"'),
            f"{tasks}[1].options.script.script",
            "unclosed expression '$(variables.region': no )$ after its $(",
            "close it with )$, or write $$( for a shell $(",
        ),
        (
            *at("opentofoo"),
            "spec.provider",
            "unknown provider 'opentofoo': expected one of custom, opentofu, terraform",
            'did you mean "opentofu"?',
        ),
        (*at("app}", 2), "spec.resources[1].name", "duplicate resource name 'app'", ""),
        (*at("cache"), "spec.resources[3].name", "ResourceTemplate 'cache' not found in the bundle", ""),
        (*at("colour"), "spec.resources[3].colour", "unknown field 'colour'", ""),
        (*at("{name: api}"), "spec.resources[4].dependsOn[0]", "dependency cycle: web → api → web", ""),
    ]
    assert not any("'db' not found" in e["message"] for e in errors), "db is broken, not missing"


def test_validate_prints_the_count_after_every_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    file = tmp_path / "mixed.yaml"
    file.write_text(MIXED)
    assert trellis("template", "validate", str(file)) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[-1] == "11 errors"
    assert err[0].startswith(f"{file}:6:3: spec.descripton: unknown field")


def test_an_unclosed_quote_is_reported_at_its_line_with_where_the_parser_noticed(tmp_path: Path) -> None:
    lines = [f"key{i}: value{i}" for i in range(1, 9)] + ['broken: "never closed'] + [f"more{i}: x" for i in range(20)]
    file, errors, _ = validate(tmp_path, "\n".join(lines) + "\n")
    [error] = errors
    assert (error.file, error.line, error.column) == (file, 9, 9)
    assert error.message == (
        "YAML syntax error while scanning a quoted scalar that starts here: "
        "found unexpected end of stream (line 30, column 1)"
    )
    assert error.hint == "is a quote left open here?"


def test_a_tab_in_indentation_is_named_at_its_line(tmp_path: Path) -> None:
    text = "apiVersion: trellis.dev/v1\nkind: ConfigContext\nmetadata:\n\tname: creds\n"
    file, errors, _ = validate(tmp_path, text)
    assert [(e.file, e.line, e.column, e.message, e.hint) for e in errors] == [
        (file, 4, 1, "tabs are not allowed in YAML indentation", "indent with spaces")
    ]


def test_an_empty_bundle_says_it_has_no_documents(tmp_path: Path) -> None:
    file, errors, _ = validate(tmp_path, "# only a comment\n")
    assert [(e.file, e.message) for e in errors] == [(file, f"no documents in {file}")]
    assert "apiVersion, kind and metadata" in errors[0].hint
    (tmp_path / "empty").mkdir()
    _, errors, _ = validate_bundle([str(tmp_path / "empty")])
    assert [e.message for e in errors] == [f"no documents in {tmp_path / 'empty'}"]


NO_ENV = """\
apiVersion: trellis.dev/v1
kind: EnvironmentTemplate
metadata: {name: stack}
spec: {}
"""


def test_compile_without_any_environment_says_so_and_names_the_templates(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "b.yaml"
    file.write_text(NO_ENV)
    assert trellis("template", "compile", str(file), "-e", "dev") == 1
    assert capsys.readouterr().err.splitlines() == [
        "Environment 'dev' not found: the bundle has no Environment (add a document with `kind: Environment` "
        "whose spec.template names an EnvironmentTemplate (templates in the bundle: stack))"
    ]


def test_compile_of_an_environment_not_there_lists_those_that_are(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "b.yaml"
    envs = "".join(
        f"---\napiVersion: trellis.dev/v1\nkind: Environment\nmetadata: {{name: {n}}}\n"
        "spec: {template: {name: stack}}\n"
        for n in ("staging", "prod")
    )
    file.write_text(NO_ENV + envs)
    assert trellis("template", "compile", str(file), "-e", "stagin") == 1
    assert capsys.readouterr().err.splitlines() == [
        "Environment 'stagin' not found in the bundle "
        '(did you mean "staging"? environments in the bundle: prod, staging)'
    ]


CUSTOM = """\
apiVersion: trellis.dev/v1
kind: ResourceTemplate
metadata: {name: app}
spec:
  provider: custom
  providerOptions:
    custom:
      tasks:
        - name: build
          type: script
          outputs: [url, {name: port, description: the port it listens on}]
          options: {script: {script: "echo build"}}
        - {name: publish, type: driver, dependsOn: [build], driver: {name: publisher}}
  hooks:
    onInit:
      - {name: hello, type: script, options: {script: {script: "echo hi"}}}
---
apiVersion: trellis.dev/v1
kind: Driver
metadata: {name: publisher}
spec:
  outputs: [{name: image}]
  config: {type: container, container: {image: alpine}}
---
apiVersion: trellis.dev/v1
kind: ResourceTemplate
metadata: {name: net}
spec:
  provider: opentofu
---
apiVersion: trellis.dev/v1
kind: ResourceTemplate
metadata: {name: web}
spec:
  provider: custom
  variables:
    - {name: app_url, value: "$(resource.app.output.urll.value)$"}
    - {name: net_id, value: "$(resource.net.output.anything.value)$"}
  providerOptions:
    custom:
      tasks:
        - name: call
          type: http
          options:
            http:
              endpoint: "$(resource.app.output.url.value)$:$(resource['app'].output['port'].value)$"
              body: "$(resource.app.output.image.value)$ $(resource.app.output.imgae.value)$"
              successCondition: "201 Created"
---
apiVersion: trellis.dev/v1
kind: EnvironmentTemplate
metadata: {name: stack}
spec:
  resources:
    - {name: app}
    - {name: net}
    - {name: web}
---
apiVersion: trellis.dev/v1
kind: Environment
metadata: {name: dev}
spec:
  template: {name: stack}
"""


FIXED = CUSTOM.replace("urll", "url").replace("imgae", "image")


def test_an_output_no_task_declares_is_an_error_with_the_closest_declared_key(tmp_path: Path) -> None:
    file, errors, _ = validate(tmp_path, CUSTOM)
    declares = "its tasks declare image, port, url"
    assert [(e.file, e.line, e.column, e.path, e.message, e.hint) for e in errors] == [
        (
            file,
            *position(CUSTOM, '"$(resource.app.output.urll'),
            "spec.variables[0].value",
            f"resource 'app' has no output 'urll': {declares}",
            'did you mean "url"?',
        ),
        (
            file,
            *position(CUSTOM, '"$(resource.app.output.image'),
            "spec.providerOptions.custom.tasks[0].options.http.body",
            f"resource 'app' has no output 'imgae': {declares}",
            'did you mean "image"?',
        ),
    ]


def test_outputs_are_not_checked_when_a_task_declares_none(tmp_path: Path) -> None:
    text = CUSTOM.replace("  outputs: [{name: image}]\n", "")
    _, errors, _ = validate(tmp_path, text)
    assert errors == ()


def test_an_inline_driver_declares_outputs_too(tmp_path: Path) -> None:
    text = CUSTOM.replace(
        "driver: {name: publisher}",
        "driver: {data: {outputs: [image], config: {type: container, container: {image: alpine}}}}",
    )
    _, errors, _ = validate(tmp_path, text)
    assert [e.message.split(":")[0] for e in errors] == [
        "resource 'app' has no output 'urll'",
        "resource 'app' has no output 'imgae'",
    ]


def test_a_status_line_success_condition_is_read_as_the_status_with_a_warning(tmp_path: Path) -> None:
    text = FIXED
    file, errors, warnings = validate(tmp_path, text)
    assert errors == ()
    [warning] = [w for w in warnings if "successCondition" in w.path]
    assert (warning.file, warning.line, warning.column) == (file, *position(text, '"201 Created"'))
    assert warning.message == "successCondition '201 Created' is read as $(response.status == 201)$"
    assert warning.hint == 'write successCondition: "$(response.status == 201)$"'


def test_the_compiled_http_call_checks_the_status(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    file = tmp_path / "b.yaml"
    file.write_text(FIXED)
    assert trellis("template", "compile", str(file), "-e", "dev") == 0
    workflow = json.loads(capsys.readouterr().out)
    [call] = [a for a in workflow["activities"] if a["id"] == "resource/web/task/call"]
    assert call["spec"]["successCondition"] == "$(response.status == 201)$"


def test_provider_hooks_of_a_custom_resource_say_where_its_hooks_go(tmp_path: Path) -> None:
    text = FIXED.replace(
        "  hooks:\n    onInit:",
        "  hooks:\n    provider:\n      custom: {}\n    onInit:",
    )
    file, errors, _ = validate(tmp_path, text)
    assert [(e.file, e.line, e.column, e.path, e.message) for e in errors] == [
        (
            file,
            *position(text, "custom: {}"),
            "spec.hooks.provider.custom",
            "hooks.provider.custom: custom resources have no provider stages",
        )
    ]
    assert "spec.hooks.onInit, onSuccess, onFailure, onCompletion" in errors[0].hint


def test_open_tofu_stage_hooks_on_a_custom_resource_are_an_error_not_dropped(tmp_path: Path) -> None:
    hook = "{name: lint, type: script, options: {script: {script: lint}}}"
    text = FIXED.replace(
        "  hooks:\n    onInit:",
        f"  hooks:\n    provider:\n      openTofu:\n        deploy: {{plan: {{before: [{hook}]}}}}\n    onInit:",
    )
    file, errors, _ = validate(tmp_path, text)
    assert [(e.file, e.line, e.column, e.path, e.message) for e in errors] == [
        (
            file,
            *position(text, "openTofu:"),
            "spec.hooks.provider.openTofu",
            "hooks.provider.openTofu never run: a custom resource has no openTofu stages",
        )
    ]
    assert errors[0].hint.startswith("use the resource hooks spec.hooks.onInit")


def test_compile_var_with_a_misspelt_name_still_compiles_with_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "b.yaml"
    file.write_text(FIXED)
    assert trellis("template", "compile", str(file), "-e", "dev", "--var", "app_ur=x") == 0
    assert (
        "warning: run variable 'app_ur' is not declared by any template (did you mean \"app_url\"?)"
        in capsys.readouterr().err.splitlines()
    )


def test_a_run_request_rejects_a_variable_no_template_declares_and_lists_the_declared() -> None:
    request = RunRequested(
        tenant="t",
        run_id="r",
        environment="dev",
        sources=(SourceFile(path="b.yaml", text=FIXED),),
        variables={"zzz": "1"},
    )
    result = compile_request(request)
    assert result.workflow is None
    assert [(e.message, e.hint) for e in result.errors] == [
        ("run variable 'zzz' is not declared by any template", "declared variables: app_url, net_id")
    ]


def test_a_run_request_with_no_documents_is_rejected_saying_so() -> None:
    request = RunRequested(
        tenant="t", run_id="r", environment="dev", sources=(SourceFile(path="b.yaml", text="# nothing\n"),)
    )
    result = compile_request(request)
    assert [e.message for e in result.errors] == ["the bundle has no documents (b.yaml)"]


def test_a_syntax_error_loses_only_its_own_document(tmp_path: Path) -> None:
    broken = "---\napiVersion: trellis.dev/v1\nkind: ConfigContext\nmetadata: {name: 'creds}\n"
    text = NO_ENV.replace("spec: {}", "spec:\n  resources: [{name: vpc}]") + broken
    file, errors, _ = validate(tmp_path, text)
    assert [(e.line, e.column, e.message.split(":")[0], e.hint) for e in errors] == [
        (5, 22, "ResourceTemplate 'vpc' not found in the bundle", ""),
        (9, 18, "YAML syntax error while scanning a quoted scalar that starts here", "is a quote left open here?"),
    ]
    assert {e.file for e in errors} == {file}


def test_validate_of_a_bundle_without_an_environment_warns_and_names_the_templates(tmp_path: Path) -> None:
    _, errors, warnings = validate(tmp_path, NO_ENV)
    assert errors == ()
    assert [(w.message, w.hint) for w in warnings] == [
        (
            "the bundle has no Environment: its EnvironmentTemplates were checked on their own",
            "`trellis run` needs a document with `kind: Environment` naming one of: stack",
        )
    ]


def test_a_task_with_a_bad_type_still_counts_for_depends_on(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = FIXED.replace("          type: script\n          outputs:", "          type: scirpt\n          outputs:")
    file, errors, _ = validate(tmp_path, text)
    assert [(e.path, e.hint) for e in errors] == [
        ("spec.providerOptions.custom.tasks[0].type", 'did you mean "script"?')
    ]
    broken = text.replace("dependsOn: [build]", "dependsOn: [biuld]")
    (tmp_path / "bundle.yaml").write_text(broken)
    assert trellis("template", "compile", file, "-e", "dev") == 1
    errors_printed = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("warning:")]
    assert [line.split(": ")[1] for line in errors_printed] == [
        "spec.providerOptions.custom.tasks[0].type",
        "spec.providerOptions.custom.tasks[1].dependsOn[0]",
    ]
