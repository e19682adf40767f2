"""`trellis env show` lists the environments one reads through static resources and those reading
it (docs/static-resources.md), described and in `--json`; neither appears when there is none."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from embedded_stack_support import cli_env, trellis

from trellis_store.api import Environment, EnvironmentLink, TemplateRef

APP = Environment(
    name="app",
    template=TemplateRef(name="app-stack", version="v1"),
    status="deployed",
    etag="1",
    depends_on=(EnvironmentLink(environment="network", resource="net"),),
)
NETWORK = Environment(
    name="network",
    template=TemplateRef(name="net-stack", version="v1"),
    status="deployed",
    etag="1",
    dependents=(EnvironmentLink(environment="app", resource="net"), EnvironmentLink(environment="web", resource="vpc")),
)
LONE = Environment(name="lone", template=TemplateRef(name="t", version="v1"), status="deployed", etag="1")


@pytest.fixture
async def gateway() -> AsyncIterator[str]:
    app = web.Application()
    for env in (APP, NETWORK, LONE):

        async def answer(request: web.Request, env: Environment = env) -> web.Response:
            return web.Response(body=msgspec.json.encode(env), content_type="application/json")

        app.router.add_get(f"/v1/environments/{env.name}", answer)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


async def show(url: str, tmp_path: Path, *args: str) -> str:
    env = cli_env(tmp_path, TRELLIS_GATEWAY_URL=url, TRELLIS_TOKEN="t")
    process = await asyncio.create_subprocess_exec(
        *trellis("env", "show", *args), env=env, cwd=tmp_path, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    return out.decode()


async def test_show_lists_what_an_environment_depends_on_and_its_dependents(gateway: str, tmp_path: Path) -> None:
    app = await show(gateway, tmp_path, "app")
    assert "  depends on:\n    network (resource net)\n" in app + "\n"
    assert "dependents" not in app
    network = await show(gateway, tmp_path, "network")
    assert "  dependents:\n    app (resource net)\n    web (resource vpc)" in network
    assert "depends on" not in network
    lone = await show(gateway, tmp_path, "lone")
    assert "depends on" not in lone
    assert "dependents" not in lone


async def test_show_json_names_them_dependsOn_and_dependents(gateway: str, tmp_path: Path) -> None:
    app = msgspec.json.decode(await show(gateway, tmp_path, "app", "--json"))
    assert app["dependsOn"] == [{"environment": "network", "resource": "net"}]
    assert "dependents" not in app
    lone = msgspec.json.decode(await show(gateway, tmp_path, "lone", "--json"))
    assert "dependsOn" not in lone
    assert "dependents" not in lone
