"""Variable layering: ResourceTemplate -> contexts -> EnvironmentTemplate -> Environment -> run."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from trellis_core.sealed import contains_token
from trellis_templates.documents import Override, ValueType, Variable
from trellis_templates.errors import Path, Problems, Source, closest


@dataclass(frozen=True, slots=True)
class Layer:
    """One place variables come from: a label for messages, and where its list is."""

    label: str
    variables: Sequence[Variable]
    source: Source | None = None
    path: Path = ()
    adds: bool = True  # False: only overrides variables a lower layer declared
    value_paths: tuple[Path, ...] = ()  # where each variable's value is written, when not path[index].value

    def value_path(self, index: int, name: str) -> Path:
        if self.value_paths:
            return self.value_paths[index]
        return (*self.path, index, "value") if self.source is not None else (f"--var {name}",)


@dataclass(slots=True)
class Merged:
    """A variable after layering: its value, type, options, and where it was declared and set."""

    name: str
    value: Any
    value_type: ValueType
    sensitive: bool
    required: bool
    override: Override
    declared: tuple[str, Source | None, Path]
    set_by: str = ""
    set_at: tuple[Source | None, Path] = (None, ())
    guard: tuple[str, Source | None, Path] | None = None  # the layer whose override rule applies
    layers: list[str] = field(default_factory=list)


def _where(source: Source | None, path: Path) -> str:
    if source is None or not source.file:
        return ""
    line, col = source.at(path)
    return f" at {source.file}:{line}:{col}"


def merge(layers: Iterable[Layer], problems: Problems) -> dict[str, Merged]:
    """Lowest layer first; a higher layer's value wins unless an override rule forbids it."""
    merged: dict[str, Merged] = {}
    for layer in layers:
        for index, var in enumerate(layer.variables):
            path = (*layer.path, index)
            current = merged.get(var.name)
            if current is None:
                if layer.adds:
                    merged[var.name] = _declare(layer, var, path, problems)
                continue
            current.layers.append(layer.label)
            if var.options.sensitive:
                current.sensitive = True
            if var.options.required:
                current.required = True
            if var.options.override.type != "allowed" and current.guard is None:
                current.override = var.options.override
                current.guard = (layer.label, layer.source, path)
            if var.value is None:
                continue
            where = layer.value_path(index, var.name)
            if _allowed(current, var, layer, where, problems):
                current.value = _chosen(current, var.value)
                current.set_by = layer.label
                current.set_at = (layer.source, where)
                if var.value_type != "text":  # a bare value keeps the type declared below it
                    current.value_type = var.value_type
    return merged


def _declare(layer: Layer, var: Variable, path: Path, problems: Problems) -> Merged:
    guard = (layer.label, layer.source, path) if var.options.override.type != "allowed" else None
    merged = Merged(
        name=var.name,
        value=var.value,
        value_type=var.value_type,
        sensitive=var.options.sensitive,
        required=var.options.required,
        override=var.options.override,
        declared=(layer.label, layer.source, path),
        set_by=layer.label if var.value is not None else "",
        guard=guard,
        layers=[layer.label],
        set_at=(layer.source, (*path, "value")),
    )
    restricted = var.value is not None and var.options.override.type == "restricted"
    if restricted and _check_restricted(merged, var.value, layer, (*path, "value"), problems):
        merged.value = _chosen(merged, var.value)
    return merged


def _allowed(current: Merged, var: Variable, layer: Layer, path: Path, problems: Problems) -> bool:
    kind = current.override.type
    guard_label, guard_source, guard_path = current.guard or current.declared
    if kind == "notallowed":
        problems.error(
            layer.source,
            path,
            f"variable {var.name!r} may not be overridden here ({layer.label}): "
            f"{guard_label} declares it override.type notallowed{_where(guard_source, guard_path)}",
        )
        return False
    if kind == "restricted":
        return _check_restricted(current, var.value, layer, path, problems)
    return True


