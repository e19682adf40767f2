"""The jinja2 environment `$( )$` runs in: immutable, read-only over its scope, and metered (every
operator, call, filter, concatenation and literal is charged to the render's budget)."""

from __future__ import annotations

import functools
import json
import types
from collections.abc import Callable, Mapping
from typing import Any

from jinja2 import StrictUndefined, Undefined
from jinja2.compiler import CodeGenerator, Frame, operators
from jinja2.exceptions import SecurityError
from jinja2.nodes import Compare, Concat, Dict, List, Tuple
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment, SandboxedFormatter
from jinja2.utils import _PassArg

from trellis_templates import budget as b

# Methods an expression may call, by the kind of object; everything else is refused.
_STR_METHODS = frozenset(
    [
        "capitalize",
        "casefold",
        "center",
        "count",
        "encode",
        "endswith",
        "expandtabs",
        "find",
        "index",
        "isalnum",
        "isalpha",
        "isascii",
        "isdecimal",
        "isdigit",
        "isidentifier",
        "islower",
        "isnumeric",
        "isprintable",
        "isspace",
        "istitle",
        "isupper",
        "join",
        "ljust",
        "lower",
        "lstrip",
        "partition",
        "removeprefix",
        "removesuffix",
        "replace",
        "rfind",
        "rindex",
        "rjust",
        "rpartition",
        "rsplit",
        "rstrip",
        "split",
        "splitlines",
        "startswith",
        "strip",
        "swapcase",
        "title",
        "upper",
        "zfill",
    ]
)
_METHODS: tuple[tuple[type | tuple[type, ...], frozenset[str]], ...] = (
    (str, _STR_METHODS),
    (bytes, frozenset({"decode", "hex", "count", "startswith", "endswith", "find"})),
    (Mapping, frozenset({"get", "items", "keys", "values"})),
    ((list, tuple), frozenset({"count", "index"})),
    (int, frozenset({"bit_length"})),
    (float, frozenset({"is_integer"})),
)
_MUTATORS = frozenset(
    [
        "update",
        "setdefault",
        "pop",
        "popitem",
        "clear",
        "append",
        "extend",
        "insert",
        "remove",
        "sort",
        "reverse",
        "add",
        "discard",
        "__setitem__",
        "__delitem__",
        "__setattr__",
        "__iadd__",
    ]
)
# Filters that walk their input item by item: eight items cost an operation.
# Filters that go through text in Python, word by word or piece by piece: each character costs more.
_SLOW = frozenset({"title", "wordwrap", "urlize", "pprint", "striptags", "truncate", "xmlattr"})
_SLOW_TEXT = 8
_WALKING = frozenset(
    [
        "batch",
        "dictsort",
        "groupby",
        "items",
        "join",
        "list",
        "map",
        "max",
        "min",
        "reject",
        "rejectattr",
        "reverse",
        "select",
        "selectattr",
        "slice",
        "sort",
        "sum",
        "unique",
    ]
)


def view(value: Any) -> Any:
    """What an expression sees of a value: mappings read-only (lists refuse changes in the sandbox)."""
    return types.MappingProxyType(value) if type(value) is dict else value


def thaw(value: Any) -> Any:
    """A render's result as plain data of its own: views become dicts, containers are copied."""
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, list):
        return [thaw(v) for v in value]
    if isinstance(value, tuple):
        return tuple(thaw(v) for v in value)
    return value


def tojson(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=_json_default)


def _json_default(value: Any) -> Any:
    return dict(value) if isinstance(value, Mapping) else str(value)


def _expect_method(meter: b.Meter, owner: Any, name: str, args: tuple[Any, ...]) -> None:
    """Refuse a string method whose result would be too large, before calling it."""
    if not isinstance(owner, str):
        return
    what = f"str.{name}"
    n = len(owner)
    if name in ("center", "ljust", "rjust", "zfill") and args and isinstance(args[0], int):
        meter.expect(args[0], what)
    elif name == "replace" and len(args) >= 2:
        old, new = str(args[0]), str(args[1])
        matches = owner.count(old) if old else n + 1
        meter.expect(n + matches * len(new), what)
    elif name == "expandtabs":
        size = args[0] if args and isinstance(args[0], int) else 8
        meter.expect(n + owner.count("\t") * size, what)
    elif name == "encode":
        meter.expect(4 * n, what)


