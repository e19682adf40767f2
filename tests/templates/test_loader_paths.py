"""Every fast path gives what its reference gives: the fast YAML reader and PyYAML (libyaml and
pure Python) the same values, lines and columns; msgspec alone and the walker the same documents;
a path expression compiled on first use and jinja2's eager compilation the same values and errors."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from trellis_templates import expressions, fastyaml, validate
from trellis_templates.errors import Problems
from trellis_templates.loader import LIBYAML, Reader, load_text
from trellis_templates.validate import parse_documents

EXAMPLES = sorted(Path(__file__).resolve().parents[2].joinpath("examples").rglob("*.yaml"))
REFERENCES: list[Reader] = ["libyaml", "pyyaml"] if LIBYAML else ["pyyaml"]


def read(text: str, reader: Reader) -> tuple[list[Any], list[str]]:
    """Every document as (index, data, node positions, key positions), and the problems."""
    problems = Problems()
    docs = load_text(text, "f.yaml", problems, reader=reader)
    seen = [(d.index, d.data, dict(d.source.positions), dict(d.source.key_positions)) for d in docs]
    return seen, [str(p) for p in [*problems.errors, *problems.warnings]]


def assert_same(text: str, readers: list[Reader]) -> None:
    first, *others = readers
    expected = read(text, first)
    for reader in others:
        assert read(text, reader) == expected, f"{reader} differs from {first} on:\n{text}"


def assert_fast_path_agrees(text: str) -> None:
    """Auto (the fast reader or its fallback) is exactly libyaml, problems included; and what
    the fast reader accepts, pure-Python PyYAML reads the same (libyaml and pure PyYAML differ
    on some invalid or exotic YAML, which the fast reader leaves to them)."""
    assert_same(text, ["auto", REFERENCES[0]])
    try:
        fastyaml.read(text)
    except fastyaml.Unsupported:
        return
    assert_same(text, ["fast", "pyyaml"])


def test_the_examples_exist() -> None:
    assert len(EXAMPLES) >= 5


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_example_reads_the_same_on_the_fast_path_and_on_pyyaml(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert_same(text, ["fast", *REFERENCES])  # "fast" raises if it had to give up on the text


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_example_validates_to_the_same_documents_on_every_path(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    results = []
    for reader in ["fast", *REFERENCES]:
        problems = Problems()
        docs = parse_documents(load_text(text, str(path), problems, reader=reader), problems)
        results.append(([(d.document, d.source) for d in docs], problems.errors, problems.warnings))
    assert all(r == results[0] for r in results[1:])


@pytest.mark.parametrize("flow", [False, None, True], ids=["block", "mixed", "flow"])
def test_the_examples_dumped_by_pyyaml_read_the_same_on_every_path(flow: bool | None) -> None:
    for path in EXAMPLES:
        data = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
        text = yaml.safe_dump_all(data, sort_keys=False, default_flow_style=flow, width=100)
        assert_fast_path_agrees(text)


EDGE_CASES = [
    "a: 1\nb:\n  - x: two\n    y: [1, 2]\n",
    "# only a comment\n",
    "",
    "---\na: 1\n---\n---\nb: 2\n",
    "a: 1\n---\nb: 2\n...\n",
    "%YAML 1.1\n---\na: 1\n",
    "a: 1  # trailing comment\nb: two words # c\nc: 'x' # c\nd: [1, 2] # c\ne: # nothing\nf:\n",
    "a: yes\nb: No\nc: ~\nd: null\ne: 0o17\nf: 0x1F\ng: 1_000\nh: 1:30\ni: .inf\nj: -.5\nk: 1e3\nl: 2020-01-02\n",
    "on: 1\ntrue: 2\n1: 3\nnull: 4\n",
    "'quoted key': 1\n\"dq\": 2\n'it''s': 3\n",
    'a: \'it\'\'s\'\nb: "tab\\there \\u00e9 \\x41 \\\\ \\" \\/"\nc: "bad \\q"\n',
    'a: "\\ud800"\n',
    "s: |\n  line 1\n    indented\n\n  line 3\n\n\nt: |-\n  kept\n  # not a comment\n",
    "u: |+\n  keep\n\nv: >\n  folded\n  text\n",
    "s: |\n  a\n      \n  b\n   \nt: 1\n",
    "s: |\n\n  leading blank\n",
    "s: |2\n   explicit indent\n",
    "s: |\n  no newline at the end",
    "- |\n  in a sequence\n- |-\n  again\n",
    "a:\n- x\n- y\nb:\n  - z\nc: []\nd: {}\ne: ''\nf: \"\"\n",
    "- a: 1\n  b: 2\n- - nested\n",
    "- a: 1\n  b:\n  - x\n-\n  c: 3\n-\n- last\n",
    "a: {b: {c: [1, 'two', \"three\", -4, -x]}, d: http://x:8080/p, e: it's}\n",
    "a: {b: 1,}\nc: [1, 2,]\n",
    "a: {b: c d, e: [f g, h]}\nb: [a: 1]\nc: {x: }\nd: {'q': 1, \"r\": 2}\n",
    "a: {b: 1\n  , c: 2}\n",
    "a: &x 1\nb: *x\nc: !!str 3\n",
    "base: &b {x: 1, y: 2}\nc:\n  <<: *b\n  y: 3\n",
    "a: 1\nb: 2\na: 3\n",
    "a: [1, 2\nb: 3\n",
    "a: b: c\n",
    "a: value:\n",
    "a:\n\tb: 1\n",
    "a: 1\r\nb: 2\r\n",
    "\ufeffa: 1\n",
    "a: one\n  two\n",
    "a: 'one\n  two'\n",
    "- one\n  two\n",
    "  a: 1\n  b: 2\n",
    "  a: 1\nb: 2\n",
    "a:\n    b: 1\n  c: 2\n",
    "scalar document\n",
    "- a\n-b\n",
    "a: -\nb: - x\n",
    "a: ?x\nb: '#'\nc: a#b\nd: '@x'\ne: x@\n",
    "key with spaces: 1\nk: v with: colon\n",
    "a: é\nb: 日本語: x\nc: [ü, {ö: ä}]\n",
    "a: 1\n\n\n# c\n\nb:\n\n  # c\n  c: 2\n",
    "a:\n  - b\n  -\n  - c\n",
    "a: |\n  x\nb: 1\n",
    "a: [b, [c, [d, {}]], []]\n",
    "a: x  \nb:   \n  c: 1\n",
    'a: "x" y\n',
    "a: [b] c\n",
]


@pytest.mark.parametrize("text", EDGE_CASES)
def test_an_edge_case_reads_the_same_on_every_path_or_is_left_to_pyyaml(text: str) -> None:
    assert_fast_path_agrees(text)


def test_the_fast_reader_gives_up_rather_than_guess() -> None:
    for text in ["a: &x 1\n", "a: >\n  x\n", "a: 1\na: 2\n", "a: [1\n", "a:\n\tb: 1\n", "a: 'x\n  y'\n"]:
        with pytest.raises(fastyaml.Unsupported):
            fastyaml.read(text)


MUTATIONS = [" ", ":", "#", "-", "'", '"', "{", "}", "[", "]", ",", "|", ">", "&", "?", "\\", "\n", ": ", " #", "- "]
MUTATIONS += ["---\n", "|-", "\n  ", "\n\n", "é", "''", "true", "~", "  "]


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_a_mangled_example_reads_the_same_on_every_path_or_fails_the_same(data: st.DataObject) -> None:
    text = data.draw(st.sampled_from(EXAMPLES)).read_text(encoding="utf-8")
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(text)))
        if data.draw(st.booleans()):
            text = text[:at] + data.draw(st.sampled_from(MUTATIONS)) + text[at:]
        else:
            text = text[:at] + text[at + data.draw(st.integers(1, 3)) :]
    assert_fast_path_agrees(text)


KEYS = st.sampled_from(["a", "name", "on", "yes", "null", "1", "x y", "k:v", "-k", "#k", "é", "a.b/c", "$(x)$"])
WORDS = ["", " ", "a b", "#", "a #b", "a: b", "a:", ":", "-", "- a", "-1", "1.5", "true", "~", "null", "'", '"', "\\"]
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**6), max_value=10**6),
    st.sampled_from(WORDS),
    st.text(alphabet="ab :#-'\"\\\n{}[],?&*!|>%@`é\t", max_size=10),
)
VALUES = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=4), max_leaves=20
)


@settings(max_examples=200, deadline=None)
@given(
    docs=st.lists(st.dictionaries(KEYS, VALUES, min_size=1, max_size=4), min_size=1, max_size=3),
    flow=st.sampled_from([False, None, True]),
    width=st.sampled_from([20, 80]),
    indent=st.sampled_from([2, 4]),
    unicode=st.booleans(),
)
def test_any_document_pyyaml_writes_reads_the_same_on_every_path(
    docs: list[dict[str, Any]], flow: bool | None, width: int, indent: int, unicode: bool
) -> None:
    text = yaml.safe_dump_all(
        docs, sort_keys=False, default_flow_style=flow, width=width, indent=indent, allow_unicode=unicode
    )
    assert_fast_path_agrees(text)


def validated(text: str) -> tuple[list[Any], list[str]]:
    problems = Problems()
    docs = parse_documents(load_text(text, "f.yaml", problems), problems)
    return [(d.document, d.source) for d in docs], [str(p) for p in [*problems.errors, *problems.warnings]]


LIMITS = """\
apiVersion: trellis.dev/v1
kind: ResourceTemplate
metadata: {name: r}
spec:
  provider: custom
  hooks:
    onInit:
      - name: h
        type: container
        options: {container: {image: alpine, cpuLimitMilli: LIMIT}}
