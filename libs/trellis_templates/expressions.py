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

from jinja2 import TemplateSyntaxError, Undefined, UndefinedError, nodes
from jinja2.exceptions import SecurityError
from jinja2.parser import Parser

from trellis_core.sealed import MASK, TOKEN_PATTERN
from trellis_templates.budget import LIMITS, BudgetExceeded, check_nesting, metered
from trellis_templates.errors import ExpressionError
from trellis_templates.expression_ast import chain, context_refs, depth_of, explain_undefined, resource_refs
from trellis_templates.sandbox import MeteredSandbox, thaw, tojson, view

START, END = "$(", ")$"
MAX_OUTPUT = LIMITS.value_size  # characters a rendered string may hold
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
_QUOTED = re.compile(r"""(['"])(.*?)\1""")
_TYPE_NAMES = frozenset(
    {"str", "int", "float", "bool", "dict", "list", "tuple", "NoneType", "mappingproxy", "utf-8", "ascii", "bytes"}
)
_CACHED = 8192  # compiled expressions and parsed strings kept (least recently used dropped)


def _b64encode(value: Any) -> str:
    data = value if isinstance(value, bytes) else str(value).encode()
    return base64.b64encode(data).decode()


def _b64decode(value: Any) -> str:
    return base64.b64decode(str(value)).decode()


def _fromjson(value: Any) -> Any:
    return json.loads(str(value))


_env = MeteredSandbox(
    variable_start_string=START,
    variable_end_string=END,
    block_start_string="<%trellis-block%",
    block_end_string="%trellis-block%>",
    comment_start_string="<#trellis-comment#",
    comment_end_string="#trellis-comment#>",
)
_env.add_filters(fromjson=_fromjson, b64encode=_b64encode, b64decode=_b64decode)
_tojson = tojson


def _short(source: str) -> str:
    return source if len(source) <= 80 else source[:77] + "..."


@dataclass(frozen=True, slots=True)
class Expression:
    """One `$( … )$`: its source, its compiled callable, the names and resources it reads."""

    source: str
    ast: nodes.Expr
    call: Any
    names: frozenset[str]
    resources: frozenset[str]
    path: tuple[str, ...] | None = None  # `a.b["c"]` as ("a", "b", "c"): a plain path
    contexts: frozenset[str] = frozenset()  # the contexts `context.C` it reads

    def evaluate(self, scope: Mapping[str, Any]) -> Any:
        """The expression's value in `scope`, within the render's budget; raises ExpressionError.

        The expression sees the scope through read-only views and returns plain data of its own.
        """
        if self.path is not None and (found := _walk_path(scope, self.path)) is not _MISSING:
            return self._plain(found)
        where = f"$({_short(self.source)})$"
        try:
            with metered() as meter:
                value = self.call(**{k: view(v) for k, v in scope.items()})
                if isinstance(value, Undefined):
                    value._fail_with_undefined_error()
                meter.expect(meter.size_of(value), "the result")
                return thaw(value)
        except UndefinedError as exc:
            message, hint = explain_undefined(self.ast, scope, str(exc.message))
            raise ExpressionError(f"{where}: {self._redacted(message)}", self.source, hint) from None
        except BudgetExceeded as exc:
            raise ExpressionError(f"{where}: {exc}", self.source) from None
        except SecurityError as exc:
            raise ExpressionError(f"{where}: not allowed: {self._redacted(str(exc))}", self.source) from None
        except RecursionError:
            raise ExpressionError(f"{where}: nesting budget exceeded: values nested too deep", self.source) from None
        except MemoryError:
            raise ExpressionError(f"{where}: memory budget exceeded: out of memory", self.source) from None
        except OverflowError as exc:
            raise ExpressionError(f"{where}: number too large: {exc}", self.source) from None
        except Exception as exc:
            raise ExpressionError(f"{where}: {type(exc).__name__}: {self._redacted(str(exc))}", self.source) from None

    def _redacted(self, message: str) -> str:
        """An error message without the values it quotes: a quoted text that is neither written
        in the expression nor a type's name came from a value (a secret, or its token) and is
        replaced; tokens are masked. What stays names the expression and the path it read."""
        message = TOKEN_PATTERN.sub(MASK, message) if "[[trellis-sealed:" in message else message

        def one(match: re.Match[str]) -> str:
            quoted = match[2]
            if quoted.removesuffix(" object") in _TYPE_NAMES or (quoted and quoted in self.source):
                return match[0]
            return f"{match[1]}(a value, not shown){match[1]}"

        return _QUOTED.sub(one, message)


    def _plain(self, value: Any) -> Any:
        try:
            with metered() as meter:
                meter.expect(meter.size_of(value), "the result")
                return thaw(value)
        except BudgetExceeded as exc:
            raise ExpressionError(f"$({_short(self.source)})$: {exc}", self.source) from None
        except RecursionError:
            raise ExpressionError(
                f"$({_short(self.source)})$: nesting budget exceeded: values nested too deep", self.source
            ) from None


_MISSING = object()


