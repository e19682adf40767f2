"""Template problems as values: a collector of `Problem`s with positions, paths and hints."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from trellis_core.errors import TrellisError
from trellis_core.events import Problem

PathKey = str | int
Path = tuple[PathKey, ...]


class ExpressionError(TrellisError):
    """A `$( )$` expression could not be parsed or rendered; the message names the expression."""

    def __init__(self, message: str, expression: str = "", hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.expression = expression
        self.hint = hint


class TemplateError(TrellisError):
    """Raised only by convenience wrappers that turn a failed compilation into an exception."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = tuple(problems)


def format_path(path: Path) -> str:
    """`("spec", "resources", 1, "name")` -> `spec.resources[1].name`."""
    out: list[str] = []
    for key in path:
        if isinstance(key, int):
            out.append(f"[{key}]")
        elif out:
            out.append(f".{key}")
        else:
            out.append(key)
    return "".join(out)


def closest(name: str, candidates: Iterable[str]) -> str:
    """A `did you mean "x"?` hint for a misspelt name, or ""."""
    options = sorted(set(candidates))
    match = difflib.get_close_matches(name, options, n=1, cutoff=0.6)
    if not match:
        lowered = {c.lower(): c for c in options}
        if name.lower() in lowered:
            match = [lowered[name.lower()]]
    return f'did you mean "{match[0]}"?' if match else ""


@dataclass(frozen=True, slots=True)
class Source:
    """Where a document came from: its file and the position of every node, keyed by path."""

    file: str = ""
    positions: Mapping[Path, tuple[int, int]] = field(default_factory=dict)
    key_positions: Mapping[Path, tuple[int, int]] = field(default_factory=dict)

    def at(self, path: Path, *, key: bool = False) -> tuple[int, int]:
        """The 1-based line and column of `path` (its key when `key`), else of its nearest parent."""
        table = self.key_positions if key else self.positions
        if path in table:
            return table[path]
        probe = path
        while probe:
            probe = probe[:-1]
            if probe in self.positions:
                return self.positions[probe]
        return (0, 0)


@dataclass(slots=True)
class Problems:
    """Collects every problem of one validation or compilation, in the order found."""

    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)

    def add(
        self,
        source: Source | None,
        path: Path,
        message: str,
        hint: str = "",
        *,
        key: bool = False,
        severity: Literal["error", "warning"] = "error",
    ) -> None:
        src = source or Source()
        line, column = src.at(path, key=key)
        problem = Problem(
            message=message,
            file=src.file,
            line=line,
            column=column,
            path=format_path(path),
            hint=hint,
            severity=severity,
        )
        (self.errors if severity == "error" else self.warnings).append(problem)

    def error(self, source: Source | None, path: Path, message: str, hint: str = "", *, key: bool = False) -> None:
        self.add(source, path, message, hint, key=key)

    def warn(self, source: Source | None, path: Path, message: str, hint: str = "", *, key: bool = False) -> None:
        self.add(source, path, message, hint, key=key, severity="warning")

    def extend(self, other: Problems) -> None:
        self.errors.extend(other.errors)
        self.warnings.extend(other.warnings)

    def __bool__(self) -> bool:
        return bool(self.errors)