"""


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_validating_straight_through_msgspec_gives_what_the_walker_gives(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = path.read_text(encoding="utf-8")
    direct = validated(text)
    monkeypatch.setattr(validate, "_direct", lambda data, cls: None)
    assert validated(text) == direct


@pytest.mark.parametrize(("limit", "expected"), [("500", "500"), ("'500'", "500"), ("null", None), ("1.5", "1.5")])
def test_a_number_where_a_string_or_an_int_fits_still_becomes_the_walkers_string(limit: str, expected: object) -> None:
    (doc,), problems = validated(LIMITS.replace("LIMIT", limit))
    assert not problems
    hook = doc[0].spec.hooks.on_init[0]
    assert hook.options.container.cpu_limit_milli == expected


PATH_EXPRESSIONS = [
    "environment.name",
    "resource.net.output.id.value",
    'resource["net"].output.id',
    'resource.net.output["id"]["value"]',
    'context."platform-defaults".variables.cost_center',
    "variables.items",
    "variables.size",
    "variables.missing",
    "nothing",
    "range",
    "environment.__class__",
    "environment.name.__class__.__mro__",
    "resource.net[0]",
]
SCOPES = [
    {
        "environment": {"name": "e"},
        "variables": {"items": [1], "size": "3"},
        "resource": {"net": {"output": {"id": {"value": 7}}}},
        "context": {"platform-defaults": {"variables": {"cost_center": "cc"}}},
    },
    {"environment": {}, "resource": {"net": [5]}},
    {},
]


def outcome(expression: expressions.Expression, scope: dict[str, Any]) -> tuple[str, str]:
    try:
        return "value", repr(expression.evaluate(scope))
    except expressions.ExpressionError as exc:
        return "error", f"{exc.message} | {exc.hint}"


@pytest.mark.parametrize("source", PATH_EXPRESSIONS)
def test_a_path_compiled_on_first_use_evaluates_as_jinja2_compiled_it_eagerly(source: str) -> None:
    (expression,) = expressions.parse(f"$({source})$").expressions
    assert type(expression.call).__name__ == "_CompileOnFirstCall"
    rewritten = expressions._QUOTED_SEGMENT.sub(lambda m: f'["{m.group(1)}"]', source)
    eager = replace(expression, call=expressions._env.compile_expression(rewritten, undefined_to_none=False))
    for scope in SCOPES:
        assert outcome(expression, scope) == outcome(eager, scope)


def test_positions_of_key_scalar_lines_are_read_again_only_when_first_asked_for() -> None:
    (doc,) = fastyaml.read("a: 1\nb:\n  - {c: x}\n")
    assert isinstance(doc.positions, fastyaml.Positions)
    assert doc.positions.where.tables is None  # a document without problems never pays for them
    assert doc.positions[("a",)] == (1, 4)
    assert doc.keys[("b", 0, "c")] == (3, 6)
    assert doc.positions.where.tables is not None


def test_an_alias_bomb_is_refused_with_a_problem_not_expanded() -> None:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, 9):
        lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]")
    problems = Problems()
    documents = load_text("\n".join(lines) + "\n", "bomb.yaml", problems)
    assert documents == []
    [error] = problems.errors
    assert (error.file, error.line, error.column) == ("bomb.yaml", 1, 1)
    assert "expands to more than" in error.message
