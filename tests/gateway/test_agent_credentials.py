"""Agent credentials through the gateway: `POST /v1/tenants` answers the first (its seed once, and
the tenant's work stream exists), and the tenant's admin makes more for its own tenant only."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import nats.js.errors
import pytest
from gateway_support import Api, GatewayServer, Tenant

from trellis_core import nats_auth, subjects
from trellis_core.bus import Bus

pytestmark = pytest.mark.timeout(90)


async def test_a_new_tenant_gets_agent_credentials_and_its_work_stream(
    api: Api, gateway_server: GatewayServer, bus: Bus, unique: str
) -> None:
    created = (await api.call("POST", "/v1/tenants", token=gateway_server.admin_token, json={"name": unique})).ok(201)
    agent = created["agent"]
    assert agent["tenant"] == unique
    assert agent["inbox_prefix"] == subjects.inbox_prefix(unique)
    assert nats_auth.public_key_of(agent["seed"]) == agent["public_key"]
    info = await bus.js.stream_info(subjects.work_stream(unique))
    assert info.config.subjects == [f"trellis.{unique}.work.>"]


async def test_a_tenant_admin_makes_more_for_its_own_tenant_only(api: Api, tenant: Tenant, unique: str) -> None:
    path = f"/v1/tenants/{tenant.name}/agent-credentials"
    made = (await api.call("POST", path, token=tenant.admin, json={"name": "cluster-2"})).ok(201)
    assert made["name"] == "cluster-2"
    assert nats_auth.public_key_of(made["seed"]) == made["public_key"]
    (await api.call("POST", path, token=tenant.operator, json={})).problem(403)
    elsewhere = f"/v1/tenants/{unique}x/agent-credentials"
    other = (await api.call("POST", elsewhere, token=tenant.admin, json={})).problem(403)
    assert tenant.name in other["detail"]
    (await api.call("POST", path, token=tenant.admin, json={"name": ""})).problem(422)


async def test_no_work_stream_is_made_for_a_refused_tenant(
    api: Api, gateway_server: GatewayServer, bus: Bus
) -> None:
    (await api.call("POST", "/v1/tenants", token=gateway_server.admin_token, json={"name": "store"})).problem(422)
    with pytest.raises(nats.js.errors.NotFoundError):
        await bus.js.stream_info("TRELLIS_WORK_store")


def _tenant_create(gateway: GatewayServer, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRELLIS_")}
    env |= {
        "TRELLIS_GATEWAY_URL": gateway.url, "TRELLIS_ADMIN_TOKEN": gateway.admin_token,
        "TRELLIS_NATS_URL": gateway.settings.nats_url, "TRELLIS_DATA_DIR": str(cwd / "data"),
    }
    cmd = [sys.executable, "-m", "trellis_cli.main", "tenant", "create", *args]
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


def _read(path: Path) -> tuple[int, str]:
    return path.stat().st_mode & 0o777, path.read_text()


async def test_trellis_tenant_create_prints_the_token_once_and_writes_the_agent_credentials(
    gateway_server: GatewayServer, tmp_path: Path, unique: str
) -> None:
    seed_file = tmp_path / "agent.nk"
    made = await asyncio.to_thread(
        _tenant_create, gateway_server, tmp_path, unique, "--agent-credentials", str(seed_file)
    )
    assert made.returncode == 0, made.stderr
    assert f"tenant {unique} created" in made.stdout
    assert "admin token of admin (shown once): " in made.stdout
    mode, seed = await asyncio.to_thread(_read, seed_file)
    assert mode == 0o600
    public = nats_auth.public_key_of(seed)
    mode, env = await asyncio.to_thread(_read, seed_file.with_name("agent.nk.env"))
    assert mode == 0o600
    assert f"TRELLIS_TENANT={unique}\n" in env
    assert f"TRELLIS_NATS_NKEY_SEED_FILE={seed_file}\n" in env
    assert f"TRELLIS_NATS_URL={gateway_server.settings.nats_url}\n" in env
    assert public in env
    assert seed.strip() not in made.stdout  # the seed is in its file only
    again = await asyncio.to_thread(
        _tenant_create, gateway_server, tmp_path, f"{unique}b", "--agent-credentials", str(seed_file)
    )
    assert again.returncode == 1
    assert f"{seed_file} exists: credentials are never overwritten" in again.stderr
