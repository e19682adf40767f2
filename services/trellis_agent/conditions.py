"""Success conditions: `$( … )$` expressions over a response or an exit code.

Evaluated by the one expression module (`trellis_templates.expressions`: jinja2's sandbox,
StrictUndefined, the filters of docs/templates.md "Expressions"). A bare expression without
`$( )$` is accepted too. Errors come back as values, with the expression's own message.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from trellis_templates.errors import ExpressionError
from trellis_templates.expressions import START, render

_TRUE_TEXT = {"true", "1", "yes", "on"}


class ConditionResult(msgspec.Struct, frozen=True):
    holds: bool
    error: str = ""


def evaluate(condition: str, names: Mapping[str, Any]) -> ConditionResult:
    """Whether `condition` holds; text around `$( )$` parts holds when it reads as true."""
    source = condition if START in condition else f"$({condition})$"
    try:
        value = render(source, names)
    except ExpressionError as exc:
        hint = f" ({exc.hint})" if exc.hint else ""
        return ConditionResult(False, f"condition {condition!r}: {exc.message}{hint}")
    if isinstance(value, str):
        return ConditionResult(value.strip().lower() in _TRUE_TEXT)
    return ConditionResult(bool(value))
