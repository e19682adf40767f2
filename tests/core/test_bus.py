"""The bus against a real nats-server: dedupe, dead letters, poison messages, redelivery."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import nats
import nats.js.errors
import pytest

from trellis_core import subjects
from trellis_core.bus import Bus, Delivery, PermanentError, decoder, ensure_work_stream
from trellis_core.embedded import free_port
from trellis_core.errors import BusUnavailable, ConfigError
from trellis_core.events import DeadLetter, RunEvent, RunStarted
from trellis_core.settings import Settings


async def _next_dead_letter(bus: Bus, subject: str, action: Callable[[], Awaitable[Any]]) -> DeadLetter:
    sub = await bus.nc.subscribe(subjects.deadletter(subject))
    await action()
    msg = await sub.next_msg(timeout=15)
    await sub.unsubscribe()
    return msgspec.json.decode(msg.data, type=DeadLetter)


async def _run_consumer(bus: Bus, until: asyncio.Event, **kwargs: Any) -> asyncio.Task[None]:
    ready = asyncio.Event()
    task = asyncio.create_task(bus.consumer(**kwargs).run(until, ready=ready))
    await asyncio.wait_for(ready.wait(), 10)
    return task


async def test_a_duplicate_publish_is_dropped(bus: Bus, unique: str) -> None:
    event = RunStarted(tenant=unique, run_id="r1")
    first = await bus.publish_event(event)
    second = await bus.publish_event(event)
    assert not first.duplicate
    assert second.duplicate
    info = await bus.js.stream_info(subjects.STREAM_EVENTS, subjects_filter=subjects.all_run_events(unique))
    assert info.state.subjects == {subjects.run_event(unique, "r1", "run.started"): 1}


async def test_a_message_failing_max_deliver_times_is_dead_lettered(bus: Bus, unique: str) -> None:
    attempts: list[int] = []
    stop = asyncio.Event()

    async def always_fails(event: RunEvent, delivery: Delivery) -> None:
        attempts.append(delivery.deliveries)
        raise RuntimeError("database is down")

    subject = subjects.run_event(unique, "r1", "run.started")
    task = await _run_consumer(
        bus, stop, stream=subjects.STREAM_EVENTS, durable=f"{unique}-fails",
        subjects=[subjects.all_run_events(unique)], decode=decoder(RunEvent), handler=always_fails,
        max_deliver=3, backoff=(0.05,),
    )
    letter = await _next_dead_letter(bus, subject, lambda: bus.publish_event(RunStarted(tenant=unique, run_id="r1")))
    stop.set()
    await task
    assert attempts == [1, 2, 3]
    assert letter.deliveries == 3
    assert "database is down" in letter.reason
    assert letter.subject == subject
    assert msgspec.json.decode(letter.data.encode(), type=RunEvent).tenant == unique


async def test_garbage_is_dead_lettered_and_the_next_good_message_is_processed(bus: Bus, unique: str) -> None:
    handled: asyncio.Queue[RunEvent] = asyncio.Queue()
    stop = asyncio.Event()

    async def handle(event: RunEvent, delivery: Delivery) -> None:
        await handled.put(event)

    task = await _run_consumer(
        bus, stop, stream=subjects.STREAM_EVENTS, durable=f"{unique}-garbage",
        subjects=[subjects.all_run_events(unique)], decode=decoder(RunEvent), handler=handle,
    )
    bad_subject = subjects.run_event(unique, "r1", "run.started")
    letter = await _next_dead_letter(bus, bad_subject, lambda: bus.publish(bad_subject, b"\x00not json{"))
    await bus.publish_event(RunStarted(tenant=unique, run_id="r2"))
    good = await asyncio.wait_for(handled.get(), 10)
    stop.set()
    await task
    assert letter.reason.startswith("undecodable:")
    assert letter.data.startswith("\x00not json{")
    assert good.run_id == "r2"
    assert handled.empty()


async def test_a_permanent_error_dead_letters_at_once(bus: Bus, unique: str) -> None:
    stop = asyncio.Event()
    calls = 0

    async def reject(event: RunEvent, delivery: Delivery) -> None:
        nonlocal calls
        calls += 1
        raise PermanentError("tenant is disabled")

    task = await _run_consumer(
        bus, stop, stream=subjects.STREAM_EVENTS, durable=f"{unique}-perm",
        subjects=[subjects.all_run_events(unique)], decode=decoder(RunEvent), handler=reject, max_deliver=5,
    )
    subject = subjects.run_event(unique, "r1", "run.started")
    letter = await _next_dead_letter(bus, subject, lambda: bus.publish_event(RunStarted(tenant=unique, run_id="r1")))
    stop.set()
    await task
    assert calls == 1
    assert letter.reason == "rejected: tenant is disabled"


async def test_a_redelivery_past_max_deliver_is_dead_lettered_without_being_decoded(bus: Bus, unique: str) -> None:
    stop, release = asyncio.Event(), asyncio.Event()
    decoded: list[int] = []
    decode_event = decoder(RunEvent)

    def counting_decode(data: bytes) -> RunEvent:
        decoded.append(len(data))
        return decode_event(data)  # type: ignore[no-any-return]

    async def hang(event: RunEvent, delivery: Delivery) -> None:
        await release.wait()  # past the ack wait: JetStream delivers it again

    task = await _run_consumer(
        bus, stop, stream=subjects.STREAM_EVENTS, durable=f"{unique}-past", subjects=[subjects.all_run_events(unique)],
        decode=counting_decode, handler=hang, max_deliver=1, ack_wait=1.0, concurrency=2,
    )  # fmt: skip
    subject = subjects.run_event(unique, "r1", "run.started")
    letter = await _next_dead_letter(bus, subject, lambda: bus.publish_event(RunStarted(tenant=unique, run_id="r1")))
    release.set()
    stop.set()
    await task
    assert letter.reason == "delivered 2 times without an ack"
    assert len(decoded) == 1  # the first delivery only


_KILLED_CONSUMER = """
import asyncio, sys
from trellis_core.bus import Bus, decoder
from trellis_core.events import RunEvent
from trellis_core.settings import Settings

