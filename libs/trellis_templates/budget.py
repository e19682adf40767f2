"""What one render of `$( )$` may spend: operations, value sizes, integer size, nesting, source
length. The sandbox (sandbox.py) charges a `Meter`; going over raises `BudgetExceeded`.

In process, deterministic, no clock: each operation's result size is checked before it runs, so
a render that spends its whole budget ends within a fraction of a second, and replays the same.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from contextvars import ContextVar, Token
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from jinja2.exceptions import SecurityError

ITEM = 8  # size units one list, tuple or mapping item counts for (a character counts 1)


@dataclass(frozen=True, slots=True)
class Budget:
    """Limits of one render. Sizes are in units: a character or byte is 1, a container item 8."""

    operations: int = 10_000  # attribute reads, calls, operators, filters (and items they walk / 8)
    value_size: int = 1 << 20  # the largest value one operation may build, and the output
    work: int = 4 << 20  # the text operations read and the values they build, added up
    integer_bits: int = 4096
    range: int = 10_000  # items `range()` may produce
    nesting: int = 32  # brackets inside brackets in the source
    depth: int = 64  # levels of the parsed expression (operators, filters, attributes)
    source: int = 4096  # characters of one expression


LIMITS = Budget()


class BudgetExceeded(SecurityError):
    """A render went over one of its budgets; `budget` names which one."""

    def __init__(self, budget: str, detail: str) -> None:
        super().__init__(f"{budget} budget exceeded: {detail}")
        self.budget = budget


def show(value: Any) -> str:
    """A value as it appears in a budget message: short."""
    if isinstance(value, int) and value.bit_length() > 64:
        return f"an integer of {value.bit_length()} bits"
    text = repr(value) if isinstance(value, str | int | float) else type(value).__name__
    return text if len(text) <= 40 else text[:37] + "..."


def measure(value: Any, limit: int) -> int:
    """Size of `value` in units, a value held twice counted twice (as it would serialise), each
    distinct container walked once; the walk stops once the size is known to exceed `limit`."""
    return _size(value, limit, {}, 0)


def _size(value: Any, limit: int, seen: dict[int, int], depth: int) -> int:
    kind = type(value)
    if kind is str or kind is bytes:
        return len(value)
    if kind is int:
        return int(value.bit_length()) // 3 + 1  # at least its decimal digits
    if kind is list or kind is tuple:
        items: Any = value
    elif kind is dict or kind is MappingProxyType:
        items = (*value.keys(), *value.values()) if len(value) * ITEM <= limit else ()
    elif isinstance(value, str | bytes | bytearray):
        return len(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        return value.bit_length() // 3 + 1
    elif isinstance(value, Mapping):
        items = (*value.keys(), *value.values()) if len(value) * ITEM <= limit else ()
    elif isinstance(value, list | tuple | set | frozenset):
        items = value
    else:
        return 1
    known = seen.get(id(value))
    if known is not None:
        return known
    if depth > 200:
        raise BudgetExceeded("nesting", "values nested more than 200 deep")
    total = ITEM * len(value)
    for item in items:
        if total > limit:
            break
        kind = type(item)
        if kind is str:
            total += len(item)
        elif kind is int:
            total += item.bit_length() // 3 + 1
        elif kind is float or kind is bool or item is None:
            total += 1
        else:
            total += _size(item, limit, seen, depth + 1)
    seen[id(value)] = total
    return total


class Meter:
    """What one render has spent so far, checked against its budget on every charge."""

    __slots__ = ("budget", "operations", "work")

    def __init__(self, budget: Budget) -> None:
        self.budget = budget
        self.operations = 0
        self.work = 0

    def step(self, n: int = 1) -> None:
        self.operations += n
        if self.operations > self.budget.operations:
            raise BudgetExceeded("operations", f"more than {self.budget.operations} operations in one render")

    def expect(self, size: int, what: str) -> None:
        """Refuse, before doing it, an operation whose result would be larger than a value may be."""
        if size > self.budget.value_size:
            raise BudgetExceeded(
                "value size", f"{what} would build about {size} units (limit {self.budget.value_size})"
            )

    def size_of(self, value: Any) -> int:
        return measure(value, self.budget.value_size)

    def check_int(self, value: Any, what: str) -> None:
        if isinstance(value, int) and value.bit_length() > self.budget.integer_bits:
            raise BudgetExceeded(
                "integer size",
                f"{what} gives {show(value)} (limit {self.budget.integer_bits} bits)",
            )

    def expect_bits(self, bits: int, what: str) -> None:
        if bits > self.budget.integer_bits:
            raise BudgetExceeded(
                "integer size", f"{what} would have about {bits} bits (limit {self.budget.integer_bits})"
            )

    def made(self, value: Any, what: str) -> Any:
        """Account for a value an operation built: its size counts against the value and total budgets."""
        if isinstance(value, int):
            self.check_int(value, what)
            return value
        size = self.size_of(value)
        self.expect(size, what)
        self.charge(size)
        return value

    def charge(self, units: int) -> None:
        """Count work proportional to the data an operation reads or builds."""
        self.work += units
        if self.work > self.budget.work:
            raise BudgetExceeded("work", f"the render read and built more than {self.budget.work} units in all")


_active: ContextVar[Meter | None] = ContextVar("trellis_expression_meter", default=None)


class metered:  # lower case: used like a function, `with metered() as meter:`
    """One budget for everything rendered inside; nested uses share the outermost one."""

    __slots__ = ("budget", "token")

    def __init__(self, budget: Budget = LIMITS) -> None:
        self.budget = budget
        self.token: Token[Meter | None] | None = None

    def __enter__(self) -> Meter:
        meter = _active.get()
        if meter is None:
            meter = Meter(self.budget)
            self.token = _active.set(meter)
        return meter

    def __exit__(self, *exc: object) -> None:
        if self.token is not None:
            _active.reset(self.token)
            self.token = None


def current() -> Meter:
    """The render's meter; outside any render, a fresh one (single operations stay bounded)."""
    meter = _active.get()
    return meter if meter is not None else Meter(LIMITS)


