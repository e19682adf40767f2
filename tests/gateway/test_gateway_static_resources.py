"""Static resources end to end through the gateway, on the real store, compiler, scheduler and a
process agent: environment `net` deploys an output; environment `app` reads it through a static
resource of kind environment into a downstream resource; `net` cannot be destroyed while `app`
reads it (409 at the gateway, a rejected run on the bus path), and can once `app` is destroyed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest
from runs_support import Api, gateway_stack, running_services

from trellis_core import subjects
from trellis_core.bus import Bus
from trellis_core.events import RunRequested, decode_run_event
from trellis_core.ids import uuid7
from trellis_core.settings import Settings
from trellis_core.workflow import RunPurpose
from trellis_gateway.context import ApiProblem
from trellis_gateway.launch import start_run

NET = """\
apiVersion: trellis.dev/v1
kind: ResourceTemplate
metadata: {name: vpc}
spec:
  provider: custom
  providerOptions:
    custom:
      tasks:
        - name: make
          type: script
          options: {script: {script: "printf '{\\"vpc_id\\": \\"vpc-0a1b\\"}' > \\"$TRELLIS_OUTPUTS\\""}}
---
apiVersion: trellis.dev/v1
kind: EnvironmentTemplate
metadata: {name: net-stack}
spec:
  version: v1
  agents: [{name: default}]
  resources: [{name: vpc}]
"""

APP = """\
apiVersion: trellis.dev/v1
kind: StaticResource
metadata: {name: dns}
spec:
  variables:
    - {name: zone, value: example.internal}
---
apiVersion: trellis.dev/v1
kind: ResourceTemplate
metadata: {name: app}
spec:
  provider: custom
  variables:
    - {name: vpc, value: '$(resource.net.output.vpc_id.value)$'}
    - {name: zone, value: '$(resource.dns.output.zone.value)$'}
  providerOptions:
    custom:
      tasks:
        - name: use
          type: script
          options:
            script:
              script: |
                echo "app in $TRELLIS_VAR_vpc"
                printf '{"seen": "%s", "zone": "%s"}' "$TRELLIS_VAR_vpc" "$TRELLIS_VAR_zone" > "$TRELLIS_OUTPUTS"
---
apiVersion: trellis.dev/v1
kind: EnvironmentTemplate
metadata: {name: app-stack}
spec:
  version: v1
  agents: [{name: default}]
  resources:
    - {name: net, kind: environment, type: static}
    - {name: dns, kind: resource, type: static}
    - {name: app}
"""


@pytest.fixture
async def api(bus: Bus, store_settings: Settings, unique: str) -> AsyncIterator[Api]:
    async with gateway_stack(bus, store_settings, unique) as api:
        yield api


async def succeeded(api: Api, run_id: str) -> dict[str, object]:
    events = await api.events(run_id)
    assert events[-1].json()["status"] == "succeeded", [e.data for e in events]
    return await api.run_when(run_id, "succeeded")


async def rejected_on_the_bus(api: Api, run_id: str) -> dict[str, object]:
    """The run once the store has it rejected (a run published on the bus has no row before)."""
    async with asyncio.timeout(30):
        while True:
            async with api.call("GET", f"/v1/runs/{run_id}") as response:
                run = await response.json()
            if response.status == 200 and run["status"] == "rejected":
                return dict(run)
            await asyncio.sleep(0.05)


async def test_an_environment_reads_anothers_output_and_holds_it_until_destroyed(
    api: Api, bus: Bus, settings: Settings, tmp_path: Path
) -> None:
    await api.environment("net", NET, "net-stack")
    await api.environment("app", APP, "app-stack")
    async with running_services(bus, settings, api.tenant, tmp_path):
        refused = await api.json("POST", "/v1/environments/app/runs", status=202, json={"action": "deploy"})
        rejected = await api.run_when(str(refused["run_id"]), "rejected")
        assert "environment 'net'" in str(rejected["message"])
        assert "not deployed" in str(rejected["message"])

        await succeeded(api, await api.start("net"))
        net_request = decode_run_event(
            (await bus.js.get_last_msg(subjects.STREAM_RUNS, subjects.runs_requested(api.tenant))).data or b""
        )
        await succeeded(api, await api.start("app"))

        app = await api.json("GET", "/v1/environments/app", status=200)
        assert app["outputs"]["app"]["seen"]["value"] == "vpc-0a1b"
        assert app["outputs"]["app"]["zone"]["value"] == "example.internal"
        assert app["dependsOn"] == [{"environment": "net", "resource": "net"}]
        assert "dependents" not in app
        net = await api.json("GET", "/v1/environments/net", status=200)
        assert net["dependents"] == [{"environment": "app", "resource": "net"}]
        assert "dependsOn" not in net

        async with api.call("POST", "/v1/environments/net/runs", who="operator", json={"action": "destroy"}) as r:
            problem = await r.json()
            assert r.status == 409, problem
        assert "environment 'net' cannot be destroyed" in problem["detail"]
        assert "app" in problem["detail"]
        with pytest.raises(ApiProblem) as forced:  # a force-destroy (day-2 routes start it so) too
            await start_run(api.gateway, "ops", api.tenant, "net", "destroy", purpose=RunPurpose(force=True))
        assert forced.value.status == 409
        assert "force does not override this" in forced.value.problem.detail

        # The bus path (a run request published without the gateway) is refused by the compiler.
        assert isinstance(net_request, RunRequested)
        bus_destroy = msgspec.structs.replace(net_request, run_id=uuid7(), action="destroy")
        await bus.publish(subjects.runs_requested(api.tenant), bus_destroy, msg_id=f"{bus_destroy.run_id}/request")
        refused_run = await rejected_on_the_bus(api, bus_destroy.run_id)
        assert "environment 'net' cannot be destroyed" in str(refused_run["message"])
        assert "app" in str(refused_run["message"])

        await succeeded(api, await api.start("app", "destroy"))
        app = await api.json("GET", "/v1/environments/app", status=200)
        assert "dependsOn" not in app
        await succeeded(api, await api.start("net", "destroy"))
    net = await api.json("GET", "/v1/environments/net", status=200)
    assert net["status"] == "destroyed"
    assert "dependents" not in net
