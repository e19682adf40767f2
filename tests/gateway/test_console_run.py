"""The console's run page (#/runs/ID) on real runs: the real gateway and store, the in-process
compiler and scheduler and a process agent (runs_support). Nodes follow the run's events without a
reload; a failed activity shows its reason and log; an approval is decided from the page; a run is
cancelled from it; a log is searched, capped and downloaded; the layout (graph.js) and the ANSI
parser (ansi.js) are checked in the browser itself."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from console_support import assert_accessible, sign_in
from gateway_support import GatewayServer
from playwright.async_api import Page, expect
from runs_support import ADMIN_TOKEN, CALLBACK_KEY, GATE, SLOW, THREE_TIER, Api, gated, gateway_stack, running_services

from trellis_compiler.service import by_reference
from trellis_core.bus import Bus
from trellis_core.events import ActivityCompleted, ActivityStarted, Event, RunCompiled, RunStarted
from trellis_core.ids import new_run_id
from trellis_core.settings import Settings
from trellis_core.workflow import Activity, ContainerSpec, TemplateRef, Workflow

FAILING = """\
apiVersion: trellis.dev/v1
kind: ResourceTemplate
metadata: {name: broken}
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
                echo "about to fail"
                echo "disk full on /dev/sda" >&2
                exit 3
---
apiVersion: trellis.dev/v1
kind: ResourceTemplate
metadata: {name: after}
spec:
  provider: custom
  providerOptions:
    custom:
      tasks: [{name: make, type: script, options: {script: {script: "echo never"}}}]
---
apiVersion: trellis.dev/v1
kind: EnvironmentTemplate
metadata: {name: failing-stack}
spec:
  version: v1
  agents: [{name: default}]
  resources: [{name: broken}, {name: after, dependsOn: [{name: broken}]}]
"""

# 5,200 plain lines, then colours (SGR 31, 1;32, 0) and a line to search for: 5,203 lines.
LOUD = """\
apiVersion: trellis.dev/v1
kind: ResourceTemplate
metadata: {name: loud}
spec:
  provider: custom
  providerOptions:
    custom:
      tasks:
        - name: talk
          type: script
          options:
            script:
              script: |
                seq 1 5200 | sed 's/^/line /'
                printf '\\033[31mred alert\\033[0m plain tail\\n'
                printf '\\033[1;32mbold green\\033[0m\\n'
                echo "needle in the haystack"
---
apiVersion: trellis.dev/v1
kind: EnvironmentTemplate
metadata: {name: loud-stack}
spec:
  version: v1
  agents: [{name: default}]
  resources: [{name: loud}]
