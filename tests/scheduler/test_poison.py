"""Poison messages through the real compiler, scheduler and agent on the real nats-server: each
is dead-lettered (or its run failed) with the reason, and an ordinary run afterwards succeeds."""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import msgspec
from scheduler_support import Recorder, recording, running_agent, running_scheduler, sh, submit, workflow

from trellis_compiler.service import serve as serve_compiler
from trellis_core import subjects
from trellis_core.bus import Bus
from trellis_core.events import DeadLetter, RunCompiled, RunRequested, SourceFile, encode
from trellis_core.ids import new_run_id
from trellis_core.settings import Settings
from trellis_core.workflow import RetryPolicy
from trellis_scheduler.kv import run_state_bucket
from trellis_scheduler.store import run_key

DEMO = Path(__file__).resolve().parents[2] / "examples" / "demo"
DEEP = 5000


def nested(envelope: bytes, field: str) -> bytes:
    """`envelope` (a JSON object) with one more field holding arrays nested DEEP levels."""
    assert envelope.endswith(b"}")
    return envelope[:-1] + f',"{field}":'.encode() + b"[" * DEEP + b"]" * DEEP + b"}"


@asynccontextmanager
async def dead_letters(bus: Bus, subject: str) -> AsyncIterator[asyncio.Queue[DeadLetter]]:
    letters: asyncio.Queue[DeadLetter] = asyncio.Queue()

    async def collect(msg: object) -> None:
        await letters.put(msgspec.json.decode(msg.data, type=DeadLetter))  # type: ignore[attr-defined]

    sub = await bus.nc.subscribe(subjects.deadletter(subject), cb=collect)
    await bus.nc.flush()
    try:
        yield letters
    finally:
        await sub.unsubscribe()


async def an_ordinary_run_succeeds(bus: Bus, rec: Recorder, tenant: str) -> None:
    run_id = await submit(bus, tenant, workflow(sh("apply", "true")))
    done = await rec.completion(run_id, within=30)
    assert done.status == "succeeded", done.message


@asynccontextmanager
async def services(bus: Bus, settings: Settings, tenant: str, tmp_path: Path) -> AsyncIterator[Recorder]:
    async with (
        recording(bus, tenant) as rec,
        running_scheduler(bus, settings, tenant),
        running_agent(bus, tmp_path, tenant),
    ):
        yield rec


async def test_an_activity_event_nested_5000_deep_is_dead_lettered_and_the_leader_goes_on(
    bus: Bus, settings: Settings, unique: str, tmp_path: Path
) -> None:
    async with services(bus, settings, unique, tmp_path) as rec:
        running = await submit(bus, unique, workflow(sh("wait", "sleep 0.5")))
        poison = subjects.run_event(unique, running, "activity.completed")
        envelope = b'{"type":"activity.completed","tenant":"%s","run_id":"%s","activity_id":"wait","attempt":1}'
        async with dead_letters(bus, poison) as letters:
            payload = nested(envelope % (unique.encode(), running.encode()), "x")
            await bus.publish(poison, payload, msg_id=f"{unique}/deep")
            letter = await asyncio.wait_for(letters.get(), 15)
        assert letter.reason.startswith("undecodable: RecursionError: maximum recursion depth exceeded")
        assert letter.consumer == f"scheduler-{unique}"
        assert (await rec.completion(running)).status == "succeeded"  # the run it named was not touched
        await an_ordinary_run_succeeds(bus, rec, unique)


async def test_a_run_compiled_with_a_huge_retry_multiplier_fails_naming_the_field_and_the_next_run_succeeds(
    bus: Bus, settings: Settings, unique: str, tmp_path: Path
) -> None:
    async with services(bus, settings, unique, tmp_path) as rec:
        wf = workflow(sh("flaky", "exit 1", retry=RetryPolicy(max_attempts=5, multiplier=1e200)))
        run_id = await submit(bus, unique, wf)
        done = await rec.completion(run_id)
        await an_ordinary_run_succeeds(bus, rec, unique)
    assert done.status == "failed"
    assert "activity 'flaky': retry.multiplier 1e+200 is out of bounds: use 1 to 100" in done.message


async def test_a_run_compiled_with_run_id_slash_etc_is_dead_lettered_naming_the_run_id(
    bus: Bus, settings: Settings, unique: str, tmp_path: Path
) -> None:
    subject = f"{subjects.PREFIX}.{unique}.run./etc.run.compiled"  # no subject builder accepts it
    async with services(bus, settings, unique, tmp_path) as rec, dead_letters(bus, subject) as letters:
        bad = RunCompiled(tenant=unique, run_id="/etc", workflow=workflow(sh("apply", "true")))
        await bus.publish(subject, bad, msg_id=f"{unique}/etc")
        letter = await asyncio.wait_for(letters.get(), 15)
        await an_ordinary_run_succeeds(bus, rec, unique)
    assert letter.reason.startswith("rejected: run id '/etc' cannot be used in a subject")


async def test_a_run_request_nested_5000_deep_is_dead_lettered_by_the_compiler_and_the_next_run_succeeds(
    bus: Bus, settings: Settings, unique: str, tmp_path: Path
) -> None:
    requests = subjects.runs_requested(unique)
    stop, ready = asyncio.Event(), asyncio.Event()
    compiler = asyncio.create_task(serve_compiler(bus, stop, ready=ready))
    try:
        await asyncio.wait_for(ready.wait(), 10)
        async with services(bus, settings, unique, tmp_path) as rec, dead_letters(bus, requests) as letters:
            poison = RunRequested(tenant=unique, run_id=new_run_id(), environment="demo")
            await bus.publish(requests, nested(encode(poison), "x"), msg_id=f"{unique}/deep")
            letter = await asyncio.wait_for(letters.get(), 15)
            sources = tuple(SourceFile(path=p.name, text=p.read_text()) for p in sorted(DEMO.glob("*.yaml")))
            ordinary = RunRequested(tenant=unique, run_id=new_run_id(), environment="demo", sources=sources)
            await bus.publish(requests, ordinary, msg_id=f"{unique}/ordinary")
            done = await rec.completion(ordinary.run_id, within=60)
    finally:
        stop.set()
        await asyncio.wait_for(compiler, 15)
    assert letter.reason.startswith("undecodable: RecursionError: maximum recursion depth exceeded")
    assert letter.consumer == "trellis-compiler"
    assert done.status == "succeeded", done.message


async def test_a_snapshot_nested_5000_deep_is_skipped_and_the_new_leader_goes_on(
    bus: Bus, settings: Settings, unique: str, tmp_path: Path
) -> None:
    kv = await run_state_bucket(bus.js, settings)
    snapshot = b'{"tenant":"%s","run_id":"r-deep","status":"running"}' % unique.encode()
    await kv.put(run_key(unique, "r-deep"), zlib.compress(nested(snapshot, "x")))
    async with services(bus, settings, unique, tmp_path) as rec:  # the leader recovers from the snapshots
        await an_ordinary_run_succeeds(bus, rec, unique)
