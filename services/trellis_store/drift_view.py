"""What the state store shows of an environment's last drift check (`Environment.drift`)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec

DriftStatus = Literal["drifted", "in-sync", "unknown"]
ResourceDriftStatus = Literal["drifted", "in-sync", "not-checked", "error"]


class ResourceDrift(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """One resource in a drift check: `drifted` when its live infrastructure (or its custom check)
    differs from what was deployed; `impacted` the downstream resources reading its changing outputs."""

    name: str
    status: ResourceDriftStatus
    summary: str = ""
    changed_resources: tuple[str, ...] = ()
    changed_outputs: tuple[str, ...] = ()
    impacted: tuple[str, ...] = ()


class EnvironmentDrift(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """The environment's last finished drift check: `drifted` when a resource drifted, `in-sync` when
    every check found none, `unknown` when a check failed or no resource could be checked."""

    status: DriftStatus
    run_id: str
    checked_at: datetime | None = None
    resources: tuple[ResourceDrift, ...] = ()