"""

MARKER = "window.__trellisMarker"
TIER = 50  # resources side by side in a big run


def big_workflow(environment: str, resources: int) -> Workflow:
    """`resources` resources in tiers of TIER, each plan -> apply -> output, each plan after the
    outputs of two resources of the tier before; an onInit hook first and an onCompletion last."""
    spec = ContainerSpec(command=("true",))
    hello = Activity(id="environment/on-init/hello", kind="container", stage="on-init", spec=spec)
    acts = [hello]
    for i in range(resources):
        tier, slot = divmod(i, TIER)
        name = f"r{tier}x{slot}"
        before = tuple(f"resource/r{tier - 1}x{(slot + k) % TIER}/output" for k in (0, 1)) if tier else (hello.id,)
        for stage, deps in (("plan", before), ("apply", (f"resource/{name}/plan",)),
                            ("output", (f"resource/{name}/apply",))):  # fmt: skip
            acts.append(Activity(id=f"resource/{name}/{stage}", kind="container", resource=name, stage=stage,
                                 spec=spec, depends_on=deps))  # fmt: skip
    every = tuple(a.id for a in acts)
    acts.append(Activity(id="environment/on-completion/bye", kind="container", stage="on-completion", spec=spec,
                         depends_on=every, when="always"))  # fmt: skip
    return Workflow(environment=environment, template=TemplateRef(name="big", version="v1"), action="deploy",
                    activities=tuple(acts))  # fmt: skip


async def publish_big_run(bus: Bus, tenant: str, environment: str, resources: int, *, done: int) -> str:
    """A big run on the bus as the services publish it: compiled (the workflow by reference),
    started, and its first `done` activities started and completed. Its id."""
    ids: dict[str, Any] = {"tenant": tenant, "run_id": new_run_id()}
    wf = big_workflow(environment, resources)
    compiled = await by_reference(bus, RunCompiled(**ids, workflow=wf, requested_by="ana"))
    await bus.publish_event(compiled)
    await bus.publish_event(RunStarted(**ids))
    finished = wf.activities[:done]
    for kind in (ActivityStarted, ActivityCompleted):
        events: list[Event] = [
            ActivityStarted(**ids, activity_id=a.id, attempt=1, agent="agent-1") if kind is ActivityStarted
            else ActivityCompleted(**ids, activity_id=a.id, attempt=1, exit_code=0)
            for a in finished
        ]  # fmt: skip
        for start in range(0, len(events), 200):
            await asyncio.gather(*(bus.publish_event(e) for e in events[start : start + 200]))
    return str(ids["run_id"])


async def projected(api: Api, run_id: str, activities: int, succeeded: int, within: float = 60.0) -> None:
    """Wait until GET /v1/runs/ID shows the run's activities and how many succeeded."""
    async with asyncio.timeout(within):
        while True:
            async with api.call("GET", f"/v1/runs/{run_id}") as response:
                if response.status == 200:
                    rows = (await response.json())["activities"]
                    if len(rows) == activities and sum(a["status"] == "succeeded" for a in rows) == succeeded:
                        return
            await asyncio.sleep(0.2)


@pytest.fixture
async def api(bus: Bus, store_settings: Settings, unique: str) -> AsyncIterator[Api]:
    """The run routes' own view of the gateway (overrides conftest's `api`): see runs_support."""
    async with gateway_stack(bus, store_settings, unique) as api:
        yield api


@pytest.fixture
def gateway_server(api: Api) -> GatewayServer:
    """The gateway `console_page` opens: the run stack's (overrides conftest's)."""
    return GatewayServer(url=api.url, admin_token=ADMIN_TOKEN, callback_key=CALLBACK_KEY, settings=api.gateway.settings)


async def open_run(page: Page, token: str, run_id: str) -> None:
    """Sign in, leave a marker in the window, then go to the run page through the hash only."""
    await sign_in(page, token)
    await page.evaluate(f"{MARKER} = 'still here'")
    await page.evaluate("(hash) => { location.hash = hash; }", f"#/runs/{run_id}")
    await expect(page.get_by_role("heading", level=1)).to_contain_text(" of ")


async def assert_never_reloaded(page: Page) -> None:
    assert await page.evaluate(MARKER) == "still here"
    assert await page.evaluate("performance.getEntriesByType('navigation').length") == 1


def node(page: Page, activity: str) -> Any:
    return page.locator(f'.rg-node[data-activity="{activity}"]')


def run_status(page: Page) -> Any:
    return page.locator(".run-status [data-status]")


