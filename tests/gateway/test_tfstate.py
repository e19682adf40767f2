"""Managed OpenTofu/Terraform state: the gateway's HTTP backend driven as tofu drives it (a stand-in
client, tfstate_support.py) against the real gateway and state store, and an operator's view."""

from __future__ import annotations

import asyncio
import base64
import os
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import msgspec
import pytest
from gateway_support import Api, GatewayServer, Tenant
from tfstate_support import StandInClient, add_run, end_run, state_document

from trellis_core import state_credentials
from trellis_gateway.tfstate_routes import MAX_STATE_BYTES
from trellis_store.tfstate import KEEP_HISTORY

ENV = "web"
RESOURCE = "network"


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


def credential(server: GatewayServer, tenant: str, run_id: str, environment: str = ENV, *, ttl: float = 3600) -> str:
    key = state_credentials.state_key(server.callback_key)
    expires = datetime.now(UTC) + timedelta(seconds=ttl)
    return state_credentials.mint(key, tenant=tenant, environment=environment, run_id=run_id, expires_at=expires)


async def client_of(
    session: aiohttp.ClientSession,
    server: GatewayServer,
    database_url: str,
    tenant: str,
    run_id: str,
    *,
    environment: str = ENV,
    resource: str = RESOURCE,
) -> StandInClient:
    await add_run(database_url, tenant, run_id, environment)
    address = state_credentials.state_address(server.url, tenant, environment, resource)
    return StandInClient(session, address, credential(server, tenant, run_id, environment))


async def test_state_saved_under_a_lock_reads_back_with_its_history(
    session: aiohttp.ClientSession, gateway_server: GatewayServer, tenant: Tenant, database_url: str, api: Api
) -> None:
    tofu = await client_of(session, gateway_server, database_url, tenant.name, "run-1")
    assert (await tofu.get()).status == 404  # nothing saved yet: tofu starts from an empty state
    assert (await tofu.lock()).status == 200
    for serial in (1, 2, 3):
        assert (await tofu.put(state_document(serial, outputs={"vpc": f"vpc-{serial}"}))).status == 200
    read = await tofu.get()
    assert read.status == 200
    assert read.json()["serial"] == 3
    assert read.json()["outputs"]["vpc"]["value"] == "vpc-3"
    assert read.headers_md5  # tofu checks the state against it
    assert (await tofu.unlock()).status == 200

    shown = (await api.call("GET", f"/v1/environments/{ENV}/state/{RESOURCE}", token=tenant.operator)).ok()
    (resource,) = shown["resources"]
    assert [v["serial"] for v in resource["history"]] == [3, 2, 1]
    assert {v["run_id"] for v in resource["history"]} == {"run-1"}
    assert "lock" not in resource
    content = await api.call("GET", f"/v1/environments/{ENV}/state/{RESOURCE}/content", token=tenant.admin)
    assert msgspec.json.decode(content.body)["serial"] == 3
    refused = await api.call("GET", f"/v1/environments/{ENV}/state/{RESOURCE}/content", token=tenant.operator)
    refused.problem(403)


async def test_history_keeps_the_newest_saves_and_delete_keeps_what_came_before(
    session: aiohttp.ClientSession, gateway_server: GatewayServer, tenant: Tenant, database_url: str, api: Api
) -> None:
    tofu = await client_of(session, gateway_server, database_url, tenant.name, "run-1")
    for serial in range(1, KEEP_HISTORY + 4):
        assert (await tofu.put(state_document(serial))).status == 200
    assert (await tofu.delete()).status == 200
    assert (await tofu.get()).status == 404
    shown = (await api.call("GET", f"/v1/environments/{ENV}/state", token=tenant.operator)).ok()
    history = shown["resources"][0]["history"]
    assert len(history) == KEEP_HISTORY
    assert history[0]["deleted"] is True
    assert history[1]["serial"] == KEEP_HISTORY + 3


