"""Gateway fixtures: the real state store (on this test's empty database) and the real gateway
listening on a free port, reached over HTTP.

- `store_settings`: the session settings with this test's `database_url` and a fresh seal key;
  the store service (`trellis_store.service.serve`) runs for the test.
- `gateway_server`: the gateway (`trellis_gateway.app.serve`) on 127.0.0.1:0 with a generated
  platform admin token and callback key (`GatewayServer`: url, admin_token, callback_key, settings).
- `api`: an `Api` over an aiohttp ClientSession; `await api.call(method, path, token=..., json=...)`
  answers an `Answer` (status, headers, body; `.json()`, `.problem(status)` asserts problem+json).
- `tenant`: a tenant named by `unique`, with admin, operator and viewer tokens (`Tenant`).
- `other_tenant`: a second tenant, for cross-tenant refusals.
- `published`: `tenant` with the `TEMPLATES` bundle published (EnvironmentTemplate `shop` v1).

The helpers themselves (`Api`, `Answer`, `Tenant`, `GatewayServer`, `TEMPLATES`, `SOURCES`,
`create_tenant`, `eventually`) live in `gateway_support.py`: `from gateway_support import ...`.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import msgspec
import pytest
from gateway_support import SOURCES, START_SECONDS, Api, GatewayServer, Tenant, create_tenant

from trellis_core.bus import Bus
from trellis_core.settings import Settings

if TYPE_CHECKING:
    from playwright.async_api import Page


async def _started(task: asyncio.Task[None], ready: asyncio.Event, what: str) -> None:
    """Wait until `ready` is set; fail with the service's own error if it stopped first."""
    waiter = asyncio.create_task(ready.wait())
    done, _ = await asyncio.wait({task, waiter}, timeout=START_SECONDS, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    if task in done:
        task.result()  # raises what stopped it
        pytest.fail(f"{what} stopped before it was ready")
    if waiter not in done:
        task.cancel()
        pytest.fail(f"{what} was not ready within {START_SECONDS:g}s")


async def _stopped(task: asyncio.Task[None], stop: asyncio.Event) -> None:
    stop.set()
    await asyncio.wait_for(task, timeout=START_SECONDS)


@pytest.fixture
async def store_settings(bus: Bus, settings: Settings, database_url: str) -> AsyncIterator[Settings]:
    """The state store service running on this test's empty database; its settings."""
    from trellis_store.service import serve

    configured = msgspec.structs.replace(
        settings, database_url=database_url, seal_key=base64.b64encode(secrets.token_bytes(32)).decode()
    )
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(serve(bus, configured, stop, ready), name="store")
    await _started(task, ready, "the state store")
    yield configured
    await _stopped(task, stop)


@pytest.fixture
async def gateway_server(bus: Bus, store_settings: Settings) -> AsyncIterator[GatewayServer]:
    """The gateway on a free port, with a generated platform admin token and callback key."""
    from trellis_gateway.app import serve

    admin_token, callback_key = secrets.token_urlsafe(32), secrets.token_hex(32)
    configured = msgspec.structs.replace(
        store_settings, gateway_listen="127.0.0.1:0", admin_token=admin_token, callback_key=callback_key
    )
    urls: list[str] = []
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(serve(bus, configured, stop, ready, bound=urls.append), name="gateway")
    await _started(task, ready, "the gateway")
    yield GatewayServer(url=urls[0], admin_token=admin_token, callback_key=callback_key, settings=configured)
    await _stopped(task, stop)


@pytest.fixture
async def api(gateway_server: GatewayServer) -> AsyncIterator[Api]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield Api(session, gateway_server.url)


@pytest.fixture
async def tenant(api: Api, gateway_server: GatewayServer, unique: str) -> Tenant:
    return await create_tenant(api, gateway_server.admin_token, unique)


@pytest.fixture
async def other_tenant(api: Api, gateway_server: GatewayServer, unique: str) -> Tenant:
    return await create_tenant(api, gateway_server.admin_token, f"{unique}-other")


@pytest.fixture
async def published(api: Api, tenant: Tenant) -> Tenant:
    """`tenant` with the `TEMPLATES` bundle published."""
    (await api.call("POST", "/v1/templates", token=tenant.operator, json={"sources": SOURCES})).ok(201)
    return tenant


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> object:
    """Remember whether the test's call failed (the console fixture takes a screenshot then)."""
    report = yield
    if call.when == "call":
        item.stash[_CALL_FAILED] = report.failed  # type: ignore[attr-defined]
    return report


_CALL_FAILED = pytest.StashKey[bool]()


@pytest.fixture
async def console_page(
    gateway_server: GatewayServer, request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[Page]:
    """A fresh chromium page at the gateway (console_support.py); `failure.png` in tmp_path on failure."""
    from console_support import browser_page

    failed: list[bool] = []
    async with browser_page(gateway_server.url, tmp_path, failed) as page:
        try:
            yield page  # type: ignore[misc]
        finally:
            failed.append(request.node.stash.get(_CALL_FAILED, True))
