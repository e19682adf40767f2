"""http and function activities against a local aiohttp server on a free port."""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from agent_support import RecordingSink, work_item
from aiohttp import web

from trellis_agent.egress import EgressPolicy
from trellis_agent.executors.base import Workspace, execute
from trellis_agent.executors.function import FunctionExecutor
from trellis_agent.executors.http import HttpExecutor
from trellis_core.workflow import FunctionSpec, HttpSpec

# The servers these tests call listen on loopback, which the egress policy refuses by default.
LOCAL_SERVERS = EgressPolicy.parse(["127.0.0.1/32"])


class Server:
    """A tiny app whose handlers the test sets; it records every request body."""

    def __init__(self) -> None:
        self.app = web.Application()
        self.requests: list[dict[str, Any]] = []
        self.url = ""

    def route(self, method: str, path: str, handler: Any) -> None:
        self.app.router.add_route(method, path, handler)


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    srv = Server()
    srv.route("GET", "/ok", _reply(web.json_response, {"id": 42, "name": "vpc"}))
    srv.route("GET", "/teapot", _reply(web.Response, status=418, text="short and stout"))
    srv.route("GET", "/busy", _reply(web.Response, status=503))
    srv.route("POST", "/echo", _echo)
    srv.route("POST", "/fn/third-time", _third_time(srv))
    srv.route("POST", "/fn/forever", _forever(srv))
    srv.route("POST", "/fn/flaky", _flaky(srv))
    srv.route("POST", "/fn/refuses", _reply(web.json_response, {"status": "failed", "message": "no quota"}))
    runner = web.AppRunner(srv.app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    srv.url = f"http://127.0.0.1:{port}"
    yield srv
    await runner.cleanup()


def _reply(make: Any, *args: Any, **kwargs: Any) -> Any:
    async def handler(request: web.Request) -> web.StreamResponse:
        return make(*args, **kwargs)  # type: ignore[no-any-return]

    return handler


async def _echo(request: web.Request) -> web.Response:
    return web.json_response(
        {"body": await request.text(), "auth": request.headers.get("Authorization", "")}, status=201
    )


def _third_time(srv: Server) -> Any:
    async def handler(request: web.Request) -> web.Response:
        body = await request.json()
        srv.requests.append(body)
        polls = body["previous"].get("polls", 0) + 1
        if polls < 3:
            return web.json_response({"status": "again", "data": {"polls": polls}})
        return web.json_response({"status": "done", "outputs": {"polls": polls, "who": body["inputs"]["who"]}})

    return handler


def _forever(srv: Server) -> Any:
    async def handler(request: web.Request) -> web.Response:
        srv.requests.append(await request.json())
        return web.json_response({"status": "again", "data": {}})

    return handler


def _flaky(srv: Server) -> Any:
    async def handler(request: web.Request) -> web.Response:
        srv.requests.append(await request.json())
        if len(srv.requests) <= 2:
            return web.json_response({"status": "transient", "message": "backend warming up"})
        return web.json_response({"status": "done", "outputs": {"calls": len(srv.requests)}})

    return handler


@pytest.fixture
async def http() -> AsyncIterator[HttpExecutor]:
    executor = HttpExecutor(LOCAL_SERVERS)
    yield executor
    await executor.close()


async def _run_http(http: HttpExecutor, spec: HttpSpec, tmp_path: Path, limit: float | None = None) -> Any:
    work = work_item(spec, kind="http", timeout_seconds=limit)
    sink = RecordingSink()
    return await execute(http, work, Workspace.for_work(tmp_path, work), sink), sink


async def test_a_2xx_response_succeeds_and_its_fields_become_outputs(
    http: HttpExecutor, server: Server, tmp_path: Path
) -> None:
    outcome, sink = await _run_http(http, HttpSpec(url=f"{server.url}/ok", method="GET"), tmp_path)
    assert outcome.ok
    assert outcome.outputs["status"] == 200
    assert outcome.outputs["json"] == {"id": 42, "name": "vpc"}
    assert outcome.outputs["headers"]["Content-Type"].startswith("application/json")
    assert "200 after" in sink.text("system")


async def test_method_headers_and_body_are_sent_as_written(http: HttpExecutor, server: Server, tmp_path: Path) -> None:
    spec = HttpSpec(url=f"{server.url}/echo", headers={"Authorization": "Bearer t0k3n"}, body='{"x": 1}')
    outcome, _ = await _run_http(http, spec, tmp_path)
    assert outcome.ok
    assert outcome.outputs["json"] == {"body": '{"x": 1}', "auth": "Bearer t0k3n"}


async def test_a_4xx_response_fails_without_retrying(http: HttpExecutor, server: Server, tmp_path: Path) -> None:
    outcome, _ = await _run_http(http, HttpSpec(url=f"{server.url}/teapot", method="GET"), tmp_path)
    assert outcome.status == "failed"
    assert outcome.reason == "HTTP 418"
    assert not outcome.retryable


async def test_a_5xx_response_fails_so_that_the_scheduler_retries(
    http: HttpExecutor, server: Server, tmp_path: Path
) -> None:
    outcome, _ = await _run_http(http, HttpSpec(url=f"{server.url}/busy", method="GET"), tmp_path)
    assert outcome.status == "failed"
    assert outcome.retryable


async def test_a_success_condition_over_status_and_json_decides(
    http: HttpExecutor, server: Server, tmp_path: Path
) -> None:
    holds = HttpSpec(url=f"{server.url}/teapot", method="GET", success_condition="$(response.status == 418)$")
    assert (await _run_http(http, holds, tmp_path))[0].ok
    fails = HttpSpec(url=f"{server.url}/ok", method="GET", success_condition="$(response.json.name == 'subnet')$")
    outcome, _ = await _run_http(http, fails, tmp_path)
    assert outcome.status == "failed"
    assert "does not hold" in outcome.reason


async def test_a_broken_success_condition_fails_with_the_expression_error(
    http: HttpExecutor, server: Server, tmp_path: Path
) -> None:
    spec = HttpSpec(url=f"{server.url}/ok", method="GET", success_condition="$(response.nope.deeper)$")
    outcome, _ = await _run_http(http, spec, tmp_path)
    assert outcome.status == "failed"
    assert not outcome.retryable
    assert "nope" in outcome.reason


async def test_an_unreachable_endpoint_fails_retryably(http: HttpExecutor, tmp_path: Path) -> None:
    outcome, _ = await _run_http(http, HttpSpec(url="http://127.0.0.1:1/x", method="GET"), tmp_path)
    assert outcome.status == "failed"
    assert outcome.retryable


def _function(url: str, **kw: Any) -> FunctionSpec:
    return FunctionSpec(endpoint=url, repeat_seconds=0.01, **kw)


async def test_a_function_that_is_done_on_its_third_poll_passes_previous_along(
    http: HttpExecutor, server: Server, tmp_path: Path
) -> None:
    work = work_item(_function(f"{server.url}/fn/third-time"), kind="function", inputs={"who": "ops"})
    sink = RecordingSink()
    outcome = await execute(FunctionExecutor(http), work, Workspace.for_work(tmp_path, work), sink)
    assert outcome.ok
    assert outcome.outputs == {"polls": 3, "who": "ops"}
    assert [r["previous"] for r in server.requests] == [{}, {"polls": 1}, {"polls": 2}]
    assert server.requests[0]["metadata"] == {
        "run": work.run_id,
        "activity": work.activity.id,
        "environment": "dev",
        "tenant": "acme",
        "action": "deploy",
    }
    assert sink.text("system").count("function call") == 3


async def test_a_function_that_never_finishes_times_out(http: HttpExecutor, server: Server, tmp_path: Path) -> None:
    work = work_item(_function(f"{server.url}/fn/forever", until_seconds=0.3), kind="function")
    outcome = await execute(FunctionExecutor(http), work, Workspace.for_work(tmp_path, work), RecordingSink())
    assert outcome.status == "failed"
    assert outcome.timed_out
    assert len(server.requests) >= 2


async def test_transient_answers_are_retried(http: HttpExecutor, server: Server, tmp_path: Path) -> None:
    work = work_item(_function(f"{server.url}/fn/flaky"), kind="function")
    sink = RecordingSink()
    outcome = await execute(FunctionExecutor(http), work, Workspace.for_work(tmp_path, work), sink)
    assert outcome.ok
    assert outcome.outputs == {"calls": 3}
    assert sink.text().count("transient: backend warming up") == 2


async def test_a_failed_answer_is_final(http: HttpExecutor, server: Server, tmp_path: Path) -> None:
    work = work_item(_function(f"{server.url}/fn/refuses"), kind="function")
    outcome = await execute(FunctionExecutor(http), work, Workspace.for_work(tmp_path, work), RecordingSink())
    assert outcome.status == "failed"
    assert outcome.reason == "no quota"
    assert not outcome.retryable


async def test_a_function_image_needs_a_container_backend(http: HttpExecutor, tmp_path: Path) -> None:
    work = work_item(FunctionSpec(image="example/fn:1"), kind="function")
    outcome = await execute(FunctionExecutor(http), work, Workspace.for_work(tmp_path, work), RecordingSink())
    assert not outcome.ok
    assert "docker or kubernetes" in outcome.reason


def test_requests_are_json(tmp_path: Path) -> None:
    from trellis_agent.executors.function import request_body

    body = request_body(work_item(inputs={"a": 1}), {"p": 2})
    assert json.loads(json.dumps(body))["previous"] == {"p": 2}


@pytest.fixture
async def tls_server(tmp_path: Path) -> AsyncIterator[str]:
    """An https server with a self-signed certificate (made by the openssl command)."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    app = web.Application()
    app.router.add_get("/", _reply(web.json_response, {"secure": True}))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    yield f"https://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/"  # type: ignore[union-attr]
    await runner.cleanup()


async def test_tls_is_verified_unless_the_spec_turns_it_off(
    http: HttpExecutor, tls_server: str, tmp_path: Path
) -> None:
    refused, _ = await _run_http(http, HttpSpec(url=tls_server, method="GET"), tmp_path)
    assert refused.status == "failed"
    assert "certificate" in refused.reason.lower()
    assert not refused.retryable
    accepted, _ = await _run_http(http, HttpSpec(url=tls_server, method="GET", verify_tls=False), tmp_path)
    assert accepted.ok
    assert accepted.outputs["json"] == {"secure": True}
