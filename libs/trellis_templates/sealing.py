"""Sealing sensitive values where they enter a compilation, before anything is rendered from them.

The compiler is handed a sealer (`Callable[[str], str]`, e.g. `TenantKeys.seal`): this module
holds no key and does no I/O. A sensitive value in clear (a request variable a template declares
sensitive, a sensitive default, a context's sensitive variable, env entry or file) is replaced by
its sealed token as it enters the scope, so every string rendered from it carries the token
(`postgres://app:$(variables.pw)$@db` holds the token inside) and no clear copy reaches the
workflow. Tokens given (sealed by the CLI or the gateway) stay as they are; a text that holds
tokens among clear text gets its clear pieces sealed one by one, so the agent opens each.

Without a sealer (`trellis template compile`, previews, tests) values stay as they are. A sealer
that raises a TrellisError (the compiler service without TRELLIS_SEAL_KEY) makes the value a
compile error naming the variable, never its value.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from trellis_core.errors import TrellisError
from trellis_core.sealed import TOKEN_PATTERN, is_token
from trellis_templates.bundle import Bundle
from trellis_templates.documents import ConfigContext, ContextRef, ResourceTemplate, Variable
from trellis_templates.errors import Path, Problems, Source

Seal = Callable[[str], str]
_MARK = "[[trellis-sealed:"


@dataclass(slots=True)
class Sealer:
    """Seals sensitive values for one compilation, reporting a value it cannot seal."""

    seal: Seal | None
    problems: Problems

    @property
    def active(self) -> bool:
        return self.seal is not None

    def text(self, text: str, what: str, source: Source | None, path: Path) -> str:
        """`text` sealed: a whole token stays; clear pieces between tokens are sealed each."""
        if self.seal is None or not text or (_MARK in text and is_token(text)):
            return text
        try:
            if _MARK not in text or TOKEN_PATTERN.search(text) is None:
                return self.seal(text)
            pieces: list[str] = []
            last = 0
            for match in TOKEN_PATTERN.finditer(text):
                if match.start() > last:
                    pieces.append(self.seal(text[last : match.start()]))
                pieces.append(match[0])
                last = match.end()
            if last < len(text):
                pieces.append(self.seal(text[last:]))
            return "".join(pieces)
        except TrellisError as exc:
            self.problems.error(source, path, f"sensitive {what} cannot be sealed: {exc}")
            return ""

    def value(self, value: Any, what: str, source: Source | None, path: Path) -> Any:
        """Every string of a value (a text, or a json/hcl value's strings) sealed; numbers,
        booleans and keys stay as they are."""
        if self.seal is None:
            return value
        if isinstance(value, str):
            return self.text(value, what, source, path)
        if isinstance(value, Mapping):
            return {k: self.value(v, what, source, path) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.value(v, what, source, path) for v in value]
        return value


def _sensitive(variables: Iterable[Variable]) -> set[str]:
    return {variable.name for variable in variables if variable.options.sensitive}


def _inline(refs: Iterable[ContextRef]) -> set[str]:
    return {name for ref in refs if ref.data is not None for name in _sensitive(ref.data.variables)}


def sensitive_names(bundle: Bundle, *variable_lists: Iterable[Variable]) -> frozenset[str]:
    """Every variable name declared sensitive anywhere a run's value could reach: the given
    variable lists (the EnvironmentTemplate's, the Environment's, its resources'), every
    ResourceTemplate and ConfigContext of the bundle and the contexts written inline in them.
    A value given for such a name is sealed wherever it enters."""
    names: set[str] = set()
    for variables in variable_lists:
        names |= _sensitive(variables)
    for template, _ in bundle.all(ResourceTemplate):
        names |= _sensitive(template.spec.variables) | _inline(template.spec.contexts)
    for context, _ in bundle.all(ConfigContext):
        names |= _sensitive(context.spec.variables)
    return frozenset(names)


def sealed_inputs(inputs: Mapping[str, str], sensitive: frozenset[str], sealer: Sealer) -> dict[str, str]:
    """The run request's variables with those declared sensitive sealed."""
    if not sealer.active or not sensitive.intersection(inputs):
        return dict(inputs)
    return {
        name: sealer.text(value, f"variable {name!r}", None, (f"--var {name}",)) if name in sensitive else value
        for name, value in inputs.items()
    }
