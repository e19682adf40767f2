"""Drift checks end to end: POST /v1/environments/{name}/drift on the real gateway, store, compiler,
scheduler and a process agent. OpenTofu is not installed here: a shell script named `tofu` stands
in for it (drift_support.py: a deploy's plan, apply and outputs; a drift plan that exits 2 and
shows a plan document in which the VPC drifted and its `vpc_id` output would change)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from drift_support import STACK, install_stand_in_tofu
from runs_support import Api, gateway_stack, running_services

from trellis_core.bus import Bus
from trellis_core.settings import Settings


@pytest.fixture
async def api(bus: Bus, store_settings: Settings, unique: str) -> AsyncIterator[Api]:
    async with gateway_stack(bus, store_settings, unique) as api:
        yield api


@pytest.fixture
def stand_in_tofu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The directory of the `tofu` stand-in, first on the PATH the process agent passes on."""
    return install_stand_in_tofu(tmp_path, monkeypatch)


async def finished(api: Api, run_id: str, within: float = 60.0) -> dict[str, Any]:
    """`GET /v1/runs/{id}` once the run has ended, asserted successful (else its document is shown)."""
    async with asyncio.timeout(within):
        while True:
            run: dict[str, Any] = await api.json("GET", f"/v1/runs/{run_id}", status=200)
            if run["status"] in ("succeeded", "failed", "cancelled", "rejected"):
                assert run["status"] == "succeeded", json.dumps(run, indent=1)
                return run
            await asyncio.sleep(0.05)


async def drift_of(api: Api, name: str, run_id: str, within: float = 30.0) -> dict[str, Any]:
    """GET the environment once it shows the drift check `run_id`."""
    async with asyncio.timeout(within):
        while True:
            env: dict[str, Any] = await api.json("GET", f"/v1/environments/{name}", status=200, who="viewer")
            if env.get("drift", {}).get("runId") == run_id:
                return env
            await asyncio.sleep(0.05)


async def test_a_drift_check_records_drift_lists_downstream_resources_and_notifies(
    api: Api, bus: Bus, settings: Settings, tmp_path: Path, stand_in_tofu: Path
) -> None:
    notified = tmp_path / "notified.txt"
    await api.environment("web", STACK.replace("NOTIFY_FILE", str(notified)), "drift-stack")
    async with running_services(bus, settings, api.tenant, tmp_path / "agent"):
        deploy = await api.start("web")
        await finished(api, deploy)
        deployed = await api.json("GET", "/v1/environments/web", status=200)

        drift = await api.json("POST", "/v1/environments/web/drift", status=202, who="operator")
        run = await finished(api, drift["run_id"])
        env = await drift_of(api, "web", drift["run_id"])
        assert notified.read_text() == "drift in web\n"

        (stand_in_tofu / "in-sync").touch()
        notified.unlink()
        again = await api.json("POST", "/v1/environments/web/drift", status=202, who="operator")
        second = await finished(api, again["run_id"])
        in_sync = await drift_of(api, "web", again["run_id"])

    stages = {a["id"]: a["status"] for a in run["activities"]}
    assert stages == {
        "resource/network/init": "succeeded",
        "resource/network/plan": "succeeded",
        "resource/database/drift-check": "succeeded",
        "environment/on-drift/notify": "succeeded",
    }
    assert run["purpose"] == "drift"
    assert (env["status"], env["outputs"], env["last_run_id"]) == ("deployed", deployed["outputs"], deploy)
    report = env["drift"]
    assert report["status"] == "drifted"
    assert report["checkedAt"]
    by_name = {r["name"]: r for r in report["resources"]}
    assert by_name["network"] == {
        "name": "network",
        "status": "drifted",
        "summary": "1 resource(s) differ: aws_vpc.main; outputs that would change: vpc_id",
        "changedResources": ["aws_vpc.main"],
        "changedOutputs": ["vpc_id"],
        "impacted": ["app", "database"],  # database reads vpc_id, app reads database's dsn; cache nothing
    }
    assert by_name["database"]["status"] == "in-sync"
    assert (by_name["app"]["status"], by_name["cache"]["status"]) == ("not-checked", "not-checked")

    assert {a["id"]: a["status"] for a in second["activities"]}["environment/on-drift/notify"] == "skipped"
    assert not notified.exists()
    assert in_sync["drift"]["status"] == "in-sync"
    assert [r["status"] for r in in_sync["drift"]["resources"]] == ["not-checked", "not-checked", "in-sync",
                                                                    "in-sync"]


async def test_a_drift_check_needs_a_deployed_environment(api: Api) -> None:
    await api.environment("fresh", STACK.replace("NOTIFY_FILE", "/dev/null"), "drift-stack")
    refused = await api.json("POST", "/v1/environments/fresh/drift", status=409, who="operator")
    assert "is not deployed" in json.dumps(refused)
    await api.json("POST", "/v1/environments/nowhere/drift", status=404, who="operator")
    await api.json("POST", "/v1/environments/fresh/drift", status=403, who="viewer")
    shown = await api.json("GET", "/v1/environments/fresh", status=200)
    assert "drift" not in shown
