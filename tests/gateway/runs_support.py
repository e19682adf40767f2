"""What the gateway's run tests share: template bundles that run on a local process agent, the
in-process services that run them (compiler, scheduler, agent: as `default_services` starts them),
and an SSE reader."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp

from running_agent import running_agent
from trellis_core.bus import Bus
from trellis_core.settings import Settings
from trellis_engine.state import TERMINAL_RUN
from trellis_store.api import Role

HELLO = """\
apiVersion: trellis.dev/v1
kind: ResourceTemplate
metadata: {name: hello}
spec:
  provider: custom
  providerOptions:
    custom:
      tasks:
        - name: say
          type: script
          options:
            script:
              script: |
                for i in 1 2 3 4 5; do echo "hello line $i for $TRELLIS_ACTION"; done
                echo "to stderr" >&2
---
apiVersion: trellis.dev/v1
kind: EnvironmentTemplate
metadata: {name: hello-stack}
spec:
  version: v1
  agents: [{name: default}]
  resources: [{name: hello}]
"""

SLOW = """\
apiVersion: trellis.dev/v1
kind: ResourceTemplate
metadata: {name: slow}
spec:
  provider: custom
  providerOptions:
    custom:
      tasks:
        - name: wait
          type: script
          options:
            script:
              script: |
                if [ "$TRELLIS_ACTION" = destroy ]; then exit 0; fi
                echo started
                sleep 300
---
apiVersion: trellis.dev/v1
kind: EnvironmentTemplate
metadata: {name: slow-stack}
spec:
  version: v1
  agents: [{name: default}]
  resources: [{name: slow}]
"""

# net -> db -> app of script tasks (db writes a `host` output and refuses to be destroyed) and an
# onInit hook; tests append the EnvironmentTemplate's actions or schedules.
THREE_TIER = """\
apiVersion: trellis.dev/v1
kind: ResourceTemplate
metadata: {name: net}
spec:
  provider: custom
  providerOptions:
    custom:
      tasks: [{name: make, type: script, options: {script: {script: "echo net $TRELLIS_ACTION"}}}]
---
apiVersion: trellis.dev/v1
kind: ResourceTemplate
metadata: {name: db}
spec:
  provider: custom
  providerOptions:
    custom:
      tasks:
        - name: make
          type: script
          options:
            script:
              script: |
                if [ "$TRELLIS_ACTION" = destroy ]; then echo "cannot drop the database" >&2; exit 3; fi
                echo '{"host": "db-'"$TRELLIS_ACTION"'"}' > "$TRELLIS_OUTPUTS"
---
apiVersion: trellis.dev/v1
kind: ResourceTemplate
metadata: {name: app}
spec:
  provider: custom
  providerOptions:
    custom:
      tasks: [{name: make, type: script, options: {script: {script: "echo app $TRELLIS_ACTION"}}}]
---
apiVersion: trellis.dev/v1
kind: EnvironmentTemplate
metadata: {name: stack}
spec:
  version: v1
  agents: [{name: default}]
  resources:
    - name: net
    - name: db
      dependsOn: [{name: net}]
    - name: app
      dependsOn: [{name: db}]
  hooks:
    onInit: [{name: hello, type: script, options: {script: {script: "echo hello"}}}]
"""

GATED = """\
apiVersion: trellis.dev/v1
kind: ResourceTemplate
metadata: {name: hello}
spec:
  provider: custom
  providerOptions:
    custom:
      tasks:
        - name: say
          type: script
          options: {script: {script: "echo approved and done"}}
---
apiVersion: trellis.dev/v1
kind: EnvironmentTemplate
metadata: {name: gated-stack}
spec:
  version: v1
  agents: [{name: default}]
  resources: [{name: hello, dependsOn: []}]
  hooks:
    onInit:
      - name: gate
        type: approval
        options:
          approval:
            type: internal
            internal: {emails: [APPROVERS]}
"""
GATE = "environment/on-init/gate"


NOTIFIED = GATED.replace(
    "type: internal\n            internal: {emails: [APPROVERS]}",
    "type: webhook\n            webhook: {endpoint: NOTIFY_URL}",
)


def gated(approvers: str) -> str:
    """The gated template: `approvers` is the YAML list's inside (empty: anyone allowed)."""
    return GATED.replace("APPROVERS", approvers)


