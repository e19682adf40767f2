"""`trellis env show` and `trellis runs show` (described and `--json`) print no sealed token and
no sensitive output's value, whatever the gateway answers: here an HTTP server answering as a
gateway that masked nothing, so what is checked is the CLI's own masking."""

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

from trellis_core import sealed
from trellis_store.api import ActivityRow, Environment, RunDetail, TemplateRef

SECRET = "hunter2-the-db-password"
TOKEN = sealed.MasterKeyring(sealed.new_master_key()).for_tenant("acme").seal(SECRET)
DSN = f"postgres://app:{TOKEN}@db"
OUTPUTS = {"db": {"password": {"value": SECRET, "sensitive": True}, "url": {"value": DSN, "sensitive": False}}}
NOW = datetime(2026, 12, 1, tzinfo=UTC)

ENVIRONMENT = Environment(
    name="web",
    template=TemplateRef(name="shop", version="v1"),
    status="deployed",
    etag="1",
    variables={"password": TOKEN, "team": "a"},
    sensitive=("password",),
    outputs=OUTPUTS,
    updated_at=NOW,
)
RUN = RunDetail(
    run_id="r1",
    environment="web",
    action="deploy",
    status="failed",
    message=f"failed on {DSN}",
    activities=(
        ActivityRow(
            id="resource/db/task/make",
            kind="container",
            status="failed",
            reason=f"cannot reach {DSN}",
            outputs=OUTPUTS["db"],
        ),
    ),
    outputs=OUTPUTS,
)


@pytest.fixture
async def unmasking_gateway() -> AsyncIterator[str]:
    """An HTTP server answering the environment and the run above with nothing masked."""

    async def environment(request: web.Request) -> web.Response:
        return web.Response(body=msgspec.json.encode(ENVIRONMENT), content_type="application/json")

    async def run(request: web.Request) -> web.Response:
        return web.Response(body=msgspec.json.encode(RUN), content_type="application/json")

    app = web.Application()
    app.router.add_get("/v1/environments/web", environment)
    app.router.add_get("/v1/runs/r1", run)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


async def _cli(url: str, tmp_path: Path, *args: str) -> str:
    env = cli_env(tmp_path, TRELLIS_GATEWAY_URL=url, TRELLIS_TOKEN="t")
    process = await asyncio.create_subprocess_exec(
        *trellis(*args), env=env, cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    return out.decode()


@pytest.mark.parametrize("command", [("env", "show", "web"), ("runs", "show", "r1")])
async def test_show_prints_tokens_and_sensitive_outputs_masked(
    unmasking_gateway: str, tmp_path: Path, command: tuple[str, ...]
) -> None:
    described = await _cli(unmasking_gateway, tmp_path, *command)
    document = await _cli(unmasking_gateway, tmp_path, *command, "--json")
    for text in (described, document):
        assert SECRET not in text, text
        assert "trellis-sealed" not in text, text
    assert "db.url = postgres://app:********@db" in described
    assert "db.password = ********" in described
    shown = msgspec.json.decode(document)
    assert shown["outputs"]["db"]["password"] == {"value": "********", "sensitive": True}
    assert shown["outputs"]["db"]["url"]["value"] == "postgres://app:********@db"
    if command[0] == "env":
        assert "password = ********" in described
        assert shown["variables"] == {"password": "********", "team": "a"}
    else:
        assert "cannot reach postgres://app:********@db" in described
        assert shown["activities"][0]["outputs"]["password"]["value"] == "********"