async def main():
    bus = await Bus.connect(Settings.from_env({}, nats_url=sys.argv[1]), name="doomed")
    async def hold(event, delivery):
        print("holding", event.run_id, flush=True)
        await asyncio.sleep(3600)
    await bus.consumer(stream="TRELLIS_EVENTS", durable=sys.argv[2], subjects=[sys.argv[3]],
                       decode=decoder(RunEvent), handler=hold, ack_wait=1.0).run(asyncio.Event())

asyncio.run(main())
"""


async def test_a_consumer_killed_before_ack_gets_the_message_redelivered(
    bus: Bus, settings: Settings, unique: str
) -> None:
    durable = f"{unique}-killed"
    filter_subject = subjects.all_run_events(unique)
    doomed = subprocess.Popen(
        [sys.executable, "-c", _KILLED_CONSUMER, settings.nats_url, durable, filter_subject],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        await bus.publish_event(RunStarted(tenant=unique, run_id="r1"))
        line = await asyncio.wait_for(asyncio.to_thread(doomed.stdout.readline), 20)  # type: ignore[union-attr]
        assert line.strip() == "holding r1"
    finally:
        doomed.kill()
        doomed.wait()

    redelivered: asyncio.Queue[tuple[str, int]] = asyncio.Queue()
    stop = asyncio.Event()

    async def handle(event: RunEvent, delivery: Delivery) -> None:
        await redelivered.put((event.run_id, delivery.deliveries))

    task = await _run_consumer(
        bus, stop, stream=subjects.STREAM_EVENTS, durable=durable, subjects=[filter_subject],
        decode=decoder(RunEvent), handler=handle, ack_wait=1.0,
    )
    run_id, deliveries = await asyncio.wait_for(redelivered.get(), 15)
    stop.set()
    await task
    assert (run_id, deliveries) == ("r1", 2)


async def test_ensure_streams_is_idempotent(bus: Bus) -> None:
    await bus.ensure_streams()
    await bus.ensure_streams()
    info = await bus.js.stream_info(subjects.STREAM_DEADLETTER)
    assert info.config.subjects == ["trellis.*.deadletter.>"]
    with pytest.raises(nats.js.errors.NotFoundError):
        await bus.js.stream_info(subjects.LEGACY_STREAM_WORK)


async def test_each_tenant_gets_its_own_work_queue_stream_capturing_its_work_only(bus: Bus, unique: str) -> None:
    await ensure_work_stream(bus, unique)
    await ensure_work_stream(bus, unique)  # idempotent
    await ensure_work_stream(bus, f"{unique}b")
    info = await bus.js.stream_info(f"TRELLIS_WORK_{unique}")
    assert info.config.retention == nats.js.api.RetentionPolicy.WORK_QUEUE
    assert info.config.subjects == [f"trellis.{unique}.work.>"]
    ack = await bus.publish(subjects.work(unique, "default"), b"{}")
    assert ack.stream == subjects.work_stream(unique)
    other = await bus.publish(subjects.work(f"{unique}b", "default", "agent1"), b"{}")
    assert other.stream == subjects.work_stream(f"{unique}b")


async def test_a_dead_letter_is_filed_under_its_tenant_in_the_deadletter_stream(bus: Bus, unique: str) -> None:
    subject = subjects.work(unique, "default")
    assert subjects.deadletter(subject) == f"trellis.{unique}.deadletter.{subject}"
    assert subjects.deadletter("elsewhere.x") == "trellis.deadletter.deadletter.elsewhere.x"
    ack = await bus.publish(subjects.deadletter(subject), b"{}")
    assert ack.stream == subjects.STREAM_DEADLETTER


@pytest.fixture
async def own_server(tmp_path: Any) -> Any:
    """A nats-server of this test's own: the shared one must never hold the legacy stream (its
    subjects overlap every tenant's work stream)."""
    from trellis_core.embedded import EmbeddedNats

    server = EmbeddedNats(tmp_path / "nats")
    server.start()
    settings = Settings.from_env({}, nats_url=server.url, stream_storage="memory")
    bus = await Bus.connect(settings, name="legacy")
    yield bus
    await bus.close()
    server.stop()


