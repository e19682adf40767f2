"""Every mistake is reported with its exact file, line, column, path, message and hint."""

from __future__ import annotations

from template_support import BASE, FILE, mutate, only, position, run


def assert_problem(text: str, path: str, needle: str, message: str, hint: str = "", nth: int = 0, **kw: object) -> None:
    result = run(text, **kw)  # type: ignore[arg-type]
    assert result.workflow is None
    problem = only(result.errors, path)
    assert (problem.file, (problem.line, problem.column)) == (FILE, position(text, needle, nth)), str(problem)
    assert message in problem.message, str(problem)
    assert problem.hint == hint, str(problem)


def test_the_base_bundle_is_valid() -> None:
    result = run(BASE)
    assert result.errors == ()
    assert result.workflow is not None


def test_unknown_field_points_at_its_key_with_the_closest_name() -> None:
    text = mutate(("    openTofu: {refresh: true}", "    openTofu: {refresh: true}\n  repositoryOptoins: {}"))
    assert_problem(
        text,
        "spec.repositoryOptoins",
        "repositoryOptoins",
        "unknown field 'repositoryOptoins'",
        'did you mean "repositoryOptions"?',
    )


def test_wrong_type_names_what_was_expected() -> None:
    text = mutate(("{refresh: true}", "{refresh: often}"))
    assert_problem(text, "spec.providerOptions.openTofu.refresh", "often", "expected true or false, got a string")


def test_bad_name_says_what_a_name_may_hold() -> None:
    text = mutate(("metadata: {name: publisher}", "metadata: {name: Publisher_1}"))
    assert_problem(text, "metadata.name", "Publisher_1", "expected a DNS label")


def test_unknown_provider_suggests_the_closest() -> None:
    text = mutate(("  provider: opentofu", "  provider: opentofoo"))
    assert_problem(text, "spec.provider", "opentofoo", "unknown provider 'opentofoo'", 'did you mean "opentofu"?')


def test_unknown_value_type_lists_the_known_ones() -> None:
    text = mutate(("    - {name: owner, value: platform,", "    - {name: owner, valueType: yaml, value: platform,"))
    assert_problem(text, "spec.variables[1].valueType", "yaml", "unknown valueType 'yaml'")


def test_missing_required_variable_names_it_and_where_to_give_it() -> None:
    text = mutate(
        (
            "  template: {name: web-stack}\n  variables:\n    - {name: team, value: a-team}\n",
            "  template: {name: web-stack}\n",
        )
    )
    result = run(text)
    problem = only(result.errors, "spec.variables[0].name")
    assert (problem.line, problem.column) == position(text, "team, options")
    assert "required variable 'team' has no value" in problem.message
    assert problem.hint == "give it in Environment 'dev' spec.variables or with --var team=VALUE"


def test_override_of_a_notallowed_variable_names_both_places() -> None:
    text = mutate(
        (
            "    - {name: team, value: a-team}",
            "    - {name: team, value: a-team}\n    - {name: owner, value: me}",
        )
    )
    assert_problem(text, "spec.variables[1].value", "me}", "may not be overridden here (Environment 'dev')")
    problem = only(run(text).errors, "spec.variables[1].value")
    line, col = position(text, "{name: owner, value: platform")
    assert f"at {FILE}:{line}:{col}" in problem.message


def test_value_outside_restricted_values_lists_the_allowed_ones() -> None:
    text = mutate(
        (
            "    - {name: team, value: a-team}",
            "    - {name: team, value: a-team}\n    - {name: region, value: mars}",
        )
    )
    assert_problem(
        text,
        "spec.variables[1].value",
        "mars",
        "is not one of the restrictedValues",
        "allowed: eu-west-1, us-east-1",
    )


def test_run_variable_outside_restricted_values_is_reported_against_the_var() -> None:
    result = run(BASE, inputs={"region": "mars"})
    problem = only(result.errors, "--var region")
    assert problem.file == ""
    assert "restrictedValues" in problem.message


def test_unknown_resource_in_depends_on_suggests_the_closest() -> None:
    text = mutate(("dependsOn: [{name: vpc}]", "dependsOn: [{name: vcp}]"))
    assert_problem(
        text,
        "spec.resources[1].dependsOn[0].name",
        "vcp",
        "unknown resource 'vcp' in dependsOn",
        'did you mean "vpc"?',
    )


def test_unknown_task_in_a_tasks_depends_on() -> None:
    text = mutate(("dependsOn: [build]", "dependsOn: [biuld]"))
    assert_problem(
        text,
        "spec.providerOptions.custom.tasks[1].dependsOn[0]",
        "biuld",
        "unknown task 'biuld'",
        'did you mean "build"?',
    )


