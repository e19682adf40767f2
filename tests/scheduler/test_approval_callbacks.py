"""Approval callback URLs on the real bus: the compiler, a scheduler and an agent run an approval
hook whose webhook notification carries `$(approval.callback_url)$`; every attempt gets its own
signed token for exactly its tenant, run, activity and attempt."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import nats.js.errors
import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import TestServer
from scheduler_support import recording, request, running_agent, running_compiler, running_scheduler, sources_of

from trellis_core.bus import Bus
from trellis_core.callbacks import CALLBACK_PATH, CallbackClaims, key_bytes, verify
from trellis_core.errors import ConfigError
from trellis_core.events import ApprovalDecided, ApprovalRequested
from trellis_core.settings import Settings
from trellis_scheduler.kv import run_state_bucket
from trellis_scheduler.service import serve

KEY = "k" * 16 + "0123456789abcdef"  # 32 characters: the shortest key allowed
GATE = "environment/on-init/gate"
GATED = """\
apiVersion: trellis.dev/v1
kind: ResourceTemplate
metadata: {name: box}
spec:
  provider: custom
  providerOptions:
    custom:
      tasks:
        - {name: make, type: script, options: {script: {script: "true"}}}
---
apiVersion: trellis.dev/v1
kind: EnvironmentTemplate
metadata: {name: gated}
spec:
  version: v1
  agents: [{name: default}]
  resources: [{name: box}]
  hooks:
    onInit:
      - name: gate
        type: approval
        retries: 1
        timeoutSeconds: 600
        options: {approval: {type: webhook, webhook: {endpoint: "NOTIFY_URL"}}}
---
apiVersion: trellis.dev/v1
kind: Environment
metadata: {name: gated}
spec:
  template: {name: gated, version: v1}
"""


class Chat:
    """The approvers' chat: records every notification; answers 500 to the first `failures`."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.bodies: list[dict[str, Any]] = []

    async def hook(self, req: web.Request) -> web.Response:
        self.bodies.append(await req.json())
        return web.Response(status=500 if len(self.bodies) <= self.failures else 200)


@asynccontextmanager
async def chat_server(failures: int = 0) -> AsyncIterator[tuple[Chat, str]]:
    chat = Chat(failures)
    app = web.Application()
    app.router.add_post("/hook", chat.hook)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield chat, str(server.make_url("/hook"))
    finally:
        await server.close()


def with_key(settings: Settings, key: str = KEY, **kw: Any) -> Settings:
    return msgspec.structs.replace(settings, callback_key=key, **kw)


async def approve(bus: Bus, tenant: str, run_id: str, attempt: int) -> None:
    decided = ApprovalDecided(
        tenant=tenant, run_id=run_id, activity_id=GATE, attempt=attempt, decision="approved", decided_by="lead"
    )
    await bus.publish_event(decided)


def claims_of(url: str, base: str) -> CallbackClaims:
    assert url.startswith(base.rstrip("/") + CALLBACK_PATH), url
    claims = verify(key_bytes(KEY), url.rsplit("/", 1)[1], datetime.now(UTC))
    assert isinstance(claims, CallbackClaims), claims
    return claims


async def test_each_approval_attempt_notifies_with_a_url_signed_for_exactly_that_attempt(
    bus: Bus, settings: Settings, unique: str, tmp_path: Path
) -> None:
    signed = with_key(settings, gateway_public_url="https://gw.example.com/", callback_ttl_seconds=3600.0)
    async with (
        chat_server(failures=1) as (chat, url),
        recording(bus, unique) as rec,
        running_compiler(bus),
        running_scheduler(bus, signed, unique),
        running_agent(bus, tmp_path, unique, egress_allow=("127.0.0.1/32",)),
    ):
        run_id = await request(bus, unique, sources_of(GATED.replace("NOTIFY_URL", url)), "gated")
        await rec.first(ApprovalRequested, run_id, within=60, attempt=2)
        minted_by = datetime.now(UTC).timestamp()
        await approve(bus, unique, run_id, attempt=2)
        done = await rec.completion(run_id, within=60)
    assert done.status == "succeeded", done.message
    first, second = (body["callbackUrl"] for body in chat.bodies)
    assert first != second
    for attempt, link in enumerate((first, second), start=1):
        claims = claims_of(link, "https://gw.example.com")
        assert (claims.tenant, claims.run_id, claims.activity_id, claims.attempt) == (unique, run_id, GATE, attempt)
        assert claims.expires <= minted_by + 600  # the approval's own timeout is shorter than the TTL
    assert verify(key_bytes("x" * 32), second.rsplit("/", 1)[1], datetime.now(UTC)) == (
        "callback token signature does not match"
    )


