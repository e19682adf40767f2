"""The `http` executor: one HTTP call with aiohttp; success is a condition over the response.

TLS is verified unless the spec turns it off; where the call may go is the agent's egress policy.
The response (status, headers, JSON body, text) is the activity's outputs and the `response`
name of its success condition (default: 2xx). A 5xx, 429 or a network error fails retryably;
any other refusal does not. A body is read to its end or to MAX_BODY_BYTES: a longer one is
cut there (logged as cut, `json` null).
"""

from __future__ import annotations

import json
import time
from typing import Any

import aiohttp
import msgspec

from trellis_agent.conditions import evaluate
from trellis_agent.egress import EgressDenied, EgressPolicy, egress_session
from trellis_agent.executors.base import Outcome, Sink, Workspace
from trellis_agent.executors.bodies import read_body
from trellis_core.events import WorkItem
from trellis_core.workflow import HttpSpec

MAX_BODY_BYTES = 1024 * 1024  # read at most this much of a response; the rest is cut off
LOGGED_BODY_CHARS = 4096
DEFAULT_TIMEOUT_SECONDS = 300.0


class HttpResponse(msgspec.Struct, frozen=True, kw_only=True):
    status: int
    headers: dict[str, str]
    body: str
    json: Any = None
    truncated: bool = False  # the body was longer than MAX_BODY_BYTES and is cut there

    def scope(self) -> dict[str, Any]:
        """The `response` name in conditions and the outputs of an http activity."""
        return {"status": self.status, "headers": self.headers, "json": self.json, "body": self.body}


class HttpFailure(msgspec.Struct, frozen=True):
    reason: str
    retryable: bool = True


async def send(
    session: aiohttp.ClientSession,
    *,
    method: str,
    url: str,
    headers: dict[str, str],
    body: str | bytes,
    verify_tls: bool,
    timeout_seconds: float | None,
) -> HttpResponse | HttpFailure:
    """One request; a network error or timeout comes back as an HttpFailure (None: no limit here)."""
    try:
        async with session.request(
            method.upper(),
            url,
            headers=headers,
            data=body or None,
            ssl=verify_tls,
            timeout=aiohttp.ClientTimeout(total=timeout_seconds),
            allow_redirects=True,
        ) as resp:
            raw, truncated = await read_body(resp.content, MAX_BODY_BYTES)
            text = raw.decode(resp.charset or "utf-8", errors="replace")
            return HttpResponse(
                status=resp.status,
                headers={k: v for k, v in resp.headers.items()},
                body=text,
                json=None if truncated else _json_or_none(text),
                truncated=truncated,
            )
    except EgressDenied as exc:  # the address will not change on a retry
        return HttpFailure(str(exc), retryable=False)
    except TimeoutError:
        within = f" within {timeout_seconds:g}s" if timeout_seconds is not None else ""
        return HttpFailure(f"{method.upper()} {url}: no response{within}")
    except aiohttp.ClientConnectorCertificateError as exc:  # a retry meets the same certificate
        return HttpFailure(f"{method.upper()} {url}: TLS certificate not trusted: {exc}", retryable=False)
    except aiohttp.ClientError as exc:
        return HttpFailure(f"{method.upper()} {url}: {type(exc).__name__}: {exc}")
    except ValueError as exc:  # an invalid URL
        return HttpFailure(f"{method.upper()} {url}: {exc}", retryable=False)


def _json_or_none(text: str) -> Any:
    try:
        return json.loads(text) if text.strip() else None
    except json.JSONDecodeError:
        return None


def retryable_status(status: int) -> bool:
    return status >= 500 or status in (408, 425, 429)


class HttpExecutor:
    """Runs http activities. Owns one ClientSession held to `policy` (default: no internal
    addresses), made on first use; `close()` at shutdown."""

    def __init__(self, policy: EgressPolicy | None = None, session: aiohttp.ClientSession | None = None) -> None:
        self.policy = policy if policy is not None else EgressPolicy()
        self._session = session
        self._owns_session = session is None

    async def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = egress_session(self.policy)
        return self._session

    async def close(self) -> None:
        if self._session is not None and self._owns_session:
            await self._session.close()
            self._session = None

    async def run(self, work: WorkItem, workspace: Workspace, sink: Sink) -> Outcome:
        spec = work.activity.spec
        if not isinstance(spec, HttpSpec):
            return Outcome.failed(f"not an http spec: {spec.__struct_config__.tag}", retryable=False)
        # The activity's own timeout is enforced by `execute` (a timed-out outcome); a request
        # limit of the same length would race it and end as a plain retryable failure.
        limit = work.activity.timeout_seconds
        timeout = None if limit is not None and limit > 0 else DEFAULT_TIMEOUT_SECONDS
        return await call_and_judge(await self.session(), spec, timeout, sink)


async def call_and_judge(
    session: aiohttp.ClientSession, spec: HttpSpec, timeout_seconds: float | None, sink: Sink
) -> Outcome:
    """Send `spec`, log what happened, and judge the response by the spec's success condition."""
    started = time.monotonic()
    await sink.system(f"{spec.method.upper()} {spec.url}")
    result = await send(
        session,
        method=spec.method,
        url=spec.url,
        headers=spec.headers,
        body=spec.body,
        verify_tls=spec.verify_tls,
        timeout_seconds=timeout_seconds,
    )
    if isinstance(result, HttpFailure):
        await sink.system(result.reason)
        return Outcome.failed(result.reason, retryable=result.retryable)
    elapsed_ms = (time.monotonic() - started) * 1000
    await sink.system(f"{result.status} after {elapsed_ms:.0f} ms")
    if result.truncated:
        await sink.system(f"response body cut at {MAX_BODY_BYTES:,} bytes: the rest was not read")
    if result.body:
        shown = result.body[:LOGGED_BODY_CHARS]
        await sink.write("stdout", shown if shown.endswith("\n") else shown + "\n")
    return judge(result, spec.success_condition)


def judge(response: HttpResponse, success_condition: str) -> Outcome:
    outputs = response.scope()
    if success_condition:
        verdict = evaluate(success_condition, {"response": outputs})
        if verdict.error:
            return Outcome.failed(verdict.error, retryable=False)
        if verdict.holds:
            return Outcome.succeeded(outputs)
        return Outcome.failed(
            f"HTTP {response.status}: the success condition {success_condition!r} does not hold",
            retryable=retryable_status(response.status),
        )
    if 200 <= response.status < 300:
        return Outcome.succeeded(outputs)
    return Outcome.failed(f"HTTP {response.status}", retryable=retryable_status(response.status))