def test_a_cycle_of_three_is_reported_with_its_path() -> None:
    text = mutate(
        (
            "    - name: vpc\n    - name: app\n      dependsOn: [{name: vpc}]",
            "    - name: vpc\n      dependsOn: [{name: app}]\n"
            "    - name: app\n      dependsOn: [{name: db}]\n"
            "    - name: db\n      template: {name: vpc}\n      dependsOn: [{name: vpc}]",
        ),
    )
    assert_problem(text, "spec.resources[0].dependsOn[0]", "{name: app}]", "dependency cycle: vpc → app → db → vpc")


def test_unknown_driver_suggests_the_closest() -> None:
    text = mutate(("driver: {name: publisher}", "driver: {name: publsher}"))
    assert_problem(
        text,
        "spec.providerOptions.custom.tasks[1].driver.name",
        "publsher",
        "Driver 'publsher' not found",
        'did you mean "publisher"?',
    )


def test_unknown_hook_type_suggests_the_closest() -> None:
    text = mutate(("        type: script", "        type: scrpit"))
    assert_problem(text, "spec.hooks.onInit[0].type", "scrpit", "unknown hook type 'scrpit'", 'did you mean "script"?')


def test_expression_syntax_error_points_at_the_string() -> None:
    text = mutate(("echo $(environment.name)$ in", "echo $(environment.name +)$ in"))
    assert_problem(
        text,
        "spec.hooks.onInit[0].options.script.script",
        '"echo $(environment.name +',
        "syntax error in $(environment.name +)$",
    )


def test_undefined_variable_in_an_expression_suggests_the_closest() -> None:
    text = mutate(("$(variables.region)$", "$(variables.regoin)$"))
    assert_problem(
        text,
        "spec.hooks.onInit[0].options.script.script",
        '"echo $(environment',
        "undefined name 'variables.regoin'",
        'did you mean "region"?',
    )


def test_unknown_top_level_name_in_an_expression() -> None:
    text = mutate(("$(environment.name)$ in", "$(enviroment.name)$ in"))
    assert_problem(
        text,
        "spec.hooks.onInit[0].options.script.script",
        '"echo $(',
        "unknown name 'enviroment'",
        'did you mean "environment"?',
    )


def test_cue_interpolation_gets_the_jinja2_spelling() -> None:
    text = mutate(("echo $(environment.name)$ in", "echo \\\\(environment.name) in"))
    assert_problem(
        text,
        "spec.hooks.onInit[0].options.script.script",
        '"echo \\\\(',
        "CUE interpolation",
        "write $(environment.name)$",
    )


def test_starlark_expression_gets_the_jinja2_spelling() -> None:
    text = mutate(('script: "echo build"', 'script: "echo #{ environment.name }#"'))
    assert_problem(
        text,
        "spec.providerOptions.custom.tasks[0].options.script.script",
        '"echo #{',
        "Starlark expression",
        "write $(environment.name)$",
    )


def test_duplicate_resource_name() -> None:
    text = mutate(("    - name: app\n      dependsOn", "    - name: vpc\n    - name: app\n      dependsOn"))
    assert_problem(text, "spec.resources[1].name", "vpc\n    - name: app", "duplicate resource name 'vpc'")


def test_unresolved_template_version_lists_the_versions() -> None:
    text = mutate(
        (
            "    - name: vpc\n    - name: app",
            "    - name: vpc\n      resourceOptions: {version: v9}\n    - name: app",
        )
    )
    assert_problem(
        text,
        "spec.resources[0].name",
        "vpc\n      resourceOptions",
        "ResourceTemplate 'vpc' has no version 'v9'",
        "versions in the bundle: v1",
    )


def test_unknown_environment_template_suggests_the_closest() -> None:
    text = mutate(("template: {name: web-stack}", "template: {name: web-stak}"))
    assert_problem(
        text,
        "spec.template.name",
        "web-stak",
        "EnvironmentTemplate 'web-stak' not found",
        'did you mean "web-stack"?',
    )


def test_unknown_context_suggests_the_closest() -> None:
    text = mutate(("contexts: [{name: aws-creds}]", "contexts: [{name: aws-cred}]"))
    assert_problem(
        text,
        "spec.contexts[0].name",
        "aws-cred}",
        "ConfigContext 'aws-cred' not found",
        'did you mean "aws-creds"?',
    )


def test_unknown_kind_suggests_the_closest() -> None:
    text = mutate(("kind: Driver", "kind: Drivr"))
    assert_problem(text, "kind", "Drivr", "unknown kind 'Drivr'", 'did you mean "Driver"?')


def test_missing_required_field() -> None:
    text = mutate(("spec:\n  provider: custom\n", "spec:\n  version: v1\n"))
    assert_problem(text, "spec", "version: v1", "missing required field 'provider'")


def test_output_reference_to_an_unknown_resource() -> None:
    text = mutate(('script: "echo build"', 'script: "echo $(resource.vcp.output.id.value)$"'))
    assert_problem(
        text,
        "spec.providerOptions.custom.tasks[0].options.script.script",
        '"echo $(resource',
        "reads outputs of unknown resource 'vcp'",
        'did you mean "vpc"?',
    )


