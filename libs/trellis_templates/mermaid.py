"""A compiled workflow as a Mermaid `flowchart TD`."""

from __future__ import annotations

from trellis_core.workflow import Activity, Workflow

_SHAPES = {"http": ("([", "])"), "approval": ("{{", "}}"), "function": ("[[", "]]"), "container": ("[", "]")}
_EDGES = {"success": "-->", "failure": "-. failure .->", "always": "-. always .->"}


def to_mermaid(workflow: Workflow) -> str:
    """Nodes grouped by resource; dashed edges into on-failure (`failure`) and `always` activities."""
    ids = {activity.id: f"a{index}" for index, activity in enumerate(workflow.activities)}
    lines = ["flowchart TD"]
    groups: dict[str, list[str]] = {}
    for activity in workflow.activities:
        left, right = _SHAPES.get(activity.kind, ("[", "]"))
        label = activity.id.removeprefix(f"resource/{activity.resource}/") if activity.resource else activity.id
        node = f'{ids[activity.id]}{left}"{label}"{right}'
        groups.setdefault(activity.resource, []).append(node)
    for resource, nodes in groups.items():
        if resource:
            lines.append(f'  subgraph r_{resource.replace("-", "_")}["{resource}"]')
            lines.extend(f"    {n}" for n in nodes)
            lines.append("  end")
        else:
            lines.extend(f"  {n}" for n in nodes)
    for activity, deps in _reduced(workflow):
        for dep in deps:
            lines.append(f"  {ids[dep]} {_EDGES[activity.when]} {ids[activity.id]}")
    return "\n".join(lines) + "\n"


def _reduced(workflow: Workflow) -> list[tuple[Activity, list[str]]]:
    """For the picture only: drop an edge when another dependency already comes after its source."""
    bit = {activity.id: 1 << index for index, activity in enumerate(workflow.activities)}
    ancestors: dict[str, int] = {}
    out = []
    for activity in workflow.activities:
        reach = 0
        for d in activity.depends_on:
            reach |= ancestors[d] | bit[d]
        ancestors[activity.id] = reach
        implied = 0
        for d in activity.depends_on:
            implied |= ancestors[d]
        out.append((activity, [d for d in activity.depends_on if not implied & bit[d]]))
    return out
