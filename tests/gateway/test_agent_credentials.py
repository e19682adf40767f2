"""Agent credentials through the gateway: `POST /v1/tenants` answers the first (its seed once, and
the tenant's work stream exists), and the tenant's admin makes more for its own tenant only."""

from __future__ import annotations

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
