"""`trellis run` end to end on the embedded stack: a binary tree of custom resources, each task
reading its parent's output, at 100 and 1,000 resources.

The figure is the run's span (run started to run completed, from the `--json` document), the
median of a few runs of the real command in a subprocess. Targets on a 2-core machine: the
1,000-resource span under 10 s and within 15x of the 100-resource one (printed, never asserted).
Run with `make bench` (or `pytest -m bench tests/bench/test_run_bench.py -s`).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest
from tree_templates import tree_templates

pytestmark = pytest.mark.bench
SIZES = (100, 1000)
REPEATS = 3


def run_span(templates: Path, data_dir: Path) -> float:
    """Seconds from the run's start to its end, as `trellis run --json` reports them."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRELLIS_")}
    env["TRELLIS_DATA_DIR"] = str(data_dir)
    cmd = [sys.executable, "-m", "trellis_cli.main", "run", str(templates), "--environment", "tree", "--json"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=data_dir.parent, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    document = json.loads(done.stdout)
    assert document["status"] == "succeeded"
    assert len(document["activities"]) == int(templates.name.split("-")[1])
    started, finished = (datetime.fromisoformat(document[k]) for k in ("started_at", "finished_at"))
    return (finished - started).total_seconds()


@pytest.mark.timeout(1800)
def test_trellis_run_span_at_100_and_1000_resources(tmp_path: Path) -> None:
    medians: dict[int, float] = {}
    for size in SIZES:
        templates = tree_templates(tmp_path / f"tree-{size}", size)
        spans = [run_span(templates, tmp_path / f"data-{size}-{n}") for n in range(REPEATS)]
        medians[size] = statistics.median(spans)
        print(f"\ntrellis run, {size} resources: spans {', '.join(f'{s:.2f}' for s in spans)} s, "
              f"median {medians[size]:.2f} s")  # fmt: skip
    small, large = medians[SIZES[0]], medians[SIZES[1]]
    ratio = large / small
    print(f"trellis run spans: {SIZES[0]} resources {small:.2f} s | {SIZES[1]} resources {large:.2f} s | "
          f"ratio {ratio:.1f}x")  # fmt: skip
    print(f"target 1,000 under 10 s: {'met' if large < 10 else 'MISSED'}; "
          f"within 15x of 100: {'met' if ratio <= 15 else 'MISSED'}")  # fmt: skip
