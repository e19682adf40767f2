"""The projection's pull subscription hands back what it took when it stops, including what a
request it had given up on delivers late: the next consumer gets it at once, not after the ack wait."""

from __future__ import annotations

import asyncio
import contextlib

import nats
import pytest
from nats.aio.client import Client as NATS
from nats.js import api as js_api

from trellis_core.pull import BatchPull

ACK_WAIT = 30.0  # what a stranded message would cost the next consumer


async def _stream(nc: NATS, unique: str) -> tuple[str, str, str]:
    js = nc.jetstream()
    stream, durable, subject = f"PULL_{unique}", f"pull_{unique}", f"pull.{unique}"
    await js.add_stream(name=stream, subjects=[subject])
    await js.add_consumer(stream, js_api.ConsumerConfig(
        durable_name=durable, ack_policy=js_api.AckPolicy.EXPLICIT, ack_wait=ACK_WAIT, max_deliver=-1,
    ))
    return stream, durable, subject


async def _next_consumer_gets(nc: NATS, stream: str, durable: str, within: float) -> list[bytes]:
    sub = await nc.jetstream().pull_subscribe_bind(durable, stream=stream)
    try:
        return [m.data for m in await sub.fetch(10, timeout=within)]
    except nats.errors.TimeoutError:
        return []
    finally:
        await sub.unsubscribe()


async def test_a_request_given_up_on_is_waited_out_and_its_delivery_handed_back(nats_url: str, unique: str) -> None:
    nc = await nats.connect(nats_url)
    try:
        stream, durable, subject = await _stream(nc, unique)
        pull = await BatchPull(nc, stream, durable).start()
        # A fetch given up on before its request expired (as on a loaded machine, where the
        # request reaches the server late): the request stays open there for 3 s.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.2):
                await pull.fetch(10, timeout=3)
        with pytest.raises(TimeoutError):  # a later request, answered and over
            await pull.fetch(10, timeout=0.2)
        stopping = asyncio.create_task(pull.unsubscribe())
        await asyncio.sleep(0.3)
        assert not stopping.done(), "the open request was not waited out"
        await nc.jetstream().publish(subject, b"late")  # delivered to the request given up on
        await asyncio.wait_for(stopping, 5)
        assert await _next_consumer_gets(nc, stream, durable, within=2) == [b"late"]
    finally:
        await nc.close()


async def test_taken_but_not_handed_out_goes_back_at_once(nats_url: str, unique: str) -> None:
    nc = await nats.connect(nats_url)
    try:
        stream, durable, subject = await _stream(nc, unique)
        for n in range(3):
            await nc.jetstream().publish(subject, str(n).encode())
        pull = await BatchPull(nc, stream, durable).start()
        first = await pull.fetch(2, timeout=1)
        assert [m.data for m in first] == [b"0", b"1"]
        for msg in first:
            await msg.ack()
        await pull._ask({"batch": 5, "no_wait": True}, 5, 1)  # taken, never handed out
        assert [m.data for m in pull.msgs] == [b"2"]
        await asyncio.wait_for(pull.unsubscribe(), 5)
        assert await _next_consumer_gets(nc, stream, durable, within=2) == [b"2"]
    finally:
        await nc.close()



async def test_what_open_requests_deliver_after_fetching_stopped_is_handed_out_to_be_written(
    nats_url: str, unique: str
) -> None:
    nc = await nats.connect(nats_url)
    try:
        stream, durable, subject = await _stream(nc, unique)
        pull = await BatchPull(nc, stream, durable).start()
        with contextlib.suppress(TimeoutError):  # a request given up on, open at the server for 3 s
            async with asyncio.timeout(0.2):
                await pull.fetch(10, timeout=3)
        taking = asyncio.create_task(pull.last_taken())
        await asyncio.sleep(0.3)
        assert not taking.done(), "the open request was not waited out"
        await nc.jetstream().publish(subject, b"late")
        last = await asyncio.wait_for(taking, 5)
        assert [m.data for m in last] == [b"late"]  # for the projection to write and ack, not a nak
        await last[0].ack_sync()
        await pull.unsubscribe()
        assert await _next_consumer_gets(nc, stream, durable, within=0.5) == []
    finally:
        await nc.close()
