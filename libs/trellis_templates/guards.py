"""What the sandbox lets an expression do: the methods it may call, the changes it may not make,
and, checked before they run, how much each operator, method and filter may build."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from jinja2.exceptions import SecurityError

from trellis_templates import budget as b

# Methods an expression may call, by the kind of object; everything else is refused.
_STR_METHODS = frozenset(
    {
        "capitalize", "casefold", "center", "count", "encode", "endswith", "expandtabs", "find",
        "index", "isalnum", "isalpha", "isascii", "isdecimal", "isdigit", "isidentifier", "islower",
        "isnumeric", "isprintable", "isspace", "istitle", "isupper", "join", "ljust", "lower",
        "lstrip", "partition", "removeprefix", "removesuffix", "replace", "rfind", "rindex", "rjust",
        "rpartition", "rsplit", "rstrip", "split", "splitlines", "startswith", "strip", "swapcase",
        "title", "upper", "zfill",
    }
)  # fmt: skip
_METHODS: tuple[tuple[type | tuple[type, ...], frozenset[str]], ...] = (
    (str, _STR_METHODS),
    (bytes, frozenset({"decode", "hex", "count", "startswith", "endswith", "find"})),
    (Mapping, frozenset({"get", "items", "keys", "values"})),
    ((list, tuple), frozenset({"count", "index"})),
    (int, frozenset({"bit_length"})),
    (float, frozenset({"is_integer"})),
)
_MUTATORS = frozenset(
    {
        "update", "setdefault", "pop", "popitem", "clear", "append", "extend", "insert", "remove",
        "sort", "reverse", "add", "discard", "__setitem__", "__delitem__", "__setattr__", "__iadd__",
    }
)  # fmt: skip
# Filters that go through text in Python, word by word or piece by piece: each character costs more.
SLOW = frozenset({"title", "wordwrap", "urlize", "pprint", "striptags", "truncate", "xmlattr"})
SLOW_TEXT = 8
# Filters that walk their input item by item: eight items cost an operation.
WALKING = frozenset(
    {
        "batch", "dictsort", "groupby", "items", "join", "list", "map", "max", "min", "reject",
        "rejectattr", "reverse", "select", "selectattr", "slice", "sort", "sum", "unique",
    }
)  # fmt: skip


def method_allowed(owner: Any, name: str) -> bool:
    return any(isinstance(owner, kind) and name in names for kind, names in _METHODS)


def refuse_mutator(obj: Any, attribute: str) -> None:
    if attribute in _MUTATORS and isinstance(obj, Mapping | list | set):
        raise SecurityError(f"{attribute!r} would change a {_kind(obj)}: expressions read their scope, never change it")


def expect_binop(meter: b.Meter, operator: str, left: Any, right: Any) -> None:
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


def expect_method(meter: b.Meter, owner: Any, name: str, args: tuple[Any, ...]) -> None:
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
        refuse_mutator(args[0], name)


FILTER_CHECKS: dict[str, Check] = {
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
