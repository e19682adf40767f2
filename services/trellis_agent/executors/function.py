"""The `function` executor: POST to a function until it answers done or failed.

The protocol is docs/architecture.md, "The function protocol". Every `repeat_seconds` the agent
POSTs `{"inputs", "metadata", "previous"}`; the answer is `done` (outputs), `again` (its `data`
becomes `previous`), `failed` (final) or `transient` (call again; after `MAX_TRANSIENT` in a
row the attempt fails retryably and the scheduler's retry policy takes over). Past
`until_seconds` the activity fails as timed out. A function given as an image is started once
through a `FunctionHost` (a container backend); the agent may call that container's address
whatever its egress policy says, since it started the container itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
import urllib.parse
from typing import Any, Protocol, runtime_checkable

import aiohttp
import msgspec

from trellis_agent.egress import egress_session, literal_ip
from trellis_agent.executors.base import Outcome, Sink, Workspace
from trellis_agent.executors.http import (
    MAX_BODY_BYTES,
    HttpExecutor,
    HttpFailure,
    HttpResponse,
    retryable_status,
    send,
)
from trellis_core.events import WorkItem
from trellis_core.workflow import FunctionSpec

MAX_TRANSIENT = 3


@runtime_checkable
class FunctionHost(Protocol):
    """A container backend able to serve a function image; yields the function's base URL."""

    def serve(
        self, work: WorkItem, workspace: Workspace, sink: Sink
    ) -> contextlib.AbstractAsyncContextManager[str]: ...


class FunctionExecutor:
    def __init__(self, http: HttpExecutor, host: FunctionHost | None = None) -> None:
        self._http = http
        self._host = host

    async def run(self, work: WorkItem, workspace: Workspace, sink: Sink) -> Outcome:
        spec = work.activity.spec
        if not isinstance(spec, FunctionSpec):
            return Outcome.failed(f"not a function spec: {spec.__struct_config__.tag}", retryable=False)
        session = await self._http.session()
        if spec.endpoint:
            return await poll(session, spec, work, spec.endpoint, sink)
        if not spec.image:
            return Outcome.failed("the function has neither an endpoint nor an image", retryable=False)
        if self._host is None:
            return Outcome.failed(
                "a function image needs the docker or kubernetes executor; this agent runs processes",
                retryable=False,
            )
        async with contextlib.AsyncExitStack() as stack:
            try:
                url = await stack.enter_async_context(self._host.serve(work, workspace, sink))
            except Exception as exc:  # the image cannot be pulled, started or reached
                await sink.system(f"function {spec.image} did not start: {exc}")
                return Outcome.failed(f"function {spec.image} did not start: {exc}")
            if (address := literal_ip(urllib.parse.urlsplit(url).hostname or "")) is not None:
                session = egress_session(self._http.policy.allowing(address))
                stack.push_async_callback(session.close)
            return await poll(session, spec, work, url, sink)
        raise AssertionError("unreachable")


def request_body(work: WorkItem, previous: dict[str, Any]) -> dict[str, Any]:
    return {
        "inputs": work.activity.inputs,
        "metadata": {
            "run": work.run_id,
            "activity": work.activity.id,
            "environment": work.environment,
            "tenant": work.tenant,
            "action": work.action,
        },
        "previous": previous,
    }


async def poll(session: aiohttp.ClientSession, spec: FunctionSpec, work: WorkItem, url: str, sink: Sink) -> Outcome:
    deadline = time.monotonic() + spec.until_seconds
    previous: dict[str, Any] = {}
    transient = 0
    for call in itertools.count(1):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        result = await send(
            session,
            method="POST",
            url=url,
            headers={"Content-Type": "application/json"},
            body=json.dumps(request_body(work, previous)),
            verify_tls=True,
            timeout_seconds=min(spec.invocation_timeout_seconds, remaining),
        )
        answer = _read_answer(result)
        await sink.system(f"function call {call}: {answer.describe()}")
        if answer.status == "done":
            return Outcome.succeeded(answer.outputs)
        if answer.status == "failed":
            return Outcome.failed(answer.message or "the function failed", retryable=False)
        if answer.status == "transient":
            transient += 1
            if transient >= MAX_TRANSIENT:
                return Outcome.failed(f"{transient} transient failures in a row: {answer.message}")
        else:
            transient = 0
            previous = answer.data
        await asyncio.sleep(max(0.0, min(spec.repeat_seconds, deadline - time.monotonic())))
    return Outcome.failed(f"the function did not finish within {spec.until_seconds:g}s", timed_out=True)


class _Answer(msgspec.Struct, frozen=True):
    status: str
    outputs: dict[str, Any] = {}
    data: dict[str, Any] = {}
    message: str = ""

    def describe(self) -> str:
        return f"{self.status}: {self.message}" if self.message else self.status


def _read_answer(result: HttpResponse | HttpFailure) -> _Answer:
    """Map a response to one of done/again/failed/transient; anything malformed is a failure."""
    if isinstance(result, HttpFailure):
        return _Answer("transient" if result.retryable else "failed", message=result.reason)
    if not 200 <= result.status < 300:
        status = "transient" if retryable_status(result.status) else "failed"
        return _Answer(status, message=f"HTTP {result.status}: {result.body[:200]}")
    if result.truncated:  # a cut answer is no answer: say why rather than "not a function answer"
        return _Answer("failed", message=f"the function's answer is larger than {MAX_BODY_BYTES:,} bytes")
    body = result.json
    if not isinstance(body, dict) or body.get("status") not in ("done", "again", "failed", "transient"):
        return _Answer("failed", message=f"not a function answer: {result.body[:200]!r}")
    outputs = body.get("outputs")
    data = body.get("data")
    return _Answer(
        str(body["status"]),
        outputs=outputs if isinstance(outputs, dict) else {},
        data=data if isinstance(data, dict) else {},
        message=str(body.get("message", "")),
    )
