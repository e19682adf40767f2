"""Webhook triggers: the environment's secret in the URL starts a deploy, with no bearer token."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from runs_support import HELLO, Api, gateway_stack

from trellis_core import subjects
from trellis_core.bus import Bus
from trellis_core.settings import Settings
from trellis_store.api import WebhookRotate, WebhookSecret


@pytest.fixture
async def api(bus: Bus, store_settings: Settings, unique: str) -> AsyncIterator[Api]:
    """The run routes' own view of the gateway (overrides conftest's `api`): see runs_support."""
    async with gateway_stack(bus, store_settings, unique) as api:
        yield api


async def secret_of(api: Api, environment: str) -> str:
    rotated = await api.gateway.store.ask(WebhookRotate(tenant=api.tenant, environment=environment), WebhookSecret)
    assert isinstance(rotated, WebhookSecret), rotated
    return rotated.secret


async def test_a_webhook_with_the_environments_secret_starts_a_deploy(api: Api, bus: Bus) -> None:
    from trellis_core.events import RunRequested, decode_run_event

    await api.environment("web", HELLO, "hello-stack")
    secret = await secret_of(api, "web")
    answer = await api.json("POST", f"/v1/hooks/web/{secret}", status=202, who=None, json={"ref": "refs/heads/main"})
    run = await api.json("GET", f"/v1/runs/{answer['run_id']}", status=200)
    assert (run["environment"], run["action"], run["requested_by"]) == ("web", "deploy", "webhook")
    msg = await bus.js.get_last_msg(subjects.STREAM_RUNS, subjects.runs_requested(api.tenant))
    request = decode_run_event(msg.data or b"")
    assert isinstance(request, RunRequested)
    assert request.run_id == answer["run_id"]


async def test_a_redelivered_hook_starts_one_run(api: Api) -> None:
    await api.environment("web", HELLO, "hello-stack")
    secret = await secret_of(api, "web")
    headers = {"X-GitHub-Delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958"}
    first = await api.json("POST", f"/v1/hooks/web/{secret}", status=202, who=None, headers=headers)
    again = await api.json("POST", f"/v1/hooks/web/{secret}", status=202, who=None, headers=headers)
    assert first == again
    other = await api.json("POST", f"/v1/hooks/web/{secret}", status=202, who=None)
    assert other != first


async def test_a_wrong_secret_or_environment_is_not_found_and_starts_nothing(api: Api) -> None:
    await api.environment("web", HELLO, "hello-stack")
    await api.environment("api", HELLO, "hello-stack")
    secret = await secret_of(api, "web")
    await api.json("POST", "/v1/hooks/web/not-the-secret", status=404, who=None)
    await api.json("POST", f"/v1/hooks/api/{secret}", status=404, who=None)  # another environment's secret
    await api.json("POST", f"/v1/hooks/nope/{secret}", status=404, who=None)
    rotated = await secret_of(api, "web")
    await api.json("POST", f"/v1/hooks/web/{secret}", status=404, who=None)  # the old secret is gone
    assert (await api.json("GET", "/v1/runs", status=200))["runs"] == []
    await api.json("POST", f"/v1/hooks/web/{rotated}", status=202, who=None)


@pytest.mark.parametrize(("error", "status"), [(RuntimeError("boom"), 500), (ConnectionError("gone"), 503)])
async def test_a_failed_webhook_is_logged_by_its_route_never_its_secret(
    api: Api, monkeypatch: pytest.MonkeyPatch, error: Exception, status: int
) -> None:
    import structlog

    await api.environment("web", HELLO, "hello-stack")
    secret = await secret_of(api, "web")

    async def failing(*args: object, **kwargs: object) -> None:
        raise error

    monkeypatch.setattr(api.gateway.store, "ask", failing)
    with structlog.testing.capture_logs() as logs:
        async with api.call("POST", f"/v1/hooks/web/{secret}", who=None, json={}) as response:
            assert response.status == status
    failed = [entry for entry in logs if entry["event"] in ("gateway_handler_failed", "gateway_bus_unavailable")]
    assert len(failed) == 1, logs
    assert failed[0]["route"] == "/v1/hooks/{environment}/{secret}"
    assert all(secret not in repr(entry) for entry in logs), logs