class _CheckedFormatter(SandboxedFormatter):
    """jinja2's sandboxed `str.format`, with every field's width and size charged."""

    def format_field(self, value: Any, format_spec: str) -> Any:
        meter = b.current()
        meter.step()
        b.expect_format_spec(meter, format_spec)
        return meter.made(super().format_field(value, format_spec), "str.format")


class _Format:
    """`"...".format` / `format_map` as an expression may call it."""

    __slots__ = ("env", "map", "text")

    def __init__(self, env: MeteredSandbox, text: str, is_map: bool) -> None:
        self.env, self.text, self.map = env, text, is_map

    def __call__(self, *args: Any, **kwargs: Any) -> str:
        if self.map:
            if kwargs or len(args) != 1:
                raise TypeError("format_map() takes exactly one mapping")
            kwargs, args = args[0], ()
        meter = b.current()
        meter.expect(len(self.text), "str.format")
        out = str(_CheckedFormatter(self.env).vformat(self.text, args, kwargs))
        return meter.made(out, "str.format")  # type: ignore[no-any-return]


class _Generator(CodeGenerator):
    """jinja2's code generator, with `~`, comparisons and literals routed through the meter."""

    def visit_Concat(self, node: Concat, frame: Frame) -> None:
        self.write("environment.join_text((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")

    def visit_Compare(self, node: Compare, frame: Frame) -> None:
        self.write("(environment.operand(")
        self.visit(node.expr, frame)
        for op in node.ops:
            self.write(f") {operators[op.op]} environment.operand(")
            self.visit(op.expr, frame)
        self.write("))")

    def visit_List(self, node: List, frame: Frame) -> None:
        self.write("environment.literal(")
        super().visit_List(node, frame)
        self.write(")")

    def visit_Dict(self, node: Dict, frame: Frame) -> None:
        self.write("environment.literal(")
        super().visit_Dict(node, frame)
        self.write(")")

    def visit_Tuple(self, node: Tuple, frame: Frame) -> None:
        if node.ctx != "load":
            super().visit_Tuple(node, frame)
            return
        self.write("environment.literal(")
        super().visit_Tuple(node, frame)
        self.write(")")


def _metered_range(*args: int) -> range:
    meter = b.current()
    meter.step()
    rng = range(*args)
    if len(rng) > meter.budget.range:
        raise b.BudgetExceeded("range", f"range{args} has {len(rng)} items (limit {meter.budget.range})")
    return rng


