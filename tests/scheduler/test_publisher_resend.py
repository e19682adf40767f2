"""The pipelined publisher re-sends what no stream stored, with the same dedupe id, until it is
stored once: the path a scheduler takes when JetStream was briefly unavailable."""

from __future__ import annotations

import asyncio

from nats.js import api as js_api

from trellis_core.bus import Bus
from trellis_scheduler.publisher import PipelinedPublisher


async def test_a_publish_no_stream_answered_is_sent_again_until_stored_once(bus: Bus, unique: str) -> None:
    subject = f"resend.{unique}.work"
    publisher = PipelinedPublisher(bus, confirm_timeout=2.0)
    await publisher.start()
    try:
        assert await publisher.publish(subject, b'{"n": 1}', f"{unique}/one")
        async with asyncio.timeout(10):  # nothing stores the subject yet: the ack says so
            await publisher.settled.wait()
        assert [item[2] for item in publisher.refused] == [f"{unique}/one"]

        confirming = asyncio.create_task(publisher.confirm())  # re-sends with backoff
        await asyncio.sleep(0)
        assert not confirming.done()
        stream = f"RESEND_{unique}"
        await bus.js.add_stream(js_api.StreamConfig(name=stream, subjects=[subject], storage=js_api.StorageType.MEMORY))
        try:
            async with asyncio.timeout(15):
                await confirming
            assert publisher.refused == []
            # the same dedupe id again (a retry that raced an ack) is not stored twice
            await bus.publish(subject, b'{"n": 1}', msg_id=f"{unique}/one")
            info = await bus.js.stream_info(stream)
            assert info.state.messages == 1
        finally:
            await bus.js.delete_stream(stream)
    finally:
        await publisher.close()
