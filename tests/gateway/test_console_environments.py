"""The console's environments list and environment page, in Debian's chromium against the real
gateway, store, compiler, scheduler and a process agent: what a deploy leaves shows in the list and
on the page (a sensitive output masked, its value never reaching the page), an operator deploys,
runs a day-2 action, extends the time to live and destroys (after confirming) from the page, and a
viewer sees none of those controls; both follow a run in progress. Also the list answer's
`latest_run` and `expires_at`."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from console_support import assert_accessible, sign_in
from gateway_support import Api, GatewayServer, Tenant, eventually
from playwright.async_api import Page, expect
from runs_support import running_services

from trellis_core.bus import Bus

SECRET_OUTPUT = "vault-password-never-shown-7731"
SECRET_VARIABLE = "vault-token-never-shown-4410"
OUTPUTS = json.dumps({"endpoint": "vault.internal", "password": {"value": SECRET_OUTPUT, "sensitive": True}})
DRIFTED = json.dumps({"driftChanges": "yes", "driftSummary": "the vault policy was edited by hand"})

# One resource whose deploy writes a plain and a sensitive output (and whose drift check always
# finds drift); a time to live that may be extended twice; a day-2 action.
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
      driftCheck:
        name: compare
        type: script
        options:
          script:
            script: |
              echo '{DRIFTED}' > "$TRELLIS_OUTPUTS"
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
# An environment reading vault's outputs through a static resource of kind environment.
WEB = """\
apiVersion: trellis.dev/v1
kind: ResourceTemplate
metadata: {name: web}
spec:
  provider: custom
  variables:
    - {name: endpoint, value: '$(resource.vault.output.endpoint.value)$'}
  providerOptions:
    custom:
      tasks: [{name: use, type: script, options: {script: {script: "echo web reads $TRELLIS_VAR_endpoint"}}}]
---
apiVersion: trellis.dev/v1
kind: EnvironmentTemplate
metadata: {name: web-stack}
spec:
  version: v1
  agents: [{name: default}]
  resources:
    - {name: vault, kind: environment, type: static}
    - {name: web}
