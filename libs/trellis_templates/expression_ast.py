"""What a parsed `$( )$` expression reads, from its jinja2 AST: plain paths, the resources whose
outputs it uses, how deep it nests, and which path is undefined in a scope."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jinja2 import nodes

from trellis_templates.errors import closest


def depth_of(ast: nodes.Node) -> int:
    """Levels of the parsed expression, counted without recursion."""
    deepest = 0
    stack = [(ast, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in node.iter_child_nodes())
    return deepest


def _is_resource(node: nodes.Node) -> bool:
    return isinstance(node, nodes.Name) and node.name == "resource"


def resource_refs(ast: nodes.Node) -> set[str]:
    found: set[str] = set()
    for node in ast.find_all((nodes.Getattr, nodes.Getitem)):
        if isinstance(node, nodes.Getattr) and _is_resource(node.node):
            found.add(node.attr)
        elif (
            isinstance(node, nodes.Getitem)
            and _is_resource(node.node)
            and isinstance(node.arg, nodes.Const)
            and isinstance(node.arg.value, str)
        ):
            found.add(node.arg.value)
    return found


def _is_context(node: nodes.Node) -> bool:
    return isinstance(node, nodes.Name) and node.name == "context"


def context_refs(ast: nodes.Node) -> set[str]:
    """The contexts `context.C…` (or `context["C"]…`) reads."""
    found: set[str] = set()
    for node in ast.find_all((nodes.Getattr, nodes.Getitem)):
        if isinstance(node, nodes.Getattr) and _is_context(node.node):
            found.add(node.attr)
        elif (
            isinstance(node, nodes.Getitem)
            and _is_context(node.node)
            and isinstance(node.arg, nodes.Const)
            and isinstance(node.arg.value, str)
        ):
            found.add(node.arg.value)
    return found


def chain(node: nodes.Node) -> list[str] | None:
    """`a.b["c"].d` -> ["a", "b", "c", "d"]; None when not a plain path."""
    if isinstance(node, nodes.Name):
        return [node.name]
    if isinstance(node, nodes.Getattr):
        head = chain(node.node)
        return None if head is None else [*head, node.attr]
    if isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const):
        head = chain(node.node)
        return None if head is None else [*head, str(node.arg.value)]
    return None


def explain_undefined(ast: nodes.Node, scope: Mapping[str, Any], fallback: str) -> tuple[str, str]:
    """Name the first segment of a path that is not in scope, with the closest existing one."""
    candidates = [ast, *ast.find_all((nodes.Getattr, nodes.Getitem, nodes.Name))]
    for node in candidates:
        path = chain(node)
        if not path:
            continue
        current: Any = scope
        for depth, segment in enumerate(path):
            if isinstance(current, Mapping) and segment in current:
                current = current[segment]
                continue
            where = ".".join(path[: depth + 1])
            options = [str(k) for k in current] if isinstance(current, Mapping) else []
            return f"undefined name {where!r}", closest(segment, options)
    return fallback, ""
