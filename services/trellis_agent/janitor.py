"""Removes the workspaces of old runs from the agent's data directory (else disks fill up).

A run's directory (`<workspaces>/<tenant>/<run>`) is stale when neither it nor any of its
workspace directories was modified within the retention period (every attempt touches
its workspace) and no activity of that run is running here.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Collection
from pathlib import Path

from trellis_core.logs import get_logger

log = get_logger("agent.janitor")


def stale_runs(tenant_dir: Path, *, now: float, older_than_seconds: float, active: Collection[str]) -> list[Path]:
    """Run directories whose own and whose workspaces' mtimes are all older than the cutoff."""
    if not tenant_dir.is_dir():
        return []
    stale = []
    for run_dir in sorted(p for p in tenant_dir.iterdir() if p.is_dir()):
        if run_dir.name in active:
            continue
        newest = max((p.stat().st_mtime for p in (run_dir, *run_dir.iterdir())), default=0.0)
        if now - newest >= older_than_seconds:
            stale.append(run_dir)
    return stale


async def prune(tenant_dir: Path, *, now: float, older_than_seconds: float, active: Collection[str]) -> int:
    """Delete stale run directories; returns how many went."""
    removed = 0
    for run_dir in stale_runs(tenant_dir, now=now, older_than_seconds=older_than_seconds, active=active):
        await asyncio.to_thread(shutil.rmtree, run_dir, True)
        removed += 1
    if removed:
        log.info("workspaces_pruned", directory=str(tenant_dir), runs=removed)
    return removed
