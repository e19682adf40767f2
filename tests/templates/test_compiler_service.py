"""The compiler service on the real embedded NATS: requests in, compiled or rejected runs out."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from trellis_compiler.service import serve
from trellis_core import subjects
from trellis_core.bus import Bus
from trellis_core.events import RunCompiled, RunEvent, RunRejected, RunRequested, SourceFile, decode_run_event

DEMO = Path(__file__).resolve().parents[2] / "examples" / "demo" / "templates.yaml"
TIMEOUT = 10.0


@pytest.fixture
async def compiler(bus: Bus) -> AsyncIterator[None]:
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(serve(bus, stop, ready=ready))
    await asyncio.wait_for(ready.wait(), TIMEOUT)
    yield
    stop.set()
    await asyncio.wait_for(task, TIMEOUT)


@pytest.fixture
async def run_events(bus: Bus, unique: str) -> AsyncIterator[asyncio.Queue[RunEvent]]:
    queue: asyncio.Queue[RunEvent] = asyncio.Queue()

    async def collect(msg: object) -> None:
        await queue.put(decode_run_event(msg.data))  # type: ignore[attr-defined]

    sub = await bus.nc.subscribe(subjects.all_run_events(unique), cb=collect)
    yield queue
    await sub.unsubscribe()


async def request(bus: Bus, tenant: str, run_id: str, text: str, **variables: str) -> None:
    event = RunRequested(
        tenant=tenant,
        run_id=run_id,
        environment="demo",
        sources=(SourceFile(path="demo.yaml", text=text),),
        variables=variables,
        requested_by="tester",
    )
    await bus.publish(subjects.runs_requested(tenant), event, msg_id=f"{run_id}/request")


async def test_a_request_compiles_a_broken_bundle_is_rejected_and_the_next_still_compiles(
    bus: Bus, compiler: None, run_events: asyncio.Queue[RunEvent], unique: str
) -> None:
    good = DEMO.read_text()
    await request(bus, unique, "run-1", good, notify_url="http://127.0.0.1:1/hook")
    compiled = await asyncio.wait_for(run_events.get(), TIMEOUT)
    assert isinstance(compiled, RunCompiled)
    assert (compiled.run_id, compiled.requested_by) == ("run-1", "tester")
    assert compiled.workflow.scope["environment"]["variables"]["notify_url"] == "http://127.0.0.1:1/hook"
    assert compiled.workflow.activities[0].id == "environment/on-init/notify-start"

    broken = good.replace("dependsOn: [provision]", "dependsOn: [provison]").replace("type: script", "type: scrpt", 1)
    await request(bus, unique, "run-2", broken)
    rejected = await asyncio.wait_for(run_events.get(), TIMEOUT)
    assert isinstance(rejected, RunRejected)
    assert rejected.run_id == "run-2"
    assert [(e.file, e.path, e.hint) for e in rejected.errors] == [  # read and compile errors together
        ("demo.yaml", "spec.providerOptions.custom.tasks[0].type", 'did you mean "script"?'),
        ("demo.yaml", "spec.providerOptions.custom.tasks[1].dependsOn[0]", 'did you mean "provision"?'),
    ]

    await request(bus, unique, "run-3", "not: [valid yaml")
    assert isinstance(await asyncio.wait_for(run_events.get(), TIMEOUT), RunRejected)

    await request(bus, unique, "run-4", good)
    again = await asyncio.wait_for(run_events.get(), TIMEOUT)
    assert isinstance(again, RunCompiled)
    assert again.run_id == "run-4"


async def test_a_request_naming_another_tenant_is_dead_lettered_not_compiled(
    bus: Bus, compiler: None, run_events: asyncio.Queue[RunEvent], unique: str
) -> None:
    victim, attacker = unique, f"{unique}-evil"
    forged = RunRequested(
        tenant=victim, run_id="forged", environment="demo", sources=(SourceFile(path="d.yaml", text=DEMO.read_text()),)
    )
    attacker_subject = subjects.runs_requested(attacker)
    letters = await bus.nc.subscribe(subjects.deadletter(attacker_subject))
    await bus.publish(attacker_subject, forged, msg_id=f"{unique}/forged")
    letter = await letters.next_msg(timeout=TIMEOUT)
    await letters.unsubscribe()
    assert b"travels on tenant" in letter.data
    await request(bus, victim, "honest", DEMO.read_text())
    first = await asyncio.wait_for(run_events.get(), TIMEOUT)
    assert first.run_id == "honest", "the forged request reached the victim's run subjects"


async def test_a_request_with_a_misspelt_variable_is_rejected_naming_it(
    bus: Bus, compiler: None, run_events: asyncio.Queue[RunEvent], unique: str
) -> None:
    await request(bus, unique, "run-typo", DEMO.read_text(), notfy_url="http://127.0.0.1:1/hook")
    rejected = await asyncio.wait_for(run_events.get(), TIMEOUT)
    assert isinstance(rejected, RunRejected)
    assert [(e.message, e.hint, e.severity) for e in rejected.errors] == [
        ("run variable 'notfy_url' is not declared by any template", 'did you mean "notify_url"?', "error")
    ]


async def test_a_bug_inside_the_compiler_rejects_that_run_and_the_service_goes_on(
    bus: Bus, compiler: None, run_events: asyncio.Queue[RunEvent], unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import trellis_compiler.service as service

    real = service.compile_sources

    def crash_on_run_1(*args: object, **kwargs: object) -> object:
        if kwargs.get("run_id") == f"{unique}-crash":
            raise KeyError("an internal bug")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    # run ids of their own: the stream's dedupe window knows "run-1/request" from the tests above
    monkeypatch.setattr(service, "compile_sources", crash_on_run_1)  # fault injection: no such bug is known
    await request(bus, unique, f"{unique}-crash", DEMO.read_text(), notify_url="http://127.0.0.1:1/hook")
    rejected = await asyncio.wait_for(run_events.get(), TIMEOUT)
    assert isinstance(rejected, RunRejected)
    assert [e.message for e in rejected.errors] == ["internal compiler error: KeyError('an internal bug')"]

    await request(bus, unique, f"{unique}-next", DEMO.read_text(), notify_url="http://127.0.0.1:1/hook")
    compiled = await asyncio.wait_for(run_events.get(), TIMEOUT)
    assert isinstance(compiled, RunCompiled)
    assert compiled.run_id == f"{unique}-next"
