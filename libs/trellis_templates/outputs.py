"""Output references checked against declared outputs: `resource.R.output.K` needs K declared.

An OpenTofu resource's outputs are known only after it applies, so those are not checked. A
custom resource whose every task declares `outputs` (itself or through its driver) writes only
those keys: reading another one is a compile error with a did-you-mean hint.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from typing import Any

import msgspec

from trellis_templates.bundle import Bundle, version_key
from trellis_templates.documents import Document, Driver, Outputs, OutputSpec, ResourceTemplate, Task
from trellis_templates.errors import Path, Problems, Source, closest
from trellis_templates.resources import ResourcePlan

_EXPRESSION = re.compile(r"(?<!\$)\$\((.*?)\)\$", re.DOTALL)
_SEGMENT = r"""(?:\.\s*([A-Za-z_][\w-]*)|\.\s*"([^"]+)"|\[\s*(?:"([^"]+)"|'([^']+)')\s*\])"""
_OUTPUT = r"""\s*(?:\.\s*output\b|\[\s*["']output["']\s*\])\s*"""
_REFERENCE = re.compile(r"\bresource\s*" + _SEGMENT + _OUTPUT + _SEGMENT)


def declared_outputs(template: ResourceTemplate, bundle: Bundle) -> set[str] | None:
    """The output keys a custom resource's tasks declare, or None when any task declares none."""
    custom = template.spec.provider_options.custom
    if template.spec.provider != "custom" or custom is None or not custom.tasks:
        return None
    keys: set[str] = set()
    for task in custom.tasks:
        outputs = task.outputs if task.outputs is not None else _driver_outputs(task, bundle)
        if outputs is None:
            return None
        keys.update(o.name if isinstance(o, OutputSpec) else o for o in outputs)
    return keys


def _driver_outputs(task: Task, bundle: Bundle) -> Outputs:
    ref = task.driver or task.workflow_handler
    if ref is None:
        return None
    if ref.data is not None:
        return ref.data.outputs
    versions = bundle.by_kind.get("Driver", {}).get(ref.name)
    if not versions:
        return None
    found = versions.get(ref.version) if ref.version else versions[max(versions, key=version_key)]
    if found is None or not isinstance(found.document, Driver):
        return None
    return found.document.spec.outputs


def references(text: str) -> Iterator[tuple[str, str]]:
    """(resource, key) of every `resource.R.output.K` written plainly in `text`'s expressions."""
    if "$(" not in text or "output" not in text:
        return
    for expression in _EXPRESSION.finditer(text):
        for m in _REFERENCE.finditer(expression[1]):
            groups = m.groups()
            resource = next(g for g in groups[:4] if g is not None)
            key = next(g for g in groups[4:] if g is not None)
            yield resource, key


def check_plans(
    plans: Sequence[ResourcePlan],
    documents: Sequence[tuple[Document, Source | None]],
    bundle: Bundle,
    problems: Problems,
) -> None:
    """Check the output references of `documents` and of the resources' own templates."""
    declared = {p.name: keys for p in plans if (keys := declared_outputs(p.template, bundle)) is not None}
    if not declared:
        return
    templates = {id(p.template): (p.template, p.source) for p in plans}
    check_output_keys(declared, [*documents, *templates.values()], problems)


def check_output_keys(
    declared: dict[str, set[str]],
    documents: Sequence[tuple[Document, Source | None]],
    problems: Problems,
) -> None:
    """Report each reference, in any string of `documents`, to a key resource R does not declare."""
    if not declared:
        return
    for document, source in documents:
        _walk(msgspec.to_builtins(document), (), source, declared, problems)


def _walk(value: Any, path: Path, source: Source | None, declared: dict[str, set[str]], problems: Problems) -> None:
    if isinstance(value, str):
        for resource, key in references(value):
            keys = declared.get(resource)
            if keys is None or key in keys:
                continue
            listing = ", ".join(sorted(keys)) or "none"
            problems.error(
                source,
                path,
                f"resource {resource!r} has no output {key!r}: its tasks declare {listing}",
                closest(key, keys) or f"declare {key!r} in the outputs of the task that writes it",
            )
    elif isinstance(value, dict):
        for k, item in value.items():
            _walk(item, (*path, k), source, declared, problems)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _walk(item, (*path, index), source, declared, problems)
