"""`workflows` schedules through the gateway: the schedule loop, on a clock of the test's, starts a
run of the schedule's tasks on the deployed environment (requested by `schedule/<name>`, purpose
`schedule:<name>`); the tasks read the deployed outputs and the environment stays as it was. A
slot due while the environment is not deployed is consumed and skipped."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from runs_support import THREE_TIER, Api, Clock, gateway_stack, running_services

from trellis_core import subjects
from trellis_core.bus import Bus
from trellis_core.events import RunRequested, decode_run_event
from trellis_core.settings import Settings
from trellis_core.workflow import RunPurpose
from trellis_gateway.schedule_loop import ScheduleRunner

STACK = THREE_TIER + """\
  schedules:
    - name: report
      type: workflows
      cadence: {cronExpression: "0 6 * * *"}
      workflows:
        tasks:
          - name: read
            type: script
            options:
              script:
                script: |
                  echo "host $(resource.db.output.host.value)$ due $(trigger.payload.due)$"
                  echo '{"seen": "$(resource.db.output.host.value)$ $(trigger.payload.due)$"}' > "$TRELLIS_OUTPUTS"
"""
ACTOR = "schedule/report"


@pytest.fixture
async def api(bus: Bus, store_settings: Settings, unique: str) -> AsyncIterator[Api]:
    async with gateway_stack(bus, store_settings, unique) as api:
        yield api


async def test_a_workflows_slot_runs_its_tasks_on_the_deployed_environment_and_leaves_it_as_it_was(
    api: Api, bus: Bus, settings: Settings, tmp_path: Path
) -> None:
    await api.environment("shop", STACK, "stack")
    start = datetime.now(UTC).replace(hour=5, minute=0, second=0, microsecond=0) - timedelta(days=3)
    clock = Clock(start)
    runner = ScheduleRunner(api.gateway, clock)
    await runner.tick()  # syncs the environment's schedules: the first slot is 06:00
    [state] = (await schedules(api, "shop"))["schedules"]
    assert (state["name"], state["type"], state["kind"]) == ("report", "workflows", "cron")

    clock.now = start + timedelta(hours=1, seconds=5)  # due, and the environment was never deployed
    for _ in range(3):
        await runner.tick()
    assert await runs_by(api, ACTOR) == []
    [skipped] = await audited(api, "schedule.skipped")
    assert (skipped["actor"], skipped["target"]) == (ACTOR, "shop")
    assert skipped["detail"]["reason"] == "not deployed: a workflows schedule's tasks run on the deployed environment"
    [state] = (await schedules(api, "shop"))["schedules"]
    assert state["next_due_at"] == _iso(start + timedelta(days=1, hours=1))  # consumed, not retried

    async with running_services(bus, settings, api.tenant, tmp_path):
        deploy = await api.start("shop")
        await api.run_when(deploy, "succeeded", within=60)
        before = await api.json("GET", "/v1/environments/shop", status=200)
        clock.now = start + timedelta(days=1, hours=1, seconds=5)
        await runner.tick()
        await runner.tick()
        [run] = await runs_by(api, ACTOR)
        done = await api.run_when(run["run_id"], "succeeded", within=60)
    due = (start + timedelta(days=1, hours=1)).isoformat()
    assert (done["action"], done["purpose"], done["requested_by"]) == ("deploy", "schedule:report", ACTOR)
    assert [a["id"] for a in done["activities"]] == ["action/report/task/read"]
    assert done["outputs"] == {"report": {"seen": {"value": f"db-deploy {due}"}}}
    after = await api.json("GET", "/v1/environments/shop", status=200)
    assert before["outputs"] == {"db": {"host": {"value": "db-deploy"}}}
    assert after["outputs"] == before["outputs"]
    assert (after["status"], after["last_run_id"]) == ("deployed", deploy)
    [state] = (await schedules(api, "shop"))["schedules"]
    assert state["last_run_id"] == run["run_id"]
    [fired] = await audited(api, "schedule.fire")
    assert (fired["actor"], fired["detail"]["run_id"]) == (ACTOR, run["run_id"])

    msg = await bus.js.get_last_msg(subjects.STREAM_RUNS, subjects.runs_requested(api.tenant))
    request = decode_run_event(msg.data or b"")
    assert isinstance(request, RunRequested)
    assert (request.run_id, request.purpose) == (run["run_id"], RunPurpose(scheduled_tasks="report"))
    assert request.trigger == {"type": "schedule", "schedule": "report", "payload": {"schedule": "report", "due": due}}


async def runs_by(api: Api, actor: str) -> list[dict[str, Any]]:
    listed = await api.json("GET", "/v1/runs", status=200)
    return [r for r in listed["runs"] if r["requested_by"] == actor]


async def schedules(api: Api, environment: str) -> dict[str, Any]:
    answer: dict[str, Any] = await api.json("GET", f"/v1/environments/{environment}/schedules", status=200)
    return answer


async def audited(api: Api, action: str) -> list[dict[str, Any]]:
    audit = await api.json("GET", "/v1/audit", status=200)
    return [e for e in audit["entries"] if e["action"] == action]


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")
