"""Following a run through the gateway: its server-sent events folded into the same view
`trellis run` draws from the bus, resumed with Last-Event-ID when the stream breaks, and the
log lines of what failed fetched at the end. The stream's run.compiled carries a summary, not the
workflow: the activities come from `GET /v1/runs/{id}` then."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime

import msgspec

from trellis_cli.gateway_client import GatewayClient, GatewayError, quoted
from trellis_cli.run_progress import ActivityView, RunView, Screen
from trellis_core.events import ActivityLogChunk, RunEvent, decode_run_event
from trellis_store.api import RunDetail

RECONNECTS = 5  # a stream broken this many times in a row without news ends the wait with an error
RECONNECT_SECONDS = 0.5
FAILED = ("failed", "timed_out", "lost")
ACTIVITIES_WAIT_SECONDS = 5.0  # how long the store may take to record a compiled run's activities


class LiveChunk(msgspec.Struct, frozen=True, kw_only=True):
    """A log chunk as the logs stream sends it (the store's row or the bus's event: both have these)."""

    activity_id: str = ""
    attempt: int = 1
    sequence: int = 0
    stream: str = "stdout"
    data: str = ""


def _event(data: str) -> RunEvent | None:
    with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
        return decode_run_event(data.encode())
    return None


async def follow_events(gw: GatewayClient, run_id: str, screen: Screen) -> None:
    """Apply the run's events to the screen until the run has finished."""
    view = screen.view
    path = f"/v1/runs/{quoted(run_id)}/events"
    last_id, failures = "", 0
    while not view.finished:
        news = False
        try:
            async for sse in gw.events(path, last_event_id=last_id):
                last_id = sse.id or last_id
                event = _event(sse.data)
                if event is None:
                    if sse.event == "run.compiled" and not view.activities:
                        await _activities_from_store(gw, view)
                    continue
                news = True
                screen.apply(event)
                screen.refresh()
                if view.finished:
                    return
        except GatewayError as exc:
            if exc.status:  # refused (404, 401): retrying does not help
                raise
            if failures + 1 >= RECONNECTS:
                raise
        failures = 0 if news else failures + 1
        if failures >= RECONNECTS:
            await _settle_from_summary(gw, run_id, view)
            return
        await asyncio.sleep(RECONNECT_SECONDS)


async def _activities_from_store(gw: GatewayClient, view: RunView) -> None:
    """The compiled run's activities, as the store recorded them (it may lag the stream a moment:
    asked again until they are there, for a bounded time; without them the run shows as counts)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + ACTIVITIES_WAIT_SECONDS
    while True:
        detail, _ = await gw.call("GET", f"/v1/runs/{quoted(view.run_id)}", RunDetail)
        if detail.activities or loop.time() > deadline:
            break
        await asyncio.sleep(RECONNECT_SECONDS / 5)
    if view.status in ("requested", "queued"):
        view.status = "compiled"
    view.activities = [ActivityView(id=a.id) for a in detail.activities]
    view.by_id = {a.id: a for a in view.activities}
    view.counts = {"pending": len(view.activities)}


async def _settle_from_summary(gw: GatewayClient, run_id: str, view: RunView) -> None:
    """The stream ends without the run's end: take its status from `GET /v1/runs/{id}`."""
    detail, _ = await gw.call("GET", f"/v1/runs/{quoted(run_id)}", RunDetail)
    if detail.status in ("succeeded", "failed", "cancelled", "rejected"):
        view.status, view.message = detail.status, detail.message
        return
    raise GatewayError(f"the gateway's event stream of run {run_id} keeps ending while the run is {detail.status}")


async def follow_logs(gw: GatewayClient, run_id: str, screen: Screen) -> None:
    """Hand the run's log chunks to the screen as they come (`--follow`), until the stream ends."""
    path = f"/v1/runs/{quoted(run_id)}/logs"
    with contextlib.suppress(GatewayError):  # the lines are a bonus: the run is followed by its events
        async for sse in gw.events(path):
            if sse.event == "end":
                return
            with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
                chunk = msgspec.json.decode(sse.data, type=LiveChunk)
                screen.log(_as_event(run_id, chunk))


def _as_event(run_id: str, chunk: LiveChunk) -> ActivityLogChunk:
    return ActivityLogChunk(
        tenant="", run_id=run_id, activity_id=chunk.activity_id, attempt=chunk.attempt,
        sequence=chunk.sequence, stream="stderr" if chunk.stream == "stderr" else "stdout", data=chunk.data,
        occurred_at=datetime.now(UTC),
    )


async def fetch_failure_logs(gw: GatewayClient, view: RunView) -> None:
    """The last lines of each failed activity's log, for the summary (best effort)."""
    for activity in view.activities:
        if activity.status in FAILED and not activity.log_tail:
            with contextlib.suppress(GatewayError):
                text = await gw.text(f"/v1/runs/{quoted(view.run_id)}/logs", params={"activity": activity.id})
                chunk = LiveChunk(activity_id=activity.id, attempt=max(activity.attempts, 1), data=text)
                activity.add_log(_as_event(view.run_id, chunk))


async def follow_run(gw: GatewayClient, screen: Screen, *, logs: bool) -> None:
    """Follow the run on the screen to its end (with its log lines when `logs`)."""
    async with asyncio.TaskGroup() as group:
        streaming = group.create_task(follow_logs(gw, screen.view.run_id, screen)) if logs else None
        try:
            with screen:
                await follow_events(gw, screen.view.run_id, screen)
        finally:
            if streaming is not None:
                streaming.cancel()
    await fetch_failure_logs(gw, screen.view)
