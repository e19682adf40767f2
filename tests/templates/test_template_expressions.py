"""The $( )$ language: types kept, late references found from the AST, sandboxed, explained."""

from __future__ import annotations

import pytest

from trellis_core.errors import TrellisError
from trellis_templates import expressions
from trellis_templates.errors import ExpressionError
from trellis_templates.expressions import condition_holds, is_late, output_references, render, render_late

SCOPE = {
    "environment": {"name": "dev", "id": "e1", "variables": {"region": "eu-west-1", "count": 3}},
    "variables": {"size": 2, "items": ["a", "b"], "values": "data wins over dict methods"},
    "run": {"id": "r1", "action": "deploy", "requested_by": "me"},
    "tenant": "acme",
    "context": {"aws-creds": {"variables": {"role": "deployer"}}},
}


def test_a_whole_expression_keeps_its_type() -> None:
    assert render("$(variables.size)$", SCOPE) == 2
    assert render("$(variables.items)$", SCOPE) == ["a", "b"]
    assert render("$( variables.size > 1 )$", SCOPE) is True


def test_an_expression_inside_text_is_written_into_it() -> None:
    assert render("$(environment.name)$-$(variables.size + 1)$", SCOPE) == "dev-3"
    assert render("list=$(variables.items)$", SCOPE) == 'list=["a","b"]'


def test_mapping_keys_win_over_dict_methods() -> None:
    assert render("$(variables.values)$", SCOPE) == "data wins over dict methods"
    assert render("$(variables['items'] | length)$", SCOPE) == 2


def test_filters_of_the_reference_are_available() -> None:
    assert render("$(variables.items | tojson)$", SCOPE) == '["a","b"]'
    assert render("$('{\"a\": 1}' | fromjson)$", SCOPE) == {"a": 1}
    assert render("$('hi' | b64encode)$", SCOPE) == "aGk="
    assert render("$('aGk=' | b64decode)$", SCOPE) == "hi"


def test_rafay_quoted_path_form_is_accepted() -> None:
    assert render('$(context."aws-creds".variables.role)$', SCOPE) == "deployer"


def test_output_references_come_from_the_ast_in_every_spelling() -> None:
    text = '$(resource.vpc.output.id.value)$ $(resource["db-1"].output.dsn.value)$ $(resource."c-2".output.x.value)$'
    assert output_references(text) == {"vpc", "db-1", "c-2"}
    assert output_references("resource.vpc.output.id.value without delimiters") == set()
    assert output_references("$('resource.vpc' | upper)$") == set()


def test_output_references_are_late_and_others_are_not() -> None:
    assert is_late("$(resource.vpc.output.id.value)$")
    assert is_late("$(approval.callback_url)$")
    assert not is_late("$(environment.name)$")


def test_render_late_walks_nested_values_and_keeps_types() -> None:
    scope = {**SCOPE, "resource": {"vpc": {"output": {"id": {"value": "vpc-1"}, "ports": {"value": [80]}}}}}
    value = {
        "a": ["$(resource.vpc.output.id.value)$", 1],
        "b": "$(resource.vpc.output.ports.value)$",
        "c": ("x",),
    }
    assert render_late(value, scope) == {"a": ["vpc-1", 1], "b": [80], "c": ("x",)}


def test_an_undefined_name_is_an_error_naming_it_and_the_closest() -> None:
    with pytest.raises(ExpressionError) as info:
        render("$(environment.variables.regoin)$", SCOPE)
    assert "environment.variables.regoin" in str(info.value)
    assert info.value.hint == 'did you mean "region"?'
    assert isinstance(info.value, TrellisError)


def test_a_missing_output_is_an_error_at_dispatch() -> None:
    with pytest.raises(ExpressionError, match=r"resource\.vpc\.output\.nope"):
        render_late("$(resource.vpc.output.nope.value)$", {**SCOPE, "resource": {"vpc": {"output": {}}}})


