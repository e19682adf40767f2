"""The scheduler's pull feed on a real nats-server: messages flow in through one open request in
order, a request that ends is asked again, and a stop waits the open request out and hands back
what it took, so the next consumer gets it at once rather than after the ack wait. Also the
delivery count and stream sequence read from a message's ack subject."""

from __future__ import annotations

import asyncio
import contextlib

import nats
import pytest
from nats.aio.client import Client as NATS
from nats.js import api as js_api

from trellis_scheduler.feed import PullFeed
from trellis_scheduler.scheduler import delivery

ACK_WAIT = 30.0  # what a stranded message would cost the next consumer


async def _stream(nc: NATS, unique: str) -> tuple[str, str, str]:
    js = nc.jetstream()
    stream, durable, subject = f"FEED_{unique}", f"feed_{unique}", f"feed.{unique}"
    await js.add_stream(name=stream, subjects=[subject], storage=js_api.StorageType.MEMORY)
    await js.add_consumer(stream, js_api.ConsumerConfig(
        durable_name=durable, ack_policy=js_api.AckPolicy.ALL, ack_wait=ACK_WAIT, max_deliver=-1,
    ))  # fmt: skip
    return stream, durable, subject


async def _next_consumer_gets(nc: NATS, stream: str, durable: str, within: float) -> list[bytes]:
    sub = await nc.jetstream().pull_subscribe_bind(durable, stream=stream)
    try:
        return [m.data for m in await sub.fetch(10, timeout=within)]
    except nats.errors.TimeoutError:
        return []
    finally:
        await sub.unsubscribe()


async def _take(feed: PullFeed, count: int, within: float = 10.0) -> list[bytes]:
    got: list[bytes] = []
    async with asyncio.timeout(within):
        while len(got) < count:
            with contextlib.suppress(TimeoutError):
                msgs = await feed.fetch(64, timeout=0.5)
                got += [m.data for m in msgs]
                await msgs[-1].ack()  # AckPolicy.ALL: the last acks the batch
    return got


async def test_messages_flow_in_order_across_requests_that_fill_up_and_expire(nats_url: str, unique: str) -> None:
    nc = await nats.connect(nats_url)
    try:
        stream, durable, subject = await _stream(nc, unique)
        js = nc.jetstream()
        for n in range(10):  # more than one request of 4 holds
            await js.publish(subject, str(n).encode())
        feed = await PullFeed(nc, stream, durable, batch=4, expires=0.3).start()
        assert await _take(feed, 10) == [str(n).encode() for n in range(10)]
        await asyncio.sleep(0.8)  # the open request expires unanswered (a 408): the next one is asked
        await js.publish(subject, b"later")
        assert await _take(feed, 1) == [b"later"]
        await asyncio.wait_for(feed.unsubscribe(), 5)
    finally:
        await nc.close()


async def test_nothing_there_is_a_timeout(nats_url: str, unique: str) -> None:
    nc = await nats.connect(nats_url)
    try:
        stream, durable, _ = await _stream(nc, unique)
        feed = await PullFeed(nc, stream, durable, batch=8, expires=0.3).start()
        with pytest.raises(TimeoutError):
            await feed.fetch(8, timeout=0.5)
        await asyncio.wait_for(feed.unsubscribe(), 5)
    finally:
        await nc.close()


async def test_a_stop_waits_the_open_request_out_and_hands_back_what_it_delivered(nats_url: str, unique: str) -> None:
    nc = await nats.connect(nats_url)
    try:
        stream, durable, subject = await _stream(nc, unique)
        feed = await PullFeed(nc, stream, durable, batch=8, expires=2.0).start()
        with pytest.raises(TimeoutError):  # leaves a request open at the server for 2 s
            await feed.fetch(8, timeout=0.2)
        stopping = asyncio.create_task(feed.unsubscribe())
        await asyncio.sleep(0.3)
        assert not stopping.done(), "the open request was not waited out"
        await nc.jetstream().publish(subject, b"late")  # delivered to the open request
        await asyncio.wait_for(stopping, 5)
        assert await _next_consumer_gets(nc, stream, durable, within=2) == [b"late"]
    finally:
        await nc.close()


async def test_taken_but_not_handed_out_goes_back_at_once(nats_url: str, unique: str) -> None:
    nc = await nats.connect(nats_url)
    try:
        stream, durable, subject = await _stream(nc, unique)
        js = nc.jetstream()
        await js.publish(subject, b"0")
        feed = await PullFeed(nc, stream, durable, batch=8, expires=0.5).start()
        first = await feed.fetch(8, timeout=2)
        assert [m.data for m in first] == [b"0"]
        await first[-1].ack()
        await js.publish(subject, b"1")  # comes in through the request asked after that fetch
        async with asyncio.timeout(5):
            while not feed.msgs:
                feed._arrived.clear()
                await feed._arrived.wait()
        await asyncio.wait_for(feed.unsubscribe(), 5)
        assert await _next_consumer_gets(nc, stream, durable, within=2) == [b"1"]
    finally:
        await nc.close()


async def test_delivery_reads_the_count_and_sequence_metadata_would(nats_url: str, unique: str) -> None:
    nc = await nats.connect(nats_url)
    try:
        stream, durable, subject = await _stream(nc, unique)
        for n in range(3):
            await nc.jetstream().publish(subject, str(n).encode())
        feed = await PullFeed(nc, stream, durable, batch=8, expires=0.5).start()
        msgs = await feed.fetch(8, timeout=2)
        await msgs[0].nak()  # delivered again: its count goes up
        again = await feed.fetch(8, timeout=2)
        for msg in msgs + again:
            assert delivery(msg) == (msg.metadata.num_delivered, msg.metadata.sequence.stream)
        assert delivery(again[0]) == (2, 1)
        await again[-1].ack()
        await asyncio.wait_for(feed.unsubscribe(), 5)
    finally:
        await nc.close()


@pytest.mark.parametrize(
    "reply",
    [
        "$JS.ACK.EVENTS.scheduler.3.1042.17.1733100000000000000.5",
        "$JS.ACK.hub.ACCHASH.EVENTS.scheduler.3.1042.17.1733100000000000000.5.rand0m",
        "$JS.ACK.hub.ACCHASH.EVENTS.scheduler.3.1042.17.1733100000000000000.5",
    ],
    ids=["v1", "v2 with domain", "v2 without its last token"],
)
def test_delivery_reads_both_ack_subject_forms(reply: str) -> None:
    msg = nats.aio.msg.Msg(_client=None, subject="x", reply=reply)  # type: ignore[arg-type]
    assert delivery(msg) == (3, 1042) == (msg.metadata.num_delivered, msg.metadata.sequence.stream)