def _check_restricted(current: Merged, value: Any, layer: Layer, path: Path, problems: Problems) -> bool:
    allowed = current.override.restricted_values
    permitted = {_comparable(v) for v in allowed}
    multi = current.override.multi_select
    outside = [v for v in (_selection(value) if multi else [value]) if _comparable(v) not in permitted]
    if not outside:
        return True
    guard_label, guard_source, guard_path = current.guard or current.declared
    hidden = current.sensitive or (isinstance(value, str) and contains_token(value))
    if hidden:
        shown = "its value (sensitive, not shown)"
    elif multi:
        shown = f"{', '.join(repr(v) for v in outside)} in value {value!r}"
    else:
        shown = f"value {value!r}"
    several = " (multiSelect: each chosen value must be one)" if multi else ""
    problems.error(
        layer.source,
        path,
        f"{shown} of variable {current.name!r} ({layer.label}) is not one of the restrictedValues "
        f"of {guard_label}{_where(guard_source, guard_path)}{several}",
        "allowed: " + ", ".join(str(v) for v in allowed),
    )
    return False


def _selection(value: Any) -> list[Any]:
    """The values chosen for a multiSelect variable: a list, a JSON array given as text
    (`--var zones='["a","b"]'`, the API), comma-separated text (`a,b`), or one value."""
    if isinstance(value, list):
        return value
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            with contextlib.suppress(ValueError):
                parsed = json.loads(text)
                if isinstance(parsed, list):
                    return parsed
        return [part.strip() for part in text.split(",") if part.strip()]
    return [value]


def _chosen(current: Merged, value: Any) -> Any:
    """A multiSelect variable's value as the list chosen (resources get it JSON-encoded)."""
    if current.override.type == "restricted" and current.override.multi_select:
        return _selection(value)
    return value


def _comparable(value: Any) -> str:
    return json.dumps(value, sort_keys=True) if not isinstance(value, str) else value


def inputs_layer(inputs: Mapping[str, str], known: Iterable[str], problems: Problems, *, strict: bool = False) -> Layer:
    """The run request's `--var name=value` values as the top layer (unknown names: a warning,
    an error when `strict`: a run must not go ahead with a misspelt variable silently unused)."""
    names = set(known)
    variables = []
    for name, value in inputs.items():
        if name not in names:
            hint = closest(name, names) or _listing(names)
            message = f"run variable {name!r} is not declared by any template"
            problems.add(None, (), message, hint, severity="error" if strict else "warning")
        variables.append(Variable(name=name, value=value))
    return Layer("the run request", variables)


def _listing(names: set[str], most: int = 12) -> str:
    shown = sorted(names)
    if not shown:
        return "the templates declare no variables"
    more = f", … ({len(shown) - most} more)" if len(shown) > most else ""
    return "declared variables: " + ", ".join(shown[:most]) + more


def required_missing(merged: Mapping[str, Merged], env_name: str, problems: Problems, *, strict: bool) -> None:
    """A required variable without a value: name it and the layers that could give it."""
    for var in merged.values():
        if not var.required or var.value is not None:
            continue
        label, source, path = var.declared
        msg = f"required variable {var.name!r} has no value (declared by {label})"
        hint = f"give it in Environment {env_name!r} spec.variables or with --var {var.name}=VALUE"
        if strict:
            problems.error(source, (*path, "name"), msg, hint)
        else:
            problems.warn(source, (*path, "name"), msg, hint)


def typed_value(var: Merged, problems: Problems) -> Any:
    """The value as its valueType says: text a string, json a JSON value, hcl as written."""
    value = var.value
    if value is None:
        return None
    if isinstance(value, list) and var.override.type == "restricted" and var.override.multi_select:
        return value  # the values chosen, whatever the valueType: a list (JSON-encoded in TF_VAR_x)
    if var.value_type == "json" and isinstance(value, str):
        if contains_token(value):  # sealed where it entered: the agent opens it to the JSON text
            return value
        try:
            return json.loads(value)
        except ValueError as exc:
            _, source, path = var.declared
            problems.error(source, (*path, "value"), f"variable {var.name!r} is not valid JSON: {exc}")
            return value
    if var.value_type in ("text", "hcl") and not isinstance(value, str):
        if isinstance(value, bool):
            return "true" if value else "false"
        return value if var.value_type == "hcl" and isinstance(value, dict | list) else str(value)
    return value


def env_encoding(value: Any, value_type: ValueType) -> str:
    """How a value is handed to a process: TF_VAR_x and TRELLIS_VAR_x."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value, sort_keys=True, separators=(",", ":"))
