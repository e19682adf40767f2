"""`trellis env drift` and the drift part of `trellis env show`, against an HTTP server answering
as the gateway does (the whole check end to end: tests/gateway/test_drift.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from embedded_stack_support import cli_env, trellis

from trellis_store.api import Environment, TemplateRef
from trellis_store.drift_view import EnvironmentDrift, ResourceDrift

CHECKED = EnvironmentDrift(
    status="drifted",
    run_id="run-7",
    checked_at=datetime(2026, 12, 1, 23, 0, tzinfo=UTC),
    resources=(
        ResourceDrift(name="app", status="not-checked", summary="not checked: the resource defines no drift check"),
        ResourceDrift(name="network", status="drifted", summary="1 resource(s) differ: aws_vpc.main",
                      changed_resources=("aws_vpc.main",), changed_outputs=("vpc_id",), impacted=("app", "db")),
    ),
)
ENVIRONMENT = Environment(name="web", template=TemplateRef(name="shop", version="v1"), status="deployed", etag="1",
                          drift=CHECKED)


@pytest.fixture
async def gateway() -> AsyncIterator[tuple[str, list[str]]]:
    """An HTTP server answering a drift POST (recording its path) and the environment."""
    posted: list[str] = []

    async def drift(request: web.Request) -> web.Response:
        posted.append(f"{request.path} {request.headers.get('Idempotency-Key', '')}")
        return web.json_response({"run_id": "run-7"}, status=202)

    async def environment(request: web.Request) -> web.Response:
        return web.Response(body=msgspec.json.encode(ENVIRONMENT), content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/environments/web/drift", drift)
    app.router.add_get("/v1/environments/web", environment)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url("")).rstrip("/"), posted
    finally:
        await server.close()


async def _cli(url: str, tmp_path: Path, *args: str) -> tuple[int, str]:
    env = cli_env(tmp_path, TRELLIS_GATEWAY_URL=url, TRELLIS_TOKEN="t")
    process = await asyncio.create_subprocess_exec(
        *trellis(*args), env=env, cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode()


async def test_drift_no_wait_posts_a_check_and_prints_its_run(gateway: tuple[str, list[str]], tmp_path: Path) -> None:
    url, posted = gateway
    code, out = await _cli(url, tmp_path, "env", "drift", "web", "--no-wait")
    assert code == 0, out
    assert "run run-7: drift check of environment web started" in out
    [request] = posted
    assert request.startswith("/v1/environments/web/drift ")
    assert len(request.split(" ")[1]) == 36  # an Idempotency-Key: a retried POST starts one check


async def test_show_prints_the_last_check_with_what_drifted_and_what_it_reaches(
    gateway: tuple[str, list[str]], tmp_path: Path
) -> None:
    url, _ = gateway
    code, out = await _cli(url, tmp_path, "env", "show", "web")
    assert code == 0, out
    assert "  drift:     drifted (run run-7, checked 2026-12-01 23:00:00)" in out
    assert "    network: drifted: 1 resource(s) differ: aws_vpc.main" in out
    assert "      outputs changing: vpc_id" in out
    assert "      downstream impacted: app, db" in out
    assert "    app: not-checked: not checked: the resource defines no drift check" in out
    code, document = await _cli(url, tmp_path, "env", "show", "web", "--json")
    assert msgspec.json.decode(document)["drift"]["resources"][1]["impacted"] == ["app", "db"]
