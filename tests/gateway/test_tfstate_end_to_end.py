"""`backendType: system` from template to state: a deploy and a later destroy through the gateway,
the real compiler, scheduler and process agent running a real `tofu` or `terraform`, the state kept
by the gateway's backend; the credential never in a log."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from runs_support import Api, gateway_stack, running_services

from trellis_core.bus import Bus
from trellis_core.settings import Settings

TOOLS = (("opentofu", "tofu"), ("terraform", "terraform"))
FOUND = [(provider, name) for provider, name in TOOLS if shutil.which(name)]
pytestmark = pytest.mark.skipif(
    not FOUND, reason="neither `tofu` nor `terraform` is on PATH: the end-to-end state test needs one"
)

MAIN_TF = """
resource "terraform_data" "marker" {
  input = "kept by trellis"
}
"""

TEMPLATES = """\
apiVersion: trellis.dev/v1
kind: ResourceTemplate
metadata: {name: marker}
spec:
  provider: PROVIDER
  repositoryOptions: {url: REPO, branch: main}
  providerOptions:
    KEY: {backendType: system}
---
apiVersion: trellis.dev/v1
kind: EnvironmentTemplate
metadata: {name: marker-stack}
spec:
  version: v1
  agents: [{name: default}]
  resources: [{name: marker}]
"""


@pytest.fixture
async def api(bus: Bus, store_settings: Settings, unique: str) -> AsyncIterator[Api]:
    async with gateway_stack(bus, store_settings, unique) as api:
        yield api


def module_repo(root: Path) -> Path:
    root.mkdir()
    (root / "main.tf").write_text(MAIN_TF)
    identity = ("-c", "user.name=Trellis Test", "-c", "user.email=test@trellis.invalid")
    for args in (("init", "--quiet", "--initial-branch=main"), ("add", "."), ("commit", "--quiet", "-m", "module")):
        subprocess.run(["git", *identity, *args], cwd=root, check=True, capture_output=True)
    return root


async def test_a_deploy_keeps_its_state_in_trellis_and_the_destroy_finds_it(api: Api, tmp_path: Path) -> None:
    provider, _ = FOUND[0]
    key = "openTofu" if provider == "opentofu" else "terraform"
    repo = module_repo(tmp_path / "module")
    bundle = TEMPLATES.replace("PROVIDER", provider).replace("KEY", key).replace("REPO", str(repo))
    await api.environment("web", bundle, "marker-stack")
    keyed = await Bus.connect(api.settings, name="tfstate-e2e")  # the compiler signs with its callback key
    await keyed.ensure_streams()
    try:
        async with running_services(keyed, api.settings, api.tenant, tmp_path / "agent"):
            deploy = await api.start("web")
            run = await api.run_when(deploy, "succeeded", within=90)
            assert [a["status"] for a in run["activities"]] == ["succeeded"] * len(run["activities"])
            shown = await api.json("GET", "/v1/environments/web/state/marker", status=200, who="operator")
            assert shown["resources"][0]["history"][0]["run_id"] == deploy
            async with api.call("GET", "/v1/environments/web/state/marker/content") as response:
                assert "kept by trellis" in await response.text()

            destroy = await api.start("web", "destroy")
            await api.run_when(destroy, "succeeded", within=90)
            async with api.call("GET", "/v1/environments/web/state/marker/content") as response:
                assert "kept by trellis" not in await response.text()
            for run_id in (deploy, destroy):
                async with api.call("GET", f"/v1/runs/{run_id}/logs", headers={"Accept": "text/plain"}) as response:
                    logs = await response.text()
                assert "tfs1." not in logs
            async with api.call("GET", f"/v1/runs/{destroy}/logs", headers={"Accept": "text/plain"}) as response:
                assert "1 to destroy" in await response.text()
    finally:
        await keyed.close()