async def test_a_held_lock_refuses_another_with_the_current_holder_and_a_wrong_unlock(
    session: aiohttp.ClientSession, gateway_server: GatewayServer, tenant: Tenant, database_url: str
) -> None:
    first = await client_of(session, gateway_server, database_url, tenant.name, "run-1")
    second = await client_of(session, gateway_server, database_url, tenant.name, "run-2")
    assert (await first.lock(who="first@agent")).status == 200
    refused = await second.lock(who="second@agent")
    assert refused.status == 423
    holder = refused.json()
    assert holder["ID"] == first.lock_id
    assert holder["Who"] == "first@agent"
    assert "ended" not in holder["Info"]  # its run is still going: nothing to say about it

    second.lock_info = msgspec.json.encode({"ID": "not-the-lock"})
    wrong = await second.unlock()
    assert wrong.status == 409
    assert wrong.json()["ID"] == first.lock_id
    second.lock_id = "not-the-lock"
    assert (await second.put(state_document(9))).status == 409  # a write needs the holder's id
    second.lock_id = ""
    assert (await second.put(state_document(9))).status == 409  # and without an id too

    assert (await first.put(state_document(1))).status == 200
    assert (await first.unlock()).status == 200
    assert (await second.lock()).status == 200


async def test_a_lock_left_by_a_crashed_run_is_reported_not_broken(
    session: aiohttp.ClientSession, gateway_server: GatewayServer, tenant: Tenant, database_url: str, api: Api
) -> None:
    crashed = await client_of(session, gateway_server, database_url, tenant.name, "run-crashed")
    assert (await crashed.lock()).status == 200
    await end_run(database_url, tenant.name, "run-crashed", "failed")
    later = await client_of(session, gateway_server, database_url, tenant.name, "run-later")

    refused = await later.lock()
    assert refused.status == 423
    info = refused.json()
    assert info["ID"] == crashed.lock_id
    assert "held by run run-crashed which ended failed at " in info["Info"]
    assert f"trellis env state {ENV} {RESOURCE} --unlock {crashed.lock_id}" in info["Info"]
    assert (await later.lock()).status == 423  # still held: never broken silently

    shown = (await api.call("GET", f"/v1/environments/{ENV}/state/{RESOURCE}", token=tenant.operator)).ok()
    lock = shown["resources"][0]["lock"]
    assert lock["ended"] is True
    assert lock["run_id"] == "run-crashed"
    assert lock["run_status"] == "failed"
    audit = (await api.call("GET", "/v1/audit", token=tenant.admin)).ok()
    assert any(e["action"] == "tfstate.lock_refused_ended_holder" for e in audit["entries"])

    body = {"id": "wrong"}
    path = f"/v1/environments/{ENV}/state/{RESOURCE}/unlock"
    (await api.call("POST", path, token=tenant.admin, json=body)).problem(409)
    (await api.call("POST", path, token=tenant.operator, json={"id": crashed.lock_id})).problem(403)
    (await api.call("POST", path, token=tenant.admin, json={"id": crashed.lock_id})).ok()
    assert (await later.lock()).status == 200
    audit = (await api.call("GET", "/v1/audit", token=tenant.admin)).ok()
    assert any(e["action"] == "tfstate.force_unlock" for e in audit["entries"])


async def test_a_credential_is_refused_on_another_environment_or_tenant_and_once_its_run_ended(
    session: aiohttp.ClientSession,
    gateway_server: GatewayServer,
    tenant: Tenant,
    other_tenant: Tenant,
    database_url: str,
) -> None:
    owner = await client_of(session, gateway_server, database_url, tenant.name, "run-1")
    assert (await owner.put(state_document(1))).status == 200

    other_env = state_credentials.state_address(gateway_server.url, tenant.name, "other-env", RESOURCE)
    assert (await StandInClient(session, other_env, owner.password).get()).status == 403
    intruder = await client_of(session, gateway_server, database_url, other_tenant.name, "run-9")
    assert (await StandInClient(session, owner.address, intruder.password).get()).status == 403
    assert (await StandInClient(session, owner.address, intruder.password).put(state_document(5))).status == 403
    # a credential naming another environment's run of the same tenant is refused by the store
    await add_run(database_url, tenant.name, "run-elsewhere", "other-env")
    forged_scope = credential(gateway_server, tenant.name, "run-elsewhere", ENV)
    assert (await StandInClient(session, owner.address, forged_scope).get()).status == 403

    await end_run(database_url, tenant.name, "run-1", "succeeded")
    assert (await owner.get()).status == 403  # revoked with its run's end


