"""A run's events and logs as server-sent events (resumed with Last-Event-ID: no duplicate, no
gap) and its logs as text from the store, on a real run."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from runs_support import HELLO, SLOW, Api, gateway_stack, running_services

from trellis_core import subjects
from trellis_core.bus import Bus
from trellis_core.settings import Settings

SAY = "resource/hello/task/say"


@pytest.fixture
async def api(bus: Bus, store_settings: Settings, unique: str) -> AsyncIterator[Api]:
    """The run routes' own view of the gateway (overrides conftest's `api`): see runs_support."""
    async with gateway_stack(bus, store_settings, unique) as api:
        yield api


@pytest.fixture
async def finished_run(api: Api, bus: Bus, settings: Settings, tmp_path: Path) -> str:
    """A deploy of HELLO that has succeeded, and whose every log chunk the store holds."""
    await api.environment("web", HELLO, "hello-stack", {})
    async with running_services(bus, settings, api.tenant, tmp_path):
        run_id = await api.start("web")
        events = await api.events(run_id)
        assert events[-1].json()["status"] == "succeeded", [e.data for e in events]
    await api.run_when(run_id, "succeeded")
    return str(run_id)


async def test_events_stream_live_until_completion_with_a_summary_of_the_workflow(
    api: Api, bus: Bus, settings: Settings, tmp_path: Path
) -> None:
    await api.environment("web", HELLO, "hello-stack", {})
    async with running_services(bus, settings, api.tenant, tmp_path):
        run_id = await api.start("web")
        events = await api.events(run_id)  # opened at once: the run goes on while it is read
    kinds = [e.event for e in events]
    assert kinds[0] == "run.compiled"  # the request itself is on TRELLIS_RUNS, not the run's subject
    assert kinds[-1] == "run.completed"
    assert {"run.started", "activity.started", "activity.completed"} <= set(kinds)
    ids = [int(e.id) for e in events]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    assert events[0].json()["run_id"] == run_id
    assert events[0].json()["type"] == "run.compiled"
    compiled = next(e.json() for e in events if e.event == "run.compiled")
    assert compiled["workflow"] == {
        "environment": "web",
        "template": {"name": "hello-stack", "version": "v1"},
        "action": "deploy",
        "activities": 1,
        "warnings": [],
    }
    for event in events:  # the id is the message's TRELLIS_EVENTS sequence
        stored = await bus.js.get_msg(subjects.STREAM_EVENTS, int(event.id))
        assert stored.subject == subjects.run_event(api.tenant, run_id, event.event)


async def test_events_resume_after_last_event_id_with_no_duplicate_and_no_gap(api: Api, finished_run: str) -> None:
    everything = await api.events(finished_run)
    for cut in (1, len(everything) // 2, len(everything) - 1):
        resumed = await api.events(finished_run, last_event_id=everything[cut - 1].id)
        assert [(m.id, m.data) for m in resumed] == [(m.id, m.data) for m in everything[cut:]]
    assert await api.events(finished_run, last_event_id=everything[-1].id) == []  # nothing after the end


async def test_a_last_event_id_that_is_not_a_sequence_is_refused(api: Api, finished_run: str) -> None:
    for bad in ("abc", "-1", "1.5", "²", "9" * 30):
        async with api.call("GET", f"/v1/runs/{finished_run}/events", headers={"Last-Event-ID": bad}) as response:
            assert response.status == 400, bad
            assert "Last-Event-ID" in (await response.json())["detail"]


async def test_logs_read_as_text_from_the_store(api: Api, finished_run: str) -> None:
    async with api.call("GET", f"/v1/runs/{finished_run}/logs", who="viewer") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = await response.text()
    lines = text.splitlines()
    expected = [f"{SAY} | hello line {i} for deploy" for i in range(1, 6)]
    assert [line for line in lines if "hello line" in line] == expected
    assert f"{SAY} | to stderr" in lines
    async with api.call("GET", f"/v1/runs/{finished_run}/logs", params={"activity": SAY}) as response:
        one = await response.text()
    assert "hello line 5 for deploy\n" in one
    assert " | " not in one
    async with api.call("GET", f"/v1/runs/{finished_run}/logs", params={"activity": "resource/nope"}) as response:
        assert response.status == 404


async def test_logs_stream_as_sse_until_the_run_ended_and_resume_after_last_event_id(
    api: Api, finished_run: str
) -> None:
    async with api.sse(f"/v1/runs/{finished_run}/logs") as reader:
        messages = await reader.until_end()
    *logs, end = messages
    assert end.event == "end"
    assert end.json() == {"status": "succeeded"}
    assert all(m.event == "log" for m in logs)
    text = "".join(m.json()["data"] for m in logs if m.json()["stream"] == "stdout")
    assert text == "".join(f"hello line {i} for deploy\n" for i in range(1, 6))
    cut = len(logs) // 2
    async with api.sse(f"/v1/runs/{finished_run}/logs", last_event_id=logs[cut - 1].id) as reader:
        resumed = await reader.until_end()
    assert [(m.id, m.data) for m in resumed[:-1]] == [(m.id, m.data) for m in logs[cut:]]
    async with api.sse(f"/v1/runs/{finished_run}/logs", last_event_id=logs[-1].id) as reader:
        assert [m.event for m in await reader.until_end()] == ["end"]


async def test_live_logs_follow_a_running_activity_with_heartbeats(
    api: Api, bus: Bus, settings: Settings, tmp_path: Path
) -> None:
    await api.environment("slow", SLOW, "slow-stack")
    async with running_services(bus, settings, api.tenant, tmp_path):
        run_id = await api.start("slow")
        async with api.sse(f"/v1/runs/{run_id}/logs", who="viewer") as reader:
            first = await reader.next()
            assert first is not None
            assert first.event == "log"
            assert "started" in first.json()["data"]
            assert first.json()["activity_id"] == "resource/slow/task/wait"
            await reader.heartbeats(2)  # nothing more to say: heartbeats keep the stream open
            await api.json("POST", f"/v1/runs/{run_id}/cancel", status=202)
            rest = await reader.until_end()
        assert rest[-1].event == "end"
        assert rest[-1].json() == {"status": "cancelled"}


async def test_a_client_that_goes_away_leaves_no_consumer_behind(
    api: Api, bus: Bus, settings: Settings, tmp_path: Path
) -> None:
    await api.environment("slow", SLOW, "slow-stack")

    async def readers_of(run_id: str) -> list[str]:
        """The filter subjects of the consumers reading this run's events or logs."""
        found = []
        for stream in (subjects.STREAM_EVENTS, subjects.STREAM_LOGS):
            for info in await bus.js.consumers_info(stream):
                if run_id in (info.config.filter_subject or ""):
                    found.append(str(info.config.filter_subject))
        return sorted(found)

    async with running_services(bus, settings, api.tenant, tmp_path):
        run_id = await api.start("slow")
        async with api.sse(f"/v1/runs/{run_id}/logs") as logs, api.sse(f"/v1/runs/{run_id}/events") as events:
            assert await logs.next() is not None
            assert await events.next() is not None
            assert await readers_of(run_id) == sorted(
                [
                    subjects.run_events(api.tenant, run_id),
                    subjects.run_event(api.tenant, run_id, "run.*"),  # the logs' watch for the run's end
                    f"trellis.{api.tenant}.logs.{run_id}.*",
                ]
            )
        async with asyncio.timeout(10):
            while await readers_of(run_id):  # noqa: ASYNC110
                await asyncio.sleep(0.1)
        await api.json("POST", f"/v1/runs/{run_id}/cancel", status=202)
        assert (await api.events(run_id))[-1].json()["status"] == "cancelled"


