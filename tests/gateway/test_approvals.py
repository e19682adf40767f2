"""Approvals decided over HTTP on a real run: through the signed callback URL (no bearer token,
single use: the replay answers 409), and with a bearer token by a listed approver (others 403,
audited); an approval listing nobody is for operators and admins."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from runs_support import CALLBACK_KEY, GATE, NOTIFIED, Api, gated, gateway_stack, running_services

from trellis_core import callbacks
from trellis_core.bus import Bus
from trellis_core.settings import Settings
from trellis_store.api import Approval, ApprovalGet


@pytest.fixture
async def api(bus: Bus, store_settings: Settings, unique: str) -> AsyncIterator[Api]:
    """The run routes' own view of the gateway (overrides conftest's `api`): see runs_support."""
    async with gateway_stack(bus, store_settings, unique) as api:
        yield api


async def waiting_approval(api: Api, run_id: str) -> dict[str, Any]:
    """The run's approval.requested event, once the store shows the approval waiting."""
    async with api.sse(f"/v1/runs/{run_id}/events") as reader:
        while (message := await reader.next()) is not None and message.event != "approval.requested":
            pass
    assert message is not None
    asked = ApprovalGet(tenant=api.tenant, run_id=run_id, activity_id=GATE)
    async with asyncio.timeout(15):
        while not isinstance(await api.gateway.store.ask(asked, Approval), Approval):  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    requested: dict[str, Any] = message.json()
    return requested


def callback_path(api: Api, run_id: str, attempt: int, *, expires_in: float = 600.0, activity: str = GATE) -> str:
    token = callbacks.mint(
        callbacks.key_bytes(CALLBACK_KEY),
        tenant=api.tenant,
        run_id=run_id,
        activity_id=activity,
        attempt=attempt,
        expires_at=datetime.now(UTC) + timedelta(seconds=expires_in),
    )
    return callbacks.callback_url("", token)


async def test_an_approval_is_decided_through_its_callback_url_once(
    api: Api, bus: Bus, settings: Settings, tmp_path: Path
) -> None:
    await api.environment("web", gated("lee@example.com"), "gated-stack")
    async with running_services(bus, settings, api.tenant, tmp_path):
        run_id = await api.start("web")
        asked = await waiting_approval(api, run_id)
        assert asked["activity_id"] == GATE
        assert asked["approvers"] == ["lee@example.com"]
        path = callback_path(api, run_id, asked["attempt"])
        await api.json("POST", path, status=422, who=None, json={"decision": "maybe"})  # the token is not used up
        body = {"decision": "approve", "comment": "ship it"}
        decided = await api.json("POST", path, status=200, who=None, json=body)
        assert decided == {
            "run_id": run_id, "activity_id": GATE, "attempt": asked["attempt"],
            "decision": "approved", "decided_by": "callback",
        }  # fmt: skip
        events = await api.events(run_id)
        replay = await api.json("POST", path, status=409, who=None, json=body)
        assert "used" in replay["detail"] or "approved by callback" in replay["detail"]  # as far as the store knows
        await api.run_when(run_id, "succeeded")
        fresh = callback_path(api, run_id, asked["attempt"])  # another token: the approval is decided
        decided_before = await api.json("POST", fresh, status=409, who=None, json=body)
        assert "approved by callback" in decided_before["detail"]
    assert events[-1].event == "run.completed"
    assert events[-1].json()["status"] == "succeeded"
    decision = next(e.json() for e in events if e.event == "approval.decided")
    assert (decision["decision"], decision["decided_by"], decision["comment"]) == ("approved", "callback", "ship it")


async def test_a_bad_or_expired_callback_token_decides_nothing(
    api: Api, bus: Bus, settings: Settings, tmp_path: Path
) -> None:
    await api.environment("web", gated(""), "gated-stack")
    async with running_services(bus, settings, api.tenant, tmp_path):
        run_id = await api.start("web")
        asked = await waiting_approval(api, run_id)
        good = callback_path(api, run_id, asked["attempt"])
        body = {"decision": "approve"}
        expired = await api.json("POST", callback_path(api, run_id, 1, expires_in=-5), status=410, who=None, json=body)
        assert "expired" in expired["detail"]
        await api.json("POST", good[:-3] + "abc", status=404, who=None, json=body)  # signature
        await api.json("POST", "/v1/callbacks/approvals/not-a-token", status=404, who=None, json=body)
        forged = callbacks.mint(
            b"another-key-another-key-another-key-0123", tenant=api.tenant, run_id=run_id, activity_id=GATE,
            attempt=1, expires_at=datetime.now(UTC) + timedelta(minutes=5),
        )  # fmt: skip
        await api.json("POST", callbacks.callback_url("", forged), status=404, who=None, json=body)
        rejected = await api.json("POST", good, status=200, who=None, json={"decision": "reject", "comment": "no"})
        assert rejected["decision"] == "rejected"
        events = await api.events(run_id)
    assert events[-1].json()["status"] == "failed"


