"""What a scheduler remembers of an environment survives its restart: a destroy renders with the
last deploy's outputs, and an `executeOnce` hook stays done."""

from __future__ import annotations

from pathlib import Path

from scheduler_support import recording, running_agent, running_scheduler, sh, submit, workflow

from trellis_core.bus import Bus
from trellis_core.events import ActivityCompleted, ActivityDispatched
from trellis_core.settings import Settings
from trellis_core.workflow import Workflow

WRITE_ID = """printf '{"id": "vpc-%s"}' "$TRELLIS_RUN_ID" > "$TRELLIS_OUTPUTS\""""
SAY = """printf '{"saw": "%s"}' "$(resource.app.output.id.value)$" > "$TRELLIS_OUTPUTS\""""


def deploy() -> Workflow:
    return workflow(sh("once", "true", execute_once=True), sh("app", WRITE_ID, "once", resource="app"), env="kept")


def destroy() -> Workflow:
    wf = workflow(sh("teardown", SAY, resource="app"), env="kept")
    return Workflow(environment=wf.environment, template=wf.template, action="destroy", activities=wf.activities)


async def test_a_restarted_scheduler_destroys_with_the_last_deploys_outputs_and_keeps_execute_once_done(
    bus: Bus, settings: Settings, unique: str, tmp_path: Path
) -> None:
    async with recording(bus, unique) as rec, running_agent(bus, tmp_path, unique):
        async with running_scheduler(bus, settings, unique):
            first = await submit(bus, unique, deploy())
            assert (await rec.completion(first)).status == "succeeded"
        # a new leader: nothing in memory, everything from the snapshots and the stream
        async with running_scheduler(bus, settings, unique):
            second = await submit(bus, unique, deploy())
            assert (await rec.completion(second)).status == "succeeded"
            gone = await submit(bus, unique, destroy())
            assert (await rec.completion(gone)).status == "succeeded"

    assert [e.activity_id for e in rec.of(ActivityDispatched, first)] == ["once", "app"]
    assert [e.activity_id for e in rec.of(ActivityDispatched, second)] == ["app"]  # executeOnce: done before
    [said] = rec.of(ActivityCompleted, gone)
    assert said.outputs == {"saw": f"vpc-{second}"}  # the last deploy's output, after the restart