async def test_streams_end_when_the_gateway_stops(api: Api, bus: Bus, settings: Settings, tmp_path: Path) -> None:
    await api.environment("slow", SLOW, "slow-stack")
    async with running_services(bus, settings, api.tenant, tmp_path):
        run_id = await api.start("slow")
        async with api.sse(f"/v1/runs/{run_id}/logs") as logs, api.sse(f"/v1/runs/{run_id}/events") as events:
            assert await logs.next() is not None
            assert await events.next() is not None
            assert api.gateway.metrics.sse_clients == 2
            api.gateway.stopping.set()  # what the app's on_shutdown does
            await events.until_end(timeout=5)
            assert [m.event for m in await logs.until_end(timeout=5)] == []  # no `end`: the run goes on
        assert api.gateway.metrics.sse_clients == 0
        api.gateway.stopping.clear()
        await api.json("POST", f"/v1/runs/{run_id}/cancel", status=202)
        assert (await api.events(run_id))[-1].json()["status"] == "cancelled"


async def _requested_run(api: Api) -> str:
    """A run the store knows (requested; nothing runs it)."""
    await api.environment("web", HELLO, "hello-stack", {})
    run_id = await api.start("web")
    async with asyncio.timeout(15):
        while True:
            async with api.call("GET", f"/v1/runs/{run_id}", who="viewer") as response:
                if response.status == 200:
                    return run_id
            await asyncio.sleep(0.05)