@asynccontextmanager
async def running_services(
    bus: Bus, settings: Settings, tenant: str, data_dir: Path, **agent: Any
) -> AsyncIterator[None]:
    """The compiler, a scheduler for `tenant` (on `settings`: its callback key and gateway URL
    sign approval callback URLs) and a process agent of `tenant` (`agent`: its config overrides)."""
    from trellis_compiler.service import serve as compiler
    from trellis_scheduler.service import serve as scheduler

    stop, ready = asyncio.Event(), asyncio.Event()
    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(compiler(bus, stop))
        tasks.create_task(scheduler(bus, settings, stop, tenant=tenant, ready=ready))
        try:
            async with asyncio.timeout(15):
                await ready.wait()
            async with running_agent(
                bus, data_dir, tenant=tenant, executor="process", shutdown_grace_seconds=2.0, **agent
            ):
                yield
        finally:
            stop.set()


@dataclass
class SseMessage:
    event: str = ""
    id: str = ""
    data: str = ""

    def json(self) -> Any:
        return json.loads(self.data)


@dataclass
class SseReader:
    """Reads a text/event-stream response message by message; `comments` counts heartbeats."""

    response: aiohttp.ClientResponse
    comments: int = 0
    _buffer: list[str] = field(default_factory=list)

    async def next(self, timeout: float = 30.0) -> SseMessage | None:  # noqa: ASYNC109
        """The next message, or None when the server ended the stream."""
        message = SseMessage()
        has_field = False
        async with asyncio.timeout(timeout):
            while True:
                raw = await self.response.content.readline()
                if not raw:
                    return None
                line = raw.decode().rstrip("\n")
                if not line:
                    if has_field:
                        return message
                    continue
                if line.startswith(":"):
                    self.comments += 1
                    continue
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                has_field = True
                if name == "data":
                    message.data = f"{message.data}\n{value}" if message.data else value
                elif name in ("event", "id"):
                    setattr(message, name, value)

    async def heartbeats(self, count: int, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        """Read until `count` more comment lines came, and nothing else."""
        goal = self.comments + count
        async with asyncio.timeout(timeout):
            while self.comments < goal:
                line = (await self.response.content.readline()).decode()
                assert line.startswith(":") or not line.strip(), f"a message while waiting for heartbeats: {line!r}"
                self.comments += line.startswith(":")

    async def until_end(self, timeout: float = 60.0) -> list[SseMessage]:  # noqa: ASYNC109
        """Every message until the server ends the stream."""
        messages: list[SseMessage] = []
        async with asyncio.timeout(timeout):
            while (message := await self.next(timeout)) is not None:
                messages.append(message)
        return messages


# ---- the store and gateway over HTTP ------------------------------------------------------------

ADMIN_TOKEN = "platform-admin-token-for-the-gateway-tests"
CALLBACK_KEY = "callback-key-for-the-gateway-tests-0123456789"
HEARTBEAT_SECONDS = 0.5


@dataclass
class Api:
    """The gateway at `url`, a tenant on it and tokens of that tenant by name."""

    url: str
    session: aiohttp.ClientSession
    tenant: str
    tokens: dict[str, str]
    gateway: Any  # trellis_gateway.context.Gateway
    bus: Bus

    def auth(self, who: str | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[who]}"} if who else {}

    def call(self, method: str, path: str, *, who: str | None = "admin", **kwargs: Any) -> Any:
        headers = self.auth(who) | kwargs.pop("headers", {})
        return self.session.request(method, self.url + path, headers=headers, **kwargs)

    async def json(self, method: str, path: str, *, status: int, who: str | None = "admin", **kwargs: Any) -> Any:
        async with self.call(method, path, who=who, **kwargs) as response:
            text = await response.text()
            assert response.status == status, f"{method} {path}: {response.status} {text}"
            return json.loads(text) if text else None

    async def token(self, role: Role, user: str, *, tenant: str | None = None) -> str:
        from trellis_store.api import IssuedToken, TokenCreate

        issued = await self.gateway.store.ask(
            TokenCreate(tenant=tenant or self.tenant, role=role, user=user, actor="tests"), IssuedToken
        )
        assert isinstance(issued, IssuedToken), issued
        return issued.token

    async def environment(self, name: str, bundle: str, template: str, variables: dict[str, str] | None = None) -> None:
        """Publish `bundle` and PUT environment `name` on its EnvironmentTemplate `template`@v1."""
        await self.json("POST", "/v1/templates", status=201, json={"sources": [{"path": "t.yaml", "text": bundle}]})
        body = {"template": {"name": template, "version": "v1"}, "variables": variables or {}, "agents": ["default"]}
        async with self.call("PUT", f"/v1/environments/{name}", json=body) as response:
            assert response.status in (200, 201), await response.text()

    async def start(self, environment: str, action: str = "deploy", **kwargs: Any) -> str:
        answer = await self.json(
            "POST", f"/v1/environments/{environment}/runs", status=202, json={"action": action}, **kwargs
        )
        return str(answer["run_id"])

    @asynccontextmanager
    async def sse(
        self, path: str, *, who: str = "admin", last_event_id: int | str | None = None
    ) -> AsyncIterator[SseReader]:
        headers = {"Accept": "text/event-stream"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = str(last_event_id)
        async with self.call("GET", path, who=who, headers=headers) as response:
            assert response.status == 200, await response.text()
            assert response.headers["Content-Type"].startswith("text/event-stream")
            yield SseReader(response)

    async def events(self, run_id: str, **kwargs: Any) -> list[SseMessage]:
        async with self.sse(f"/v1/runs/{run_id}/events", **kwargs) as reader:
            return await reader.until_end()

    @property
    def settings(self) -> Settings:
        """The gateway's settings: its callback key, and its URL as the public one."""
        import msgspec

        settings: Settings = self.gateway.settings
        return msgspec.structs.replace(settings, gateway_public_url=self.url)

    async def run_when(self, run_id: str, status: str, within: float = 30.0) -> dict[str, Any]:
        """`GET /v1/runs/{id}` once the store shows the run `status` (its projection follows the bus).
        A run that ends otherwise fails the test at once, showing the run."""
        run: dict[str, Any] = {}
        try:
            async with asyncio.timeout(within):
                while True:
                    run = await self.json("GET", f"/v1/runs/{run_id}", status=200)
                    if run["status"] == status:
                        return run
                    if run["status"] in TERMINAL_RUN and status in TERMINAL_RUN:
                        raise AssertionError(f"run {run_id} ended {run['status']}, not {status}: {run}")
                    await asyncio.sleep(0.05)
        except TimeoutError:
            raise AssertionError(f"run {run_id} not {status} within {within:g} s: {run}") from None


class Clock:
    """A schedule loop's clock (ScheduleRunner's), moved by the test."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@asynccontextmanager
async def gateway_stack(bus: Bus, store_settings: Settings, tenant: str) -> AsyncIterator[Api]:
    """The real gateway app on a free port beside the running store (conftest's `store_settings`),
    with tenant `tenant` (tokens: admin, operator, viewer). The app is served here rather than by
    `app.serve` so that its SSE heartbeat can be made short."""
    import msgspec
    from aiohttp.test_utils import TestServer

    from trellis_gateway.app import make_app
    from trellis_gateway.context import Gateway
    from trellis_gateway.streams import SSE_HEARTBEAT
    from trellis_store.api import IssuedToken, TenantCreate

    settings = msgspec.structs.replace(store_settings, admin_token=ADMIN_TOKEN, callback_key=CALLBACK_KEY)
    gateway = Gateway.create(bus, settings)
    app = make_app(gateway)
    app[SSE_HEARTBEAT] = HEARTBEAT_SECONDS
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as session:
            admin = await gateway.store.ask(TenantCreate(name=tenant, admin_user="ada@example.com"), IssuedToken)
            assert isinstance(admin, IssuedToken), admin
            api = Api(str(server.make_url("")).rstrip("/"), session, tenant, {"admin": admin.token}, gateway, bus)
            api.tokens["operator"] = await api.token("operator", "oli@example.com")
            api.tokens["viewer"] = await api.token("viewer", "vic@example.com")
            yield api
    finally:
        await server.close()
        await gateway.store.close()
