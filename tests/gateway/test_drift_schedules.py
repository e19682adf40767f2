"""`detectDrift` schedules through the gateway: the schedule loop, on a clock of the test's, starts a
drift check requested by `schedule/<name>` when a slot is due; a slot due while the environment is
not deployed is consumed and skipped (audited `schedule.skipped`), not retried. OpenTofu is the
stand-in of drift_support.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from drift_support import STACK, install_stand_in_tofu
from runs_support import Api, Clock, gateway_stack, running_services

from trellis_core import subjects
from trellis_core.bus import Bus
from trellis_core.events import RunRequested, decode_run_event
from trellis_core.settings import Settings
from trellis_gateway.schedule_loop import ScheduleRunner
from trellis_store.api import DueSchedule
from trellis_templates.schedules import EffectiveSchedule

WATCHED = (
    STACK.replace("NOTIFY_FILE", "/dev/null")
    + """\
  schedules:
    - {name: drift-watch, type: detectDrift, cadence: {cronExpression: '0 6 * * *'}}
"""
)
ACTOR = "schedule/drift-watch"


@pytest.fixture
async def api(bus: Bus, store_settings: Settings, unique: str) -> AsyncIterator[Api]:
    async with gateway_stack(bus, store_settings, unique) as api:
        yield api


async def test_a_due_detect_drift_slot_starts_one_drift_check_and_a_slot_while_not_deployed_is_skipped(
    api: Api, bus: Bus, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install_stand_in_tofu(tmp_path, monkeypatch)
    await api.environment("web", WATCHED, "drift-stack")
    start = datetime.now(UTC).replace(hour=5, minute=0, second=0, microsecond=0) - timedelta(days=3)
    clock = Clock(start)
    runner = ScheduleRunner(api.gateway, clock)
    await runner.tick()  # syncs the environment's schedules: the first slot is 06:00
    [state] = (await schedules(api, "web"))["schedules"]
    assert (state["name"], state["type"], state["kind"]) == ("drift-watch", "detectDrift", "cron")
    assert state["next_due_at"] == _iso(start + timedelta(hours=1))

    clock.now = start + timedelta(hours=1, seconds=5)  # due, and the environment was never deployed
    for _ in range(3):
        await runner.tick()
    assert await runs_by(api, ACTOR) == []
    [skipped] = await audited(api, "schedule.skipped")
    assert (skipped["actor"], skipped["target"]) == (ACTOR, "web")
    assert skipped["detail"]["schedule"] == "drift-watch"
    assert skipped["detail"]["due"] == (start + timedelta(hours=1)).isoformat()
    assert "not deployed" in skipped["detail"]["reason"]
    [state] = (await schedules(api, "web"))["schedules"]
    assert state["next_due_at"] == _iso(start + timedelta(days=1, hours=1))  # consumed, not retried
    assert "last_run_id" not in state

    async with running_services(bus, settings, api.tenant, tmp_path / "agent"):
        deploy = await api.start("web")
        await api.run_when(deploy, "succeeded", within=60)
        clock.now = start + timedelta(days=1, hours=1, seconds=5)
        await runner.tick()
        await runner.tick()
        [run] = await runs_by(api, ACTOR)
        done = await api.run_when(run["run_id"], "succeeded", within=60)
        environment = await drift_of(api, "web", run["run_id"])
    assert (done["action"], done["purpose"], done["requested_by"]) == ("deploy", "drift", ACTOR)
    assert {a["id"] for a in done["activities"]} >= {"resource/network/plan", "resource/database/drift-check"}
    assert environment["drift"]["status"] == "drifted"
    assert (environment["status"], environment["last_run_id"]) == ("deployed", deploy)
    [state] = (await schedules(api, "web"))["schedules"]
    assert (state["last_run_id"], state["next_due_at"]) == (run["run_id"], _iso(start + timedelta(days=2, hours=1)))
    [fired] = await audited(api, "schedule.fire")
    assert (fired["actor"], fired["detail"]["run_id"]) == (ACTOR, run["run_id"])
    assert len(await audited(api, "schedule.skipped")) == 1

    msg = await bus.js.get_last_msg(subjects.STREAM_RUNS, subjects.runs_requested(api.tenant))
    request = decode_run_event(msg.data or b"")
    assert isinstance(request, RunRequested)
    assert (request.run_id, request.action, request.purpose.drift) == (run["run_id"], "deploy", True)
    due = (start + timedelta(days=1, hours=1)).isoformat()
    assert request.trigger == {
        "type": "schedule",
        "schedule": "drift-watch",
        "payload": {"schedule": "drift-watch", "due": due},
    }


async def test_a_claimed_drift_check_the_environment_no_longer_allows_is_skipped_not_retried(api: Api) -> None:
    await api.environment("web", WATCHED, "drift-stack")
    due = datetime(2026, 12, 1, 6, 0, tzinfo=UTC)
    item = DueSchedule(
        tenant=api.tenant,
        environment="web",
        reason="unpublished",
        schedule=EffectiveSchedule(name="drift-watch", type="detectDrift", cron="0 6 * * *"),
        last_due_at=due,
        last_run_id="run-recorded-with-the-claim",
    )
    await ScheduleRunner(api.gateway, Clock(due)).publish(item, item.last_run_id, due)  # not deployed: 409
    assert await runs_by(api, ACTOR) == []
    [skipped] = await audited(api, "schedule.skipped")
    assert skipped["detail"]["run_id"] == "run-recorded-with-the-claim"
    assert skipped["detail"]["due"] == due.isoformat()
    assert await audited(api, "schedule.failed") == []


async def runs_by(api: Api, actor: str) -> list[dict[str, Any]]:
    listed = await api.json("GET", "/v1/runs", status=200)
    return [r for r in listed["runs"] if r["requested_by"] == actor]


async def schedules(api: Api, environment: str) -> dict[str, Any]:
    answer: dict[str, Any] = await api.json("GET", f"/v1/environments/{environment}/schedules", status=200)
    return answer


async def audited(api: Api, action: str) -> list[dict[str, Any]]:
    audit = await api.json("GET", "/v1/audit", status=200)
    return [e for e in audit["entries"] if e["action"] == action]


async def drift_of(api: Api, name: str, run_id: str) -> dict[str, Any]:
    """GET the environment once it shows the drift check `run_id`."""
    async with asyncio.timeout(30):
        while True:
            env: dict[str, Any] = await api.json("GET", f"/v1/environments/{name}", status=200, who="viewer")
            if env.get("drift", {}).get("runId") == run_id:
                return env
            await asyncio.sleep(0.05)


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")
