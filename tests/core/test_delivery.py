"""`consume.delivery`: the delivery count and stream sequence read off a message's ack subject
agree with nats-py's `msg.metadata`, on a real server and for both forms of the ack subject."""

from __future__ import annotations

from nats.aio.msg import Msg
from nats.js import api as js_api

from trellis_core.bus import Bus
from trellis_core.consume import delivery


async def test_delivery_agrees_with_the_metadata_on_a_first_delivery_and_a_redelivery(bus: Bus, unique: str) -> None:
    stream = f"DELIVERY_{unique}".upper()
    await bus.js.add_stream(name=stream, subjects=[f"delivery.{unique}.>"], storage=js_api.StorageType.MEMORY)
    try:
        for n in range(3):
            await bus.js.publish(f"delivery.{unique}.{n}", b"x")
        sub = await bus.js.pull_subscribe(f"delivery.{unique}.>", durable="d", stream=stream)
        first = await sub.fetch(3, timeout=5)
        assert [delivery(m) for m in first] == [(1, 1), (1, 2), (1, 3)]
        assert [delivery(m) for m in first] == [(m.metadata.num_delivered, m.metadata.sequence.stream) for m in first]
        await first[1].nak()
        again = await sub.fetch(1, timeout=5)
        assert delivery(again[0]) == (2, 2) == (again[0].metadata.num_delivered, again[0].metadata.sequence.stream)
    finally:
        await bus.js.delete_stream(stream)


def test_the_ack_subject_with_a_domain_and_account_hash_is_read_too() -> None:
    msg = Msg(_client=None, subject="s", reply="$JS.ACK.hub.ACCHASH.S.c.4.907.12.1700000000000000000.0.r4nd")  # type: ignore[arg-type]
    assert delivery(msg) == (4, 907)
