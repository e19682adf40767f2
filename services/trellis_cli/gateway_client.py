"""The CLI's side of the gateway: one aiohttp session with the bearer token, typed answers, and
every refusal (`application/problem+json`) turned into one clear error naming the status, the
title, the detail, the field path and each template problem with its file:line:col."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import quote

import aiohttp
import msgspec

from trellis_core.errors import ConfigError, TrellisError
from trellis_core.events import Problem
from trellis_core.settings import Settings

T = TypeVar("T")

READ_TIMEOUT_SECONDS = 60.0
# Mirrors the gateway's problem body (RFC 9457); fields it does not send stay empty.
PROBLEM_TYPES = ("application/problem+json", "application/json")


class GatewayError(TrellisError):
    """The gateway refused a request, or could not be reached; the message says which and why."""

    def __init__(self, message: str, *, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class ProblemBody(msgspec.Struct, frozen=True, kw_only=True):
    title: str = ""
    status: int = 0
    detail: str = ""
    path: str = ""
    problems: tuple[Problem, ...] = ()


class SseEvent(msgspec.Struct, frozen=True, kw_only=True):
    id: str = ""
    event: str = "message"
    data: str = ""


def gateway_configured() -> bool:
    """Whether commands with a bus mode (`logs`, `cancel`) should use the gateway instead."""
    return bool(os.environ.get("TRELLIS_GATEWAY_URL", "").strip())


def gateway_settings(command: str, tenant: str | None = None) -> Settings:
    """Settings of a command that works through the gateway: TRELLIS_GATEWAY_URL and TRELLIS_TOKEN
    are required (ConfigError names the one missing and where to get it)."""
    settings = Settings.from_env(None, **({"tenant": tenant} if tenant else {}))
    if not settings.gateway_url:
        raise ConfigError(
            f"`trellis {command}` works through the gateway: set TRELLIS_GATEWAY_URL (and TRELLIS_TOKEN); "
            "`trellis dev up` prints both, ready to paste"
        )
    if not settings.token:
        raise ConfigError(
            f"no token for the gateway at {settings.gateway_url}: set TRELLIS_TOKEN to a bearer token of your "
            "tenant (`trellis dev up` prints one)"
        )
    return settings


def describe_problem(method: str, path: str, status: int, reason: str, body: bytes, content_type: str) -> str:
    """One message for a refused request: `METHOD PATH: 422 Unprocessable Content: detail (at path)`,
    then each template problem on its own line, `file:line:col: path: message (hint)`."""
    problem = ProblemBody()
    if content_type in PROBLEM_TYPES:
        with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
            problem = msgspec.json.decode(body, type=ProblemBody)
    title = problem.title or reason
    detail = problem.detail or ("" if problem.title else body.decode(errors="replace").strip()[:500])
    message = f"{method} {path}: {status} {title}"
    if detail:
        message += f": {detail}"
    if problem.path:
        message += f" (at {problem.path})"
    if status == 401:
        message += " — check TRELLIS_TOKEN"
    for item in problem.problems:
        message += f"\n  {item}"
    return message


def quoted(segment: str) -> str:
    """One URL path segment (a run id, an environment name)."""
    return quote(segment, safe="")


class GatewayClient:
    """`async with GatewayClient(settings) as gw:` — requests to TRELLIS_GATEWAY_URL as TRELLIS_TOKEN."""

    def __init__(self, settings: Settings) -> None:
        self.base = settings.gateway_url.rstrip("/")
        self._token = settings.token
        self._connect_seconds = settings.connect_timeout_seconds
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> GatewayClient:
        timeout = aiohttp.ClientTimeout(total=None, connect=self._connect_seconds, sock_read=READ_TIMEOUT_SECONDS)
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else {}
        self._session = aiohttp.ClientSession(timeout=timeout, headers=headers)
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @contextlib.asynccontextmanager
    async def _request(
        self, method: str, path: str, *, body: Any = None, headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None, read_timeout: float | None = READ_TIMEOUT_SECONDS,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        assert self._session is not None, "use `async with GatewayClient(...)`"
        sent = dict(headers or {})
        data = None
        if body is not None:
            data = msgspec.json.encode(body)
            sent["Content-Type"] = "application/json"
        timeout = aiohttp.ClientTimeout(total=None, connect=self._connect_seconds, sock_read=read_timeout)
        try:
            async with self._session.request(
                method, self.base + path, data=data, headers=sent, params=params, timeout=timeout
            ) as response:
                if response.status >= 400:
                    text = await response.read()
                    raise GatewayError(
                        describe_problem(method, path, response.status, response.reason or "", text,
                                         response.content_type),
                        status=response.status,
                    )
                yield response
        except aiohttp.ClientConnectionError as exc:
            raise GatewayError(
                f"cannot reach the gateway at {self.base} (TRELLIS_GATEWAY_URL): {exc or type(exc).__name__}"
            ) from None
        except TimeoutError:
            raise GatewayError(f"{method} {path}: the gateway at {self.base} did not answer in time") from None

    async def call(
        self, method: str, path: str, into: type[T], *, body: Any = None,
        headers: Mapping[str, str] | None = None, params: Mapping[str, str] | None = None,
    ) -> tuple[T, Mapping[str, str]]:
        """The answer decoded as `into`, with the response headers; GatewayError otherwise."""
        async with self._request(method, path, body=body, headers=headers, params=params) as response:
            data = await response.read()
            try:
                return msgspec.json.decode(data, type=into), dict(response.headers)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                why = f"{method} {path}: the gateway's answer is not what the CLI expects: {exc}"
                raise GatewayError(why) from None

    async def send(
        self, method: str, path: str, *, body: Any = None, headers: Mapping[str, str] | None = None
    ) -> bytes:
        """The answer's bytes, whatever they are (a 202 or 204 may have none)."""
        async with self._request(method, path, body=body, headers=headers) as response:
            return await response.read()

    async def text(self, path: str, params: Mapping[str, str] | None = None) -> str:
        async with self._request("GET", path, params=params, headers={"Accept": "text/plain"}) as response:
            return await response.text()

    async def raw(self, path: str, params: Mapping[str, str] | None = None) -> bytes:
        async with self._request("GET", path, params=params) as response:
            return await response.read()

    async def events(
        self, path: str, *, last_event_id: str = "", params: Mapping[str, str] | None = None
    ) -> AsyncIterator[SseEvent]:
        """The server-sent events of `path` until the gateway ends the stream (no read timeout:
        a quiet run is not a dead one; the gateway's keep-alive comments keep proxies open)."""
        headers = {"Accept": "text/event-stream"}
        if last_event_id:
            headers["Last-Event-ID"] = last_event_id
        async with self._request("GET", path, headers=headers, params=params, read_timeout=None) as response:
            async for event in parse_sse(response.content):
                yield event


async def parse_sse(lines: AsyncIterable[bytes]) -> AsyncIterator[SseEvent]:
    """Events of a `text/event-stream` body (the WHATWG rules: `field: value` lines, a blank line
    ends an event, `:` starts a comment, several `data:` lines join with newlines)."""
    fields: dict[str, str] = {}
    data: list[str] = []
    async for raw in lines:
        line = raw.decode(errors="replace").rstrip("\r\n")
        if not line:
            if data:
                yield SseEvent(id=fields.get("id", ""), event=fields.get("event", "message"), data="\n".join(data))
            fields, data = {}, []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            data.append(value)
        elif name in ("id", "event"):
            fields[name] = value
    if data:
        yield SseEvent(id=fields.get("id", ""), event=fields.get("event", "message"), data="\n".join(data))
