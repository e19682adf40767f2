"""The embedded stack under hostile input, all at once: a run request and an activity event nested
5,000 deep and a run whose late expression explodes. Compiler and scheduler keep serving with no
crash or restart; an ordinary run started meanwhile succeeds, the bad run fails with the reason."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import structlog

from trellis_cli.devstack import DevStack, default_services
from trellis_core import subjects
from trellis_core.bus import Bus
from trellis_core.events import ActivityFailed, RunCompleted, RunEvent, RunRequested, SourceFile, decode_run_event
from trellis_core.ids import new_run_id
from trellis_core.settings import Settings

TEMPLATES = """\
apiVersion: trellis.dev/v1
kind: ResourceTemplate
metadata: {name: base}
spec:
  provider: custom
  providerOptions:
    custom:
      tasks:
        - name: count
          type: script
          options:
            script:
              script: |
                printf '{"n": 10}' > "$TRELLIS_OUTPUTS"
---
apiVersion: trellis.dev/v1
kind: ResourceTemplate
metadata: {name: tower}
spec:
  provider: custom
  providerOptions:
    custom:
      tasks:
        - name: climb
          type: script
          options: {script: {script: "echo $( (((resource.base.output.n.value ** 64) ** 64) ** 64) ** 64 )$"}}
---
apiVersion: trellis.dev/v1
kind: EnvironmentTemplate
metadata: {name: hostile}
spec:
  resources: [{name: base}, {name: tower, dependsOn: [{name: base}]}]
---
apiVersion: trellis.dev/v1
kind: EnvironmentTemplate
metadata: {name: ordinary}
spec:
  resources: [{name: base}]
---
apiVersion: trellis.dev/v1
kind: Environment
metadata: {name: hostile}
spec: {template: {name: hostile}}
---
apiVersion: trellis.dev/v1
kind: Environment
metadata: {name: ordinary}
spec: {template: {name: ordinary}}
"""


def with_deep_field(document: bytes, depth: int = 5000) -> bytes:
    """The JSON object `document` with one more field holding lists nested `depth` deep."""
    return document[:-1] + b', "extra": ' + b"[" * depth + b"]" * depth + b"}"


@pytest.fixture
async def events(bus: Bus, unique: str) -> AsyncIterator[asyncio.Queue[RunEvent]]:
    queue: asyncio.Queue[RunEvent] = asyncio.Queue()

    async def collect(msg: Any) -> None:
        try:
            await queue.put(decode_run_event(msg.data))
        except Exception:  # the hostile event itself is on these subjects too
            return

    sub = await bus.nc.subscribe(subjects.all_run_events(unique), cb=collect)
    yield queue
    await sub.unsubscribe()


async def completion(queue: asyncio.Queue[RunEvent], run_ids: set[str], seen: list[RunEvent]) -> dict[str, Any]:
    done: dict[str, RunCompleted] = {}
    async with asyncio.timeout(30):  # the bound for the ordinary run
        while set(done) != run_ids:
            event = await queue.get()
            seen.append(event)
            if isinstance(event, RunCompleted) and event.run_id in run_ids:
                done[event.run_id] = event
    return done


@pytest.mark.timeout(90)
async def test_the_stack_serves_on_through_deep_messages_and_an_exploding_expression(
    bus: Bus, settings: Settings, unique: str, tmp_path: Path, events: asyncio.Queue[RunEvent], database_url: str
) -> None:
    ours = msgspec.structs.replace(settings, tenant=unique, data_dir=tmp_path / "stack", database_url=database_url)
    sources = (SourceFile(path="hostile.yaml", text=TEMPLATES),)

    def request(environment: str) -> RunRequested:
        return RunRequested(tenant=unique, run_id=new_run_id(), environment=environment, sources=sources)

    with structlog.testing.capture_logs() as logs:
        async with DevStack(ours, services=default_services(ours)):
            deep_request = with_deep_field(msgspec.json.encode(request("ordinary")))
            await bus.publish(subjects.runs_requested(unique), deep_request, msg_id=f"{unique}/deep-request")
            deep_event = with_deep_field(b'{"type": "activity.completed"}')
            event_subject = subjects.run_event(unique, "r-deep", "activity.completed")
            await bus.publish(event_subject, deep_event, msg_id=f"{unique}/deep-event")
            hostile, ordinary = request("hostile"), request("ordinary")
            for run in (hostile, ordinary):
                await bus.publish(subjects.runs_requested(unique), run, msg_id=f"{run.run_id}/request")
            seen: list[RunEvent] = []
            done = await completion(events, {hostile.run_id, ordinary.run_id}, seen)

    assert done[ordinary.run_id].status == "succeeded", done[ordinary.run_id].message
    assert done[hostile.run_id].status == "failed"
    [climb] = [e for e in seen if isinstance(e, ActivityFailed) and e.run_id == hostile.run_id]
    assert "integer size budget exceeded" in climb.reason
    crashes = [entry for entry in logs if entry["event"] == "service_crashed"]
    assert crashes == []  # nothing was restarted
    # Of this tenant: the stack's store reads every tenant's events on the suite's shared nats-server,
    # and parks other tests' garbage too when it comes to it.
    parked = {
        (e["subject"], e["reason"].split(":")[0])
        for e in logs
        if e["event"] == "message_dead_lettered" and e["subject"].startswith(f"{subjects.PREFIX}.{unique}.")
    }
    assert parked == {
        (subjects.runs_requested(unique), "undecodable"),
        (subjects.run_event(unique, "r-deep", "activity.completed"), "undecodable"),
    }
