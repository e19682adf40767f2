"""How `trellis env show` and `trellis env drift` print an environment's last drift check."""

from __future__ import annotations

import msgspec

from trellis_cli.gateway_common import when
from trellis_store.drift_view import EnvironmentDrift


def drift_lines(drift: EnvironmentDrift | msgspec.UnsetType, indent: str = "  ") -> list[str]:
    """The check's status, then each resource with what differs and what it reaches downstream."""
    if isinstance(drift, msgspec.UnsetType):
        return []
    lines = [f"{indent}drift:     {drift.status} (run {drift.run_id}, checked {when(drift.checked_at)})"]
    for resource in drift.resources:
        lines.append(f"{indent}  {resource.name}: {resource.status}: {resource.summary}")
        if resource.changed_outputs:
            lines.append(f"{indent}    outputs changing: {', '.join(resource.changed_outputs)}")
        if resource.impacted:
            lines.append(f"{indent}    downstream impacted: {', '.join(resource.impacted)}")
    return lines
