"""Day-2 actions and force-destroys through the gateway over HTTP, run by the real store,
compiler, scheduler and a process agent: an action reads the deployed outputs and leaves the
environment as it was; a force-destroy walks past a failed destroy and skips every hook."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from runs_support import THREE_TIER, Api, gateway_stack, running_services

from trellis_core.bus import Bus
from trellis_core.settings import Settings

STACK = THREE_TIER + """\
  actions:
    - name: report
      type: workflows
      description: read the database host and say it
      variables: [{name: note, value: plain}]
      workflows:
        tasks:
          - name: read
            type: script
            options:
              script:
                script: |
                  echo "host $(resource.db.output.host.value)$ note $TRELLIS_VAR_note"
                  echo '{"seen": "$(resource.db.output.host.value)$-'"$TRELLIS_VAR_note"'"}' > "$TRELLIS_OUTPUTS"
"""


@pytest.fixture
async def api(bus: Bus, store_settings: Settings, unique: str) -> AsyncIterator[Api]:
    async with gateway_stack(bus, store_settings, unique) as api:
        yield api


async def test_an_action_reads_the_deployed_outputs_writes_its_own_and_leaves_the_environment_as_it_was(
    api: Api, bus: Bus, settings: Settings, tmp_path: Path
) -> None:
    await api.environment("shop", STACK, "stack")
    not_yet = await api.json("POST", "/v1/environments/shop/actions/report", status=409, who="operator")
    assert "shop is not deployed" in not_yet["detail"]
    unknown = await api.json("POST", "/v1/environments/shop/actions/reprot", status=404, who="operator")
    assert unknown["detail"] == "environment 'shop' has no action 'reprot' (its actions: report)"
    await api.json("POST", "/v1/environments/nope/actions/report", status=404, who="operator")
    await api.json("GET", "/v1/environments/nope/actions", status=404, who="viewer")
    never = await api.json("GET", "/v1/environments/shop/actions", status=200, who="viewer")
    assert never["actions"] == [
        {"name": "report", "type": "workflows", "description": "read the database host and say it"}
    ]
    await api.json("POST", "/v1/environments/shop/actions/report", status=403, who="viewer")
    bad = await api.json("POST", "/v1/environments/shop/actions/report", status=422, json={"vars": {}})
    assert "vars" in bad["detail"]
    async with running_services(bus, settings, api.tenant, tmp_path):
        deploy = await api.start("shop")
        await api.run_when(deploy, "succeeded")
        before = await api.json("GET", "/v1/environments/shop", status=200)
        assert before["outputs"] == {"db": {"host": {"value": "db-deploy"}}}
        body = {"variables": {"note": "hi"}}
        accepted = await api.json("POST", "/v1/environments/shop/actions/report", status=202, json=body, who="operator")
        run = await api.run_when(accepted["run_id"], "succeeded")
    assert run["purpose"] == "action:report"
    assert [a["id"] for a in run["activities"]] == ["action/report/task/read"]
    assert run["outputs"] == {"report": {"seen": {"value": "db-deploy-hi"}}}
    after = await api.json("GET", "/v1/environments/shop", status=200)
    assert after["outputs"] == before["outputs"]
    assert after["status"] == "deployed"
    assert after["last_run_id"] == deploy
    listed = await api.json("GET", "/v1/environments/shop/actions", status=200, who="viewer")
    [report] = listed["actions"]
    assert report["name"] == "report"
    assert report["type"] == "workflows"
    assert report["last_run"]["run_id"] == accepted["run_id"]
    assert report["outputs"] == run["outputs"]
    audit = await api.json("GET", "/v1/audit", status=200)
    created = [e for e in audit["entries"] if e["action"] == "run.create" and e["detail"]["run_id"] == run["run_id"]]
    assert created[0]["detail"]["purpose"] == "action:report"
    assert created[0]["actor"] == "oli@example.com"


async def test_a_force_destroy_goes_past_a_failed_destroy_skips_every_hook_and_is_recorded(
    api: Api, bus: Bus, settings: Settings, tmp_path: Path
) -> None:
    await api.environment("shop", STACK, "stack")
    async with running_services(bus, settings, api.tenant, tmp_path):
        await api.run_when(await api.start("shop"), "succeeded")
        ordinary = await api.run_when(await api.start("shop", "destroy"), "failed")
        forced = await api.json("POST", "/v1/environments/shop/force-destroy", status=202, who="operator")
        run = await api.run_when(forced["run_id"], "failed")
    statuses = {a["id"]: a["status"] for a in ordinary["activities"]}
    assert statuses["resource/db/task/make"] == "failed"
    assert statuses["resource/net/task/make"] == "skipped"  # an ordinary destroy stops at the failure
    assert run["purpose"] == "force-destroy"
    assert run["action"] == "destroy"
    statuses = {a["id"]: a["status"] for a in run["activities"]}
    assert statuses == {
        "resource/app/task/make": "succeeded",
        "resource/db/task/make": "failed",
        "resource/net/task/make": "succeeded",  # destroyed although db, destroyed before it, failed
    }  # and no `environment/on-init/hello`: a force-destroy runs no hook
    assert run["message"].startswith("resource/db/task/make")
    audit = await api.json("GET", "/v1/audit", status=200)
    assert any(e["detail"].get("purpose") == "force-destroy" for e in audit["entries"] if e["action"] == "run.create")
    await api.json("POST", "/v1/environments/nope/force-destroy", status=404, who="operator")
    await api.json("POST", "/v1/environments/shop/force-destroy", status=403, who="viewer")
