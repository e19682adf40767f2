"""Slow fault injection: a scheduler SIGKILLed again and again while a run goes on."""

from __future__ import annotations

import collections
from pathlib import Path

import pytest
from scheduler_support import Process, recording, running_agent, sh, submit, workflow

from trellis_core.bus import Bus
from trellis_core.events import ActivityDispatched, ActivityStarted
from trellis_core.settings import Settings

pytestmark = pytest.mark.slow


async def test_a_scheduler_killed_three_times_mid_run_still_runs_every_activity_exactly_once(
    bus: Bus, settings: Settings, unique: str, tmp_path: Path
) -> None:
    ran = tmp_path / "ran.txt"
    layers = [[f"l{d}x{w}" for w in range(4)] for d in range(8)]
    acts = [
        sh(name, f"echo {name} >> {ran}; sleep 0.1", *(layers[d - 1] if d else []))
        for d, layer in enumerate(layers)
        for name in layer
    ]
    schedulers: list[Process] = []
    try:
        async with recording(bus, unique) as rec, running_agent(bus, tmp_path, unique, concurrency=4):
            schedulers.append(Process(settings, "scheduler", "--tenant", unique, log=tmp_path / "s0.log"))
            run_id = await submit(bus, unique, workflow(*acts))
            for n, depth in enumerate((1, 3, 5), start=1):
                await rec.first(ActivityStarted, run_id, within=60, activity_id=f"l{depth}x0")
                schedulers[-1].kill()
                schedulers.append(Process(settings, "scheduler", "--tenant", unique, log=tmp_path / f"s{n}.log"))
            done = await rec.completion(run_id, within=90)
    finally:
        for process in schedulers:
            process.stop()
    assert done.status == "succeeded", done.message
    counts = collections.Counter(ran.read_text().split())
    assert counts == {a.id: 1 for a in acts}
    assert {e.attempt for e in rec.of(ActivityDispatched, run_id)} == {1}
