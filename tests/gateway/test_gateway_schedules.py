"""Schedules through the gateway: the schedule loop, driven by a clock of the test's, fires a due
deploy once as an ordinary run requested by `schedule/<name>`; a time to live starts at the
deploy, is announced, extended within its limits and ends in a destroy run; `GET .../schedules`,
`POST .../extend` and `trellis env extend`."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from runs_support import HELLO, Api, Clock, gateway_stack, running_services

from trellis_core import subjects
from trellis_core.bus import Bus
from trellis_core.events import RunRequested, decode_run_event
from trellis_core.settings import Settings
from trellis_gateway.schedule_loop import ScheduleRunner, run_schedules
from trellis_gateway.schedule_sync import sync_stale

SCHEDULED = (
    HELLO
    + """\
  schedules:
    - {name: nightly-deploy, type: deploy, cadence: {cronExpression: '0 2 * * *'}}
"""
)
TTL_ONLY = (
    HELLO.replace("hello-stack", "ttl-stack")
    + """\
  schedules:
    - name: ttl
      type: destroy
      cadence: {timeToLive: 8h}
      optOutOptions: {allowOptOut: true, maxAllowedDuration: 4h, maxAllowedTimes: 2}
"""
)


@pytest.fixture
async def api(bus: Bus, store_settings: Settings, unique: str) -> AsyncIterator[Api]:
    async with gateway_stack(bus, store_settings, unique) as api:
        yield api


@asynccontextmanager
async def schedule_loop(api: Api, clock: Clock) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(
        run_schedules(api.gateway, stop, clock=clock, max_sleep=0.1, lease_key=f"schedules-{api.tenant}")
    )
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=15)


async def until(check: Callable[[], Awaitable[Any]], what: str, within: float = 30.0) -> Any:
    """`check()`'s first truthy answer, polled; fails after `within` seconds."""
    try:
        async with asyncio.timeout(within):
            while True:
                found = await check()
                if found:
                    return found
                await asyncio.sleep(0.05)
    except TimeoutError:
        pytest.fail(f"not within {within:g}s: {what}")


async def runs_by(api: Api, actor: str) -> list[dict[str, Any]]:
    listed = await api.json("GET", "/v1/runs", status=200)
    return [r for r in listed["runs"] if r["requested_by"] == actor]


async def schedules(api: Api, environment: str) -> dict[str, Any]:
    answer: dict[str, Any] = await api.json("GET", f"/v1/environments/{environment}/schedules", status=200)
    return answer


async def test_the_loop_fires_a_due_deploy_once_as_a_run_requested_by_the_schedule(
    api: Api, bus: Bus, settings: Settings, tmp_path: Path
) -> None:
    await api.environment("web", SCHEDULED, "hello-stack")
    start = datetime.now(UTC).replace(hour=1, minute=0, second=0, microsecond=0) - timedelta(days=3)
    clock = Clock(start)
    async with schedule_loop(api, clock):
        synced = await until(lambda: _synced(api, "web"), "the loop syncs the environment's schedules")
        [nightly] = synced["schedules"]
        assert (nightly["name"], nightly["next_due_at"]) == ("nightly-deploy", _iso(start + timedelta(hours=1)))
        assert await runs_by(api, "schedule/nightly-deploy") == []
        async with running_services(bus, settings, api.tenant, tmp_path):
            clock.now = start + timedelta(hours=1, seconds=5)
            [run] = await until(lambda: runs_by(api, "schedule/nightly-deploy"), "the due deploy starts")
            done = await api.run_when(run["run_id"], "succeeded")
        assert (done["action"], done["environment"], done["requested_by"]) == (
            "deploy",
            "web",
            "schedule/nightly-deploy",
        )
        await asyncio.sleep(0.5)  # several more ticks at the same time: nothing more is due
        assert len(await runs_by(api, "schedule/nightly-deploy")) == 1
        state = (await schedules(api, "web"))["schedules"][0]
        assert (state["last_run_id"], state["next_due_at"]) == (run["run_id"], _iso(start + timedelta(days=1, hours=1)))
        clock.now = start + timedelta(days=2, hours=5)  # two slots missed: one firing
        await until(lambda: _count(api, "schedule/nightly-deploy", 2), "the missed slots fire once")
        await asyncio.sleep(0.5)
        assert len(await runs_by(api, "schedule/nightly-deploy")) == 2
    audit = await api.json("GET", "/v1/audit", status=200)
    fired = [e for e in audit["entries"] if e["action"] == "schedule.fire"]
    assert [e["actor"] for e in fired] == ["schedule/nightly-deploy"] * 2
    dues = {start + timedelta(hours=1), start + timedelta(days=1, hours=1)}
    assert {e["detail"]["due"] for e in fired} == {due.isoformat() for due in dues}
    msg = await bus.js.get_last_msg(subjects.STREAM_RUNS, subjects.runs_requested(api.tenant))
    request = decode_run_event(msg.data or b"")
    assert isinstance(request, RunRequested)
    assert request.requested_by == "schedule/nightly-deploy"
    assert request.trigger == {
        "type": "schedule",
        "schedule": "nightly-deploy",
        "payload": {"schedule": "nightly-deploy", "due": (start + timedelta(days=1, hours=1)).isoformat()},
    }


