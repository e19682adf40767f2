"""Compile-time rendering of template strings: early where it can, late (kept raw) where it must."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from trellis_templates import expressions as ex
from trellis_templates.errors import ExpressionError, Path, Problems, Source, closest

_CONSTANTS = frozenset({"true", "false", "none", "True", "False", "None"})


@dataclass(slots=True)
class Renderer:
    """Renders the strings of one resource (or of the environment) with its compile-time scope.

    A string that reads outputs or the approval stays raw for the scheduler; so does one that
    reads `variables`/`environment` when some of those are themselves late. Every resource a
    string reads outputs of is collected in `refs`.
    """

    problems: Problems
    scope: Mapping[str, Any]
    resources: frozenset[str]
    late_variables: bool = False
    late_environment: bool = False
    refs: dict[str, tuple[Source | None, Path]] = field(default_factory=dict)
    # the contexts a string may read (`context.C`): the environment's and, for a resource, its
    # template's own; `late_contexts` those a string rendered at dispatch may read (the
    # environment's: the workflow's scope holds no resource's own). None: not checked.
    contexts: frozenset[str] | None = None
    late_contexts: frozenset[str] | None = None

    def late(self, text: str) -> bool:
        if ex.START not in text:
            return False
        used = ex.names(text)
        return bool(
            used & ex.LATE_NAMES
            or ("variables" in used and self.late_variables)
            or ("environment" in used and self.late_environment)
        )

    def inspect(self, text: str, source: Source | None, path: Path) -> bool:
        """Report syntax and name problems; collect output references. True when renderable."""
        err = ex.check(text)
        if err is not None:
            self.problems.error(source, path, err.message, err.hint)
            return False
        if ex.START not in text:
            return True
        ok = True
        for name in sorted(ex.names(text) - ex.KNOWN_NAMES):
            hint = closest(name, ex.KNOWN_NAMES - _CONSTANTS)
            self.problems.error(source, path, f"unknown name {name!r} in expression", hint)
            ok = False
        for ref in sorted(ex.output_references(text)):
            if ref not in self.resources:
                self.problems.error(
                    source,
                    path,
                    f"expression reads outputs of unknown resource {ref!r}",
                    closest(ref, self.resources),
                )
                ok = False
            else:
                self.refs.setdefault(ref, (source, path))
        if self.contexts is not None and "context" in ex.names(text):
            ok = self._contexts_visible(text, source, path) and ok
        return ok

    def _contexts_visible(self, text: str, source: Source | None, path: Path) -> bool:
        """A context is visible only where it is attached: a reference to another is an error."""
        assert self.contexts is not None
        ok = True
        late = self.late(text)
        for name in sorted(ex.context_references(text)):
            if name not in self.contexts:
                self.problems.error(
                    source,
                    path,
                    f"context {name!r} is not attached here: a context is visible only to the documents "
                    "that attach it (the EnvironmentTemplate's and Environment's to every resource, a "
                    "ResourceTemplate's own to that resource's activities)",
                    closest(name, self.contexts) or "attach it in this document's spec.contexts",
                )
                ok = False
            elif late and self.late_contexts is not None and name not in self.late_contexts:
                self.problems.error(
                    source,
                    path,
                    f"context {name!r} of this resource's template is read by a string rendered at dispatch "
                    "(it reads outputs), where only the environment's contexts are in scope",
                    f"give the value to a variable of the resource (value: $(context.{name}.variables.…)$) "
                    "and read $(variables.…)$ here",
                )
                ok = False
        return ok

    def value(self, value: Any, source: Source | None, path: Path) -> Any:
        """Render a string (type kept for a whole expression) or a nested list/dict of strings."""
        if isinstance(value, str):
            if not self.inspect(value, source, path) or ex.START not in value or self.late(value):
                return value
            try:
                return ex.render(value, self.scope)
            except ExpressionError as exc:
                self.problems.error(source, path, exc.message, exc.hint)
                return value
        if isinstance(value, dict):
            return {k: self.value(item, source, (*path, k)) for k, item in value.items()}
        if isinstance(value, list | tuple):
            return [self.value(item, source, (*path, index)) for index, item in enumerate(value)]
        return value

    def text(self, value: str, source: Source | None, path: Path) -> str:
        """Render a string field: the result is always text."""
        out = self.value(value, source, path)
        return out if isinstance(out, str) else ex.text_of(out)

    def texts(self, values: Mapping[str, str] | None, source: Source | None, path: Path) -> dict[str, str]:
        return {k: self.text(v, source, (*path, k)) for k, v in (values or {}).items()}

    def raw(self, value: str, source: Source | None, path: Path) -> str:
        """Check a string that is evaluated later (success and skip conditions) and keep it raw."""
        self.inspect(value, source, path)
        return value