class MeteredSandbox(ImmutableSandboxedEnvironment):
    """Mapping keys win over attributes, so an output named `items` or `values` reads as data.

    Every operator is intercepted; calls are limited to known, non-mutating methods whose result
    size is checked before they run; filters are wrapped likewise (see `_FILTER_CHECKS`).
    """

    code_generator_class = _Generator
    intercepted_binops = frozenset({"+", "-", "*", "/", "//", "%", "**"})
    intercepted_unops = frozenset({"+", "-"})

    def __init__(self, **options: Any) -> None:
        super().__init__(undefined=StrictUndefined, optimized=False, autoescape=False, **options)
        self.globals.clear()  # lipsum, cycler, joiner, namespace: not for expressions
        self.globals.update(range=_metered_range, dict=dict)
        self.filters.update(tojson=tojson)
        self.filters = {name: _metered_filter(name, f) for name, f in self.filters.items()}
        self.tests = {name: _metered_test(f) for name, f in self.tests.items()}  # type: ignore[arg-type]

    def add_filters(self, **filters: Callable[..., Any]) -> None:
        self.filters.update({name: _metered_filter(name, f) for name, f in filters.items()})

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        meter = b.current()
        meter.step()
        _expect_binop(meter, operator, left, right)
        return meter.made(self.binop_table[operator](left, right), f"'{operator}'")

    def call_unop(self, context: Context, operator: str, arg: Any) -> Any:
        b.current().step()
        return self.unop_table[operator](arg)

    def join_text(self, parts: tuple[Any, ...]) -> str:
        meter = b.current()
        meter.step()
        meter.expect(sum(meter.size_of(p) for p in parts), "'~'")
        return meter.made("".join(str(p) for p in parts), "'~'")  # type: ignore[no-any-return]

    def operand(self, value: Any) -> Any:
        """One side of a comparison: comparing (or `in`) walks it, so its length is work."""
        meter = b.current()
        meter.step()
        if isinstance(value, str | bytes | list | tuple | Mapping):
            meter.charge(len(value))
        return value

    def literal(self, value: Any) -> Any:
        meter = b.current()
        meter.step()
        return meter.made(value, "a literal")

    def getattr(self, obj: Any, attribute: str) -> Any:
        b.current().step()
        if isinstance(obj, Mapping) and attribute in obj:
            return view(obj[attribute])
        _refuse_mutator(obj, attribute)
        return view(super().getattr(obj, attribute))

    def getitem(self, obj: Any, argument: Any) -> Any:
        b.current().step()
        if isinstance(argument, str) and not (isinstance(obj, Mapping) and argument in obj):
            _refuse_mutator(obj, argument)
        return view(super().getitem(obj, argument))

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        if not isinstance(value, types.BuiltinMethodType) or value.__name__ not in ("format", "format_map"):
            return None
        owner = value.__self__
        return _Format(self, owner, value.__name__ == "format_map") if isinstance(owner, str) else None

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        meter = b.current()
        meter.step()
        if isinstance(__obj, Undefined | _Format) or __obj is _metered_range:
            return __context.call(__obj, *args, **kwargs)
        if __obj is dict:
            return meter.made(dict(*args, **kwargs), "dict()")
        owner = getattr(__obj, "__self__", None)
        name = getattr(__obj, "__name__", type(__obj).__name__)
        if not isinstance(__obj, types.BuiltinMethodType) or not _method_allowed(owner, name):
            raise SecurityError(f"calling {name!r} is not allowed in expressions")
        if name == "join" and isinstance(owner, str) and args:
            items = [str(x) for x in args[0]]
            meter.step(len(items) // 8)
            meter.expect(sum(map(len, items)) + len(owner) * len(items), "str.join")
            args = (items,)
        _expect_method(meter, owner, name, args)
        if isinstance(owner, str | bytes):
            meter.charge(len(owner))
        return meter.made(view(__obj(*args, **kwargs)), f"{type(owner).__name__}.{name}")


def _method_allowed(owner: Any, name: str) -> bool:
    return any(isinstance(owner, kind) and name in names for kind, names in _METHODS)


def _refuse_mutator(obj: Any, attribute: str) -> None:
    if attribute in _MUTATORS and isinstance(obj, Mapping | list | set):
        raise SecurityError(f"{attribute!r} would change a {_kind(obj)}: expressions read their scope, never change it")


def _expect_binop(meter: b.Meter, operator: str, left: Any, right: Any) -> None:
    """Refuse an operator whose result would be too large, before computing it."""
    what = f"{b.show(left)} {operator} {b.show(right)}"
    both_int = isinstance(left, int) and isinstance(right, int)
    # the fewest bits the result can have: more than the limit is refused before computing it
    if operator == "**" and both_int and right > 0 and abs(left) > 1:
        meter.expect_bits((left.bit_length() - 1) * right + 1, what)
    elif operator == "*" and both_int and left and right:
        meter.expect_bits(left.bit_length() + right.bit_length() - 1, what)
    elif operator == "*":
        for seq, n in ((left, right), (right, left)):
            if isinstance(n, int) and isinstance(seq, str | bytes | list | tuple):
                meter.expect(meter.size_of(seq) * max(n, 0), what)
    elif operator == "+" and not both_int:
        meter.expect(meter.size_of(left) + meter.size_of(right), what)
    elif operator == "%" and isinstance(left, str):
        b.expect_percent(meter, left, right)


def _filter_value(func: Callable[..., Any], args: tuple[Any, ...]) -> tuple[int, Any]:
    skip = 1 if _PassArg.from_obj(func) is not None else 0
    return skip, (args[skip] if len(args) > skip else None)


def _metered_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    check = _FILTER_CHECKS.get(name)

    @functools.wraps(func)
    def run(*args: Any, **kwargs: Any) -> Any:
        meter = b.current()
        meter.step()
        skip, value = _filter_value(func, args)
        if name in _WALKING and hasattr(value, "__len__"):
            meter.step(len(value) // 8)
        if isinstance(value, str | bytes):
            meter.charge(len(value) * (_SLOW_TEXT if name in _SLOW else 1))
        if check is not None and len(args) > skip:
            rest = list(args[skip:])
            check(meter, rest, kwargs)
            args = (*args[:skip], *rest)
        return meter.made(view(func(*args, **kwargs)), f"filter {name!r}")

    return run


def _metered_test(func: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(func)
    def run(*args: Any, **kwargs: Any) -> Any:
        b.current().step()
        return func(*args, **kwargs)

    return run


# Checks of the filters that can build more than they are given: each takes the filter's
# arguments (after the value) and returns them, a generator turned into a list to be measured.
Check = Callable[[b.Meter, list[Any], dict[str, Any]], None]


def _arg(args: list[Any], kwargs: dict[str, Any], index: int, name: str, default: Any) -> Any:
    return args[index] if len(args) > index else kwargs.get(name, default)


def _check_center(meter: b.Meter, args: list[Any], kwargs: dict[str, Any]) -> None:
    width = _arg(args, kwargs, 1, "width", 80)
    if isinstance(width, int):
        meter.expect(width, "filter 'center'")


def _check_indent(meter: b.Meter, args: list[Any], kwargs: dict[str, Any]) -> None:
    text, width = str(args[0]), _arg(args, kwargs, 1, "width", 4)
    pad = len(width) if isinstance(width, str) else width if isinstance(width, int) else 0
    meter.expect(len(text) + (text.count("\n") + 1) * pad, "filter 'indent'")


def _check_format(meter: b.Meter, args: list[Any], kwargs: dict[str, Any]) -> None:
    b.expect_percent(meter, str(args[0]), kwargs or tuple(args[1:]))


def _check_join(meter: b.Meter, args: list[Any], kwargs: dict[str, Any]) -> None:
    args[0] = items = list(args[0])
    meter.step(len(items) // 8)
    sep = str(_arg(args, kwargs, 1, "d", ""))
    meter.expect(sum(meter.size_of(x) for x in items) + len(sep) * len(items), "filter 'join'")


def _check_replace(meter: b.Meter, args: list[Any], kwargs: dict[str, Any]) -> None:
    text = str(args[0])
    old, new = str(_arg(args, kwargs, 1, "old", "")), str(_arg(args, kwargs, 2, "new", ""))
    matches = text.count(old) if old else len(text) + 1
    meter.expect(len(text) + matches * len(new), "filter 'replace'")


def _check_slow_text(name: str) -> Check:
    """wordwrap, urlize, pprint work in Python, piece by piece: a smaller input, and wordwrap's
    inserted text counted."""

    def check(meter: b.Meter, args: list[Any], kwargs: dict[str, Any]) -> None:
        meter.expect(16 * meter.size_of(args[0]), f"filter {name!r}")
        if name == "wordwrap":
            text = str(args[0])
            width = _arg(args, kwargs, 1, "width", 79)
            wrap = _arg(args, kwargs, 3, "wrapstring", None) or "\n"
            lines = len(text) // max(width if isinstance(width, int) else 1, 1) + 1
            meter.expect(len(text) + lines * len(str(wrap)), "filter 'wordwrap'")

    return check


def _check_fill(name: str) -> Check:
    """batch(n, fill) and slice(n, fill) build n items or n groups."""

    def check(meter: b.Meter, args: list[Any], kwargs: dict[str, Any]) -> None:
        count = _arg(args, kwargs, 1, "linecount" if name == "batch" else "slices", 1)
        if isinstance(count, int):
            meter.expect(b.ITEM * count, f"filter {name!r}")
            meter.step(max(count, 0))

    return check


def _check_sum(meter: b.Meter, args: list[Any], kwargs: dict[str, Any]) -> None:
    if not isinstance(_arg(args, kwargs, 2, "start", 0), int | float):
        raise SecurityError("filter 'sum' adds numbers only")


def _check_attr(meter: b.Meter, args: list[Any], kwargs: dict[str, Any]) -> None:
    name = _arg(args, kwargs, 1, "name", "")
    if isinstance(name, str):
        _refuse_mutator(args[0], name)


_FILTER_CHECKS: dict[str, Check] = {
    "attr": _check_attr,
    "center": _check_center,
    "indent": _check_indent,
    "format": _check_format,
    "join": _check_join,
    "replace": _check_replace,
    "wordwrap": _check_slow_text("wordwrap"),
    "urlize": _check_slow_text("urlize"),
    "pprint": _check_slow_text("pprint"),
    "batch": _check_fill("batch"),
    "slice": _check_fill("slice"),
    "sum": _check_sum,
}


def _kind(obj: Any) -> str:
    return "mapping" if isinstance(obj, Mapping) else type(obj).__name__
