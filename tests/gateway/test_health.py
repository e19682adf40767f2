"""Liveness, readiness, metrics, and problem+json for every error the gateway itself can answer."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

import aiohttp
import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from gateway_support import Api, GatewayServer, Tenant

from trellis_core.bus import Bus
from trellis_core.errors import ConfigError
from trellis_core.settings import Settings
from trellis_gateway.app import base_url, make_app, parse_listen, serve
from trellis_gateway.context import MAX_BODY_BYTES, Gateway
from trellis_gateway.metrics import Histogram, Metrics

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
async def bare_api(bus: Bus, settings: Settings) -> AsyncIterator[Api]:
    """The gateway's app with no state store running, plus a route that fails unexpectedly."""

    async def explode(request: web.Request) -> web.Response:
        raise RuntimeError("postgres://admin:hunter2@db internals")

    app = make_app(Gateway.create(bus, settings))
    app.router.add_get("/explode", explode)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as session:
            yield Api(session, str(server.make_url("")).rstrip("/"))
    finally:
        await server.close()


async def test_healthz_answers_without_a_token(api: Api) -> None:
    answer = await api.call("GET", "/healthz")
    assert answer.ok() == {"status": "ok"}


async def test_readyz_answers_when_the_bus_and_the_store_do(api: Api) -> None:
    ready = (await api.call("GET", "/readyz")).ok()
    assert ready["status"] == "ready"
    assert ready["schema_version"] >= 1


async def test_readyz_is_a_503_problem_when_no_store_answers(bare_api: Api) -> None:
    problem = (await bare_api.call("GET", "/readyz")).problem(503)
    assert "state store" in problem["detail"]


async def test_unexpected_error_is_a_500_problem_without_internals(bare_api: Api) -> None:
    answer = await bare_api.call("GET", "/explode")
    problem = answer.problem(500)
    assert b"hunter2" not in answer.body
    assert b"RuntimeError" not in answer.body
    assert problem["title"] == "Internal Server Error"


async def test_unknown_route_is_a_404_problem(api: Api) -> None:
    problem = (await api.call("GET", "/v1/nothing-here")).problem(404)
    assert problem["title"] == "Not Found"


async def test_wrong_method_is_a_405_problem_naming_the_allowed_ones(api: Api) -> None:
    answer = await api.call("DELETE", "/v1/templates")
    answer.problem(405)
    assert set(answer.headers["Allow"].split(",")) == {"GET", "HEAD", "POST"}


async def test_a_body_over_the_limit_is_a_413_problem(api: Api, tenant: Tenant) -> None:
    body = b'{"sources": [{"path": "a.yaml", "text": "' + b"x" * (MAX_BODY_BYTES + 10) + b'"}]}'
    answer = await api.call(
        "POST", "/v1/templates", token=tenant.operator, data=body, headers={"Content-Type": "application/json"}
    )
    answer.problem(413)


async def test_a_body_that_is_not_json_is_a_400_problem(api: Api, tenant: Tenant) -> None:
    answer = await api.call(
        "POST", "/v1/templates", token=tenant.operator, data=b"{nope", headers={"Content-Type": "application/json"}
    )
    assert "not JSON" in answer.problem(400)["detail"]


def _samples(text: str, name: str) -> dict[str, float]:
    """`{labels: value}` of one metric in Prometheus text."""
    out = {}
    for line in text.splitlines():
        m = re.fullmatch(rf"{re.escape(name)}(\{{.*\}})? (\S+)", line)
        if m:
            out[m[1] or ""] = float(m[2])
    return out


