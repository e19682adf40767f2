"""Runs through the gateway over HTTP: started on the real store, compiler, scheduler and a process
agent; listed, shown, cancelled; an idempotency key; roles; and another tenant's run absent."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from runs_support import HELLO, SLOW, Api, gateway_stack, running_services

from trellis_core import subjects
from trellis_core.bus import Bus
from trellis_core.settings import Settings


@pytest.fixture
async def api(bus: Bus, store_settings: Settings, unique: str) -> AsyncIterator[Api]:
    """The run routes' own view of the gateway (overrides conftest's `api`): see runs_support."""
    async with gateway_stack(bus, store_settings, unique) as api:
        yield api


async def test_a_deploy_started_over_http_runs_to_success_and_shows_every_activity(
    api: Api, bus: Bus, settings: Settings, tmp_path: Path
) -> None:
    await api.environment("web", HELLO, "hello-stack")
    async with running_services(bus, settings, api.tenant, tmp_path):
        async with api.call("POST", "/v1/environments/web/runs", who="operator", json={"action": "deploy"}) as r:
            assert r.status == 202, await r.text()
            run_id = (await r.json())["run_id"]
            assert r.headers["Location"] == f"/v1/runs/{run_id}"
        events = await api.events(run_id)
        run = await api.run_when(run_id, "succeeded")
    assert next(e.event for e in events) == "run.compiled"  # run.requested travels on TRELLIS_RUNS
    assert events[-1].event == "run.completed"
    assert events[-1].json()["status"] == "succeeded"
    assert run["environment"] == "web"
    assert run["action"] == "deploy"
    assert run["requested_by"] == "oli@example.com"
    [activity] = run["activities"]
    assert activity["id"] == "resource/hello/task/say"
    assert activity["status"] == "succeeded"
    assert activity["attempts"] == 1
    assert activity["started_at"]
    assert activity["finished_at"]
    listed = await api.json("GET", "/v1/runs?environment=web", status=200, who="viewer")
    assert [r["run_id"] for r in listed["runs"]] == [run_id]
    assert (await api.json("GET", "/v1/runs?environment=other", status=200))["runs"] == []


async def test_the_published_request_is_the_one_the_cli_sends(api: Api, bus: Bus) -> None:
    """Same subject, same dedupe id (`<run>/request`), the bundle plus the stored environment."""
    from trellis_core.events import RunRequested, decode_run_event

    await api.environment("web", HELLO, "hello-stack", {})
    run_id = await api.start("web")
    msg = await bus.js.get_last_msg(subjects.STREAM_RUNS, subjects.runs_requested(api.tenant))
    request = decode_run_event(msg.data or b"")
    assert isinstance(request, RunRequested)
    assert (request.run_id, request.environment, request.action) == (run_id, "web", "deploy")
    assert (msg.headers or {}).get("Nats-Msg-Id") == f"{run_id}/request"
    assert any("hello-stack" in source.text for source in request.sources)
    assert any("kind" in s.text and "Environment" in s.text and '"web"' in s.text for s in request.sources)


async def test_one_idempotency_key_starts_one_run_and_refuses_another_request(api: Api, bus: Bus) -> None:
    await api.environment("web", HELLO, "hello-stack")
    key = {"Idempotency-Key": "deploy-42"}
    first = await api.start("web", headers=key)
    again = await api.start("web", headers=key)
    assert again == first
    info = await bus.js.stream_info(subjects.STREAM_RUNS, subjects_filter=subjects.runs_requested(api.tenant))
    assert sum((info.state.subjects or {}).values()) == 1  # the second publish was a JetStream duplicate
    problem = await api.json("POST", "/v1/environments/web/runs", status=409, json={"action": "destroy"}, headers=key)
    assert problem["status"] == 409
    other = await api.start("web", headers={"Idempotency-Key": "deploy-43"})
    assert other != first
    listed = await api.json("GET", "/v1/runs", status=200)
    assert sorted(r["run_id"] for r in listed["runs"]) == sorted([first, other])


async def test_starting_a_run_needs_an_operator_a_known_environment_and_a_known_action(api: Api) -> None:
    await api.environment("web", HELLO, "hello-stack")
    body = {"action": "deploy"}
    await api.json("POST", "/v1/environments/web/runs", status=403, who="viewer", json=body)
    await api.json("POST", "/v1/environments/web/runs", status=401, who=None, json=body)
    missing = await api.json("POST", "/v1/environments/nope/runs", status=404, json=body)
    assert "nope" in missing["detail"]
    wrong = await api.json("POST", "/v1/environments/web/runs", status=422, json={"action": "explode"})
    assert wrong["path"] == "action"
    await api.json("POST", "/v1/environments/web/runs", status=422, json={"action": "deploy", "force": True})
    assert (await api.json("GET", "/v1/runs", status=200))["runs"] == []
    await api.json("GET", "/v1/runs?limit=0", status=422)
    await api.json("GET", "/v1/runs?limit=ten", status=422)


async def test_a_running_run_is_cancelled_and_a_finished_one_refuses_it(
    api: Api, bus: Bus, settings: Settings, tmp_path: Path
) -> None:
    await api.environment("slow", SLOW, "slow-stack")
    async with running_services(bus, settings, api.tenant, tmp_path):
        run_id = await api.start("slow")
        async with api.sse(f"/v1/runs/{run_id}/events") as reader:
            while (message := await reader.next()) is not None and message.event != "activity.started":
                pass
            await api.json("POST", f"/v1/runs/{run_id}/cancel", status=403, who="viewer")
            accepted = await api.json("POST", f"/v1/runs/{run_id}/cancel", status=202, who="operator")
            assert accepted["run_id"] == run_id
            rest = await reader.until_end()
        assert rest[-1].event == "run.completed"
        assert rest[-1].json()["status"] == "cancelled"
        assert any(m.event == "run.cancel_requested" for m in rest)
        await api.run_when(run_id, "cancelled")
        problem = await api.json("POST", f"/v1/runs/{run_id}/cancel", status=409, who="operator")
        assert "already finished" in problem["detail"]


async def test_another_tenants_run_is_absent_from_every_run_route(api: Api, bus: Bus, unique: str) -> None:
    from trellis_store.api import IssuedToken, TenantCreate

    await api.environment("web", HELLO, "hello-stack")
    run_id = await api.start("web")
    other = await api.gateway.store.ask(TenantCreate(name=f"{unique}x", admin_user="eve@example.com"), IssuedToken)
    assert isinstance(other, IssuedToken)
    api.tokens["eve"] = other.token
    for method, path in [
        ("GET", f"/v1/runs/{run_id}"),
        ("GET", f"/v1/runs/{run_id}/events"),
        ("GET", f"/v1/runs/{run_id}/logs"),
        ("POST", f"/v1/runs/{run_id}/cancel"),
        ("POST", f"/v1/runs/{run_id}/approvals/environment/on-init/gate"),
    ]:
        body = {"decision": "approve"} if "approvals" in path else None
        problem = await api.json(method, path, status=404, who="eve", json=body)
        assert problem["status"] == 404, problem
        assert set(problem) <= {"type", "title", "status", "detail", "path"}, problem
    assert (await api.json("GET", "/v1/runs", status=200, who="eve"))["runs"] == []
    await api.json("POST", "/v1/environments/web/runs", status=404, who="eve", json={"action": "deploy"})
    for path in ("/v1/runs/no-such-run", "/v1/runs/bad.id", "/v1/runs/no-such-run/events"):
        await api.json("GET", path, status=404)


async def test_a_destroy_runs_after_the_deploy_and_runs_list_in_pages(
    api: Api, bus: Bus, settings: Settings, tmp_path: Path
) -> None:
    await api.environment("web", HELLO, "hello-stack")
    async with running_services(bus, settings, api.tenant, tmp_path):
        deployed = await api.start("web")
        assert (await api.events(deployed))[-1].json()["status"] == "succeeded"
        destroyed = await api.start("web", "destroy")
        events = await api.events(destroyed)
    assert events[-1].json()["status"] == "succeeded", [e.data for e in events]
    compiled = next(e.json() for e in events if e.event == "run.compiled")
    assert compiled["workflow"]["action"] == "destroy"
    async with api.call("GET", f"/v1/runs/{destroyed}/logs") as response:
        assert "hello line 1 for destroy" in await response.text()
    listed = await api.json("GET", "/v1/runs?environment=web&limit=1", status=200)
    assert [r["run_id"] for r in listed["runs"]] == [destroyed]
    older = await api.json("GET", f"/v1/runs?environment=web&before={destroyed}", status=200)
    assert [r["run_id"] for r in older["runs"]] == [deployed]


async def test_a_run_recorded_but_never_published_is_published_by_the_retry(api: Api, bus: Bus) -> None:
    """A gateway that died between recording the run and publishing it: the client's retry with
    the same Idempotency-Key answers that run and publishes its request."""
    from trellis_core.events import RunRequested, decode_run_event
    from trellis_core.ids import uuid7
    from trellis_gateway.launch import request_digest
    from trellis_store.api import RunCreate, RunCreated

    await api.environment("web", HELLO, "hello-stack")
    recorded = RunCreate(
        tenant=api.tenant,
        run_id=uuid7(),
        environment="web",
        action="deploy",
        requested_by="oli@example.com",
        idempotency_key="deploy-1",
        request_digest=request_digest("web", "deploy"),
    )
    assert await api.gateway.store.ask(recorded, RunCreated) == RunCreated(run_id=recorded.run_id, created=True)
    info = await bus.js.stream_info(subjects.STREAM_RUNS, subjects_filter=subjects.runs_requested(api.tenant))
    assert not info.state.subjects  # nothing was published
    assert await api.start("web", headers={"Idempotency-Key": "deploy-1"}) == recorded.run_id
    msg = await bus.js.get_last_msg(subjects.STREAM_RUNS, subjects.runs_requested(api.tenant))
    request = decode_run_event(msg.data or b"")
    assert isinstance(request, RunRequested)
    assert request.run_id == recorded.run_id
