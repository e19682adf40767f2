"""Hostile `$( )$` expressions: each fails fast naming the budget it exceeds, none can change what
it reads, and ordinary expressions near the limits still render."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from trellis_templates import expressions
from trellis_templates.budget import LIMITS
from trellis_templates.errors import ExpressionError
from trellis_templates.expressions import parse, render, render_late


def scope() -> dict[str, Any]:
    return {
        "variables": {"items": ["a", "b"], "big": "x" * 600_000, "numbers": list(range(1000))},
        "run": {"id": "r1", "action": "deploy"},
        "resource": {"a": {"output": {"x": {"value": "kept"}}}},
    }


HOSTILE = [
    pytest.param("(((10**64)**64)**64)**64", "integer size", id="power-tower"),
    pytest.param("2**4000 * 2**4000", "integer size", id="integer-product"),
    pytest.param("10 ** 100000000", "integer size", id="huge-exponent"),
    pytest.param('"%0300000000d" % 1', "value size", id="percent-width"),
    pytest.param('"%.300000000f" % 1.5', "value size", id="percent-precision"),
    pytest.param("[[0]*1000000]*1000000", "value size", id="nested-list-repeat"),
    pytest.param("([[[0]*100]*100]*100)|tojson", "value size", id="tojson-of-shared-lists"),
    pytest.param("'x'.encode() * 1000000000", "value size", id="bytes-repeat"),
    pytest.param("'x'*1000*1000*1000", "value size", id="repeat-chain"),
    pytest.param("'x' * 1000000 + 'x' * 1000000", "value size", id="add-large-strings"),
    pytest.param("variables.big ~ variables.big", "value size", id="concat"),
    pytest.param("[variables.big, variables.big]", "value size", id="list-literal"),
    pytest.param("{'a': variables.big, 'b': variables.big}", "value size", id="dict-literal"),
    pytest.param("'%0300000000d'|format(1)", "value size", id="format-filter"),
    pytest.param("'{:>1000000000}'.format(1)", "value size", id="str-format-width"),
    pytest.param("'{0}{0}{0}'.format(variables.big)", "value size", id="str-format-repeat"),
    pytest.param("'x'|center(1000000000)", "value size", id="center"),
    pytest.param("'x'.ljust(10**9)", "value size", id="ljust"),
    pytest.param("variables.big|replace('x', 'xx')", "value size", id="replace-filter"),
    pytest.param("variables.big.replace('x', 'yy')", "value size", id="replace-method"),
    pytest.param("variables.numbers|join(variables.big)", "value size", id="join-separator"),
    pytest.param("('a\\n'*400000)|indent(100)", "value size", id="indent"),
    pytest.param("('x '*100000)|wordwrap(1)", "value size", id="wordwrap"),
    pytest.param("[1]|batch(1000000000, 0)", "value size", id="batch-fill"),
    pytest.param("range(3)|slice(1000000000)", "value size", id="slice"),
    pytest.param("('\\t'*100000).expandtabs(100)", "value size", id="expandtabs"),
    pytest.param("range(10**9)|list", "range", id="range"),
    pytest.param("range(10000)|map('string')|map('center', 1000000)|join", "work", id="map-amplification"),
    pytest.param("variables.numbers|map('string')|map('center', 100000)|join", "work", id="map-join"),
    pytest.param("[" + ", ".join(["variables.big|wordcount"] * 20) + "]", "work", id="repeated-scans"),
    pytest.param("range(10000)|map('string')|map('string')|map('string')|list", "operations", id="op-count"),
    pytest.param("(variables.big|list)|unique|list", "operations", id="walk-huge-list"),
    pytest.param("(" * 200 + "1" + ")" * 200, "nesting", id="deep-brackets"),
    pytest.param("{'a':" * 100 + "1" + "}" * 100, "nesting", id="deep-dict-literal"),
    pytest.param("not " * 500 + "true", "nesting", id="deep-not"),
    pytest.param("- " * 500 + "1", "nesting", id="deep-unary"),
    pytest.param("1" + "+1" * 1500, "nesting", id="long-operator-chain"),
    pytest.param("variables.items" + "|first" * 300, "nesting", id="long-filter-chain"),
    pytest.param("1" + " " * 5000, "source length", id="long-source"),
]


@pytest.mark.timeout(10)
@pytest.mark.parametrize(("expression", "budget"), HOSTILE)
def test_a_hostile_expression_fails_fast_naming_the_budget_it_exceeds(expression: str, budget: str) -> None:
    before = scope()
    names = scope()
    with pytest.raises(ExpressionError, match=f"{budget} budget exceeded"):
        render(f"$({expression})$", names)
    assert names == before


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    "expression",
    [
        "1.0e300 ** 10",  # float overflow
        "([[1]*1000]*100)|sum(start=[])",  # quadratic list concatenation
        "'abc'.translate({97: 'x'*1000000})",
        "dict.fromkeys(range(10000), variables.big)",
        "(1).to_bytes(1000000000, 'big')",
        "lipsum(1000000)",
        "'%*d' % (1000000000, 1)",
    ],
)
def test_operations_with_no_safe_bound_are_refused(expression: str) -> None:
    with pytest.raises(ExpressionError) as info:
        render(f"$({expression})$", scope())
    assert any(word in str(info.value) for word in ("not allowed", "number too large", "undefined name")), info.value


MUTATIONS = [
    "resource.a.output.update({'x': {'value': 'evil'}})",
    "resource.a.output.x.update(value='evil')",
    "resource['a']['output'].clear()",
    "resource.a.output.pop('x')",
    "resource.a.output.popitem()",
    "resource.a.output.setdefault('y', 1)",
    "resource.a.output.__setitem__('x', 1)",
    "resource.a.output['__setitem__']('x', 1)",
    "run.update(action='destroy')",
    "variables.items.append('evil')",
    "variables.items.extend(['evil'])",
    "variables.items.insert(0, 'evil')",
    "variables.items.pop()",
    "variables.items.remove('a')",
    "variables.items.clear()",
    "variables.items.sort(reverse=true)",
    "variables.items.reverse()",
    "(variables.items|attr('append'))('evil')",
    "(resource.a.output|attr('update'))({})",
]


@pytest.mark.parametrize("expression", MUTATIONS)
def test_an_expression_cannot_change_the_scope_it_reads(expression: str) -> None:
    names = scope()
    before = copy.deepcopy(names)
    with pytest.raises(ExpressionError, match="not allowed") as info:
        render_late(f"$({expression})$", names)
    assert str(info.value).startswith("$(")
    assert names == before


def test_a_rendered_value_is_a_copy_the_scope_does_not_share() -> None:
    names = scope()
    value = render("$(resource.a.output)$", names)
    assert value == {"x": {"value": "kept"}}
    assert type(value) is dict
    value["x"]["value"] = "changed"
    assert names["resource"]["a"]["output"]["x"]["value"] == "kept"


def test_adjacent_expressions_both_render() -> None:
    assert render("$( run.id )$$( run.action )$", scope()) == "r1deploy"
    assert render("$(1)$$(2)$$(3)$", scope()) == "123"
    assert render("$(run.id)$$$(date)", scope()) == "r1$(date)"


def test_ordinary_expressions_near_the_limits_still_render() -> None:
    names = scope()
    assert render("$(range(10000)|list|sort|length)$", names) == 10000
    assert render("$(variables.big|length)$", names) == 600_000
    assert render("$(2 ** 4000 > 0)$", names) is True
    assert render("$(" + "(" * LIMITS.nesting + "1" + ")" * LIMITS.nesting + ")$", names) == 1
    assert render("$('-'.join(variables.items) ~ '{:>5}'.format(1))$", names) == "a-b    1"
    assert render("$(variables.numbers|map('string')|join(',')|length)$", names) == 3889


def test_one_text_shares_one_budget_across_its_expressions() -> None:
    one = "$(variables.big|tojson|length)$"
    assert render(one, scope()) == 600_002
    with pytest.raises(ExpressionError, match="work budget exceeded"):
        render(" ".join([one] * 8), scope())


def test_the_text_of_several_expressions_is_capped() -> None:
    with pytest.raises(ExpressionError, match="output size budget exceeded"):
        render("$(variables.big)$ $(variables.big)$", scope())


def test_long_texts_are_parsed_without_filling_the_cache() -> None:
    long_text = "$(run.id)$ " + "y" * (LIMITS.source + 10)
    cached = expressions._parse_cached.cache_info()
    assert parse(long_text).expressions[0].source == "run.id"
    assert expressions._parse_cached.cache_info().currsize == cached.currsize
    assert cached.maxsize is not None
    assert expressions._compile.cache_info().maxsize == cached.maxsize


@pytest.mark.timeout(10)
@pytest.mark.parametrize("expression", ["variables.deep", "variables.deep|tojson", "variables.deep|string"])
def test_deeply_nested_data_is_a_nesting_error_not_a_crash(expression: str) -> None:
    deep: list[Any] = []
    for _ in range(5000):
        deep = [deep]
    with pytest.raises(ExpressionError, match="nesting budget exceeded"):
        render(f"$({expression})$", {"variables": {"deep": deep}})
