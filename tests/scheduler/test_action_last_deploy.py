"""The compiler asks the state store for the last deploy of a day-2 action's environment: the
action compiles with that deploy's outputs, and is rejected when there is no deploy to act on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from scheduler_support import (
    Recorder,
    recording,
    request,
    running_agent,
    running_compiler,
    running_scheduler,
    running_store,
)
from scheduler_support import sources_of as sources

from trellis_core import subjects
from trellis_core.bus import Bus
from trellis_core.events import RunCompiled, RunRejected, RunRequested
from trellis_core.ids import uuid7
from trellis_core.settings import Settings
from trellis_core.workflow import RunPurpose

BOXED = sources("""\
apiVersion: trellis.dev/v1
kind: ResourceTemplate
metadata: {name: box}
spec:
  provider: custom
  providerOptions:
    custom:
      tasks:
        - {name: make, type: script, options: {script: {script: "echo '{\\"id\\": \\"b-1\\"}' > $TRELLIS_OUTPUTS"}}}
---
apiVersion: trellis.dev/v1
kind: EnvironmentTemplate
metadata: {name: boxed}
spec:
  version: v1
  agents: [{name: default}]
  resources: [{name: box}]
  actions:
    - name: poke
      type: workflows
      workflows:
        tasks: [{name: poke, type: script, options: {script: {script: "echo $(resource.box.output.id.value)$"}}}]
---
apiVersion: trellis.dev/v1
kind: Environment
metadata: {name: boxed}
spec:
  template: {name: boxed, version: v1}
""")


async def outcome(rec: Recorder, run_id: str, within: float = 30.0) -> RunCompiled | RunRejected:
    def found() -> list[Any]:
        return rec.of(RunCompiled, run_id) + rec.of(RunRejected, run_id)

    await rec.wait(lambda: bool(found()), within)
    return found()[0]  # type: ignore[no-any-return]


async def action(bus: Bus, tenant: str, name: str) -> str:
    run = RunRequested(
        tenant=tenant, run_id=uuid7(), environment="boxed", sources=BOXED, purpose=RunPurpose(day2_action=name)
    )
    await bus.publish(subjects.runs_requested(tenant), run, msg_id=f"{run.run_id}/request")
    return run.run_id


async def test_an_action_on_an_environment_never_deployed_is_rejected_saying_so(
    bus: Bus, settings: Settings, unique: str, database_url: str
) -> None:
    async with running_store(bus, settings, database_url), running_compiler(bus), recording(bus, unique) as rec:
        rejected = await outcome(rec, await action(bus, unique, "poke"))
    assert isinstance(rejected, RunRejected)
    assert [e.message for e in rejected.errors] == [
        "environment 'boxed' has no successful deploy that no destroy undid: action 'poke' runs on a deployed "
        "environment (deploy it first)"
    ]


async def test_an_action_compiles_with_the_last_deploys_outputs_and_runs_with_them(
    bus: Bus, settings: Settings, unique: str, tmp_path: Path, database_url: str
) -> None:
    async with (
        running_store(bus, settings, database_url),
        running_compiler(bus),
        recording(bus, unique) as rec,
        running_scheduler(bus, settings, unique),
        running_agent(bus, tmp_path, unique),
    ):
        deploy = await request(bus, unique, BOXED, "boxed")
        assert (await rec.completion(deploy, within=60)).status == "succeeded"
        poke = await action(bus, unique, "poke")
        compiled = await outcome(rec, poke)
        done = await rec.completion(poke, within=60)
    assert isinstance(compiled, RunCompiled)
    assert compiled.workflow.last_deploy is not None
    assert compiled.workflow.last_deploy.run_id == deploy
    assert compiled.workflow.last_deploy.outputs == {"box": {"id": {"value": "b-1"}}}
    assert done.status == "succeeded"
    assert done.outputs == {}  # the action wrote none; the deploy's are not the action's
