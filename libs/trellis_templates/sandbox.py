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
from trellis_templates import guards


def view(value: Any) -> Any:
    """What an expression sees of a value: mappings read-only (lists refuse changes in the sandbox)."""
    return types.MappingProxyType(value) if type(value) is dict else value


def thaw(value: Any) -> Any:
    """A render's result as plain data of its own: views become dicts, containers are copied."""
    if isinstance(value, str | int | float | None):
        return value
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
    size is checked before they run; filters are wrapped likewise (see `guards.FILTER_CHECKS`).
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
        guards.expect_binop(meter, operator, left, right)
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
        guards.refuse_mutator(obj, attribute)
        return view(super().getattr(obj, attribute))

    def getitem(self, obj: Any, argument: Any) -> Any:
        b.current().step()
        if isinstance(argument, str) and not (isinstance(obj, Mapping) and argument in obj):
            guards.refuse_mutator(obj, argument)
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
        if not isinstance(__obj, types.BuiltinMethodType) or not guards.method_allowed(owner, name):
            raise SecurityError(f"calling {name!r} is not allowed in expressions")
        if name == "join" and isinstance(owner, str) and args:
            items = [str(x) for x in args[0]]
            meter.step(len(items) // 8)
            meter.expect(sum(map(len, items)) + len(owner) * len(items), "str.join")
            args = (items,)
        guards.expect_method(meter, owner, name, args)
        if isinstance(owner, str | bytes):
            meter.charge(len(owner))
        return meter.made(view(__obj(*args, **kwargs)), f"{type(owner).__name__}.{name}")


def _metered_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    check = guards.FILTER_CHECKS.get(name)
    skip = 0 if _PassArg.from_obj(func) is None else 1  # the context/environment jinja2 passes first
    walks, per_char = name in guards.WALKING, guards.SLOW_TEXT if name in guards.SLOW else 1

    @functools.wraps(func)
    def run(*args: Any, **kwargs: Any) -> Any:
        meter = b.current()
        meter.step()
        value: Any = args[skip] if len(args) > skip else None
        if walks and hasattr(value, "__len__"):
            meter.step(len(value) // 8)
        if isinstance(value, str | bytes):
            meter.charge(len(value) * per_char)
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