async def test_a_listed_approver_decides_with_a_bearer_token_and_others_are_refused_and_audited(
    api: Api, bus: Bus, settings: Settings, tmp_path: Path
) -> None:
    from trellis_store.api import AuditEntries, AuditList

    await api.environment("web", gated("lee@example.com"), "gated-stack")
    api.tokens["lee"] = await api.token("viewer", "Lee@Example.com")
    path = f"/v1/runs/{{}}/approvals/{GATE}"
    async with running_services(bus, settings, api.tenant, tmp_path):
        run_id = await api.start("web")
        await waiting_approval(api, run_id)
        refused = await api.json("POST", path.format(run_id), status=403, who="operator", json={"decision": "approve"})
        assert "oli@example.com is not among the approvers" in refused["detail"]
        await api.json("POST", path.format(run_id), status=401, who=None, json={"decision": "approve"})
        await api.json("POST", f"/v1/runs/{run_id}/approvals/resource/nope", status=404, json={"decision": "approve"})
        decided = await api.json("POST", path.format(run_id), status=200, who="lee", json={"decision": "approve"})
        assert decided["decided_by"] == "Lee@Example.com"
        assert decided["decision"] == "approved"
        events = await api.events(run_id)
        assert events[-1].json()["status"] == "succeeded"
        await api.run_when(run_id, "succeeded")
        again = await api.json("POST", path.format(run_id), status=409, who="lee", json={"decision": "reject"})
        assert "approved" in again["detail"]
    audit = await api.gateway.store.ask(AuditList(tenant=api.tenant), AuditEntries)
    assert isinstance(audit, AuditEntries)
    refusals = [(e.actor, e.target, e.detail["activity"], e.detail["status"]) for e in audit.entries
                if e.action == "approval.refused"]  # fmt: skip
    assert sorted(refusals) == [
        ("Lee@Example.com", run_id, GATE, 409),  # decided already
        ("ada@example.com", run_id, "resource/nope", 404),
        ("oli@example.com", run_id, GATE, 403),
    ]
    assert any(e.action == "approval.decided" and e.actor == "Lee@Example.com" for e in audit.entries)


async def test_an_approval_listing_nobody_is_decided_by_an_operator_not_a_viewer(
    api: Api, bus: Bus, settings: Settings, tmp_path: Path
) -> None:
    await api.environment("web", gated(""), "gated-stack")
    path = f"/v1/runs/{{}}/approvals/{GATE}"
    async with running_services(bus, settings, api.tenant, tmp_path):
        run_id = await api.start("web")
        await waiting_approval(api, run_id)
        refused = await api.json("POST", path.format(run_id), status=403, who="viewer", json={"decision": "approve"})
        assert "operator or admin" in refused["detail"]
        body = {"decision": "reject", "comment": "not today"}
        decided = await api.json("POST", path.format(run_id), status=200, who="operator", json=body)
        assert decided["decision"] == "rejected"
        events = await api.events(run_id)
    assert events[-1].json()["status"] == "failed"
    run = await api.run_when(run_id, "failed")
    gate = next(a for a in run["activities"] if a["id"] == GATE)
    assert "rejected by oli@example.com: not today" in gate["reason"]


async def test_the_callback_url_the_scheduler_sends_to_the_approvers_decides_the_approval_once(
    api: Api, bus: Bus, tmp_path: Path
) -> None:
    """End to end: the webhook approval notifies a chat with `$(approval.callback_url)$`, minted by
    the scheduler on the gateway's public URL; the chat POSTs its decision there, no bearer token."""
    bodies: list[dict[str, Any]] = []

    async def chat(request: web.Request) -> web.Response:
        bodies.append(await request.json())
        return web.Response()

    app = web.Application()
    app.router.add_post("/hook", chat)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        await api.environment("web", NOTIFIED.replace("NOTIFY_URL", str(server.make_url("/hook"))), "gated-stack")
        async with running_services(bus, api.settings, api.tenant, tmp_path, egress_allow=("127.0.0.1/32",)):
            run_id = await api.start("web")
            await waiting_approval(api, run_id)
            url = bodies[0]["callbackUrl"]
            assert url.startswith(f"{api.url}/v1/callbacks/approvals/")
            async with api.session.post(url, json={"decision": "approve", "comment": "from chat"}) as response:
                assert response.status == 200, await response.text()
            events = await api.events(run_id)
            async with api.session.post(url, json={"decision": "reject"}) as response:
                assert response.status == 409
    finally:
        await server.close()
    assert events[-1].json()["status"] == "succeeded"
    decided = next(e.json() for e in events if e.event == "approval.decided")
    assert (decided["decided_by"], decided["comment"]) == ("callback", "from chat")


