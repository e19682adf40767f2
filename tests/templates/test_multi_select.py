"""Rafay's `override.multiSelect`: a restricted variable whose value is a list of its
restrictedValues, given as a YAML list, a JSON array or comma-separated text, each item checked."""

from __future__ import annotations

import pytest
from template_support import BASE, mutate, only, run

from trellis_core.workflow import IacSpec

ZONES = (
    "      options: {override: {type: restricted, restrictedValues: [eu-west-1, us-east-1]}}\n",
    "      options: {override: {type: restricted, restrictedValues: [eu-west-1, us-east-1]}}\n"
    "    - name: zones\n"
    "      value: [a]\n"
    "      options: {override: {type: restricted, restrictedValues: [a, b, c], multiSelect: true}}\n",
)


def _init_of(text: str, inputs: dict[str, str] | None = None) -> IacSpec:
    result = run(text, inputs=inputs)
    assert not result.errors, [str(p) for p in result.errors]
    assert result.workflow is not None
    init = result.workflow.by_id()["resource/vpc/init"]
    assert isinstance(init.spec, IacSpec)
    assert isinstance(init.inputs["zones"], list)
    return init.spec


@pytest.mark.parametrize(
    ("given", "chosen"),
    [('["a", "c"]', ["a", "c"]), ("b, c", ["b", "c"]), ("a", ["a"])],
    ids=["json-array", "comma-separated", "one"],
)
def test_the_chosen_values_reach_the_resource_as_a_list(given: str, chosen: list[str]) -> None:
    spec = _init_of(mutate(ZONES), {"zones": given})
    assert spec.env["TF_VAR_zones"] == "[" + ",".join(f'"{z}"' for z in chosen) + "]"


def test_the_templates_own_list_is_a_list_too() -> None:
    assert _init_of(mutate(ZONES)).env["TF_VAR_zones"] == '["a"]'


def test_a_value_outside_the_restricted_values_is_named_among_the_chosen() -> None:
    result = run(mutate(ZONES), inputs={"zones": "a,mars,b"})
    problem = only(result.errors, "--var zones")
    assert "'mars' in value 'a,mars,b'" in problem.message
    assert "multiSelect: each chosen value must be one" in problem.message
    assert problem.hint == "allowed: a, b, c"


def test_a_template_list_outside_the_restricted_values_points_at_its_value() -> None:
    text = mutate(ZONES, ("      value: [a]\n", "      value: [a, z]\n"))
    problem = only(run(text).errors, "spec.variables[1].value")
    assert "'z' in value ['a', 'z']" in problem.message


def test_without_multi_select_a_list_is_one_value_and_refused() -> None:
    single = (ZONES[0], ZONES[1].replace(", multiSelect: true", ""))
    result = run(mutate(single), inputs={"zones": "a,b"})
    assert "value 'a,b' of variable 'zones'" in only(result.errors, "--var zones").message
    assert BASE.count("multiSelect") == 0
