"""Old runs' workspaces are removed from the agent's disk; recent and running ones stay."""

from __future__ import annotations

import os
import time
from pathlib import Path

from trellis_agent.janitor import prune, stale_runs

DAY = 86_400.0


def _run_dir(root: Path, name: str, age_days: float, workspace_age_days: float | None = None) -> Path:
    """A run directory with one workspace; the workspace's age may differ from the run's."""
    run = root / name
    workspace = run / "resource~vpc"
    workspace.mkdir(parents=True)
    (workspace / "main.tf").write_text("#")
    ages = {run: age_days, workspace: age_days if workspace_age_days is None else workspace_age_days}
    ages[workspace / "main.tf"] = ages[workspace]
    now = time.time()
    for path in (workspace / "main.tf", workspace, run):  # innermost first: writing inside touches the parent
        os.utime(path, (now - ages[path] * DAY, now - ages[path] * DAY))
    return run


async def test_only_old_idle_runs_are_pruned(tmp_path: Path) -> None:
    old = _run_dir(tmp_path, "run-old", 5)
    busy = _run_dir(tmp_path, "run-busy", 5)
    fresh = _run_dir(tmp_path, "run-fresh", 0.5)
    now = time.time()
    assert stale_runs(tmp_path, now=now, older_than_seconds=3 * DAY, active={"run-busy"}) == [old]
    assert await prune(tmp_path, now=now, older_than_seconds=3 * DAY, active={"run-busy"}) == 1
    assert not old.exists()
    assert busy.exists()
    assert fresh.exists()


async def test_an_old_run_whose_workspace_was_used_recently_is_kept(tmp_path: Path) -> None:
    # A long run: its directory was made days ago, a later stage touched its workspace an hour ago.
    live = _run_dir(tmp_path, "run-live", 5, workspace_age_days=1 / 24)
    # The other way round: a workspace left untouched for days in a run directory changed today.
    renewed = _run_dir(tmp_path, "run-renewed", 0.5, workspace_age_days=5)
    dead = _run_dir(tmp_path, "run-dead", 5, workspace_age_days=4)
    assert os.stat(live).st_mtime < os.stat(live / "resource~vpc").st_mtime - 4 * DAY
    now = time.time()
    assert await prune(tmp_path, now=now, older_than_seconds=3 * DAY, active=()) == 1
    assert (live / "resource~vpc" / "main.tf").read_text() == "#"
    assert (renewed / "resource~vpc" / "main.tf").exists()
    assert not dead.exists()


def test_a_missing_directory_has_nothing_to_prune(tmp_path: Path) -> None:
    assert stale_runs(tmp_path / "nope", now=time.time(), older_than_seconds=1, active=()) == []