async def test_a_run_page_opened_before_compilation_follows_the_run_to_success_without_a_reload(
    api: Api, bus: Bus, settings: Settings, tmp_path: Path, console_page: Page
) -> None:
    page = console_page
    await api.environment("web", THREE_TIER, "stack")
    run_id = await api.start("web")  # no compiler yet: the page opens on a requested run
    await open_run(page, api.tokens["viewer"], run_id)
    await expect(run_status(page)).to_have_attribute("data-status", "requested")
    await expect(page.get_by_text("The run has not been compiled yet.")).to_be_visible()
    await expect(page.get_by_role("button", name="Cancel run")).to_have_count(0)  # a viewer cannot cancel
    await assert_accessible(page, "the run page of a run not compiled yet")
    async with running_services(bus, settings, api.tenant, tmp_path):
        for activity in ("environment/on-init/hello", "resource/net/task/make", "resource/db/task/make",
                         "resource/app/task/make"):  # fmt: skip
            await expect(node(page, activity)).to_have_attribute("data-status", "succeeded")
            await expect(node(page, activity)).to_have_attribute("aria-label", f"{activity}: succeeded")
        await expect(run_status(page)).to_have_attribute("data-status", "succeeded")
    await node(page, "resource/db/task/make").focus()
    await page.keyboard.press("Enter")
    panel = page.get_by_role("complementary")
    await expect(panel.get_by_role("heading", name="resource/db/task/make")).to_be_focused()
    await expect(panel.locator(".outputs")).to_contain_text('"host": "db-deploy"')  # from the refetched run
    await expect(panel.get_by_role("region", name="Log lines of resource/db/task/make")).to_be_visible()
    assert "activity=resource%2Fdb%2Ftask%2Fmake" in page.url
    await assert_never_reloaded(page)


async def test_a_failed_activity_shows_its_reason_and_log_and_what_it_skipped(
    api: Api, bus: Bus, settings: Settings, tmp_path: Path, console_page: Page
) -> None:
    page = console_page
    await api.environment("web", FAILING, "failing-stack")
    async with running_services(bus, settings, api.tenant, tmp_path):
        run_id = await api.start("web")
        await api.run_when(run_id, "failed")
    await open_run(page, api.tokens["viewer"], run_id)
    await expect(run_status(page)).to_have_attribute("data-status", "failed")
    await expect(node(page, "resource/after/task/make")).to_have_attribute("data-status", "skipped")
    await page.get_by_role("button", name="resource/broken/task/make: failed").click()
    panel = page.get_by_role("complementary")
    await expect(panel.locator(".reason")).to_contain_text("exited with code 3")
    await expect(panel.locator(".panel-facts")).to_contain_text("Exit code3")
    log = panel.get_by_role("region", name="Log lines of resource/broken/task/make")
    await expect(log).to_contain_text("disk full on /dev/sda")
    await expect(log).to_contain_text("about to fail")
    await expect(panel.get_by_role("status").filter(has_text="End of the log")).to_be_visible()
    await assert_accessible(page, "the run page of a failed run, an activity's panel open")
    await panel.get_by_role("button", name="Close").click()
    await expect(node(page, "resource/broken/task/make")).to_be_focused()


async def test_a_waiting_approval_is_refused_to_a_viewer_and_approved_by_an_operator(
    api: Api, bus: Bus, settings: Settings, tmp_path: Path, console_page: Page
) -> None:
    page = console_page
    await api.environment("web", gated(""), "gated-stack")  # no approver listed: operators decide
    async with running_services(bus, settings, api.tenant, tmp_path):
        run_id = await api.start("web")
        await open_run(page, api.tokens["viewer"], run_id)
        await expect(node(page, GATE)).to_have_attribute("data-status", "waiting")
        await page.get_by_role("button", name=f"review {GATE}").click()
        panel = page.get_by_role("complementary")
        await panel.get_by_role("button", name="Approve").click()
        await expect(panel.get_by_role("alert")).to_contain_text("operator or admin")
        await expect(node(page, GATE)).to_have_attribute("data-status", "waiting")

        await page.get_by_role("button", name="Sign out").click()
        await open_run(page, api.tokens["operator"], run_id)
        await node(page, GATE).click()
        await expect(panel.get_by_role("heading", name="Decision")).to_be_visible()
        await assert_accessible(page, "the run page with an approval waiting")
        await panel.get_by_label("Comment (optional)").fill("looks good")
        await panel.get_by_role("button", name="Approve").click()
        await expect(node(page, GATE)).to_have_attribute("data-status", "succeeded")
        await expect(panel.get_by_role("heading", name="Decision")).to_be_hidden()
        await expect(node(page, "resource/hello/task/say")).to_have_attribute("data-status", "succeeded")
        await expect(run_status(page)).to_have_attribute("data-status", "succeeded")
        await expect(page.get_by_role("region", name="Waiting approvals")).to_be_hidden()
    await assert_never_reloaded(page)
    events = await api.events(run_id)
    decided = next(e.json() for e in events if e.event == "approval.decided")
    assert (decided["decided_by"], decided["comment"]) == ("oli@example.com", "looks good")


