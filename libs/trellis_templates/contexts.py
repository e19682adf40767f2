"""ConfigContexts attached to templates, environments and drivers: by name or written inline."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from trellis_templates.bundle import Bundle
from trellis_templates.documents import ConfigContext, ConfigContextSpec, ContextRef
from trellis_templates.errors import Path, Problems, Source
from trellis_templates.sealing import Sealer


@dataclass(frozen=True, slots=True)
class Attached:
    """A ConfigContext where it is attached: by name (from the bundle) or inline (no name)."""

    name: str
    label: str
    spec: ConfigContextSpec
    source: Source | None
    base: Path  # where its spec is written in `source`


def attach(
    bundle: Bundle, refs: Sequence[ContextRef], source: Source | None, path: Path, problems: Problems
) -> list[Attached]:
    """Resolve a `contexts` (or a driver's `inputs`) list written at `path` in `source`."""
    out = []
    for index, ref in enumerate(refs):
        at: Path = (*path, index)
        if ref.data is not None:
            out.append(Attached("", f"inline context {index}", ref.data, source, (*at, "data")))
            continue
        if not ref.name:
            problems.error(source, at, "a context reference needs a name or inline data")
            continue
        found = bundle.find(ConfigContext, ref.name, "", problems=problems, where=(source, (*at, "name")))
        if found is not None:
            doc, doc_src = found
            out.append(Attached(ref.name, f"ConfigContext {ref.name!r}", doc.spec, doc_src, ("spec",)))
    return out


def context_scope(contexts: Sequence[Attached], sealer: Sealer | None = None) -> dict[str, Any]:
    """`context.C.variables.X` for the named contexts; sensitive values sealed."""
    out: dict[str, Any] = {}
    for c in contexts:
        if not c.name:
            continue
        values: dict[str, Any] = {}
        for index, v in enumerate(c.spec.variables):
            value = v.value
            if sealer is not None and v.options.sensitive:
                path = (*c.base, "variables", index, "value")
                value = sealer.value(value, f"variable {v.name!r} of {c.label}", c.source, path)
            values[v.name] = value
        out[c.name] = {"variables": values}
    return out
