"""Response bodies are read to their end or to the limit, against a local aiohttp server on a free port."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from agent_support import RecordingSink, work_item
from aiohttp import web

from trellis_agent.egress import EgressPolicy
from trellis_agent.executors.base import Workspace, execute
from trellis_agent.executors.bodies import read_body
from trellis_agent.executors.function import FunctionExecutor
from trellis_agent.executors.http import MAX_BODY_BYTES, HttpExecutor
from trellis_core.workflow import FunctionSpec, HttpSpec

PIECE = 64 * 1024


def _streamed(size: int, content_type: str = "text/plain", head: bytes = b"") -> Any:
    """A handler writing `size` bytes in 64 KiB chunks (chunked encoding), each flushed alone."""

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": content_type})
        await resp.prepare(request)
        body = head + b"x" * (size - len(head))
        for start in range(0, size, PIECE):
            await resp.write(body[start : start + PIECE])
        await resp.write_eof()
        return resp

    return handler


@pytest.fixture
async def base_url() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_get("/600k", _streamed(600_000))
    app.router.add_get("/exact", _streamed(MAX_BODY_BYTES))
    app.router.add_get("/big", _streamed(3 * MAX_BODY_BYTES))
    app.router.add_get("/json", _json_of(600_000))
    app.router.add_post("/fn/huge", _streamed(2 * MAX_BODY_BYTES, "application/json", b'{"status": "done", "x": "'))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


def _json_of(size: int) -> Callable[[web.Request], Any]:
    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"items": ["y" * 1000] * (size // 1006)})

    return handler


@pytest.fixture
async def http() -> AsyncIterator[HttpExecutor]:
    # The test server listens on loopback, which the egress policy refuses by default.
    executor = HttpExecutor(EgressPolicy.parse(["127.0.0.1/32"]))
    yield executor
    await executor.close()


async def _get(http: HttpExecutor, url: str, tmp_path: Path) -> tuple[Any, RecordingSink]:
    work = work_item(HttpSpec(url=url, method="GET"), kind="http")
    sink = RecordingSink()
    return await execute(http, work, Workspace.for_work(tmp_path, work), sink), sink


async def test_a_600_kb_body_in_many_chunks_comes_back_whole(http: HttpExecutor, base_url: str, tmp_path: Path) -> None:
    outcome, sink = await _get(http, f"{base_url}/600k", tmp_path)
    assert outcome.ok
    assert len(outcome.outputs["body"]) == 600_000
    assert "cut at" not in sink.text("system")


async def test_a_large_json_body_is_parsed_whole(http: HttpExecutor, base_url: str, tmp_path: Path) -> None:
    outcome, _ = await _get(http, f"{base_url}/json", tmp_path)
    assert outcome.ok
    assert len(outcome.outputs["json"]["items"]) == 600_000 // 1006


async def test_a_body_of_exactly_the_limit_is_not_cut(http: HttpExecutor, base_url: str, tmp_path: Path) -> None:
    outcome, sink = await _get(http, f"{base_url}/exact", tmp_path)
    assert len(outcome.outputs["body"]) == MAX_BODY_BYTES
    assert "cut at" not in sink.text("system")


async def test_a_body_over_the_limit_is_cut_there_and_the_log_says_so(
    http: HttpExecutor, base_url: str, tmp_path: Path
) -> None:
    outcome, sink = await _get(http, f"{base_url}/big", tmp_path)
    assert outcome.ok  # the status decides; the body is what fits
    assert len(outcome.outputs["body"]) == MAX_BODY_BYTES
    assert outcome.outputs["json"] is None
    assert f"response body cut at {MAX_BODY_BYTES:,} bytes" in sink.text("system")


async def test_a_function_answer_over_the_limit_fails_saying_so(
    http: HttpExecutor, base_url: str, tmp_path: Path
) -> None:
    spec = FunctionSpec(endpoint=f"{base_url}/fn/huge", repeat_seconds=0.01)
    work = work_item(spec, kind="function")
    outcome = await execute(FunctionExecutor(http), work, Workspace.for_work(tmp_path, work), RecordingSink())
    assert outcome.status == "failed"
    assert not outcome.retryable
    assert outcome.reason == f"the function's answer is larger than {MAX_BODY_BYTES:,} bytes"


@pytest.mark.parametrize(
    ("limit", "expected"),
    [(10, (10, True)), (599_999, (599_999, True)), (600_000, (600_000, False)), (10**6, (600_000, False))],
)
async def test_read_body_stops_at_eof_or_one_byte_past_the_limit(
    base_url: str, limit: int, expected: tuple[int, bool]
) -> None:
    async with aiohttp.ClientSession() as session, session.get(f"{base_url}/600k") as resp:
        data, truncated = await read_body(resp.content, limit)
    assert (len(data), truncated) == expected
