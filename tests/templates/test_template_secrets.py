"""Sensitive values in a compilation: sealed where they enter (given a sealer), carried as tokens
into every string rendered from them, and never echoed by an error."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import msgspec

from trellis_core.events import SourceFile
from trellis_core.sealed import MasterKeyring, is_token, new_master_key, token_kids
from trellis_templates.compiler import CompileResult, compile_bundle, compile_sources, load_bundle

CONTEXTS = Path(__file__).resolve().parents[2] / "examples" / "contexts"
SECRET = "hunter2-very-secret"


def test_every_sensitive_value_of_the_contexts_example_is_sealed_and_opens_to_what_it_was() -> None:
    keys = MasterKeyring(new_master_key()).for_tenant("acme")
    docs, problems = load_bundle([str(CONTEXTS)])
    assert not problems.errors
    clear = compile_bundle(docs, "analytics-prod", {"db_password": SECRET})
    sealed = compile_bundle(docs, "analytics-prod", {"db_password": SECRET}, seal=keys.seal)
    assert clear.workflow is not None
    assert sealed.workflow is not None, sealed.errors
    text = msgspec.json.encode(sealed.workflow).decode()
    for secret in (SECRET, "not-a-real-secret", "AKIAEXAMPLE"):
        assert secret in msgspec.json.encode(clear.workflow).decode()  # what sealing hides
        assert secret not in text, secret
    assert token_kids(msgspec.to_builtins(sealed.workflow)) == {keys.current}
    # opened, the sealed workflow is the clear one (requested_variables aside: tokens, for a destroy)
    opened = keys.open_value(msgspec.to_builtins(msgspec.structs.replace(sealed.workflow, requested_variables={})))
    assert opened == msgspec.to_builtins(clear.workflow)
    assert is_token(sealed.workflow.requested_variables["db_password"])
    database = next(a for a in sealed.workflow.activities if a.id == "resource/database/plan")
    assert is_token(database.spec.env["TF_VAR_db_password"])  # type: ignore[union-attr]
    assert database.sensitive == next(a for a in clear.workflow.activities if a.id == database.id).sensitive


BUNDLE = """\
apiVersion: trellis.dev/v1
kind: ConfigContext
metadata: {name: shared}
spec:
  variables: [{name: y, value: shared-value}]
---
apiVersion: trellis.dev/v1
kind: ResourceTemplate
metadata: {name: app}
spec:
  provider: custom
  variables:
    - {name: pw}
    - {name: dsn, value: "pre-$(environment.variables.pw)$-post", options: {sensitive: true}}
  providerOptions:
    custom:
      tasks:
        - {name: go, type: script, options: {script: {script: "SCRIPT"}}}
---
apiVersion: trellis.dev/v1
kind: EnvironmentTemplate
metadata: {name: stack}
spec:
  version: v1
  agents: [{name: default}]
  contexts: [{name: shared}]
  resources: [{name: app}]
  variables:
    - {name: pw, options: {sensitive: true}}
---
apiVersion: trellis.dev/v1
kind: Environment
metadata: {name: prod}
spec:
  template: {name: stack, version: v1}
"""


def _compile(script: str, seal: Callable[[str], str] | None = None, **variables: str) -> CompileResult:
    sources = [SourceFile(path="stack.yaml", text=BUNDLE.replace("SCRIPT", script))]
    return compile_sources(sources, "prod", variables, seal=seal)


def test_a_sensitive_text_built_from_a_token_has_its_clear_pieces_sealed_each() -> None:
    keys = MasterKeyring(new_master_key()).for_tenant("acme")
    result = _compile("echo $(variables.dsn)$", keys.seal, pw=SECRET)
    workflow = result.workflow
    assert workflow is not None, result.errors
    dsn = workflow.activities[0].inputs["dsn"]
    assert "pre-" not in dsn
    assert SECRET not in dsn
    assert dsn.count("[[trellis-sealed:") == 3  # "pre-", the token given, "-post": each opens
    assert keys.open_text(dsn) == f"pre-{SECRET}-post"


def test_a_token_given_stays_as_it_is() -> None:
    keys = MasterKeyring(new_master_key()).for_tenant("acme")
    token = keys.seal(SECRET)
    result = _compile("echo $(variables.pw)$", keys.seal, pw=token)
    workflow = result.workflow
    assert workflow is not None
    assert workflow.requested_variables == {"pw": token}
    assert workflow.activities[0].spec.command[-1] == f"echo {token}"


def test_a_render_error_names_the_expression_not_the_sensitive_value() -> None:
    script = "echo $(context.shared.variables[variables.pw])$"
    for seal in (None, MasterKeyring(new_master_key()).for_tenant("acme").seal):
        result = _compile(script, seal, pw=SECRET)
        [error] = result.errors
        assert SECRET not in str(error)
        assert "trellis-sealed" not in str(error)
        assert error.message == (
            "$(context.shared.variables[variables.pw])$: 'mappingproxy object' has no attribute '(a value, not shown)'"
        )
        assert error.path == "spec.providerOptions.custom.tasks[0].options.script.script"


def test_a_restricted_sensitive_value_refused_is_not_echoed() -> None:
    text = BUNDLE.replace(
        "    - {name: pw, options: {sensitive: true}}",
        "    - {name: pw, options: {sensitive: true, override: {type: restricted, restrictedValues: [a, b]}}}",
    ).replace("SCRIPT", "echo")
    result = compile_sources([SourceFile(path="s.yaml", text=text)], "prod", {"pw": SECRET})
    [error] = result.errors
    assert error.message.startswith("its value (sensitive, not shown) of variable 'pw'")
    assert SECRET not in str(error)


def test_a_sealed_json_value_is_passed_on_as_its_token() -> None:
    keys = MasterKeyring(new_master_key()).for_tenant("acme")
    token = keys.seal('{"user": "app", "pw": "x"}')
    text = BUNDLE.replace(
        "    - {name: pw, options: {sensitive: true}}", "    - {name: pw, valueType: json, options: {sensitive: true}}"
    )
    result = compile_sources(
        [SourceFile(path="s.yaml", text=text.replace("SCRIPT", "echo"))], "prod", {"pw": token}, seal=keys.seal
    )
    assert result.workflow is not None, result.errors
    assert result.workflow.scope["environment"]["variables"]["pw"] == token