async def test_metrics_count_requests_by_route_template_and_status(
    api: Api, tenant: Tenant, gateway_server: GatewayServer
) -> None:
    for _ in range(3):
        (await api.call("GET", "/healthz")).ok()
    (await api.call("GET", "/v1/environments/nope", token=tenant.viewer)).problem(404)
    answer = await api.call("GET", "/metrics")
    assert answer.status == 200
    assert answer.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    text = answer.body.decode()
    requests = _samples(text, "trellis_gateway_requests_total")
    assert requests['{method="GET",route="/healthz",status="200"}'] == 3
    assert requests['{method="GET",route="/v1/environments/{name}",status="404"}'] == 1
    assert not any("nope" in labels for labels in requests)  # the template, never the raw path
    buckets = _samples(text, "trellis_gateway_request_duration_seconds_bucket")
    assert buckets['{method="GET",route="/healthz",le="+Inf"}'] == 3
    assert _samples(text, "trellis_gateway_request_duration_seconds_count")['{method="GET",route="/healthz"}'] == 3
    assert _samples(text, "trellis_gateway_sse_clients") == {"": 0}
    assert "# TYPE trellis_gateway_request_duration_seconds histogram" in text


def test_metrics_histogram_buckets_are_cumulative_and_labels_escaped() -> None:
    metrics = Metrics()
    metrics.observe("GET", '/a"b', 200, 0.003)
    metrics.observe("GET", '/a"b', 200, 0.3)
    metrics.observe("GET", '/a"b', 200, 30.0)
    with metrics.sse_client():
        text = metrics.render()
        assert "trellis_gateway_sse_clients 1" in text
    assert metrics.sse_clients == 0
    buckets = _samples(text, "trellis_gateway_request_duration_seconds_bucket")
    assert buckets['{method="GET",route="/a\\"b",le="0.005"}'] == 1
    assert buckets['{method="GET",route="/a\\"b",le="0.5"}'] == 2
    assert buckets['{method="GET",route="/a\\"b",le="+Inf"}'] == 3
    histogram = Histogram()
    histogram.observe(0.005)  # a bound belongs to its own bucket (le: less than or equal)
    assert histogram.counts[0] == 1


def test_listen_addresses_parse_and_bad_ones_name_the_variable() -> None:
    assert parse_listen("127.0.0.1:0") == ("127.0.0.1", 0)
    assert parse_listen("[::1]:8080") == ("::1", 8080)
    assert parse_listen(":9000") == ("0.0.0.0", 9000)
    assert base_url("0.0.0.0", 9000) == "http://127.0.0.1:9000"
    assert base_url("::1", 80) == "http://[::1]:80"
    for bad in ("localhost", "host:http", "host:70000"):
        with pytest.raises(Exception, match="TRELLIS_GATEWAY_LISTEN"):
            parse_listen(bad)


async def test_serve_reports_its_free_port_and_stops_when_asked(bus: Bus, settings: Settings) -> None:
    configured = msgspec.structs.replace(settings, gateway_listen="127.0.0.1:0")
    urls: list[str] = []
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(serve(bus, configured, stop, ready, bound=urls.append))
    await asyncio.wait_for(ready.wait(), 10)
    assert urls[0].startswith("http://127.0.0.1:")
    assert not urls[0].endswith(":0")
    async with aiohttp.ClientSession() as session:
        async with session.get(urls[0] + "/healthz") as resp:
            assert resp.status == 200
        stop.set()
        await asyncio.wait_for(task, 10)
        with pytest.raises(aiohttp.ClientConnectorError):
            async with session.get(urls[0] + "/healthz"):
                pass


async def test_without_an_admin_token_configured_no_tenant_can_be_created(bare_api: Api) -> None:
    answer = await bare_api.call("POST", "/v1/tenants", json={"name": "x"}, headers={"Authorization": "Bearer "})
    assert "TRELLIS_ADMIN_TOKEN" in answer.problem(401)["detail"]


def test_a_short_callback_key_is_refused_at_start_naming_the_variable(bus: Bus, settings: Settings) -> None:
    short = msgspec.structs.replace(settings, callback_key="too-short")
    with pytest.raises(ConfigError, match="TRELLIS_CALLBACK_KEY"):
        Gateway.create(bus, short)