async def test_an_expired_altered_or_missing_credential_is_refused(
    session: aiohttp.ClientSession, gateway_server: GatewayServer, tenant: Tenant, database_url: str
) -> None:
    tofu = await client_of(session, gateway_server, database_url, tenant.name, "run-1")
    expired = credential(gateway_server, tenant.name, "run-1", ttl=-1)
    reply = await StandInClient(session, tofu.address, expired).get()
    assert reply.status == 403
    assert b"expired" in reply.body
    no_run = credential(gateway_server, tenant.name, "")
    reply = await StandInClient(session, tofu.address, no_run).get()
    assert reply.status == 403
    assert b"names no run" in reply.body
    altered = tofu.password[:-2] + ("AA" if not tofu.password.endswith("AA") else "BB")
    assert (await StandInClient(session, tofu.address, altered).get()).status == 403
    async with session.get(tofu.address) as resp:
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"].startswith("Basic")
    bearer = {"Authorization": "Bearer " + tofu.password}
    async with session.get(tofu.address, headers=bearer) as resp:
        assert resp.status == 401


async def test_bad_bodies_are_refused_naming_what_is_wrong(
    session: aiohttp.ClientSession, gateway_server: GatewayServer, tenant: Tenant, database_url: str
) -> None:
    tofu = await client_of(session, gateway_server, database_url, tenant.name, "run-1")
    not_json = await tofu.put(b"not a state")
    assert not_json.status == 400
    assert b"not a Terraform state JSON object" in not_json.body
    auth = {"Authorization": "Basic " + base64.b64encode(f"u:{tofu.password}".encode()).decode()}
    async with session.post(tofu.address, data=b"{}", headers={**auth, "Content-MD5": "AAAA"}) as resp:
        assert resp.status == 400
        assert "Content-MD5" in (await resp.json(content_type=None))["detail"]
    async with session.post(tofu.address, data=b" " * (MAX_STATE_BYTES + 1), headers=auth) as resp:
        assert resp.status == 413
    async with session.request("LOCK", tofu.address, data=b'{"Who": "x"}', headers=auth) as resp:
        assert resp.status == 400
        assert (await resp.json(content_type=None))["path"] == "ID"
    async with session.request("UNLOCK", tofu.address, data=b"", headers=auth) as resp:
        assert resp.status == 409
        assert "--unlock" in (await resp.json(content_type=None))["detail"]


async def trellis_cli(server: GatewayServer, token: str, *args: str) -> tuple[int, str]:
    """The `trellis` command of this environment, run against the test's gateway."""
    env = {**os.environ, "TRELLIS_GATEWAY_URL": server.url, "TRELLIS_TOKEN": token}
    binary = str(Path(sys.executable).with_name("trellis"))
    process = await asyncio.create_subprocess_exec(
        binary, *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    async with asyncio.timeout(60):
        out, _ = await process.communicate()
    return process.returncode or 0, out.decode()


async def test_the_cli_shows_a_crashed_runs_lock_and_an_admin_releases_it(
    session: aiohttp.ClientSession, gateway_server: GatewayServer, tenant: Tenant, database_url: str
) -> None:
    crashed = await client_of(session, gateway_server, database_url, tenant.name, "run-crashed")
    assert (await crashed.put(state_document(4))).status == 200
    assert (await crashed.lock()).status == 200
    await end_run(database_url, tenant.name, "run-crashed", "cancelled")

    code, out = await trellis_cli(gateway_server, tenant.operator, "env", "state", ENV)
    assert code == 0, out
    assert f"locked: {crashed.lock_id} by run run-crashed" in out
    assert "ended cancelled" in out
    assert f"trellis env state {ENV} {RESOURCE} --unlock {crashed.lock_id}" in out
    code, out = await trellis_cli(gateway_server, tenant.operator, "env", "state", ENV, RESOURCE, "--unlock", "x")
    assert code == 1
    assert "admin" in out
    code, out = await trellis_cli(gateway_server, tenant.admin, "env", "state", ENV, "--unlock", crashed.lock_id)
    assert code == 2
    assert "needs the RESOURCE" in out
    code, out = await trellis_cli(
        gateway_server, tenant.admin, "env", "state", ENV, RESOURCE, "--unlock", crashed.lock_id
    )
    assert code == 0, out
    code, out = await trellis_cli(gateway_server, tenant.operator, "env", "state", ENV, RESOURCE)
    assert "locked:" not in out
    assert "4" in out.split("SERIAL", 1)[1]