def test_python_internals_are_out_of_reach() -> None:
    with pytest.raises(ExpressionError, match="not allowed"):
        render("$(''.__class__.__mro__)$", SCOPE)


def test_shell_command_substitution_is_text_and_double_dollar_escapes() -> None:
    assert render("echo $(date) and $$(x)", SCOPE) == "echo $(date) and $(x)"
    assert render("$$(hostname) in $(environment.name)$", SCOPE) == "$(hostname) in dev"


def test_cue_and_starlark_forms_show_the_jinja2_spelling() -> None:
    with pytest.raises(ExpressionError) as info:
        render_late("$(environment.name)$ \\(environment.name)", SCOPE)
    assert info.value.hint == "write $(environment.name)$"
    with pytest.raises(ExpressionError) as info:
        render("$(tenant)$ #{ run.id }#", SCOPE)
    assert info.value.hint == "write $(run.id)$"


def test_a_late_variable_is_rendered_before_the_strings_that_read_it() -> None:
    scope = {
        **SCOPE,
        "variables": {"vpc": "$(resource.net.output.id.value)$", "n": 1},
        "resource": {"net": {"output": {"id": {"value": "vpc-9"}}}},
    }
    assert render_late("id=$(variables.vpc)$ n=$(variables.n)$", scope) == "id=vpc-9 n=1"
    assert render_late({"x": "$(variables.vpc)$"}, scope) == {"x": "vpc-9"}


def test_expressions_cannot_build_huge_values() -> None:
    with pytest.raises(ExpressionError, match="value size budget exceeded"):
        render("$('a' * 100000000)$", SCOPE)
    with pytest.raises(ExpressionError, match="integer size budget exceeded"):
        render("$(2 ** 100000000)$", SCOPE)
    assert render("$(2 ** 10 * 3)$", SCOPE) == 3072


def test_conditions_decide_by_truthiness_of_the_rendered_value() -> None:
    names = {"response": {"status": 201, "json": {"ready": "false"}}, "exit_code": 0}
    assert condition_holds("$(response.status < 300)$", names)
    assert not condition_holds("$(response.json.ready)$", names)
    assert condition_holds("$(exit_code == 0)$", names)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("$(resource.vpc.output.id.value)$", "vpc-1"),  # a plain path: looked up directly
        ('$(resource["vpc"].output.id.value)$', "vpc-1"),
        ("$(resource.vpc.output.list.value[0])$", "a"),  # an index: jinja2
        ('$(numbered["0"])$', "zero"),
    ],
)
def test_a_plain_path_renders_as_jinja2_would(text: str, expected: object) -> None:
    scope = {"resource": {"vpc": {"output": {"id": {"value": "vpc-1"}, "list": {"value": ["a"]}}}},
             "numbered": {"0": "zero"}}
    assert expressions.render(text, scope) == expected


def test_a_key_named_like_a_mapping_method_reads_as_the_sandbox_reads_it() -> None:
    # The shortcut leaves `output.items` to jinja2's sandbox, which reads the key.
    assert expressions.render("$(output.items)$", {"output": {"items": "the key"}}) == "the key"


def test_a_number_index_on_a_mapping_is_not_taken_for_its_string_key() -> None:
    with pytest.raises(ExpressionError):
        expressions.render("$(numbered[0])$", {"numbered": {"0": "zero"}})


def test_a_plain_path_result_is_a_copy_within_the_value_budget() -> None:
    outputs = {"value": {"nested": ["x"]}}
    got = expressions.render("$(out.value)$", {"out": outputs})
    assert got == {"nested": ["x"]}
    got["nested"].append("y")
    assert outputs == {"value": {"nested": ["x"]}}
    with pytest.raises(ExpressionError, match="budget exceeded"):
        expressions.render("$(out.big)$", {"out": {"big": "x" * (expressions.MAX_OUTPUT + 1)}})
