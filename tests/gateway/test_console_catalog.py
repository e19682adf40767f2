"""The console's catalog and launch form in chromium, on the real gateway and store: the catalog
lists the published templates; an operator launches an environment through the form and lands on
its run, which the in-process services run to success; the API's errors show beside the fields
they name; an existing environment is updated only when asked; a viewer may not launch."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from console_support import assert_accessible, sign_in
from gateway_support import SOURCES, Api, Tenant, eventually
from playwright.async_api import Page, expect
from runs_support import running_services

from trellis_core.bus import Bus
from trellis_core.settings import Settings

pytestmark = pytest.mark.timeout(120)

RUN_URL = re.compile(r"#/runs/([0-9a-f-]+)$")
TAGGED = """\
apiVersion: trellis.dev/v1
kind: EnvironmentTemplate
metadata: {name: tagged, description: Tags given as JSON}
spec:
  version: v1
  agents: [{name: default}]
  resources: [{name: box}]
  variables:
    - {name: tags, valueType: json, value: {env: dev}, options: {description: Labels for every resource}}
"""


def run_id_of(page: Page) -> str:
    found = RUN_URL.search(page.url)
    assert found, page.url
    return found[1]


async def test_the_catalog_lists_the_published_templates_with_a_launch_link(
    console_page: Page, published: Tenant
) -> None:
    page = console_page
    await sign_in(page, published.operator)
    await page.get_by_role("navigation", name="Main").get_by_role("link", name="Catalog").click()
    await expect(page.get_by_role("heading", name="Catalog", level=1)).to_be_visible()
    headings = page.get_by_role("heading", level=2)
    await expect(headings).to_have_text(["Environment templates", "Resource templates"])
    shop = page.get_by_role("article", name="shop")
    await expect(shop).to_contain_text("A shop")
    await expect(shop.get_by_role("row")).to_have_count(2)  # the header and v1
    launch = shop.get_by_role("link", name="Launch shop v1")
    await expect(launch).to_have_attribute("href", "#/catalog/shop/v1")
    resources = page.get_by_role("region", name="Resource templates")
    await expect(resources.get_by_role("row", name=re.compile("box"))).to_contain_text("A box")
    await assert_accessible(page, "the catalog")
    await launch.click()
    await expect(page.get_by_role("heading", name="Launch shop v1")).to_be_visible()


async def test_a_viewer_sees_the_catalog_but_no_launch_link_nor_form(console_page: Page, published: Tenant) -> None:
    page = console_page
    await sign_in(page, published.viewer)
    await page.goto("/console/#/catalog")
    await expect(page.get_by_role("article", name="shop")).to_contain_text("A shop")
    await expect(page.get_by_role("link", name=re.compile("^Launch"))).to_have_count(0)
    await page.goto("/console/#/catalog/shop/v1")
    await expect(page.get_by_role("heading", name="Launch shop v1")).to_be_visible()
    await expect(page.locator("main")).to_contain_text("Your role (viewer) may not launch environments")
    await expect(page.locator("form")).to_have_count(0)


async def test_an_operator_launches_an_environment_and_its_run_succeeds(
    console_page: Page, api: Api, published: Tenant, bus: Bus, settings: Settings, tmp_path: Path
) -> None:
    page = console_page
    async with running_services(bus, settings, published.name, tmp_path):
        await sign_in(page, published.operator)
        await page.goto("/console/#/catalog")
        await page.get_by_role("link", name="Launch shop v1").click()
        await expect(page.get_by_role("heading", name="Launch shop v1")).to_be_visible()
        await expect(page.get_by_label("team")).to_have_attribute("required", "")
        region = page.get_by_label("region")
        await expect(region).to_have_value("eu-west-1")  # the template's value, preselected
        await expect(region.locator("option")).to_have_text(["eu-west-1", "us-east-1"])
        owner = page.get_by_label("owner")
        await expect(owner).to_have_value("platform")
        await expect(owner).not_to_be_editable()
        password = page.get_by_label("password")
        await expect(password).to_have_attribute("type", "password")
        await expect(password).to_have_attribute("autocomplete", "off")
        await expect(password).to_have_value("")
        await assert_accessible(page, "the launch form")

        await page.get_by_label("Environment name").fill("web")
        await page.get_by_label("team").fill("a-team")
        await region.select_option("us-east-1")
        await password.fill("typed-s3cret")
        await page.get_by_role("button", name="Launch").click()
        await expect(page).to_have_url(RUN_URL)
        run_id = run_id_of(page)

        async def succeeded() -> bool:
            run = (await api.call("GET", f"/v1/runs/{run_id}", token=published.viewer)).ok()
            assert run["status"] not in ("failed", "rejected", "cancelled"), run
            return bool(run["status"] == "succeeded")

        await eventually(succeeded, within=60, what=f"run {run_id} succeeded")
    run = (await api.call("GET", f"/v1/runs/{run_id}", token=published.viewer)).ok()
    assert (run["environment"], run["action"]) == ("web", "deploy")
    assert run["requested_by"] == f"operator@{published.name}.example"
    env = (await api.call("GET", "/v1/environments/web", token=published.viewer)).ok()
    assert env["template"] == {"name": "shop", "version": "v1"}
    assert env["status"] == "deployed"
    # Only what was changed from the template's values, the sensitive one sealed.
    assert env["variables"] == {"team": "a-team", "region": "us-east-1", "password": "********"}
    assert env["sensitive"] == ["password"]


async def test_a_bad_value_shows_the_apis_error_beside_its_field(console_page: Page, api: Api, tenant: Tenant) -> None:
    sources = [*SOURCES, {"path": "tagged.yaml", "text": TAGGED}]
    (await api.call("POST", "/v1/templates", token=tenant.operator, json={"sources": sources})).ok(201)
    page = console_page
    await sign_in(page, tenant.operator)
    await page.goto("/console/#/catalog/tagged/v1")
    tags = page.get_by_label("tags")
    await expect(tags).to_have_value('{"env": "dev"}')
    assert await tags.evaluate("el => el.tagName") == "TEXTAREA"
    await page.get_by_label("Environment name").fill("qa")
    await tags.fill('{"env": qa')
    await page.get_by_role("button", name="Launch").click()

    error = page.locator("#var-tags-error")
    await expect(error).to_contain_text("variable 'tags' is not valid JSON")
    await expect(tags).to_have_attribute("aria-invalid", "true")
    await expect(tags).to_have_attribute("aria-describedby", re.compile(r"\bvar-tags-error\b"))
    summary = page.get_by_role("alert")
    await expect(summary).to_contain_text("The environment was not launched")
    await expect(summary).to_contain_text("tags: variable 'tags' is not valid JSON")
    await expect(summary).to_be_focused()
    await assert_accessible(page, "the launch form showing an error")
    (await api.call("GET", "/v1/environments/qa", token=tenant.viewer)).problem(404)  # nothing was created

    await summary.get_by_role("link", name=re.compile("^tags:")).click()
    await expect(tags).to_be_focused()
    await expect(page).to_have_url(re.compile(r"#/catalog/tagged/v1$"))  # the link moved focus, not the page
    await tags.fill('{"env": "qa"}')
    await page.get_by_role("button", name="Launch").click()
    await expect(page).to_have_url(RUN_URL)
    env = (await api.call("GET", "/v1/environments/qa", token=tenant.viewer)).ok()
    assert env["variables"] == {"tags": '{"env": "qa"}'}
    run = (await api.call("GET", f"/v1/runs/{run_id_of(page)}", token=tenant.viewer)).ok()
    assert run["environment"] == "qa"


async def test_a_name_taken_is_updated_with_if_match_only_when_asked(
    console_page: Page, api: Api, published: Tenant
) -> None:
    body = {"template": {"name": "shop", "version": "v1"}, "variables": {"team": "old", "password": "kept"}}
    (await api.call("PUT", "/v1/environments/taken", token=published.operator, json=body)).ok(201)
    page = console_page
    await sign_in(page, published.operator)
    await page.goto("/console/#/catalog/shop/v1")
    await page.get_by_label("Environment name").fill("taken")
    await page.get_by_label("team").fill("new")
    await page.get_by_role("button", name="Launch").click()
    summary = page.get_by_role("alert")
    await expect(summary).to_contain_text("an environment named taken exists already (template shop v1, new)")
    await expect(page.locator("#env-name-error")).to_contain_text("exists already")
    unchanged = (await api.call("GET", "/v1/environments/taken", token=published.viewer)).ok()
    assert unchanged["variables"]["team"] == "old"
    assert unchanged["last_run_id"] == ""

    await summary.get_by_role("button", name="Update taken with these values and deploy it").click()
    await expect(page).to_have_url(RUN_URL)
    updated = (await api.call("GET", "/v1/environments/taken", token=published.viewer)).ok()
    assert updated["variables"] == {"team": "new", "password": "********"}  # the sealed one kept
    run = (await api.call("GET", f"/v1/runs/{run_id_of(page)}", token=published.viewer)).ok()
    assert (run["environment"], run["action"]) == ("taken", "deploy")


ZONED = """\
apiVersion: trellis.dev/v1
kind: EnvironmentTemplate
metadata: {name: zoned, description: Several zones chosen}
spec:
  version: v1
  agents: [{name: default}]
  resources: [{name: box}]
  variables:
    - name: zones
      value: [a]
      options: {override: {type: restricted, restrictedValues: [a, b, c], multiSelect: true}}
"""


async def test_a_multi_select_variable_is_a_multiple_select_sent_as_a_json_array(
    console_page: Page, api: Api, tenant: Tenant
) -> None:
    sources = [*SOURCES, {"path": "zoned.yaml", "text": ZONED}]
    (await api.call("POST", "/v1/templates", token=tenant.operator, json={"sources": sources})).ok(201)
    form = (await api.call("GET", "/v1/environment-templates/zoned/v1", token=tenant.viewer)).ok()
    assert form["variables"][0]["multi_select"] is True
    assert form["variables"][0]["default"] == '["a"]'
    page = console_page
    await sign_in(page, tenant.operator)
    await page.goto("/console/#/catalog/zoned/v1")
    zones = page.get_by_label("zones")
    await expect(zones).to_have_attribute("multiple", "")
    await expect(zones).to_have_values(["a"])  # the template's choice, preselected
    await page.get_by_label("Environment name").fill("multi")
    await zones.select_option(["a", "c"])
    await page.get_by_role("button", name="Launch").click()
    await expect(page).to_have_url(RUN_URL)
    env = (await api.call("GET", "/v1/environments/multi", token=tenant.viewer)).ok()
    assert env["variables"] == {"zones": '["a","c"]'}