async def test_an_operator_cancels_a_slow_run_whose_log_streams_live(
    api: Api, bus: Bus, settings: Settings, tmp_path: Path, console_page: Page
) -> None:
    page = console_page
    await api.environment("web", SLOW, "slow-stack")
    async with running_services(bus, settings, api.tenant, tmp_path):
        run_id = await api.start("web")
        await open_run(page, api.tokens["operator"], run_id)
        wait = node(page, "resource/slow/task/wait")
        await expect(wait).to_have_attribute("data-status", "running")
        await wait.click()
        log = page.get_by_role("region", name="Log lines of resource/slow/task/wait")
        await expect(log).to_contain_text("started")  # streamed while the activity runs
        await page.get_by_role("button", name="Cancel run").click()
        await page.get_by_label("Reason (optional)").fill("not needed any more")
        await page.get_by_role("button", name="Yes, cancel it").click()
        await expect(run_status(page)).to_have_attribute("data-status", "cancelled")
        await expect(wait).to_have_attribute("data-status", "cancelled")
        await expect(page.get_by_role("button", name="Cancel run")).to_be_hidden()
        await expect(
            page.get_by_role("complementary").get_by_text("End of the log: the run cancelled.")
        ).to_be_visible()
    run = await api.run_when(run_id, "cancelled")
    assert "not needed any more" in json.dumps(run)
    await assert_never_reloaded(page)


async def test_a_long_log_is_capped_searched_coloured_and_downloaded_whole(
    api: Api, bus: Bus, settings: Settings, tmp_path: Path, console_page: Page
) -> None:
    page = console_page
    await api.environment("web", LOUD, "loud-stack")
    async with running_services(bus, settings, api.tenant, tmp_path):
        run_id = await api.start("web")
        await api.run_when(run_id, "succeeded")
    await open_run(page, api.tokens["viewer"], run_id)
    await node(page, "resource/loud/task/talk").click()
    panel = page.get_by_role("complementary")
    log = panel.get_by_role("region", name="Log lines of resource/loud/task/talk")
    await expect(panel.get_by_text("Showing the last 5,000 of 5,203 lines")).to_be_visible()
    await expect(log.locator(".log-line")).to_have_count(5000)
    await expect(log.locator(".ansi-red")).to_have_text("red alert")
    await expect(log.locator(".ansi-green.ansi-bold")).to_have_text("bold green")
    assert "\x1b" not in await log.inner_text()
    at_bottom = "(el) => el.scrollHeight - el.scrollTop - el.clientHeight < 30"
    assert await log.evaluate(at_bottom)  # following: the newest line in view
    await log.evaluate("(el) => { el.scrollTop = 0; }")  # the reader scrolls up: following stops
    await expect(panel.get_by_label("Follow")).not_to_be_checked()
    await panel.get_by_label("Follow").check()
    assert await log.evaluate(at_bottom)
    await panel.get_by_label("Search").fill("needle")
    await expect(panel.locator(".log-count")).to_have_text("5,203 lines · 1 matching")
    await expect(log.locator("mark")).to_have_text("needle")
    await panel.get_by_label("Only matching lines").check()
    await expect(log.locator(".log-line:visible")).to_have_count(1)
    async with page.expect_download() as download_info:
        await panel.get_by_role("button", name="Download").click()
    download = await download_info.value
    saved = await asyncio.to_thread(Path(await download.path()).read_text)
    assert download.suggested_filename == f"{run_id}-resource_loud_task_talk.log"
    assert saved.startswith("line 1\nline 2\n")
    assert "\x1b[31mred alert" in saved
    assert saved.endswith("needle in the haystack\n")