async def test_two_replicas_ticking_at_once_fire_a_due_slot_once(api: Api) -> None:
    from trellis_gateway.context import Gateway

    await api.environment("web", SCHEDULED, "hello-stack")
    start = datetime.now(UTC).replace(hour=1, minute=0, second=0, microsecond=0) - timedelta(days=1)
    await sync_stale(api.gateway, start)
    clock = Clock(start + timedelta(hours=1, seconds=1))
    other = Gateway.create(api.bus, api.gateway.settings)  # another replica, its own store client
    try:
        for _ in range(3):
            await asyncio.gather(ScheduleRunner(api.gateway, clock).tick(), ScheduleRunner(other, clock).tick())
    finally:
        await other.store.close()
    [run] = await runs_by(api, "schedule/nightly-deploy")
    assert run["status"] == "requested"  # recorded and published; no compiler runs in this test
    state = (await schedules(api, "web"))["schedules"][0]
    assert state["last_run_id"] == run["run_id"]


async def test_a_cron_schedule_opted_out_of_skips_its_slots_until_the_opt_out_ends(api: Api) -> None:
    optional = SCHEDULED.replace(
        "cadence: {cronExpression: '0 2 * * *'}}",
        "cadence: {cronExpression: '0 2 * * *'}, optOutOptions: {allowOptOut: true, maxAllowedDuration: 1d}}",
    )
    await api.environment("web", optional, "hello-stack")
    now = datetime.now(UTC)
    await sync_stale(api.gateway, now)
    body = {"duration": "1d", "schedule": "nightly-deploy"}
    postponed = await api.json("POST", "/v1/environments/web/extend", status=200, who="operator", json=body)
    until_at = datetime.fromisoformat(postponed["opted_out_until"])
    assert now + timedelta(days=1) <= until_at <= datetime.now(UTC) + timedelta(days=1)
    first = datetime.fromisoformat(postponed["next_due_at"])  # the next 02:00, inside the opt-out
    assert first < until_at
    clock = Clock(first + timedelta(seconds=5))
    runner = ScheduleRunner(api.gateway, clock)
    await runner.tick()
    assert await runs_by(api, "schedule/nightly-deploy") == []  # skipped
    state = (await schedules(api, "web"))["schedules"][0]
    after = datetime.fromisoformat(state["next_due_at"])
    assert after >= until_at
    assert (after.hour, after.minute) == (2, 0)
    clock.now = after + timedelta(seconds=5)
    await runner.tick()
    assert len(await runs_by(api, "schedule/nightly-deploy")) == 1


async def test_a_time_to_live_starts_at_the_deploy_is_extended_announced_and_ends_in_a_destroy(
    api: Api, bus: Bus, settings: Settings, tmp_path: Path
) -> None:
    await api.environment("lab", TTL_ONLY, "ttl-stack")
    clock = Clock(datetime.now(UTC))
    async with schedule_loop(api, clock), running_services(bus, settings, api.tenant, tmp_path):
        synced = await until(lambda: _synced(api, "lab"), "the loop syncs the environment's schedules")
        assert "expires_at" not in synced["schedules"][0]  # no deploy yet: the time to live has not started
        deploy = await api.start("lab")
        finished = (await api.run_when(deploy, "succeeded"))["finished_at"]
        armed = await until(lambda: _expiry(api, "lab"), "the deploy starts the time to live")
        assert armed == datetime.fromisoformat(finished) + timedelta(hours=8)
        extended = await api.json(
            "POST", "/v1/environments/lab/extend", status=200, who="operator", json={"duration": "2h"}
        )
        expiry = datetime.fromisoformat(extended["expires_at"])
        assert expiry == armed + timedelta(hours=2)
        assert extended["optouts"] == 1
        clock.now = expiry - timedelta(minutes=30)
        await until(lambda: _audited(api, "schedule.expiring"), "the expiry is announced")
        clock.now = expiry + timedelta(seconds=1)
        [destroy] = await until(lambda: runs_by(api, "schedule/ttl"), "the expiry starts a destroy")
        done = await api.run_when(destroy["run_id"], "succeeded")
    assert done["action"] == "destroy"
    environment = await api.json("GET", "/v1/environments/lab", status=200)
    assert environment["status"] == "destroyed"
    [announced] = await _audited(api, "schedule.expiring")
    assert announced["detail"]["expires_at"] == expiry.isoformat()


