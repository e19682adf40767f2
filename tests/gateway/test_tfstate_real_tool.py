"""A real `tofu` or `terraform` keeps its state in Trellis: a deploy run's init, plan and apply
through the agent's IaC executor against the real gateway and store, then a destroy run in a fresh
workspace (what the 72-hour workspace pruning leaves) that finds the state and destroys it."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest
from gateway_support import Api, GatewayServer, Tenant
from tfstate_support import add_run, end_run

from trellis_agent.executors.base import Workspace, execute
from trellis_agent.executors.iac import IacExecutor
from trellis_agent.executors.process import ProcessExecutor
from trellis_agent.sink import LogStream
from trellis_core import state_credentials
from trellis_core.events import WorkItem
from trellis_core.workflow import Activity, IacSpec, IacStage, IacTool, StateBackend

TOOLS: tuple[tuple[IacTool, str], ...] = (("opentofu", "tofu"), ("terraform", "terraform"))
FOUND = [(tool, path) for tool, name in TOOLS if (path := shutil.which(name))]
pytestmark = pytest.mark.skipif(
    not FOUND, reason="neither `tofu` nor `terraform` is on PATH: the real-tool test needs one"
)

MAIN_TF = """
resource "terraform_data" "marker" {
  input = "kept by trellis"
}
output "marker" {
  value = terraform_data.marker.output
}
"""
ENV, RESOURCE = "web", "marker"


class TextSink:
    def __init__(self) -> None:
        self.parts: list[str] = []

    async def write(self, stream: LogStream, text: str) -> None:
        self.parts.append(text)

    async def system(self, text: str) -> None:
        self.parts.append(text + "\n")

    def text(self) -> str:
        return "".join(self.parts)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


async def run_stages(
    tmp_path: Path, server: GatewayServer, tenant: str, run_id: str, stages: tuple[tuple[IacStage, bool], ...]
) -> str:
    """Run `stages` ((stage, destroy)) of one run in its own, fresh workspace; its whole log."""
    tool, binary = FOUND[0]
    key = state_credentials.state_key(server.callback_key)
    expires = datetime.now(UTC) + timedelta(hours=1)
    credential = state_credentials.mint(key, tenant=tenant, environment=ENV, run_id=run_id, expires_at=expires)
    backend = StateBackend(
        address=state_credentials.state_address(server.url, tenant, ENV, RESOURCE), credential=credential
    )
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    environ = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(home), "CHECKPOINT_DISABLE": "1"}
    iac = IacExecutor(ProcessExecutor(environ=environ))
    sink = TextSink()
    for stage, destroy in stages:
        spec = IacSpec(tool=tool, stage=stage, binary=binary, destroy=destroy, state_backend=backend)
        activity = Activity(id=f"resource/{RESOURCE}/{stage}", kind="container", spec=spec, workspace=RESOURCE)
        work = WorkItem(tenant=tenant, run_id=run_id, environment=ENV, action="deploy", attempt=1, activity=activity)
        workspace = Workspace.for_work(tmp_path / "data", work)
        workspace.root.mkdir(parents=True, exist_ok=True)
        (workspace.root / "main.tf").write_text(MAIN_TF)
        outcome = await execute(iac, work, workspace, sink)
        assert outcome.status == "succeeded", sink.text()
    return sink.text()


async def test_a_real_tool_saves_its_state_in_trellis_and_a_later_destroy_finds_it(
    tmp_path: Path, gateway_server: GatewayServer, tenant: Tenant, database_url: str, api: Api
) -> None:
    await add_run(database_url, tenant.name, "run-deploy", ENV)
    deploy = await run_stages(
        tmp_path, gateway_server, tenant.name, "run-deploy", (("init", False), ("plan", False), ("apply", False))
    )
    assert 'Successfully configured the backend "http"' in deploy, deploy
    shown = (await api.call("GET", f"/v1/environments/{ENV}/state/{RESOURCE}", token=tenant.operator)).ok()
    (resource,) = shown["resources"]
    assert resource["history"][0]["run_id"] == "run-deploy"
    assert "lock" not in resource  # the tool took the lock for plan and apply, and released it
    content = await api.call("GET", f"/v1/environments/{ENV}/state/{RESOURCE}/content", token=tenant.admin)
    assert "kept by trellis" in content.body.decode()
    await end_run(database_url, tenant.name, "run-deploy", "succeeded")

    await add_run(database_url, tenant.name, "run-destroy", ENV)
    destroy = await run_stages(
        tmp_path, gateway_server, tenant.name, "run-destroy", (("init", False), ("plan", True), ("destroy", False))
    )
    assert "1 to destroy" in destroy, destroy
    content = await api.call("GET", f"/v1/environments/{ENV}/state/{RESOURCE}/content", token=tenant.admin)
    assert "kept by trellis" not in content.body.decode()
