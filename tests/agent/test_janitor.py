"""Old runs' workspaces are removed from the agent's disk; recent and running ones stay."""

from __future__ import annotations

import os
import time
from pathlib import Path

from trellis_agent.janitor import prune, stale_runs

DAY = 86_400.0


def _run_dir(root: Path, name: str, age_days: float) -> Path:
    run = root / name
    (run / "resource~vpc").mkdir(parents=True)
    (run / "resource~vpc" / "main.tf").write_text("#")
    then = time.time() - age_days * DAY
    for path in (run / "resource~vpc" / "main.tf", run / "resource~vpc", run):
        os.utime(path, (then, then))
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


def test_a_missing_directory_has_nothing_to_prune(tmp_path: Path) -> None:
    assert stale_runs(tmp_path / "nope", now=time.time(), older_than_seconds=1, active=()) == []