async def test_a_run_of_a_thousand_resources_opens_collapsed_and_stays_live(
    api: Api, bus: Bus, console_page: Page
) -> None:
    page = console_page
    run_id = await publish_big_run(bus, api.tenant, "big", 1000, done=1 + 3 * TIER)  # the hook and tier 0
    await projected(api, run_id, 3002, 1 + 3 * TIER)
    await open_run(page, api.tokens["viewer"], run_id)
    groups = page.locator(".rg-group")
    await expect(groups).to_have_count(1000)
    await expect(page.get_by_text("3,002 activities in 1,000 resources; 1,000 collapsed")).to_be_visible()
    await expect(page.locator('.rg-group[data-resource="r0x7"]')).to_have_attribute("data-status", "succeeded")
    await expect(page.locator('.rg-group[data-resource="r0x7"]')).to_have_attribute(
        "aria-label", "Resource r0x7, 3 activities: succeeded, 3 done. Expand"
    )
    await expect(page.locator('.rg-group[data-resource="r19x49"]')).to_have_attribute("data-status", "pending")
    assert await page.locator(".act-row").count() < 60  # the list draws the rows in view, not 3,002
    await page.route(f"**/v1/runs/{run_id}", lambda route: route.abort())  # no refetch: the event alone
    ids = {"tenant": api.tenant, "run_id": run_id, "attempt": 1}
    await bus.publish_event(ActivityStarted(**ids, activity_id="resource/r1x3/plan", agent="agent-1"))
    await expect(page.locator('.rg-group[data-resource="r1x3"]')).to_have_attribute("data-status", "running")
    await page.locator('.rg-group[data-resource="r1x3"]').click()  # expand it
    await expect(node(page, "resource/r1x3/plan")).to_be_focused()
    await expect(node(page, "resource/r1x3/plan")).to_have_attribute("data-status", "running")
    await expect(groups).to_have_count(999)
    await page.get_by_label("Filter").fill("r7x3/")
    await expect(page.locator(".act-row")).to_have_count(3)
    await page.get_by_label("Filter").fill("no-such-activity")
    await expect(page.get_by_text("No activity matches the filter.")).to_be_visible()
    await assert_never_reloaded(page)


LAYOUT_CHECKS = """
async () => {
  const g = await import("/console/graph.js");
  const act = (id, resource, deps = []) => ({ id, resource, depends_on: deps, status: "pending" });
  const acts = [
    act("environment/on-init/hi", ""),
    act("resource/a/plan", "a", ["environment/on-init/hi"]),
    act("resource/a/apply", "a", ["resource/a/plan"]),
    act("resource/b/plan", "b", ["environment/on-init/hi"]),
    act("resource/b/apply", "b", ["resource/b/plan", "resource/a/apply"]),
    act("environment/on-completion/bye", "", ["resource/a/apply", "resource/b/apply"]),
  ];
  const open = g.layout(acts);
  const shut = g.layout(acts, { collapsed: new Set(["a", "b"]) });
  const layerOf = (shape, id) => shape.layers.findIndex((layer) => layer.includes(id));
  // Two units of layer 0 and two of layer 1 whose edges cross in the given order.
  const nodes = ["x1", "x2", "y1", "y2"];
  const preds = new Map([["y1", ["x2"]], ["y2", ["x1"]]]);
  const succs = new Map([["x1", ["y2"]], ["x2", ["y1"]]]);
  const layers = g.orderLayers(nodes, g.longestPathLayers(nodes, preds), preds, succs);
  return {
    layers: open.layers.map((layer) => layer.length),
    units: ["act:environment/on-init/hi", "res:a", "res:b", "act:environment/on-completion/bye"]
      .map((u) => layerOf(open, u)),
    openNodes: open.nodes.filter((n) => n.kind === "activity").length,
    frames: open.frames.map((f) => [f.resource, f.members.length]),
    shutNodes: shut.nodes.map((n) => n.kind + ":" + (n.resource || n.id)),
    shutEdges: shut.edges.length,
    leftToRight: open.nodes.every((n) => n.x >= 0 && n.x + n.w <= open.width),
    aInsideOrder: open.nodes.filter((n) => n.resource === "a").sort((p, q) => p.x - q.x).map((n) => n.label),
    crossingsBefore: g.crossings(["x1", "x2"], ["y1", "y2"], [["x1", "y2"], ["x2", "y1"]]),
    crossingsAfter: g.crossings(layers[0], layers[1], [["x1", "y2"], ["x2", "y1"]]),
    cycle: [...g.longestPathLayers(["p", "q"], new Map([["p", ["q"]], ["q", ["p"]]])).values()].sort(),
    aggregate: [
      g.aggregateStatus(["succeeded", "skipped"]), g.aggregateStatus(["succeeded", "pending"]),
      g.aggregateStatus(["pending", "pending"]), g.aggregateStatus(["succeeded", "failed", "running"]),
      g.aggregateStatus(["succeeded", "waiting"]), g.aggregateStatus(["skipped"]),
    ],
    done: g.finishedCount(["succeeded", "pending", "skipped", "running"]),
  };
}
"""