"""
RUN_URL = re.compile(r"#/runs/([0-9a-zA-Z-]+)$")


async def create(api: Api, tenant: Tenant, name: str, bundle: str = VAULT, template: str = "vault-stack") -> None:
    """Publish `bundle` and PUT environment `name` on its `template`@v1 (VAULT's: with a sensitive variable)."""
    published = await api.call("POST", "/v1/templates", token=tenant.operator,
                               json={"sources": [{"path": "bundle.yaml", "text": bundle}]})
    published.ok(201)
    variables = {"team": "red", "token": SECRET_VARIABLE} if bundle == VAULT else {}
    body = {"template": {"name": template, "version": "v1"}, "agents": ["default"], "variables": variables}
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


async def test_the_list_answer_carries_each_environments_newest_run_and_time_to_live_expiry(
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
    assert (idle["name"], idle["latest_run"], idle["expires_at"]) == ("idle", None, None)
    assert vault["status"] == "deployed"
    assert vault["latest_run"]["run_id"] == run_id
    assert vault["latest_run"]["action"] == "deploy"
    assert vault["latest_run"]["status"] == "succeeded"
    assert vault["latest_run"]["finished_at"]
    assert datetime.fromisoformat(vault["expires_at"]) == expires
    assert vault["outputs"]["vault"]["password"]["value"] == "********"
    paged = (await api.call("GET", "/v1/environments?limit=1&after=idle", token=tenant.viewer)).ok()
    assert paged["environments"] == [vault]
    one = (await api.call("GET", "/v1/environments/vault", token=tenant.viewer)).ok()
    assert one["last_run"] == vault["latest_run"]  # the same summary as one environment's

    # The newest run of any kind, whatever it is doing: here an action nothing runs yet.
    action = (await api.call("POST", "/v1/environments/vault/actions/rotate", token=tenant.operator)).ok(202)
    [_, vault] = (await api.call("GET", "/v1/environments", token=tenant.viewer)).ok()["environments"]
    assert vault["latest_run"]["run_id"] == action["run_id"]
    assert (vault["latest_run"]["status"], vault["latest_run"]["purpose"]) == ("requested", "action:rotate")
    assert vault["last_run_id"] == run_id  # what set the status is still the deploy


async def test_a_deployed_environment_shows_in_the_list_with_status_template_newest_run_and_time_to_live(
    console_page: Page, api: Api, tenant: Tenant, gateway_server: GatewayServer, bus: Bus, tmp_path: Path
) -> None:
    page = console_page
    await sign_in(page, tenant.viewer)
    await page.goto("/console/#/environments")
    await expect(page.get_by_text("There are no environments in this tenant yet.")).to_be_visible()
    await expect(page.get_by_role("link", name="Launch one from the catalog")).to_have_attribute("href", "#/catalog")
    await create(api, tenant, "vault")
    await create(api, tenant, "idle")
    async with running_services(bus, gateway_server.settings, tenant.name, tmp_path):
        run_id = await deploy(api, tenant, "vault")
    async with schedule_pass(bus, gateway_server) as runner:
        expires = await armed(api, tenant, runner, "vault")
    await page.reload()
    vault = page.get_by_role("row").filter(has=page.get_by_role("link", name="vault", exact=True))
    await expect(vault).to_contain_text("deployed")
    await expect(vault).to_contain_text("vault-stack@v1")
    ttl = vault.locator("time", has_text="expires in")
    await expect(ttl).to_have_text(re.compile(r"^expires in (8h|7h 5\dm)$"))
    assert datetime.fromisoformat(await ttl.get_attribute("datetime") or "") == expires
    await expect(vault.get_by_role("link", name="deploy")).to_have_attribute("href", f"#/runs/{run_id}")
    idle = page.get_by_role("row").filter(has=page.get_by_role("link", name="idle", exact=True))
    await expect(idle).to_contain_text("new")
    await expect(page.get_by_role("status").filter(has_text="environments")).to_have_text("2 environments")
    await assert_accessible(page, "the environments list")
    await page.get_by_label("Status").select_option("deployed")
    await expect(idle).to_be_hidden()
    await expect(vault).to_be_visible()
    await page.get_by_label("Status").select_option("")
    await page.get_by_label("Filter by name").fill("idl")
    await expect(vault).to_be_hidden()
    await expect(page.get_by_text("1 of 2 environments")).to_be_visible()
    await idle.get_by_role("link", name="idle").click()
    await expect(page).to_have_url(re.compile(r"#/environments/idle$"))
    await expect(page.get_by_role("heading", level=1)).to_have_text("idle")


async def test_hundreds_of_environments_are_listed_and_filtered_by_name_and_status(
    console_page: Page, api: Api, tenant: Tenant
) -> None:
    await create(api, tenant, "env-000")
    body = {"template": {"name": "vault-stack", "version": "v1"}, "agents": ["default"]}
    for first in range(1, 300, 50):  # env-001 .. env-299, 50 PUTs at a time
        answers = await asyncio.gather(*(
            api.call("PUT", f"/v1/environments/env-{n:03}", token=tenant.operator, json=body)
            for n in range(first, min(first + 50, 300))
        ))
        assert {answer.status for answer in answers} == {201}
    page = console_page
    await sign_in(page, tenant.viewer)
    rows = page.locator("tbody tr")
    await expect(rows).to_have_count(300)
    await expect(page.get_by_text("300 environments", exact=True)).to_be_visible()
    await page.get_by_label("Filter by name").fill("env-12")
    await expect(page.locator("tbody tr:not([hidden])")).to_have_count(10)  # env-120 .. env-129
    await expect(page.get_by_text("10 of 300 environments")).to_be_visible()
    await page.get_by_label("Status").select_option("deployed")
    await expect(page.locator("tbody tr:not([hidden])")).to_have_count(0)
    await expect(page.get_by_text("0 of 300 environments")).to_be_visible()


async def test_the_environment_page_shows_masked_outputs_variables_schedules_actions_and_run_history(
    console_page: Page, api: Api, tenant: Tenant, gateway_server: GatewayServer, bus: Bus, tmp_path: Path
) -> None:
    await create(api, tenant, "vault")
    async with running_services(bus, gateway_server.settings, tenant.name, tmp_path):
        first = await deploy(api, tenant, "vault")
        second = await deploy(api, tenant, "vault")
    async with schedule_pass(bus, gateway_server) as runner:
        expires = await armed(api, tenant, runner, "vault")
    page = console_page
    await sign_in(page, tenant.viewer)
    await page.goto("/console/#/environments/vault")
    await expect(page.get_by_role("heading", level=1)).to_have_text("vault")
    outputs = page.locator("section", has=page.get_by_role("heading", name="Outputs"))
    endpoint = outputs.get_by_role("row").filter(has_text="endpoint")
    await expect(endpoint).to_contain_text("vault.internal")
    password = outputs.get_by_role("row").filter(has_text="password")
    await expect(password).to_contain_text("********")
    variables = page.locator("section", has=page.get_by_role("heading", name="Variables"))
    await expect(variables.get_by_role("row").filter(has_text="token")).to_contain_text("********")
    await expect(variables.get_by_role("row").filter(has_text="team")).to_contain_text("red")
    content = await page.content()
    assert SECRET_OUTPUT not in content
    assert SECRET_VARIABLE not in content
    history = page.locator("section", has=page.get_by_role("heading", name="Run history"))
    links = history.get_by_role("link")
    await expect(links).to_have_count(2)
    await expect(links.nth(0)).to_have_attribute("href", f"#/runs/{second}")  # newest first
    await expect(links.nth(1)).to_have_attribute("href", f"#/runs/{first}")
    schedules = page.locator("section", has=page.get_by_role("heading", name="Schedules"))
    await expect(schedules).to_contain_text("time to live 8h")
    ttl = schedules.locator("time", has_text="in ")
    await expect(ttl).to_have_text(re.compile(r"^in (8h|7h 5\dm)$"))
    assert datetime.fromisoformat(await ttl.get_attribute("datetime") or "") == expires
    await expect(schedules).to_contain_text("0 used of 2, at most 4h each")
    actions = page.locator("section", has=page.get_by_role("heading", name="Day-2 actions"))
    await expect(actions).to_contain_text("rotate the vault's credentials")
    await assert_accessible(page, "the environment page")


async def test_a_viewer_sees_no_deploy_button(console_page: Page, api: Api, tenant: Tenant) -> None:
    await create(api, tenant, "vault")
    page = console_page
    await sign_in(page, tenant.viewer)
    await page.goto("/console/#/environments/vault")
    await expect(page.get_by_role("heading", name="Day-2 actions")).to_be_visible()
    await expect(page.get_by_text("rotate the vault's credentials")).to_be_visible()
    await expect(page.get_by_role("button", name="Deploy")).to_have_count(0)
    await expect(page.get_by_role("button", name="Destroy")).to_have_count(0)
    await expect(page.get_by_role("button", name="Run rotate")).to_have_count(0)
    await expect(page.get_by_role("button", name="Extend")).to_have_count(0)
    await page.get_by_role("button", name="Sign out").click()
    await sign_in(page, tenant.operator)  # the same page for an operator has them
    await page.goto("/console/#/environments/vault")
    await expect(page.get_by_role("button", name="Deploy")).to_be_visible()
    await expect(page.get_by_role("button", name="Run rotate")).to_be_visible()


async def test_an_operator_deploys_runs_an_action_extends_and_destroys_after_confirming(
    console_page: Page, api: Api, tenant: Tenant, gateway_server: GatewayServer, bus: Bus, tmp_path: Path
) -> None:
    await create(api, tenant, "vault")
    page = console_page
    await sign_in(page, tenant.operator)
    async with running_services(bus, gateway_server.settings, tenant.name, tmp_path):
        await page.goto("/console/#/environments/vault")
        await page.get_by_role("button", name="Deploy").click()
        await expect(page).to_have_url(RUN_URL)
        deployed = await run_ends(api, tenant, _run_id(page))
        assert (deployed["environment"], deployed["action"]) == ("vault", "deploy")

        await page.goto("/console/#/environments/vault")
        await expect(page.locator(".env-summary")).to_contain_text("deployed")
        await page.get_by_role("button", name="Run rotate").click()
        await expect(page).to_have_url(RUN_URL)
        action = await run_ends(api, tenant, _run_id(page))
        assert action["purpose"] == "action:rotate"

        async with schedule_pass(bus, gateway_server) as runner:
            expires = await armed(api, tenant, runner, "vault")
        await page.goto("/console/#/environments/vault")
        await page.get_by_label("Extend ttl by").fill("2h")
        await page.get_by_role("button", name="Extend").click()
        schedules = page.locator("section", has=page.get_by_role("heading", name="Schedules"))
        await expect(schedules).to_contain_text("1 used of 2")
        [ttl] = (await api.call("GET", "/v1/environments/vault/schedules", token=tenant.viewer)).ok()["schedules"]
        assert datetime.fromisoformat(ttl["expires_at"]) == expires + timedelta(hours=2)
        await page.get_by_label("Extend ttl by").fill("9h")  # beyond maxAllowedDuration: the refusal shown
        await page.get_by_role("button", name="Extend").click()
        await expect(page.get_by_role("alert")).to_contain_text("Could not extend ttl")

        before = (await api.call("GET", "/v1/runs?environment=vault", token=tenant.viewer)).ok()["runs"]
        await page.get_by_role("button", name="Destroy").click()
        dialog = page.get_by_role("dialog", name="Destroy vault?")
        await expect(dialog).to_be_visible()
        await dialog.get_by_role("button", name="Cancel").click()
        await expect(dialog).to_be_hidden()
        after = (await api.call("GET", "/v1/runs?environment=vault", token=tenant.viewer)).ok()["runs"]
        assert after == before  # cancelling started nothing
        await page.get_by_role("button", name="Destroy").click()
        await dialog.get_by_role("button", name="Yes, destroy vault").click()
        await expect(page).to_have_url(RUN_URL)
        destroyed = await run_ends(api, tenant, _run_id(page))
        assert destroyed["action"] == "destroy"
    environment = (await api.call("GET", "/v1/environments/vault", token=tenant.viewer)).ok()
    assert environment["status"] == "destroyed"


async def test_the_page_links_dependencies_both_ways_shows_drift_and_a_refused_destroy_in_an_alert(
    console_page: Page, api: Api, tenant: Tenant, gateway_server: GatewayServer, bus: Bus, tmp_path: Path
) -> None:
    await create(api, tenant, "vault")
    await create(api, tenant, "web", WEB, "web-stack")
    async with running_services(bus, gateway_server.settings, tenant.name, tmp_path):
        await deploy(api, tenant, "vault")
        await deploy(api, tenant, "web")
        check = (await api.call("POST", "/v1/environments/vault/drift", token=tenant.operator)).ok(202)
        await run_ends(api, tenant, check["run_id"])
    page = console_page
    await sign_in(page, tenant.operator)
    await page.goto("/console/#/environments/web")
    links = page.locator("section", has=page.get_by_role("heading", name="Dependencies"))
    await expect(links).to_contain_text("Reads the outputs of")
    await links.get_by_role("link", name="vault").click()
    await expect(page).to_have_url(re.compile(r"#/environments/vault$"))
    await expect(page.get_by_role("heading", level=1)).to_have_text("vault")
    await expect(links).to_contain_text("Read by")
    await expect(links.get_by_role("link", name="web")).to_have_attribute("href", "#/environments/web")
    drift = page.locator("section", has=page.get_by_role("heading", name="Drift"))
    await expect(drift).to_contain_text("drifted")
    await expect(drift).to_contain_text("the vault policy was edited by hand")
    await expect(drift.get_by_role("link", name=check["run_id"])).to_be_visible()
    await assert_accessible(page, "an environment page with dependencies and drift")
    await page.get_by_role("button", name="Destroy").click()
    await page.get_by_role("button", name="Yes, destroy vault").click()
    await expect(page.get_by_role("alert")).to_contain_text("cannot be destroyed")  # web reads it: 409
    await expect(page).to_have_url(re.compile(r"#/environments/vault$"))


async def test_run_history_pages_with_more_runs(console_page: Page, api: Api, tenant: Tenant) -> None:
    await create(api, tenant, "vault")
    started = [  # nothing runs them: each stays requested, the newest last
        (await api.call("POST", "/v1/environments/vault/runs", token=tenant.operator,
                        json={"action": "deploy"})).ok(202)["run_id"]
        for _ in range(23)
    ]
    page = console_page
    await sign_in(page, tenant.viewer)
    await page.goto("/console/#/environments/vault")
    history = page.locator("section", has=page.get_by_role("heading", name="Run history"))
    links = history.locator("tbody a")
    await expect(links).to_have_count(20)
    await expect(links.first).to_have_attribute("href", f"#/runs/{started[-1]}")
    await history.get_by_role("button", name="More runs").click()
    await expect(links).to_have_count(23)
    await expect(links.last).to_have_attribute("href", f"#/runs/{started[0]}")
    await expect(links.nth(20)).to_be_focused()  # where the new rows begin
    await expect(history.get_by_role("button", name="More runs")).to_have_count(0)


def held(gate: Path) -> str:
    """A bundle (EnvironmentTemplate `held-stack`) whose deploy and destroy each wait for a file
    named after the action in `gate`: the test decides when a run in progress ends."""
    return f"""\
apiVersion: trellis.dev/v1
kind: ResourceTemplate
metadata: {{name: held}}
spec:
  provider: custom
  providerOptions:
    custom:
      tasks:
        - name: wait
          type: script
          options:
            script:
              script: |
                until [ -f "{gate}/$TRELLIS_ACTION" ]; do sleep 0.1; done
---
apiVersion: trellis.dev/v1
kind: EnvironmentTemplate
metadata: {{name: held-stack}}
spec:
  version: v1
  agents: [{{name: default}}]
  resources: [{{name: held}}]
"""


async def run_is(api: Api, tenant: Tenant, run_id: str, status: str) -> None:
    async def reached() -> bool:
        return (await api.call("GET", f"/v1/runs/{run_id}", token=tenant.viewer)).ok()["status"] == status

    await eventually(reached, within=30, what=f"run {run_id} {status}")


async def test_the_list_and_the_page_follow_a_run_in_progress_without_a_reload(
    console_page: Page, api: Api, tenant: Tenant, gateway_server: GatewayServer, bus: Bus, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    gate.mkdir()
    await create(api, tenant, "held", held(gate), "held-stack")
    page = console_page
    await sign_in(page, tenant.viewer)
    async with running_services(bus, gateway_server.settings, tenant.name, tmp_path / "agent"):
        deploy = (await api.call("POST", "/v1/environments/held/runs", token=tenant.operator,
                                 json={"action": "deploy"})).ok(202)["run_id"]
        await run_is(api, tenant, deploy, "running")
        await page.reload()  # signed in, the page shows the list already
        row = page.get_by_role("row").filter(has=page.get_by_role("link", name="held", exact=True))
        await expect(row).to_contain_text("running")
        (gate / "deploy").touch()
        await run_ends(api, tenant, deploy)
        await expect(row).to_contain_text("deployed")  # the list refreshed itself
        await expect(row).to_contain_text("succeeded")

        destroy = (await api.call("POST", "/v1/environments/held/runs", token=tenant.operator,
                                  json={"action": "destroy"})).ok(202)["run_id"]
        await run_is(api, tenant, destroy, "running")
        await row.get_by_role("link", name="held").click()
        summary = page.locator(".env-summary")
        await expect(summary).to_contain_text("In progress")
        await expect(summary.get_by_role("link", name=destroy)).to_have_attribute("href", f"#/runs/{destroy}")
        history = page.locator("section", has=page.get_by_role("heading", name="Run history"))
        newest = history.get_by_role("row").filter(has_text=destroy)
        await expect(newest).to_contain_text("running")
        (gate / "destroy").touch()
        await run_ends(api, tenant, destroy)
        await expect(summary).to_contain_text("destroyed")  # and so did the page
        await expect(summary).not_to_contain_text("In progress")
        await expect(newest).to_contain_text("succeeded")


def _run_id(page: Page) -> str:
    found = RUN_URL.search(page.url)
    assert found, page.url
    return found[1]
