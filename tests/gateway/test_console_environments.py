"""The console's environments list and environment page, in Debian's chromium against the real
gateway, store, compiler, scheduler and a process agent: what a deploy leaves shows in the list and
on the page (a sensitive output masked, its value never reaching the page), an operator deploys,
runs a day-2 action, extends the time to live and destroys (after confirming) from the page, and a
viewer sees none of those controls. Also the list answer's `last_run` and `expires_at`."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway_support import Api, GatewayServer, Tenant, eventually
from playwright.async_api import Page
from runs_support import running_services

from trellis_core.bus import Bus

SECRET_OUTPUT = "vault-password-never-shown-7731"
SECRET_VARIABLE = "vault-token-never-shown-4410"
OUTPUTS = json.dumps({"endpoint": "vault.internal", "password": {"value": SECRET_OUTPUT, "sensitive": True}})

# One resource whose deploy writes a plain and a sensitive output; a time to live that may be
# extended twice; a day-2 action.
VAULT = f"""\
apiVersion: trellis.dev/v1
kind: ResourceTemplate
metadata: {{name: vault}}
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
                echo "vault $TRELLIS_ACTION"
                if [ "$TRELLIS_ACTION" = deploy ]; then
                  echo '{OUTPUTS}' > "$TRELLIS_OUTPUTS"
                fi
---
apiVersion: trellis.dev/v1
kind: EnvironmentTemplate
metadata: {{name: vault-stack}}
spec:
  version: v1
  agents: [{{name: default}}]
  resources: [{{name: vault}}]
  variables:
    - {{name: team, value: blue}}
    - {{name: token, value: "", options: {{sensitive: true}}}}
  schedules:
    - name: ttl
      type: destroy
      cadence: {{timeToLive: 8h}}
      optOutOptions: {{allowOptOut: true, maxAllowedDuration: 4h, maxAllowedTimes: 2}}
  actions:
    - name: rotate
      type: workflows
      description: rotate the vault's credentials
      workflows:
        tasks:
          - {{name: rotate, type: script, options: {{script: {{script: "echo rotated"}}}}}}
"""
RUN_URL = re.compile(r"#/runs/([0-9a-zA-Z-]+)$")


async def create(api: Api, tenant: Tenant, name: str) -> None:
    """Publish VAULT (once) and PUT environment `name` on it, with a sensitive variable."""
    published = await api.call("POST", "/v1/templates", token=tenant.operator,
                               json={"sources": [{"path": "vault.yaml", "text": VAULT}]})
    published.ok(201)
    body = {"template": {"name": "vault-stack", "version": "v1"}, "agents": ["default"],
            "variables": {"team": "red", "token": SECRET_VARIABLE}}
    (await api.call("PUT", f"/v1/environments/{name}", token=tenant.operator, json=body)).ok(201)


async def run_ends(api: Api, tenant: Tenant, run_id: str, status: str = "succeeded") -> dict[str, Any]:
    """The run once the store shows it `status`."""
    seen: dict[str, Any] = {}

    async def ended() -> bool:
        nonlocal seen
        seen = (await api.call("GET", f"/v1/runs/{run_id}", token=tenant.viewer)).ok()
        assert seen["status"] not in {"failed", "cancelled", "rejected"} - {status}, seen
        return seen["status"] == status

    await eventually(ended, within=60, what=f"run {run_id} {status}")
    return seen


async def deploy(api: Api, tenant: Tenant, name: str) -> str:
    started = (await api.call("POST", f"/v1/environments/{name}/runs", token=tenant.operator,
                              json={"action": "deploy"})).ok(202)
    await run_ends(api, tenant, started["run_id"])
    return str(started["run_id"])


@asynccontextmanager
async def schedule_pass(bus: Bus, server: GatewayServer) -> AsyncIterator[Any]:
    """`tick()`: one pass of the gateway's schedule loop now (it arms a time to live after a
    deploy), instead of waiting for the running loop's next pass."""
    from trellis_gateway.context import Gateway
    from trellis_gateway.schedule_loop import ScheduleRunner

    gateway = Gateway.create(bus, server.settings)
    try:
        yield ScheduleRunner(gateway, lambda: datetime.now(UTC))
    finally:
        await gateway.store.close()


async def armed(api: Api, tenant: Tenant, runner: Any, name: str) -> datetime:
    """The time to live's expiry of `name`, once a pass of the schedule loop armed it."""
    found: list[datetime] = []

    async def expiry() -> bool:
        await runner.tick()
        schedules = (await api.call("GET", f"/v1/environments/{name}/schedules", token=tenant.viewer)).ok()
        found[:] = [datetime.fromisoformat(s["expires_at"]) for s in schedules["schedules"] if s.get("expires_at")]
        return bool(found)

    await eventually(expiry, within=30, what=f"the time to live of {name} armed")
    return found[0]


async def test_the_list_answer_carries_each_environments_last_run_and_time_to_live_expiry(
    api: Api, tenant: Tenant, gateway_server: GatewayServer, bus: Bus, tmp_path: Path
) -> None:
    await create(api, tenant, "vault")
    await create(api, tenant, "idle")
    async with running_services(bus, gateway_server.settings, tenant.name, tmp_path):
        run_id = await deploy(api, tenant, "vault")
    async with schedule_pass(bus, gateway_server) as runner:
        expires = await armed(api, tenant, runner, "vault")
    listed = (await api.call("GET", "/v1/environments", token=tenant.viewer)).ok()["environments"]
    idle, vault = listed
    assert (idle["name"], idle["last_run"], idle["expires_at"]) == ("idle", None, None)
    assert vault["status"] == "deployed"
    assert vault["last_run"]["run_id"] == run_id
    assert vault["last_run"]["action"] == "deploy"
    assert vault["last_run"]["status"] == "succeeded"
    assert vault["last_run"]["finished_at"]
    assert datetime.fromisoformat(vault["expires_at"]) == expires
    assert vault["outputs"]["vault"]["password"]["value"] == "********"
    paged = (await api.call("GET", "/v1/environments?limit=1&after=idle", token=tenant.viewer)).ok()
    assert paged["environments"] == [vault]
    one = (await api.call("GET", "/v1/environments/vault", token=tenant.viewer)).ok()
    assert one["last_run"] == vault["last_run"]  # the same summary as one environment's


def _run_id(page: Page) -> str:
    found = RUN_URL.search(page.url)
    assert found, page.url
    return found[1]
