"""What a scheduler knows of an environment survives its restart, though it keeps no deploy
record of its own: the compiler asks the state store and the compiled run carries the answer, so
a destroy renders with the last deploy's outputs and an `executeOnce` hook stays done."""

from __future__ import annotations

from pathlib import Path

from scheduler_support import (
    recording,
    request,
    running_agent,
    running_compiler,
    running_scheduler,
    running_store,
    sources_of,
)

from trellis_core.bus import Bus
from trellis_core.events import ActivityCompleted, ActivityDispatched, RunCompiled
from trellis_core.settings import Settings

ONCE = "environment/on-init/once"
KEPT = """\
apiVersion: trellis.dev/v1
kind: ResourceTemplate
metadata: {name: net}
spec:
  provider: custom
  providerOptions:
    custom:
      tasks:
        - name: make
          type: script
          options:
            script:
              script: |
                if [ "$TRELLIS_ACTION" = destroy ]; then exit 0; fi
                printf '{"id": "vpc-%s"}' "$TRELLIS_RUN_ID" > "$TRELLIS_OUTPUTS"
---
apiVersion: trellis.dev/v1
kind: ResourceTemplate
metadata: {name: app}
spec:
  provider: custom
  variables:
    - {name: net_id, valueType: expression, value: "$(resource.net.output.id.value)$"}
  providerOptions:
    custom:
      tasks:
        - name: make
          type: script
          options:
            script:
              script: |
                printf '{"saw": "%s"}' "$TRELLIS_VAR_net_id" > "$TRELLIS_OUTPUTS"
---
apiVersion: trellis.dev/v1
kind: EnvironmentTemplate
metadata: {name: kept}
spec:
  version: v1
  agents: [{name: default}]
  resources: [{name: net}, {name: app}]
  hooks:
    onInit:
      - {name: once, type: script, executeOnce: true, options: {script: {script: "true"}}}
---
apiVersion: trellis.dev/v1
kind: Environment
metadata: {name: kept}
spec:
  template: {name: kept, version: v1}
"""


async def test_a_restarted_scheduler_destroys_with_the_last_deploys_outputs_and_keeps_execute_once_done(
    bus: Bus, settings: Settings, unique: str, tmp_path: Path, database_url: str
) -> None:
    source = sources_of(KEPT)
    async with (
        running_store(bus, settings, database_url),
        running_compiler(bus),
        recording(bus, unique) as rec,
        running_agent(bus, tmp_path, unique),
    ):
        async with running_scheduler(bus, settings, unique):
            first = await request(bus, unique, source, "kept")
            assert (await rec.completion(first, within=60)).status == "succeeded"
        # each run under a new leader: nothing in memory, only snapshots, the stream and the store
        async with running_scheduler(bus, settings, unique):
            second = await request(bus, unique, source, "kept")
            assert (await rec.completion(second, within=60)).status == "succeeded"
        async with running_scheduler(bus, settings, unique):
            gone = await request(bus, unique, source, "kept", action="destroy")
            assert (await rec.completion(gone, within=60)).status == "succeeded"

    assert ONCE in [e.activity_id for e in rec.of(ActivityDispatched, first)]
    assert ONCE not in [e.activity_id for e in rec.of(ActivityDispatched, second)]  # executeOnce: done before
    [compiled] = rec.of(RunCompiled, gone)
    assert compiled.workflow.last_deploy is not None
    assert compiled.workflow.last_deploy.run_id == second
    [said] = [e for e in rec.of(ActivityCompleted, gone) if e.activity_id == "resource/app/task/make"]
    assert said.outputs == {"saw": f"vpc-{second}"}  # the last deploy's output, after the restart
