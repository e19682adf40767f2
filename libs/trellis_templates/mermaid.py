"""A compiled workflow as a Mermaid `flowchart TD`."""

from __future__ import annotations

from trellis_core.workflow import Activity, Workflow

_SHAPES = {"http": ("([", "])"), "approval": ("{{", "}}"), "function": ("[[", "]]"), "container": ("[", "]")}
_EDGES = {"success": "-->", "failure": "-. failure .->", "always": "-. always .->"}


def to_mermaid(workflow: Workflow) -> str:
    """Nodes grouped by resource; dashed edges into on-failure (`failure`) and `always` activities."""
    ids = {a.id: f"a{i}" for i, a in enumerate(workflow.activities)}
    lines = ["flowchart TD"]
    groups: dict[str, list[str]] = {}
    for a in workflow.activities:
        left, right = _SHAPES.get(a.kind, ("[", "]"))
        label = a.id.removeprefix(f"resource/{a.resource}/") if a.resource else a.id
        node = f'{ids[a.id]}{left}"{label}"{right}'
        groups.setdefault(a.resource, []).append(node)
    for resource, nodes in groups.items():
        if resource:
            lines.append(f'  subgraph r_{resource.replace("-", "_")}["{resource}"]')
            lines.extend(f"    {n}" for n in nodes)
            lines.append("  end")
        else:
            lines.extend(f"  {n}" for n in nodes)
    for a, deps in _reduced(workflow):
        for dep in deps:
            lines.append(f"  {ids[dep]} {_EDGES[a.when]} {ids[a.id]}")
    return "\n".join(lines) + "\n"


def _reduced(workflow: Workflow) -> list[tuple[Activity, list[str]]]:
    """For the picture only: drop an edge when another dependency already comes after its source."""
    bit = {a.id: 1 << i for i, a in enumerate(workflow.activities)}
    ancestors: dict[str, int] = {}
    out = []
    for a in workflow.activities:
        reach = 0
        for d in a.depends_on:
            reach |= ancestors[d] | bit[d]
        ancestors[a.id] = reach
        implied = 0
        for d in a.depends_on:
            implied |= ancestors[d]
        out.append((a, [d for d in a.depends_on if not implied & bit[d]]))
    return out