async def test_without_a_public_url_the_callback_points_at_the_gateways_listen_address(
    bus: Bus, settings: Settings, unique: str, tmp_path: Path
) -> None:
    signed = with_key(settings, gateway_listen="127.0.0.1:18080", callback_ttl_seconds=60.0)
    async with (
        chat_server() as (chat, url),
        recording(bus, unique) as rec,
        running_compiler(bus),
        running_scheduler(bus, signed, unique),
        running_agent(bus, tmp_path, unique, egress_allow=("127.0.0.1/32",)),
    ):
        run_id = await request(bus, unique, sources_of(GATED.replace("NOTIFY_URL", url)), "gated")
        await rec.first(ApprovalRequested, run_id, within=60)
        await approve(bus, unique, run_id, attempt=1)
        assert (await rec.completion(run_id, within=60)).status == "succeeded"
    claims = claims_of(chat.bodies[0]["callbackUrl"], "http://127.0.0.1:18080")
    assert claims.expires <= datetime.now(UTC).timestamp() + 60  # the TTL is shorter than the timeout


async def test_with_no_callback_key_the_url_is_empty_and_the_run_is_warned_about_once(
    bus: Bus, settings: Settings, unique: str, tmp_path: Path
) -> None:
    unsigned = with_key(settings, key="")
    with structlog.testing.capture_logs() as logs:
        async with (
            chat_server(failures=1) as (chat, url),
            recording(bus, unique) as rec,
            running_compiler(bus),
            running_scheduler(bus, unsigned, unique),
            running_agent(bus, tmp_path, unique, egress_allow=("127.0.0.1/32",)),
        ):
            run_id = await request(bus, unique, sources_of(GATED.replace("NOTIFY_URL", url)), "gated")
            await rec.first(ApprovalRequested, run_id, within=60, attempt=2)
            await approve(bus, unique, run_id, attempt=2)
            assert (await rec.completion(run_id, within=60)).status == "succeeded"
    assert [body["callbackUrl"] for body in chat.bodies] == ["", ""]
    warned = [e for e in logs if e["event"] == "approval_callback_url_empty" and e.get("run") == run_id]
    assert len(warned) == 1, warned
    assert "TRELLIS_CALLBACK_KEY" in warned[0]["reason"]


async def test_a_callback_key_too_short_to_sign_with_stops_the_scheduler_naming_it(
    bus: Bus, settings: Settings, unique: str
) -> None:
    with pytest.raises(ConfigError, match="TRELLIS_CALLBACK_KEY must be set to at least 32 characters"):
        await serve(bus, with_key(settings, key="short"), asyncio.Event(), tenant=unique)


async def test_deploy_records_an_older_scheduler_kept_in_its_bucket_are_deleted_on_recovery(
    bus: Bus, settings: Settings, unique: str
) -> None:
    kv = await run_state_bucket(bus.js, settings)
    old = f"deployed.{unique}.web"
    await kv.put(old, json.dumps({"app": {"url": {"value": "http://x"}}}).encode())
    with structlog.testing.capture_logs() as logs:
        async with running_scheduler(bus, settings, unique):
            with pytest.raises(nats.js.errors.KeyNotFoundError):
                await kv.get(old)
    [removed] = [e for e in logs if e["event"] == "old_deploy_records_removed"]
    assert removed["count"] == 1
    assert removed["keys"] == [old]
