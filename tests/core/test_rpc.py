"""Core NATS request/reply with chunked answers (trellis_core.rpc) on the real nats-server."""

from __future__ import annotations

import asyncio
import os

import pytest
from nats.aio.msg import Msg

from trellis_core.bus import Bus
from trellis_core.rpc import CHUNK_HEADER, NoResponders, Requester, RpcError, serve


async def echo_times(payload: bytes) -> bytes:
    """Answer the payload repeated as many times as its first line says."""
    count, _, body = payload.partition(b"\n")
    return body * int(count)


async def test_a_small_reply_is_one_message_and_a_big_one_is_reassembled_from_chunks(bus: Bus, unique: str) -> None:
    subject = f"test.rpc.{unique}"
    sub = await serve(bus.nc, subject, echo_times, queue="q")
    requester = Requester(bus.nc)
    seen_chunks: list[str] = []
    all_seen = asyncio.Event()

    async def spy(msg: Msg) -> None:
        seen_chunks.append((msg.headers or {}).get(CHUNK_HEADER, ""))
        if seen_chunks[-1].endswith(f"/{len(seen_chunks)}"):
            all_seen.set()

    try:
        assert await requester.request(subject, b"3\nab", timeout=10) == b"ababab"
        body = os.urandom(1024)
        big = await requester.request(subject, b"3000\n" + body, timeout=30)
        assert len(big) == 3000 * 1024 > 2 * bus.nc.max_payload
        assert big == body * 3000
        count = -(-len(big) // (bus.nc.max_payload - 1024))
        spy_sub = await bus.nc.subscribe(requester._prefix + "*", cb=spy)  # watch the wire
        try:
            await requester.request(subject, b"3000\n" + body, timeout=30)
            await asyncio.wait_for(all_seen.wait(), 10)  # the spy's callback may run after the requester's
        finally:
            await spy_sub.unsubscribe()
        assert seen_chunks == [f"{i}/{count}" for i in range(count)]
        answers = await asyncio.gather(*(requester.request(subject, f"{i}\nx".encode(), timeout=10) for i in range(20)))
        assert answers == [b"x" * i for i in range(20)], "concurrent requests each get their own answer"
    finally:
        await requester.close()
        await sub.unsubscribe()


async def test_nobody_serving_the_subject_is_no_responders(bus: Bus, unique: str) -> None:
    requester = Requester(bus.nc)
    try:
        with pytest.raises(NoResponders):
            await requester.request(f"test.rpc.{unique}.nobody", b"", timeout=10)
    finally:
        await requester.close()


async def test_a_silent_service_times_out_naming_the_subject(bus: Bus, unique: str) -> None:
    subject = f"test.rpc.{unique}.silent"
    never = asyncio.Event()

    async def hang(payload: bytes) -> bytes:
        await never.wait()
        return b""

    sub = await serve(bus.nc, subject, hang, queue="q")
    requester = Requester(bus.nc)
    try:
        with pytest.raises(RpcError, match=f"no answer on {subject} within 0.3s"):
            await requester.request(subject, b"", timeout=0.3)
    finally:
        never.set()
        await requester.close()
        await sub.unsubscribe()


async def test_a_handler_that_raises_answers_nothing_and_the_next_request_is_served(bus: Bus, unique: str) -> None:
    subject = f"test.rpc.{unique}.raises"

    async def fragile(payload: bytes) -> bytes:
        if payload == b"boom":
            raise ValueError("boom")
        return b"ok"

    sub = await serve(bus.nc, subject, fragile, queue="q")
    requester = Requester(bus.nc)
    try:
        with pytest.raises(RpcError, match="no answer"):
            await requester.request(subject, b"boom", timeout=0.5)
        assert await requester.request(subject, b"fine", timeout=10) == b"ok"
    finally:
        await requester.close()
        await sub.unsubscribe()


@pytest.mark.parametrize(
    ("headers", "why"),
    [
        ({CHUNK_HEADER: "one/two"}, "malformed Trellis-Chunk header 'one/two'"),
        ({CHUNK_HEADER: "0"}, "malformed Trellis-Chunk header '0'"),
        ({CHUNK_HEADER: "0/0"}, "malformed Trellis-Chunk header '0/0'"),
        ({CHUNK_HEADER: "3/2"}, "malformed Trellis-Chunk header '3/2'"),
        ({CHUNK_HEADER: "1/2"}, "reply chunk 1 arrived when 0 was due"),
    ],
)
async def test_a_broken_chunked_reply_is_an_error_not_a_hang(
    bus: Bus, unique: str, headers: dict[str, str], why: str
) -> None:
    subject = f"test.rpc.{unique}.broken"

    async def broken(msg: Msg) -> None:
        await bus.nc.publish(msg.reply, b"part", headers=headers)

    sub = await bus.nc.subscribe(subject, cb=broken)
    requester = Requester(bus.nc)
    try:
        with pytest.raises(RpcError, match=why):
            await requester.request(subject, b"", timeout=10)
    finally:
        await requester.close()
        await sub.unsubscribe()


async def test_chunks_of_another_count_midway_are_refused(bus: Bus, unique: str) -> None:
    subject = f"test.rpc.{unique}.recount"

    async def recount(msg: Msg) -> None:
        await bus.nc.publish(msg.reply, b"a", headers={CHUNK_HEADER: "0/3"})
        await bus.nc.publish(msg.reply, b"b", headers={CHUNK_HEADER: "1/2"})

    sub = await bus.nc.subscribe(subject, cb=recount)
    requester = Requester(bus.nc)
    try:
        with pytest.raises(RpcError, match="chunk 1/2 after a reply of 3 chunks"):
            await requester.request(subject, b"", timeout=10)
    finally:
        await requester.close()
        await sub.unsubscribe()
