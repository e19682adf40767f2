"""A time to live's notification hooks through the gateway: on a clock of the test's, the expiry
notice runs the template's `onExpiring` hooks (purpose `expiring`, requested by `schedule/<name>`)
with the expiry time and the deployed outputs, leaves the environment as it was, and the destroy
follows at the expiry. Without onExpiring hooks the notice is the audit entry alone."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from runs_support import HELLO, Api, Clock, gateway_stack, running_services

from trellis_core.bus import Bus
from trellis_core.settings import Settings
from trellis_gateway.schedule_loop import ScheduleRunner

NOTIFIED = """\
apiVersion: trellis.dev/v1
kind: ResourceTemplate
metadata: {name: db}
spec:
  provider: custom
  providerOptions:
    custom:
      tasks:
        - name: make
          type: script
          options: {script: {script: "echo '{\\"host\\": \\"db-'$TRELLIS_ACTION'\\"}' > \\"$TRELLIS_OUTPUTS\\""}}
---
apiVersion: trellis.dev/v1
kind: EnvironmentTemplate
metadata: {name: ttl-stack}
spec:
  version: v1
  agents: [{name: default}]
  resources: [{name: db}]
  hooks:
    onInit: [{name: hello, type: script, options: {script: {script: "echo hello"}}}]
    onExpiring:
      - name: tell
        type: script
        options:
          script:
            script: |
              host='$(resource.db.output.host.value)$'
              echo "$(environment.name)$ $host $(trigger.payload.expires_at)$" >> NOTICE_FILE
  schedules:
    - {name: ttl, type: destroy, cadence: {timeToLive: 8h}}
"""
ACTOR = "schedule/ttl"


@pytest.fixture
async def api(bus: Bus, store_settings: Settings, unique: str) -> AsyncIterator[Api]:
    async with gateway_stack(bus, store_settings, unique) as api:
        yield api


async def test_the_expiry_notice_runs_the_on_expiring_hooks_before_the_destroy(
    api: Api, bus: Bus, settings: Settings, tmp_path: Path
) -> None:
    notice = tmp_path / "notice.txt"
    await api.environment("lab", NOTIFIED.replace("NOTICE_FILE", str(notice)), "ttl-stack")
    clock = Clock(datetime.now(UTC))
    runner = ScheduleRunner(api.gateway, clock)
    async with running_services(bus, settings, api.tenant, tmp_path / "agent"):
        await runner.tick()
        deploy = await api.start("lab")
        await api.run_when(deploy, "succeeded", within=60)
        expiry = await armed_expiry(api, runner, "lab")
        before = await api.json("GET", "/v1/environments/lab", status=200)
        clock.now = expiry - timedelta(minutes=30)
        await runner.tick()
        await runner.tick()  # announced once
        [hooks] = await runs_by(api, ACTOR)
        notified = await api.run_when(hooks["run_id"], "succeeded", within=60)
        after = await api.json("GET", "/v1/environments/lab", status=200)
        clock.now = expiry + timedelta(seconds=1)
        await runner.tick()
        destroy = next(r for r in await runs_by(api, ACTOR) if r["run_id"] != hooks["run_id"])
        destroyed = await api.run_when(destroy["run_id"], "succeeded", within=60)
    assert (notified["action"], notified["purpose"]) == ("deploy", "expiring")
    assert [a["id"] for a in notified["activities"]] == ["environment/on-expiring/tell"]
    assert notice.read_text() == f"lab db-deploy {expiry.isoformat()}\n"
    assert before["outputs"] == {"db": {"host": {"value": "db-deploy"}}}
    assert (after["outputs"], after["status"], after["last_run_id"]) == (before["outputs"], "deployed", deploy)
    assert destroyed["action"] == "destroy"
    assert not [a for a in destroyed["activities"] if "on-expiring" in a["id"]]
    assert notified["finished_at"] <= destroyed["started_at"]
    [announced] = await audited(api, "schedule.expiring")
    assert announced["detail"] == {"schedule": "ttl", "expires_at": expiry.isoformat(), "run_id": hooks["run_id"]}


async def test_without_on_expiring_hooks_the_notice_is_the_audit_entry_alone(
    api: Api, bus: Bus, settings: Settings, tmp_path: Path
) -> None:
    plain = HELLO + "  schedules:\n    - {name: ttl, type: destroy, cadence: {timeToLive: 8h}}\n"
    await api.environment("lab", plain, "hello-stack")
    clock = Clock(datetime.now(UTC))
    runner = ScheduleRunner(api.gateway, clock)
    async with running_services(bus, settings, api.tenant, tmp_path):
        await runner.tick()
        await api.run_when(await api.start("lab"), "succeeded", within=60)
        expiry = await armed_expiry(api, runner, "lab")
    clock.now = expiry - timedelta(minutes=30)
    await runner.tick()
    [announced] = await audited(api, "schedule.expiring")
    assert announced["detail"] == {"schedule": "ttl", "expires_at": expiry.isoformat()}
    assert await runs_by(api, ACTOR) == []


async def armed_expiry(api: Api, runner: ScheduleRunner, environment: str) -> datetime:
    """The time to live's expiry once the loop has seen the deploy."""
    for _ in range(20):
        await runner.tick()
        [state] = (await api.json("GET", f"/v1/environments/{environment}/schedules", status=200))["schedules"]
        if "expires_at" in state:
            return datetime.fromisoformat(state["expires_at"])
    pytest.fail("the deploy did not start the time to live")


async def runs_by(api: Api, actor: str) -> list[dict[str, Any]]:
    listed = await api.json("GET", "/v1/runs", status=200)
    return [r for r in listed["runs"] if r["requested_by"] == actor]


async def audited(api: Api, action: str) -> list[dict[str, Any]]:
    audit = await api.json("GET", "/v1/audit", status=200)
    return [e for e in audit["entries"] if e["action"] == action]
