"""`make bench`: late binding at dispatch as a run grows. An activity that reads one upstream
output is rendered with 100 and with 1,000 resources' outputs recorded (a deploy, and a destroy
that reads the last deploy's under them); its cost should not grow with the run."""

from __future__ import annotations

import statistics
import time
from types import SimpleNamespace
from typing import Any

import pytest

from trellis_core.workflow import Activity, ContainerSpec
from trellis_engine.binding import late_scope, render_activity
from trellis_templates.expressions import LATE

pytestmark = pytest.mark.bench
READS = Activity(
    id="app/apply", kind="container", spec=ContainerSpec(command=("echo", "$(resource.r7.output.host.value)$"))
)


def _outputs(n: int) -> dict[str, dict[str, Any]]:
    return {f"r{i}": {"host": {"value": f"h{i}", "type": "string"}, "port": {"value": i}} for i in range(n)}


def _per_dispatch_us(n: int, deployed: bool) -> float:
    run: Any = SimpleNamespace(workflow=SimpleNamespace(scope={}), outputs=_outputs(n))
    last_deploy = _outputs(n) if deployed else None
    rounds = []
    for _ in range(7):
        start = time.perf_counter()
        for _ in range(200):
            rendered = render_activity(READS, late_scope(run, READS, deployed=last_deploy), LATE)
        rounds.append((time.perf_counter() - start) / 200 * 1e6)
    assert isinstance(rendered.spec, ContainerSpec)
    assert rendered.spec.command == ("echo", "h7")
    return statistics.median(rounds)


def test_rendering_an_activity_costs_the_same_at_100_and_1000_resources() -> None:
    for deployed in (False, True):
        small, large = _per_dispatch_us(100, deployed), _per_dispatch_us(1000, deployed)
        kind = "destroy (last deploy's outputs under the run's)" if deployed else "deploy"
        print(f"\nlate binding, {kind}: {small:.1f} us per dispatch at 100 resources, {large:.1f} us at 1,000"
              f" ({large / small:.2f}x)")  # fmt: skip