def test_hook_without_its_options() -> None:
    text = mutate(('        options: {script: {script: "echo $(environment.name)$ in $(variables.region)$"}}', ""))
    assert_problem(text, "spec.hooks.onInit[0]", "name: hello", "a hook of type script needs options.script")


def test_yaml_syntax_error_points_at_the_unclosed_bracket_and_names_where_it_was_noticed() -> None:
    text = mutate(("metadata: {name: publisher}", "metadata: {name: publisher"))
    result = run(text)
    assert len(result.errors) == 1
    error = result.errors[0]
    assert error.message.startswith("YAML syntax error while parsing a flow mapping that starts here")
    assert (error.line, error.column) == position(text, "{name: publisher\n")
    noticed = position(text, "spec:\n  config")[0]
    assert f"(line {noticed}, column 5)" in error.message
    assert error.hint == "is a '}' missing after this '{'?"


def test_unknown_environment_lists_the_ones_there_are() -> None:
    result = run(BASE, environment="prod")
    assert [str(e) for e in result.errors] == [
        "Environment 'prod' not found in the bundle (environments in the bundle: dev)"
    ]


def test_rafay_fields_not_implemented_are_warnings_and_unknown_ones_errors() -> None:
    text = BASE.replace("apiVersion: trellis.dev/v1\nkind: Driver", "apiVersion: eaas.envmgmt.io/v1\nkind: Driver")
    text = mutate(("metadata: {name: publisher}", "metadata: {name: publisher, displayName: Pub}"), text=text)
    result = run(text)
    assert result.errors == ()
    warning = only(result.warnings, "metadata.displayName")
    assert (warning.line, warning.column) == position(text, "displayName")
    text = mutate(("displayName: Pub", "displayNmae: Pub"), text=text)
    assert_problem(text, "metadata.displayNmae", "displayNmae", "unknown field 'displayNmae'")


def test_one_file_with_several_mistakes_reports_them_all() -> None:
    text = mutate(
        ("  provider: opentofu", "  provider: opentofoo"),
        ("        type: script", "        type: scrpit"),
        ("metadata: {name: publisher}", "metadata: {name: Publisher_1}"),
        ("{refresh: true}", "{refresh: often}"),
    )
    paths = {e.path for e in run(text).errors}
    assert {
        "spec.provider",
        "spec.hooks.onInit[0].type",
        "metadata.name",
        "spec.providerOptions.openTofu.refresh",
    } <= paths


def test_compile_time_mistakes_are_all_reported_together() -> None:
    text = mutate(
        ("dependsOn: [{name: vpc}]", "dependsOn: [{name: vcp}]"),
        ("driver: {name: publisher}", "driver: {name: publsher}"),
        ("$(variables.region)$", "$(variables.regoin)$"),
        ("contexts: [{name: aws-creds}]", "contexts: [{name: aws-cred}]"),
    )
    paths = {e.path for e in run(text).errors}
    assert {
        "spec.resources[1].dependsOn[0].name",
        "spec.providerOptions.custom.tasks[1].driver.name",
        "spec.hooks.onInit[0].options.script.script",
        "spec.contexts[0].name",
    } <= paths


def test_a_schedule_with_a_bad_cron_expression_is_an_error_with_an_example() -> None:
    text = mutate(
        (
            "    - {name: team, options: {required: true}}",
            "    - {name: team, options: {required: true}}\n  schedules:\n"
            "    - {name: nightly, type: destroy, cadence: {cronExpression: '0 2 * *'}}",
        )
    )
    assert_problem(
        text,
        "spec.schedules[0].cadence.cronExpression",
        "'0 2 * *'",
        "'0 2 * *' is not a cron expression: wrong number of fields",
        "five fields: minute hour day-of-month month day-of-week, e.g. 0 2 * * 1-5",
    )


def test_a_misspelt_environment_variable_is_a_warning_with_the_closest_name() -> None:
    text = mutate(
        (
            "    - {name: team, value: a-team}",
            "    - {name: team, value: a-team}\n    - {name: regoin, value: x}",
        )
    )
    result = run(text)
    assert result.workflow is not None
    warning = only(result.warnings, "spec.variables[1].name")
    assert (warning.line, warning.column) == position(text, "regoin")
    assert (warning.message, warning.hint) == (
        "variable 'regoin' is not declared by any template",
        'did you mean "region"?',
    )


def test_an_unknown_repository_is_named_with_the_closest() -> None:
    text = mutate(
        (
            "    openTofu: {refresh: true}\n",
            "    openTofu: {refresh: true}\n  repositoryOptions: {name: infra-modulez}\n",
        ),
        (
            "kind: Driver",
            "kind: Repository\nmetadata: {name: infra-modules}\nspec: {endpoint: https://git.example.com/m.git}\n---\n"
            "apiVersion: trellis.dev/v1\nkind: Driver",
        ),
    )
    assert_problem(
        text,
        "spec.repositoryOptions.name",
        "infra-modulez",
        "Repository 'infra-modulez' not found",
        'did you mean "infra-modules"?',
    )
