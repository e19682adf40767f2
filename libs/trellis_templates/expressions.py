"""The `$( … )$` expression language: parsing, references and rendering in jinja2's sandbox.

Compiled expressions are cached by their text: the scheduler renders late-bound strings on
its dispatch path through `render_late`.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, TemplateSyntaxError, Undefined, UndefinedError, nodes
from jinja2.exceptions import SecurityError
from jinja2.parser import Parser
from jinja2.sandbox import SandboxedEnvironment

from trellis_templates.errors import ExpressionError, closest

START, END = "$(", ")$"
MAX_OUTPUT = 1 << 20  # characters a rendered string may hold
LATE_NAMES = frozenset({"resource", "approval"})  # known only at dispatch
KNOWN_NAMES = frozenset(
    {
        "environment",
        "variables",
        "resource",
        "context",
        "run",
        "tenant",
        "trigger",
        "approval",
        "response",
        "exit_code",
        "true",
        "false",
        "none",
        "True",
        "False",
        "None",
    }
)
_QUOTED_SEGMENT = re.compile(r'(?<=[\w\]\)])\s*\.\s*"([^"\\]*)"')
_CUE = re.compile(r"\\\(\s*([A-Za-z_][\w.\"\[\]-]*)\s*\)")
_STARLARK = re.compile(r"#\{\s*(.+?)\s*\}#")


def _b64encode(value: Any) -> str:
    data = value if isinstance(value, bytes) else str(value).encode()
    return base64.b64encode(data).decode()


def _b64decode(value: Any) -> str:
    return base64.b64decode(str(value)).decode()


def _tojson(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def _fromjson(value: Any) -> Any:
    return json.loads(str(value))


class _Sandbox(SandboxedEnvironment):
    """Mapping keys win over attributes, so an output named `items` or `values` reads as data.

    `*` and `**` are checked so that no expression can build a huge value or spin on a power.
    """

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and isinstance(right, int) and abs(right) > 64:
            raise SecurityError(f"exponent {right} is too large")
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, str | list | tuple) and isinstance(n, int) and len(seq) * n > MAX_OUTPUT:
                    raise SecurityError("the result would be too large")
        return super().call_binop(context, operator, left, right)

    def getattr(self, obj: Any, attribute: str) -> Any:
        if isinstance(obj, Mapping) and attribute in obj:
            return obj[attribute]
        return super().getattr(obj, attribute)


_env = _Sandbox(
    undefined=StrictUndefined,
    variable_start_string=START,
    variable_end_string=END,
    block_start_string="<%trellis-block%",
    block_end_string="%trellis-block%>",
    comment_start_string="<#trellis-comment#",
    comment_end_string="#trellis-comment#>",
    autoescape=False,
)
_env.filters.update(tojson=_tojson, fromjson=_fromjson, b64encode=_b64encode, b64decode=_b64decode)


@dataclass(frozen=True, slots=True)
class Expression:
    """One `$( … )$`: its source, its compiled callable, the names and resources it reads."""

    source: str
    ast: nodes.Expr
    call: Any
    names: frozenset[str]
    resources: frozenset[str]

    def evaluate(self, scope: Mapping[str, Any]) -> Any:
        try:
            value = self.call(**scope)
            if isinstance(value, Undefined):
                value._fail_with_undefined_error()
        except UndefinedError as exc:
            message, hint = _explain_undefined(self.ast, scope, str(exc.message))
            raise ExpressionError(f"$({self.source})$: {message}", self.source, hint) from None
        except SecurityError as exc:
            raise ExpressionError(f"$({self.source})$: not allowed: {exc}", self.source) from None
        except Exception as exc:
            raise ExpressionError(f"$({self.source})$: {type(exc).__name__}: {exc}", self.source) from None
        return value


@dataclass(frozen=True, slots=True)
class Parsed:
    """A string split into literal text and expressions; `whole` when it is one expression."""

    parts: tuple[str | Expression, ...]

    @property
    def whole(self) -> Expression | None:
        if len(self.parts) == 1 and isinstance(self.parts[0], Expression):
            return self.parts[0]
        return None

    @property
    def expressions(self) -> tuple[Expression, ...]:
        return tuple(p for p in self.parts if isinstance(p, Expression))


def _split(text: str) -> list[tuple[bool, str]]:
    """(is_expression, text) pieces. `$$(` is a literal `$(`; a `$(` with no `)$` after it is text."""
    pieces: list[tuple[bool, str]] = []
    literal: list[str] = []
    i = 0
    while True:
        j = text.find(START, i)
        if j < 0:
            literal.append(text[i:])
            break
        if j > 0 and text[j - 1] == "$":
            literal.append(text[i : j - 1] + START)
            i = j + 2
            continue
        k = text.find(END, j + 2)
        if k < 0:
            literal.append(text[i:].replace("$" + START, START))
            break
        literal.append(text[i:j])
        if any(literal):
            pieces.append((False, "".join(literal)))
        literal = []
        pieces.append((True, text[j + 2 : k]))
        i = k + 2
    if any(literal):
        pieces.append((False, "".join(literal)))
    return pieces


class _CompileOnFirstCall:
    """jinja2's compiled callable for `source`, compiled when first called."""

    __slots__ = ("compiled", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        self.compiled: Any = None

    def __call__(self, **scope: Any) -> Any:
        if self.compiled is None:
            self.compiled = _env.compile_expression(self.source, undefined_to_none=False)
        return self.compiled(**scope)


@lru_cache(maxsize=1 << 16)
def _compile(source: str) -> Expression:
    """One expression, compiled once however many strings hold it (`environment.name`...)."""
    rewritten = _QUOTED_SEGMENT.sub(lambda m: f'["{m.group(1)}"]', source)
    if not rewritten.strip():
        raise ExpressionError("empty expression $()$", source)
    try:
        parser = Parser(_env, rewritten, state="variable")
        ast = parser.parse_expression()
        if not parser.stream.eos:
            parser.fail(f"unexpected {parser.stream.current.value!r}")
        # jinja2's code generation is most of the cost of an expression; a plain path cannot fail
        # it (no filters or tests to look up), and many are only checked, never rendered here.
        plain = _chain(ast) is not None
        call = _CompileOnFirstCall(rewritten) if plain else _env.compile_expression(rewritten, undefined_to_none=False)
    except TemplateSyntaxError as exc:
        raise ExpressionError(
            f"syntax error in $({source})$: {exc.message}",
            source,
            "to write a shell `$(`, write `$$(`" if END not in source and "(" in source else "",
        ) from None
    names = frozenset(n.name for n in ast.find_all(nodes.Name) if n.ctx == "load")
    return Expression(source, ast, call, names, frozenset(_resource_refs(ast)))


def _is_resource(node: nodes.Node) -> bool:
    return isinstance(node, nodes.Name) and node.name == "resource"


def _resource_refs(ast: nodes.Node) -> set[str]:
    found: set[str] = set()
    for node in ast.find_all((nodes.Getattr, nodes.Getitem)):
        if isinstance(node, nodes.Getattr) and _is_resource(node.node):
            found.add(node.attr)
        elif (
            isinstance(node, nodes.Getitem)
            and _is_resource(node.node)
            and isinstance(node.arg, nodes.Const)
            and isinstance(node.arg.value, str)
        ):
            found.add(node.arg.value)
    return found


@lru_cache(maxsize=1 << 16)
def parse(text: str) -> Parsed:
    """Split and compile every expression of `text` (cached). Raises ExpressionError."""
    foreign = foreign_syntax(text)
    if foreign:
        raise foreign
    parts: list[str | Expression] = []
    for is_expr, piece in _split(text):
        parts.append(_compile(piece) if is_expr else piece)
    return Parsed(tuple(parts))


def foreign_syntax(text: str) -> ExpressionError | None:
    """Rafay's CUE `\\(x)` and Starlark `#{ x }#` are not supported: say so, with the jinja2 form."""
    if m := _CUE.search(text):
        return ExpressionError(
            f"CUE interpolation {m.group(0)!r} is not supported", m.group(0), f"write $({m.group(1)})$"
        )
    if m := _STARLARK.search(text):
        return ExpressionError(
            f"Starlark expression {m.group(0)!r} is not supported", m.group(0), f"write $({m.group(1)})$"
        )
    return None


def check(text: str) -> ExpressionError | None:
    """The problem with `text`'s expressions (syntax, foreign syntax), or None."""
    if START not in text and "\\(" not in text and "#{" not in text:
        return None
    try:
        parse(text)
    except ExpressionError as exc:
        return exc
    return None


def output_references(text: str) -> set[str]:
    """Names of the resources whose outputs `text` reads (from the jinja2 AST)."""
    if START not in text:
        return set()
    return {r for e in parse(text).expressions for r in e.resources}


def names(text: str) -> set[str]:
    """The top-level names `text`'s expressions read."""
    if START not in text:
        return set()
    return {n for e in parse(text).expressions for n in e.names}


def is_late(text: str) -> bool:
    """True when `text` can only be rendered at dispatch (it reads outputs or the approval)."""
    return START in text and bool(names(text) & LATE_NAMES)


def render(text: str, scope: Mapping[str, Any]) -> Any:
    """Render one string. A string that is one whole expression keeps the value's type."""
    if START not in text:
        return text
    parsed = parse(text)
    whole = parsed.whole
    if whole is not None:
        value = whole.evaluate(scope)
        if isinstance(value, str) and len(value) > MAX_OUTPUT:
            raise ExpressionError(f"$({whole.source})$: output longer than {MAX_OUTPUT} characters")
        return value
    out: list[str] = []
    for part in parsed.parts:
        out.append(part if isinstance(part, str) else text_of(part.evaluate(scope)))
    result = "".join(out)
    if len(result) > MAX_OUTPUT:
        raise ExpressionError(f"{text[:60]!r}: output longer than {MAX_OUTPUT} characters", text)
    return result


def text_of(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return _tojson(value)
    return "" if value is None else str(value)


def render_late(value: Any, scope: Mapping[str, Any]) -> Any:
    """Render every `$( )$` string inside nested dicts, lists and tuples (the scheduler's call).

    Variables that are themselves late (`variables.X` holding an output reference, and likewise
    `environment.variables.X`) are rendered first, once per scope object.
    """
    return _walk(value, _resolved(scope))


def _walk(value: Any, scope: Mapping[str, Any]) -> Any:
    if isinstance(value, str):
        return render(value, scope) if START in value else value
    if isinstance(value, dict):
        return {k: _walk(v, scope) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_walk(v, scope) for v in value)
    return value


def _marked(value: Any) -> bool:
    if isinstance(value, str):
        return START in value
    if isinstance(value, dict):
        return any(_marked(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(_marked(v) for v in value)
    return False


# (identity, resolved scope) of the last scope seen: the scheduler renders many strings per scope.
# One slot, replaced whole, so concurrent callers can only miss the cache, never mix entries.
_last: list[tuple[tuple[Any, ...], Mapping[str, Any]]] = [((), {})]


def _resolved(scope: Mapping[str, Any]) -> Mapping[str, Any]:
    identity = (scope, scope.get("variables"), scope.get("environment"), scope.get("resource"))
    last_identity, last_scope = _last[0]
    if len(last_identity) == 4 and all(a is b for a, b in zip(last_identity, identity, strict=True)):
        return last_scope
    out = scope
    env = scope.get("environment")
    if isinstance(env, Mapping) and _marked(env.get("variables")):
        out = {**out, "environment": {**env, "variables": _walk(env["variables"], out)}}
    if _marked(scope.get("variables")):
        out = {**out, "variables": _walk(scope["variables"], out)}
    _last[0] = (identity, out)
    return out


def truthy(value: Any) -> bool:
    """How a rendered condition decides: `false`, `no`, `0`, `off`, `null` and empty text are false."""
    if isinstance(value, str):
        return value.strip().lower() not in ("", "false", "no", "0", "off", "none", "null")
    return bool(value)


def condition_holds(condition: str, names: Mapping[str, Any]) -> bool:
    """A success or skip condition: `$(expr)$` (or text holding expressions) rendered, then `truthy`.

    For agents (`response`, `exit_code`) and the scheduler; raises ExpressionError.
    """
    return truthy(render(condition, names))


def _chain(node: nodes.Node) -> list[str] | None:
    """`a.b["c"].d` -> ["a", "b", "c", "d"]; None when not a plain path."""
    if isinstance(node, nodes.Name):
        return [node.name]
    if isinstance(node, nodes.Getattr):
        head = _chain(node.node)
        return None if head is None else [*head, node.attr]
    if isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const):
        head = _chain(node.node)
        return None if head is None else [*head, str(node.arg.value)]
    return None


def _explain_undefined(ast: nodes.Node, scope: Mapping[str, Any], fallback: str) -> tuple[str, str]:
    """Name the first segment of a path that is not in scope, with the closest existing one."""
    candidates = [ast, *ast.find_all((nodes.Getattr, nodes.Getitem, nodes.Name))]
    for node in candidates:
        chain = _chain(node)
        if not chain:
            continue
        current: Any = scope
        for depth, segment in enumerate(chain):
            if isinstance(current, Mapping) and segment in current:
                current = current[segment]
                continue
            where = ".".join(chain[: depth + 1])
            options = [str(k) for k in current] if isinstance(current, Mapping) else []
            return f"undefined name {where!r}", closest(segment, options)
    return fallback, ""