async def test_the_graph_layout_layers_groups_collapses_and_uncrosses(console_page: Page) -> None:
    page = console_page
    await page.goto("/console/")
    result = await page.evaluate(LAYOUT_CHECKS)
    assert result["layers"] == [1, 1, 1, 1]  # b's apply waits on a's: b's frame comes after a's
    assert result["units"] == [0, 1, 2, 3]
    assert result["openNodes"] == 6
    assert result["frames"] == [["a", 2], ["b", 2]]
    assert result["shutNodes"] == [
        "activity:environment/on-init/hi", "resource:a", "resource:b", "activity:environment/on-completion/bye",
    ]  # fmt: skip
    assert result["shutEdges"] == 5  # hi->a, hi->b, a->b, a->bye, b->bye
    assert result["leftToRight"]
    assert result["aInsideOrder"] == ["plan", "apply"]
    assert (result["crossingsBefore"], result["crossingsAfter"]) == (1, 0)
    assert result["cycle"] == [0, 1]  # a cycle is still laid out
    assert result["aggregate"] == ["succeeded", "running", "pending", "failed", "waiting", "skipped"]
    assert result["done"] == 2


ANSI_CHECKS = """
async () => {
  const a = await import("/console/ansi.js");
  const first = a.parseLine("\\x1b[1;31mERR\\x1b[22m still red\\x1b[0m plain \\x1b[2K\\x1b[94mblue");
  const next = a.parseLine("carried", a.parseLine("\\x1b[33mopen").state);
  return {
    first: first.segments,
    next: next.segments,
    progress: a.parseLine("10%\\r50%\\r100%").segments,
    plain: a.plain("\\x1b[32mok\\x1b[0m \\x1b]0;title\\x07done"),
  };
}
"""


async def test_ansi_colours_become_classes_and_other_escapes_are_dropped(console_page: Page) -> None:
    page = console_page
    await page.goto("/console/")
    result = await page.evaluate(ANSI_CHECKS)
    assert result["first"] == [
        {"text": "ERR", "classes": ["ansi-red", "ansi-bold"]},
        {"text": " still red", "classes": ["ansi-red"]},
        {"text": " plain ", "classes": []},
        {"text": "blue", "classes": ["ansi-bright-blue"]},
    ]
    assert result["next"] == [{"text": "carried", "classes": ["ansi-yellow"]}]
    assert result["progress"] == [{"text": "100%", "classes": []}]
    assert result["plain"] == "ok done"
