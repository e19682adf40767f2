"""A hostile late-bound expression on the real scheduler: its run fails with the reason, the
recorded outputs stay as they were, and an ordinary run started meanwhile succeeds."""

from __future__ import annotations

from pathlib import Path

import pytest
from scheduler_support import recording, running_agent, running_scheduler, sh, submit, workflow

from trellis_core.bus import Bus
from trellis_core.events import ActivityFailed
from trellis_core.settings import Settings

WRITE_OUTPUT = 'echo \'{"%s": {"value": %s}}\' > "$TRELLIS_OUTPUTS"'


@pytest.mark.timeout(90)
async def test_an_exploding_expression_fails_its_run_while_an_ordinary_run_succeeds(
    bus: Bus, settings: Settings, unique: str, tmp_path: Path
) -> None:
    tower = "$( (((resource.base.output.n.value ** 64) ** 64) ** 64) ** 64 )$"
    tamper = "$( resource.base.output.update({'n': {'value': 0}}) )$"
    hostile = workflow(
        sh("resource/base/apply", WRITE_OUTPUT % ("n", "10"), resource="base"),
        sh("resource/tower/apply", f"echo {tower}", "resource/base/apply"),
        sh("resource/tamper/apply", f"echo {tamper}", "resource/base/apply"),
        env="hostile",
    )
    ordinary = workflow(
        sh("resource/web/apply", WRITE_OUTPUT % ("port", "8080"), resource="web"),
        sh("resource/site/apply", "test $(resource.web.output.port.value + 1)$ = 8081", "resource/web/apply"),
        env="ordinary",
    )
    async with (
        recording(bus, unique) as rec,
        running_scheduler(bus, settings, unique),
        running_agent(bus, tmp_path, unique, concurrency=4),
    ):
        hostile_id = await submit(bus, unique, hostile)
        ordinary_id = await submit(bus, unique, ordinary)
        hostile_done = await rec.completion(hostile_id, within=60)
        ordinary_done = await rec.completion(ordinary_id, within=60)

    assert ordinary_done.status == "succeeded", ordinary_done.message
    assert hostile_done.status == "failed"
    failures = {e.activity_id: e.reason for e in rec.of(ActivityFailed, hostile_id)}
    assert "integer size budget exceeded" in failures["resource/tower/apply"]
    assert "cannot render: spec.command[2]" in failures["resource/tower/apply"]
    assert "not allowed" in failures["resource/tamper/apply"]
    assert hostile_done.outputs["base"] == {"n": {"value": 10}}
