"""The agent's egress policy: http and function activities reach no internal address unless allowed."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from agent_support import RecordingSink, work_item
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult

from trellis_agent.config import AgentConfig
from trellis_agent.egress import EgressPolicy, egress_session
from trellis_agent.executors.base import Outcome, Workspace, execute
from trellis_agent.executors.function import FunctionExecutor
from trellis_agent.executors.http import HttpExecutor
from trellis_core.errors import ConfigError
from trellis_core.workflow import FunctionSpec, HttpSpec

LOOPBACK_ONLY = EgressPolicy.parse(["127.0.0.1/32"])


@dataclass
class Site:
    url: str
    hits: list[str] = field(default_factory=list)


@pytest.fixture
async def sites() -> AsyncIterator[tuple[Site, Site]]:
    """A server on 127.0.0.1 and one on 127.0.0.2 (loopback too, but outside 127.0.0.1/32)."""
    runners: list[web.AppRunner] = []
    found: list[Site] = []
    for address in ("127.0.0.1", "127.0.0.2"):
        site = Site("")
        app = web.Application()
        app.router.add_get("/ok", _ok(site))
        app.router.add_get("/redirect", _redirect(found))
        runner = web.AppRunner(app)
        await runner.setup()
        tcp = web.TCPSite(runner, address, 0)
        await tcp.start()
        port = tcp._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        site.url = f"http://{address}:{port}"
        found.append(site)
        runners.append(runner)
    yield found[0], found[1]
    for runner in runners:
        await runner.cleanup()


def _ok(site: Site) -> web.RequestHandler:  # type: ignore[type-arg]
    async def handler(request: web.Request) -> web.Response:
        site.hits.append(request.path_qs)
        return web.json_response({"ok": True})

    return handler


def _redirect(found: list[Site]) -> web.RequestHandler:  # type: ignore[type-arg]
    async def handler(request: web.Request) -> web.Response:
        target = request.query.get("to", "")
        raise web.HTTPFound(target.replace("SECOND", found[1].url))

    return handler


class MappedResolver(AbstractResolver):
    """Resolves the names it was given to fixed addresses, as a hostile DNS server would."""

    def __init__(self, names: dict[str, str]) -> None:
        self._names = names

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if host not in self._names:
            raise OSError(f"{host} does not resolve here")
        address = self._names[host]
        return [{"hostname": host, "host": address, "port": port, "family": family, "proto": 0, "flags": 0}]

    async def close(self) -> None:
        return None


async def _get(http: HttpExecutor, url: str, tmp_path: Path) -> tuple[Outcome, RecordingSink]:
    work = work_item(HttpSpec(url=url, method="GET"), kind="http")
    sink = RecordingSink()
    try:
        return await execute(http, work, Workspace.for_work(tmp_path, work), sink), sink
    finally:
        await http.close()


def _denied(host: str, address: str) -> str:
    return f"egress to {host} ({address}) denied by the agent's egress policy (TRELLIS_AGENT_EGRESS_ALLOW)"


async def test_loopback_is_denied_by_default(sites: tuple[Site, Site], tmp_path: Path) -> None:
    first, _ = sites
    outcome, sink = await _get(HttpExecutor(), f"{first.url}/ok", tmp_path)
    assert not outcome.ok
    assert not outcome.retryable
    assert outcome.reason == _denied("127.0.0.1", "127.0.0.1")
    assert _denied("127.0.0.1", "127.0.0.1") in sink.text()
    assert first.hits == []


async def test_loopback_is_reached_when_the_allow_list_names_it(sites: tuple[Site, Site], tmp_path: Path) -> None:
    first, _ = sites
    config = AgentConfig.from_env({"TRELLIS_AGENT_EGRESS_ALLOW": "127.0.0.1/32"})
    outcome, _ = await _get(HttpExecutor(config.egress_policy()), f"{first.url}/ok", tmp_path)
    assert outcome.ok, outcome.reason
    assert first.hits == ["/ok"]


async def test_a_public_looking_name_that_resolves_to_loopback_is_denied(
    sites: tuple[Site, Site], tmp_path: Path
) -> None:
    first, _ = sites
    port = first.url.rsplit(":", 1)[1]
    session = egress_session(EgressPolicy(), MappedResolver({"api.example.com": "127.0.0.1"}))
    try:
        outcome, _ = await _get(HttpExecutor(session=session), f"http://api.example.com:{port}/ok", tmp_path)
    finally:
        await session.close()
    assert not outcome.ok
    assert not outcome.retryable
    assert outcome.reason == _denied("api.example.com", "127.0.0.1")
    assert first.hits == []


async def test_a_redirect_from_an_allowed_server_to_a_denied_address_is_denied(
    sites: tuple[Site, Site], tmp_path: Path
) -> None:
    first, second = sites
    outcome, _ = await _get(HttpExecutor(LOOPBACK_ONLY), f"{first.url}/redirect?to=SECOND/ok", tmp_path)
    assert not outcome.ok
    assert not outcome.retryable
    assert outcome.reason == _denied("127.0.0.2", "127.0.0.2")
    assert second.hits == []


async def test_a_redirect_to_a_name_that_resolves_to_a_denied_address_is_denied(
    sites: tuple[Site, Site], tmp_path: Path
) -> None:
    first, second = sites
    port = second.url.rsplit(":", 1)[1]
    session = egress_session(LOOPBACK_ONLY, MappedResolver({"cdn.example.net": "127.0.0.2"}))
    url = f"{first.url}/redirect?to=http://cdn.example.net:{port}/ok"
    try:
        outcome, _ = await _get(HttpExecutor(session=session), url, tmp_path)
    finally:
        await session.close()
    assert outcome.reason == _denied("cdn.example.net", "127.0.0.2")
    assert second.hits == []


@pytest.mark.parametrize("url", ["http://169.254.169.254/latest/meta-data/", "http://metadata.internal/"])
async def test_the_cloud_metadata_address_is_denied(url: str, tmp_path: Path) -> None:
    session = egress_session(EgressPolicy(), MappedResolver({"metadata.internal": "169.254.169.254"}))
    try:
        outcome, _ = await _get(HttpExecutor(session=session), url, tmp_path)
    finally:
        await session.close()
    host = url.split("/")[2]
    assert outcome.reason == _denied(host, "169.254.169.254")
    assert not outcome.retryable


async def test_a_function_endpoint_on_a_denied_address_fails_without_retrying(
    sites: tuple[Site, Site], tmp_path: Path
) -> None:
    first, _ = sites
    http = HttpExecutor()
    work = work_item(FunctionSpec(endpoint=f"{first.url}/ok", repeat_seconds=0.01), kind="function")
    try:
        outcome = await execute(FunctionExecutor(http), work, Workspace.for_work(tmp_path, work), RecordingSink())
    finally:
        await http.close()
    assert not outcome.ok
    assert not outcome.retryable
    assert outcome.reason == _denied("127.0.0.1", "127.0.0.1")
    assert first.hits == []


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "::1",
        "169.254.169.254",
        "fe80::1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "fc00::1",
        "fd12:3456::1",
        "0.0.0.0",
        "::",
        "224.0.0.1",
        "ff02::1",
        "240.0.0.1",
        "100.64.0.1",
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
        "2002:7f00:1::1",  # 6to4 of 127.0.0.1
    ],
)
def test_internal_addresses_are_refused_unless_allowed(address: str) -> None:
    assert not EgressPolicy().permits(address)
    assert EgressPolicy.parse([f"{address}/128" if ":" in address else f"{address}/32"]).permits(address)


@pytest.mark.parametrize("address", ["93.184.216.34", "2606:4700::1111", "8.8.8.8"])
def test_public_addresses_are_allowed(address: str) -> None:
    assert EgressPolicy().permits(address)


def test_an_allow_list_entry_that_is_not_a_cidr_names_the_variable() -> None:
    with pytest.raises(ConfigError, match=r"TRELLIS_AGENT_EGRESS_ALLOW: 'localhost' is not a CIDR"):
        AgentConfig.from_env({"TRELLIS_AGENT_EGRESS_ALLOW": "127.0.0.1/32,localhost"})


def test_the_allow_list_takes_several_networks() -> None:
    config = AgentConfig.from_env({"TRELLIS_AGENT_EGRESS_ALLOW": "127.0.0.0/8,10.0.0.0/8,fd00::/8"})
    policy = config.egress_policy()
    assert policy.permits("127.0.0.2")
    assert policy.permits("10.9.9.9")
    assert policy.permits("fd00::5")
    assert not policy.permits("192.168.0.1")