_PERCENT = re.compile(r"%(?:\([^)]*\))?[-+ #0]*(\*|\d+)?(?:\.(\*|\d+))?[hlL]?(.)", re.DOTALL)


def _number(digits: str) -> int:
    return int(digits) if len(digits) <= 9 else 10**9


def expect_percent(meter: Meter, fmt: str, args: Any) -> None:
    """`fmt % args`: refuse huge widths and precisions and `*` widths before formatting."""
    extra, fields = 0, 0
    for m in _PERCENT.finditer(fmt):
        width, precision = m.group(1) or "", m.group(2) or ""
        if "*" in (width, precision):
            raise SecurityError("'*' widths are not allowed in % formatting")
        extra += _number(width or "0") + _number(precision or "0")
        fields += 1
    meter.expect(len(fmt) + extra, f"formatting with {show(fmt)}")
    meter.expect(len(fmt) + extra + fields * meter.size_of(args), f"formatting with {show(fmt)}")


_SPEC_NUMBER = re.compile(r"\d+")


def expect_format_spec(meter: Meter, spec: str) -> None:
    """A `str.format` field's spec (`{:>1000}`, `{:.500f}`): its widths count against the value size."""
    for digits in _SPEC_NUMBER.findall(spec):
        meter.expect(_number(digits), f"the format spec {show(spec)}")


def check_nesting(source: str, budget: Budget = LIMITS) -> None:
    """Refuse brackets nested deeper than the budget before the parser recurses into them."""
    depth = deepest = 0
    quote = ""
    escaped = False
    for ch in source:
        if quote:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in ")]}":
            depth -= 1
    if deepest > budget.nesting:
        raise BudgetExceeded("nesting", f"brackets nested {deepest} deep (limit {budget.nesting})")