def _walk_path(scope: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    """What jinja2 finds at a plain path when every step is a mapping key that no attribute
    shadows (a dict's `items` is its method to jinja2), else _MISSING: jinja2 then decides.
    Most late expressions are such paths (`resource.vpc.output.id.value`), and this spares
    each its own jinja2 compilation."""
    node: Any = scope
    for segment in path:
        if not isinstance(node, Mapping) or segment not in node or hasattr(node, segment):
            return _MISSING
        node = node[segment]
    return node


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
        if j > i and text[j - 1] == "$":  # not the `$` closing the expression before
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


@lru_cache(maxsize=_CACHED)
def _compile(source: str) -> Expression:
    """One expression, compiled once however many strings hold it (`environment.name`...)."""
    if len(source) > LIMITS.source:
        raise ExpressionError(
            f"$({_short(source)})$: source length budget exceeded: {len(source)} characters (limit {LIMITS.source})",
            _short(source),
        )
    rewritten = _QUOTED_SEGMENT.sub(lambda m: f'["{m.group(1)}"]', source)
    if not rewritten.strip():
        raise ExpressionError("empty expression $()$", source)
    try:
        check_nesting(rewritten)
        parser = Parser(_env, rewritten, state="variable")
        ast = parser.parse_expression()
        if not parser.stream.eos:
            parser.fail(f"unexpected {parser.stream.current.value!r}")
        depth = depth_of(ast)
        if depth > LIMITS.depth:
            raise BudgetExceeded("nesting", f"the expression is {depth} levels deep (limit {LIMITS.depth})")
        # jinja2's code generation is most of the cost of an expression; a plain path cannot fail
        # it (no filters or tests to look up), and many are only checked, never rendered here.
        path = chain(ast)
        call = (
            _CompileOnFirstCall(rewritten)
            if path is not None
            else _env.compile_expression(rewritten, undefined_to_none=False)
        )
    except TemplateSyntaxError as exc:
        raise ExpressionError(
            f"syntax error in $({_short(source)})$: {exc.message}",
            source,
            "to write a shell `$(`, write `$$(`" if END not in source and "(" in source else "",
        ) from None
    except BudgetExceeded as exc:
        raise ExpressionError(f"$({_short(source)})$: {exc}", source) from None
    except RecursionError:
        raise ExpressionError(f"$({_short(source)})$: nesting budget exceeded: nested too deep", source) from None
    names = frozenset(n.name for n in ast.find_all(nodes.Name) if n.ctx == "load")
    subscripts = [ast] if isinstance(ast, nodes.Getitem) else []
    subscripts += list(ast.find_all(nodes.Getitem))
    numbered = any(not isinstance(getattr(n.arg, "value", None), str) for n in subscripts)
    plain = tuple(path) if path is not None and not numbered else None  # `a[0]` is left to jinja2
    contexts = frozenset(context_refs(ast)) if "context" in names else frozenset()
    return Expression(source, ast, call, names, frozenset(resource_refs(ast)), plain, contexts)


def parse(text: str) -> Parsed:
    """Split and compile every expression of `text` (cached up to a size). Raises ExpressionError."""
    return _parse_cached(text) if len(text) <= LIMITS.source else _parse(text)


def _parse(text: str) -> Parsed:
    foreign = foreign_syntax(text)
    if foreign:
        raise foreign
    parts: list[str | Expression] = []
    for is_expr, piece in _split(text):
        parts.append(_compile(piece) if is_expr else piece)
    return Parsed(tuple(parts))


_parse_cached = lru_cache(maxsize=_CACHED)(_parse)


def foreign_syntax(text: str) -> ExpressionError | None:
    """Rafay's CUE `\\(x)` and Starlark `#{ x }#` are not supported: say so, with the jinja2 form."""
    if m := _CUE.search(text):
        return ExpressionError(
            f"CUE interpolation {m.group(0)!r} is not supported", m.group(0), f"write $({m.group(1)})$"
        )
    # found line by line with `find`, not a lazy regex: a long text of `#{` stays linear
    for line in text.splitlines() if "#{" in text else ():
        start = line.find("#{")
        end = line.find("}#", start + 2) if start >= 0 else -1
        if end >= 0 and line[start + 2 : end].strip():
            whole, inner = line[start : end + 2], line[start + 2 : end].strip()
            return ExpressionError(
                f"Starlark expression {_short(whole)!r} is not supported", whole, f"write $({inner})$"
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


def context_references(text: str) -> set[str]:
    """Names of the contexts `text`'s expressions read (`context.C…`)."""
    if START not in text:
        return set()
    return {c for e in parse(text).expressions for c in e.contexts}


def names(text: str) -> set[str]:
    """The top-level names `text`'s expressions read."""
    if START not in text:
        return set()
    return {n for e in parse(text).expressions for n in e.names}


def is_late(text: str) -> bool:
    """True when `text` can only be rendered at dispatch (it reads outputs or the approval)."""
    return START in text and bool(names(text) & LATE_NAMES)


def render(text: str, scope: Mapping[str, Any]) -> Any:
    """Render one string within one budget (see budget.py). A string that is one whole expression
    keeps the value's type; the text of several is at most MAX_OUTPUT characters."""
    if START not in text:
        return text
    parsed = parse(text)
    whole = parsed.whole
    if whole is not None:
        return whole.evaluate(scope)
    out: list[str] = []
    size = 0
    with metered():
        for part in parsed.parts:
            piece = part if isinstance(part, str) else text_of(part.evaluate(scope))
            size += len(piece)
            if size > MAX_OUTPUT:
                raise ExpressionError(
                    f"{_short(text)!r}: output size budget exceeded: more than {MAX_OUTPUT} characters", text
                )
            out.append(piece)
    return "".join(out)


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
    with metered():
        return _walk(value, _resolved(scope))


class LateRenderer:
    """Late binding for the engine (`trellis_engine.binding.Renderer`): `render_late` under one
    shared budget per `budget()` block. The scheduler hands `LATE` to `decide`."""

    def render(self, value: Any, scope: dict[str, Any]) -> Any:
        return render_late(value, scope)

    def budget(self) -> metered:
        return metered()


LATE = LateRenderer()


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