async def test_sensitive_outputs_are_masked_on_the_event_stream(api: Api, bus: Bus) -> None:
    from trellis_core.events import ActivityCompleted, RunCompleted
    from trellis_store.api import MASK

    run_id = await _requested_run(api)
    secret = "s3cr3t-db-password"
    outputs = {"password": {"value": secret, "sensitive": True}, "url": {"value": "https://db", "sensitive": False}}
    await bus.publish_event(
        ActivityCompleted(tenant=api.tenant, run_id=run_id, activity_id=SAY, attempt=1, outputs=outputs)
    )
    await bus.publish_event(RunCompleted(tenant=api.tenant, run_id=run_id, status="succeeded", outputs={"db": outputs}))
    events = await api.events(run_id, who="viewer")
    masked = {"password": {"value": MASK, "sensitive": True}, "url": {"value": "https://db", "sensitive": False}}
    completed = [e.json() for e in events if e.event == "activity.completed"]
    assert [c["outputs"] for c in completed] == [masked]
    assert events[-1].event == "run.completed"
    assert events[-1].json()["outputs"] == {"db": masked}
    assert all(secret not in e.data for e in events)


async def _refused(api: Api, path: str, who: str) -> str:
    """The detail of the 429 problem answering a stream `who` may not open."""
    headers = {"Accept": "text/event-stream"}
    async with api.call("GET", path, who=who, headers=headers) as response:
        body = await response.json(content_type=None)
        assert response.status == 429, (response.status, body)
        assert response.headers["Content-Type"].startswith("application/problem+json")
        assert int(response.headers["Retry-After"]) > 0
    return str(body["detail"])


async def test_a_token_may_hold_only_so_many_streams_and_a_closed_one_frees_its_slot(api: Api) -> None:
    api.gateway.streams.per_token = 2
    run_id = await _requested_run(api)
    events, logs = f"/v1/runs/{run_id}/events", f"/v1/runs/{run_id}/logs"
    async with api.sse(events, who="viewer"), api.sse(logs, who="viewer") as second:
        assert "at most 2" in await _refused(api, events, "viewer")
        assert "at most 2" in await _refused(api, logs, "viewer")  # live logs count as streams too
        async with api.sse(events, who="operator"):  # another token has its own slots
            await second.heartbeats(1)
        async with api.call("GET", logs, who="viewer") as text:  # plain-text logs are no stream
            assert text.status == 200
    async with asyncio.timeout(10):  # the server finds a gone client at its next heartbeat
        while api.gateway.streams.by_token:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    async with api.sse(events, who="viewer") as again:
        await again.heartbeats(1)


async def test_a_tenant_may_hold_only_so_many_streams(api: Api) -> None:
    api.gateway.streams.per_tenant = 2
    run_id = await _requested_run(api)
    events = f"/v1/runs/{run_id}/events"
    async with api.sse(events, who="viewer"), api.sse(events, who="operator"):
        assert f"tenant {api.tenant} has 2 event streams open" in await _refused(api, events, "admin")


async def test_a_stream_ends_after_its_lifetime_and_resumes_with_last_event_id(api: Api, bus: Bus) -> None:
    from trellis_core.events import RunCompleted

    api.gateway.streams.lifetime = 1.0
    run_id = await _requested_run(api)
    async with api.sse(f"/v1/runs/{run_id}/events") as reader:
        first = await reader.until_end(timeout=10)  # ended by the server with the run still going
    assert all(m.event != "run.completed" for m in first)
    await bus.publish_event(RunCompleted(tenant=api.tenant, run_id=run_id, status="succeeded"))
    resumed = await api.events(run_id, last_event_id=first[-1].id if first else None)
    assert [m.event for m in resumed][-1] == "run.completed"
