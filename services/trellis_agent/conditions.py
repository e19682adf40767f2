"""Success and failure conditions: `$( … )$` expressions over a response or an exit code.

A small local evaluator on jinja2's SandboxedEnvironment with StrictUndefined, until
`trellis_templates.expressions` offers one to call. Errors come back as values.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import jinja2
import msgspec
from jinja2.sandbox import SandboxedEnvironment

_WHOLE = re.compile(r"^\s*\$\((?P<expr>.*)\)\$\s*$", re.DOTALL)
_TRUE_TEXT = {"true", "1", "yes", "on"}


class ConditionResult(msgspec.Struct, frozen=True):
    holds: bool
    error: str = ""


def _env() -> SandboxedEnvironment:
    env = SandboxedEnvironment(
        undefined=jinja2.StrictUndefined,
        variable_start_string="$(",
        variable_end_string=")$",
        autoescape=False,
    )
    env.filters["tojson"] = lambda v: json.dumps(v)
    env.filters["fromjson"] = lambda v: json.loads(v)
    return env


_ENV = _env()


def evaluate(condition: str, names: Mapping[str, Any]) -> ConditionResult:
    """Whether `condition` holds. `$(expr)$`, a bare `expr`, or text with `$( )$` parts (truthy text)."""
    try:
        whole = _WHOLE.match(condition)
        if whole is not None and ")$" not in whole.group("expr"):
            return ConditionResult(bool(_ENV.compile_expression(whole.group("expr"))(**names)))
        if "$(" in condition:
            text = _ENV.from_string(condition).render(**names)
            return ConditionResult(text.strip().lower() in _TRUE_TEXT)
        return ConditionResult(bool(_ENV.compile_expression(condition)(**names)))
    except jinja2.TemplateError as exc:
        return ConditionResult(False, f"condition {condition!r}: {exc}")
    except Exception as exc:  # a comparison of mismatched types inside the expression
        return ConditionResult(False, f"condition {condition!r}: {type(exc).__name__}: {exc}")
