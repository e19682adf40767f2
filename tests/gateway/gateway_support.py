"""What gateway tests share beside their fixtures (conftest.py): the test bundle, an HTTP client
whose answers are read whole (`Api`, `Answer`), tenants with a token per role, and `eventually`."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import msgspec
import pytest
from multidict import CIMultiDictProxy

from trellis_core.settings import Settings

START_SECONDS = 30.0
PROBLEM_JSON = "application/problem+json"

# A small bundle whose EnvironmentTemplate `shop` has a variable of every rule: required (team),
# restricted (region), notallowed (owner), sensitive (password).
TEMPLATES = """\
apiVersion: trellis.dev/v1
kind: ResourceTemplate
metadata: {name: box, description: A box}
spec:
  provider: custom
  variables:
    - {name: size, value: small}
  providerOptions:
    custom:
      tasks:
        - {name: make, type: script, options: {script: {script: "echo $(environment.name)$"}}}
---
apiVersion: trellis.dev/v1
kind: EnvironmentTemplate
metadata: {name: shop, description: A shop}
spec:
  version: v1
  agents: [{name: default}]
  resources:
    - name: box
  variables:
    - {name: team, options: {required: true}}
    - name: region
      value: eu-west-1
      options: {override: {type: restricted, restrictedValues: [eu-west-1, us-east-1]}}
    - {name: owner, value: platform, options: {override: {type: notallowed}}}
    - {name: password, value: "", options: {sensitive: true}}
"""
SOURCES = [{"path": "shop.yaml", "text": TEMPLATES}]


@dataclass(frozen=True)
class GatewayServer:
    url: str
    admin_token: str
    callback_key: str
    settings: Settings


@dataclass(frozen=True)
class Tenant:
    name: str
    admin: str
    operator: str
    viewer: str

    def token(self, role: str) -> str:
        return {"admin": self.admin, "operator": self.operator, "viewer": self.viewer}[role]


@dataclass(frozen=True)
class Answer:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "").split(";")[0].strip()

    def json(self) -> Any:
        return msgspec.json.decode(self.body)

    def problem(self, status: int) -> dict[str, Any]:
        """The problem+json body, after checking the status, the media type and its shape."""
        assert self.status == status, (self.status, self.body[:2000])
        assert self.content_type == PROBLEM_JSON, self.headers
        problem = self.json()
        assert problem["status"] == status
        assert isinstance(problem["title"], str)
        assert problem["title"]
        assert set(problem) <= {"type", "title", "status", "detail", "path", "problems"}
        return dict(problem)

    def ok(self, status: int = 200) -> Any:
        assert self.status == status, (self.status, self.body[:2000])
        return self.json()


class Api:
    """Calls to the gateway; every answer read whole (streams: use `session` and `url` directly)."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session = session
        self.url = url

    async def call(
        self,
        method: str,
        path: str,
        *,
        token: str | None = None,
        json: Any = None,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
    ) -> Answer:
        sent = dict(headers or {})
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        if json is not None:
            data = msgspec.json.encode(json)
            sent.setdefault("Content-Type", "application/json")
        async with self.session.request(method, self.url + path, data=data, headers=sent, params=params) as resp:
            return Answer(resp.status, resp.headers, await resp.read())


async def create_tenant(api: Api, admin_token: str, name: str) -> Tenant:
    """A tenant with a token of every role (its first admin's, then one issued per role)."""
    created = (await api.call("POST", "/v1/tenants", token=admin_token, json={"name": name})).ok(201)
    admin = created["token"]
    tokens = {}
    for role in ("operator", "viewer"):
        body = {"role": role, "user": f"{role}@{name}.example"}
        tokens[role] = (await api.call("POST", "/v1/tokens", token=admin, json=body)).ok(201)["token"]
    return Tenant(name=name, admin=admin, operator=tokens["operator"], viewer=tokens["viewer"])


async def eventually(check: Callable[[], Awaitable[bool]], *, within: float = 10.0, what: str = "") -> None:
    """Wait until `check()` is true (polled), failing after `within` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not await check():
        if loop.time() > deadline:
            pytest.fail(f"not within {within:g}s: {what or check}")
        await asyncio.sleep(0.05)