async def test_extend_refuses_beyond_the_limit_an_unknown_environment_and_a_bad_duration(api: Api) -> None:
    await api.environment("lab", TTL_ONLY, "ttl-stack")
    await api.environment("web", SCHEDULED, "hello-stack")
    await sync_stale(api.gateway, datetime.now(UTC))
    path = "/v1/environments/lab/extend"
    ok = await api.json("POST", path, status=200, who="operator", json={"duration": "4h"})
    assert (ok["name"], ok["optouts"]) == ("ttl", 1)
    beyond = await api.json("POST", path, status=422, who="operator", json={"duration": "5h"})
    assert (beyond["path"], beyond["status"]) == ("duration", 422)
    assert "maxAllowedDuration 4h" in beyond["detail"]
    await api.json("POST", path, status=200, who="operator", json={"duration": "1h"})
    third = await api.json("POST", path, status=422, who="operator", json={"duration": "1h"})
    assert "maxAllowedTimes is 2" in third["detail"]
    unknown = await api.json("POST", "/v1/environments/nope/extend", status=404, json={"duration": "1h"})
    assert "no environment 'nope'" in unknown["detail"]
    bad = await api.json("POST", path, status=422, json={"duration": "a while"})
    assert bad["path"] == "duration"
    await api.json("POST", path, status=403, who="viewer", json={"duration": "1h"})
    no_ttl = await api.json("POST", "/v1/environments/web/extend", status=404, json={"duration": "1h"})
    assert "has no timeToLive schedule" in no_ttl["detail"]
    closed = await api.json(
        "POST", "/v1/environments/web/extend", status=422, json={"duration": "1h", "schedule": "nightly-deploy"}
    )
    assert "does not allow opt-outs" in closed["detail"]
    listed = await schedules(api, "lab")
    assert listed["synced"]
    assert listed["schedules"][0]["optouts"] == 2
    await api.json("GET", "/v1/environments/nope/schedules", status=404)


async def test_trellis_env_extend_and_env_schedules_through_the_gateway(api: Api, tmp_path: Path) -> None:
    await api.environment("lab", TTL_ONLY, "ttl-stack")
    await sync_stale(api.gateway, datetime.now(UTC))
    env = {"TRELLIS_GATEWAY_URL": api.url, "TRELLIS_TOKEN": api.tokens["operator"], "TRELLIS_DATA_DIR": str(tmp_path)}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "trellis_cli.main", *args],
            capture_output=True,
            text=True,
            timeout=60,
            env=_clean_env() | env,
            check=False,
        )

    extended = await asyncio.to_thread(cli, "env", "extend", "lab", "2h")
    assert extended.returncode == 0, extended.stderr
    assert "environment lab: schedule ttl starts at the first deploy (extended by 2h)" in extended.stdout
    beyond = await asyncio.to_thread(cli, "env", "extend", "lab", "9h")
    assert beyond.returncode == 1
    assert "maxAllowedDuration 4h" in beyond.stderr
    bad = await asyncio.to_thread(cli, "env", "extend", "lab", "soon")
    assert bad.returncode == 2
    assert "DURATION 'soon' is not a duration" in bad.stderr
    listed = await asyncio.to_thread(cli, "env", "schedules", "lab")
    assert listed.returncode == 0, listed.stderr
    assert "ttl" in listed.stdout
    assert "time to live 8h" in listed.stdout
    assert "1/2 used, each <= 4h" in listed.stdout


def _clean_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("TRELLIS_")}


async def _synced(api: Api, environment: str) -> dict[str, Any] | None:
    listed = await schedules(api, environment)
    return listed if listed["synced"] and listed["schedules"] else None


async def _count(api: Api, actor: str, count: int) -> bool:
    return len(await runs_by(api, actor)) >= count


async def _expiry(api: Api, environment: str) -> datetime | None:
    listed = await schedules(api, environment)
    expires = listed["schedules"][0].get("expires_at") if listed["schedules"] else None
    return datetime.fromisoformat(expires) if expires else None


async def _audited(api: Api, action: str) -> list[dict[str, Any]]:
    audit = await api.json("GET", "/v1/audit", status=200)
    return [e for e in audit["entries"] if e["action"] == action]


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")
