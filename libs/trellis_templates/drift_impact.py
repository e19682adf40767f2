"""Downstream impact of drift: which resources read which outputs (from the compiled activities'
`$(resource.R.output.K…)$` strings), and which resources a set of changing outputs reaches."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import msgspec
from jinja2 import nodes

from trellis_core.workflow import Activity
from trellis_templates import expressions as ex
from trellis_templates.expression_ast import chain

ANY_OUTPUT = "*"  # a string reads the resource's outputs as a whole, or by a key known only at dispatch

Readers = dict[str, dict[str, tuple[str, ...]]]  # resource -> output (or ANY_OUTPUT) -> resources reading it


def output_readers(activities: Iterable[Activity]) -> Readers:
    """Which resources read which outputs of which others, from every string of their activities
    (spec and inputs: where late-bound expressions stay raw after compilation)."""
    found: dict[str, dict[str, set[str]]] = {}
    for activity in activities:
        if not activity.resource:
            continue
        data = msgspec.to_builtins(activity)
        for text in _strings([data.get("spec"), data.get("inputs")]):
            for producer, output in read_outputs(text):
                if producer != activity.resource:
                    found.setdefault(producer, {}).setdefault(output, set()).add(activity.resource)
    return {
        producer: {output: tuple(sorted(readers)) for output, readers in sorted(outputs.items())}
        for producer, outputs in sorted(found.items())
    }


def read_outputs(text: str) -> set[tuple[str, str]]:
    """(resource, output) pairs `text` reads; output ANY_OUTPUT when it is not named in the text."""
    if ex.START not in text or ex.check(text) is not None:
        return set()
    pairs: set[tuple[str, str]] = set()
    for expression in ex.parse(text).expressions:
        named: set[str] = set()
        for node in expression.ast.find_all((nodes.Getattr, nodes.Getitem)):
            path = chain(node)
            if path is not None and len(path) >= 4 and path[0] == "resource" and path[2] == "output":
                pairs.add((path[1], path[3]))
                named.add(path[1])
        pairs.update((resource, ANY_OUTPUT) for resource in expression.resources - named)
    return pairs


def _strings(values: Sequence[Any]) -> Iterable[str]:
    stack = list(values)
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            yield value
        elif isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, list | tuple):
            stack.extend(value)


def impacted(readers: Mapping[str, Mapping[str, Sequence[str]]], changed: Iterable[tuple[str, str]]) -> tuple[str, ...]:
    """The resources downstream of the changing (resource, output) pairs, transitively: a resource
    whose input changes is redeployed, so every output of it may change in turn. The changing
    resources themselves are listed only when another's change reaches them."""
    seen: set[str] = set()
    queue = deque(changed)
    while queue:
        resource, output = queue.popleft()
        outputs = readers.get(resource, {})
        names = outputs.values() if output == ANY_OUTPUT else (outputs.get(output, ()), outputs.get(ANY_OUTPUT, ()))
        for reader in (r for group in names for r in group):
            if reader not in seen:
                seen.add(reader)
                queue.append((reader, ANY_OUTPUT))
    return tuple(sorted(seen))