async def _legacy_streams(bus: Bus) -> None:
    memory = nats.js.api.StorageType.MEMORY
    await bus.js.add_stream(name="TRELLIS_WORK", subjects=["trellis.*.work.>"], storage=memory,
                            retention=nats.js.api.RetentionPolicy.WORK_QUEUE)  # fmt: skip
    await bus.js.add_stream(name="TRELLIS_DEADLETTER", subjects=["trellis_deadletter.>"], storage=memory)


async def test_an_empty_legacy_work_stream_is_deleted_and_dead_letters_move_under_tenants(own_server: Bus) -> None:
    await _legacy_streams(own_server)
    await own_server.ensure_streams()
    with pytest.raises(nats.js.errors.NotFoundError):
        await own_server.js.stream_info("TRELLIS_WORK")
    info = await own_server.js.stream_info(subjects.STREAM_DEADLETTER)
    assert info.config.subjects == ["trellis.*.deadletter.>"]
    await ensure_work_stream(own_server, "acme")  # no overlap left


async def test_a_legacy_work_stream_holding_work_is_refused_naming_it_and_its_count(own_server: Bus) -> None:
    await _legacy_streams(own_server)
    await own_server.publish("trellis.acme.work.default", b"{}")
    await own_server.publish("trellis.acme.work.default", b"{}")
    with pytest.raises(ConfigError, match=r"stream TRELLIS_WORK .*holds 2 message\(s\)"):
        await own_server.ensure_streams()
    info = await own_server.js.stream_info("TRELLIS_WORK")
    assert info.state.messages == 2


async def test_a_storage_change_is_refused_naming_the_setting(bus: Bus) -> None:
    file_backed = Bus(bus.nc, msgspec.structs.replace(bus.settings, stream_storage="file"), "tests")
    with pytest.raises(ConfigError, match="TRELLIS_STREAM_STORAGE=file"):
        await file_backed.ensure_streams()


async def test_stream_limits_follow_the_settings(bus: Bus) -> None:
    tighter = msgspec.structs.replace(bus.settings, logs_max_age_days=1.0, logs_max_bytes=1024**3)
    await Bus(bus.nc, tighter, "tests").ensure_streams()
    info = await bus.js.stream_info(subjects.STREAM_LOGS)
    assert (info.config.max_age, info.config.max_bytes) == (86_400.0, 1024**3)
    await bus.ensure_streams()
    info = await bus.js.stream_info(subjects.STREAM_LOGS)
    assert info.config.max_bytes == bus.settings.logs_max_bytes


async def test_an_unreachable_server_gives_an_error_naming_the_url() -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    settings = Settings.from_env({}, nats_url=url, connect_timeout_seconds=0.5)
    with pytest.raises(BusUnavailable, match=url.replace(".", r"\.")):
        await Bus.connect(settings, name="tests")