async def test_a_refused_decision_does_not_use_the_callback_token_up(
    api: Api, bus: Bus, settings: Settings, tmp_path: Path
) -> None:
    """A comment over 4 KiB is a 422 naming it (a cancel's reason too), and an approval decided
    already is a 409, both before the token is redeemed: the store would still redeem it."""
    from trellis_store.api import CallbackRedeem, Redeemed

    await api.environment("web", gated(""), "gated-stack")
    long = "x" * 4097
    async with running_services(bus, settings, api.tenant, tmp_path):
        run_id = await api.start("web")
        asked = await waiting_approval(api, run_id)
        path = callback_path(api, run_id, asked["attempt"])
        for who, where in ((None, path), ("operator", f"/v1/runs/{run_id}/approvals/{GATE}")):
            refused = await api.json("POST", where, status=422, who=who, json={"decision": "approve", "comment": long})
            assert refused["path"] == "comment", refused
        cancel = await api.json("POST", f"/v1/runs/{run_id}/cancel", status=422, who="operator", json={"reason": long})
        assert cancel["path"] == "reason", cancel
        body = {"decision": "approve", "comment": "x" * 4096}
        await api.json("POST", f"/v1/runs/{run_id}/approvals/{GATE}", status=200, who="operator", json=body)
        asked_store = ApprovalGet(tenant=api.tenant, run_id=run_id, activity_id=GATE)
        async with asyncio.timeout(15):
            while not (  # noqa: ASYNC110
                isinstance(got := await api.gateway.store.ask(asked_store, Approval), Approval) and got.decision
            ):
                await asyncio.sleep(0.05)
        fresh = callback_path(api, run_id, asked["attempt"])
        decided = await api.json("POST", fresh, status=409, who=None, json={"decision": "reject"})
        assert "approved by oli@example.com" in decided["detail"]
        await api.events(run_id)
    for used in (path, fresh):  # neither refusal used its token up
        claims = callbacks.verify(callbacks.key_bytes(CALLBACK_KEY), used.rsplit("/", 1)[1], datetime.now(UTC))
        assert not isinstance(claims, str), claims
        redeem = CallbackRedeem(tenant=api.tenant, token_id=claims.token_id, expires_at=claims.expires_at)
        assert isinstance(await api.gateway.store.ask(redeem, Redeemed), Redeemed)


async def test_only_a_listed_approver_decides_whatever_the_role_of_others_and_every_refusal_is_audited(
    api: Api, bus: Bus, settings: Settings, tmp_path: Path
) -> None:
    """An admin not listed is refused (403, naming why), as is a token of another tenant (404:
    the run is absent there); each refusal is in the refused caller's own tenant's audit trail,
    with the run, the activity and why. A listed viewer decides."""
    from trellis_store.api import AuditEntries, AuditList, IssuedToken, TenantCreate

    await api.environment("web", gated("lee@example.com, ada@elsewhere.example"), "gated-stack")
    stranger_tenant = f"{api.tenant}-x"
    stranger = await api.gateway.store.ask(
        TenantCreate(name=stranger_tenant, admin_user="lee@example.com"), IssuedToken
    )
    assert isinstance(stranger, IssuedToken), stranger
    api.tokens["stranger"] = stranger.token  # listed user's name, another tenant's token
    api.tokens["lee"] = await api.token("viewer", "lee@example.com")
    path = f"/v1/runs/{{}}/approvals/{GATE}"
    async with running_services(bus, settings, api.tenant, tmp_path):
        run_id = await api.start("web")
        await waiting_approval(api, run_id)
        body = {"decision": "approve"}
        admin = await api.json("POST", path.format(run_id), status=403, who="admin", json=body)
        assert admin["detail"] == f"ada@example.com is not among the approvers of {GATE}"
        absent = await api.json("POST", path.format(run_id), status=404, who="stranger", json=body)
        assert run_id in absent["detail"]
        decided = await api.json("POST", path.format(run_id), status=200, who="lee", json=body)
        assert decided["decided_by"] == "lee@example.com"
        events = await api.events(run_id)
    assert events[-1].json()["status"] == "succeeded"
    for tenant, actor, status in ((api.tenant, "ada@example.com", 403), (stranger_tenant, "lee@example.com", 404)):
        audit = await api.gateway.store.ask(AuditList(tenant=tenant), AuditEntries)
        assert isinstance(audit, AuditEntries)
        [refusal] = [e for e in audit.entries if e.action == "approval.refused"]
        assert (refusal.actor, refusal.target, refusal.detail["activity"]) == (actor, run_id, GATE)
        assert refusal.detail["status"] == status
        assert refusal.detail["why"]
        assert refusal.detail["decision"] == "approved"
