"""The bus side of approvals: publish ApprovalRequested, wait for the matching ApprovalDecided.

The wait reads the run's `approval.decided` events from JetStream from the start of the
stream, so a decision made while the agent was restarting is still seen.

It does so through an ephemeral push consumer created with the named-consumer API,
`$JS.API.CONSUMER.CREATE.TRELLIS_EVENTS.<name>.trellis.<t>.run.<run>.approval.decided`: the filter
is in the subject, so a tenant's agent permission `$JS.API.CONSUMER.CREATE.TRELLIS_EVENTS.*.trellis.<t>.>`
lets it read its own tenant's decisions and no other. Its deliveries come to a plain subscription
on an inbox under the agent's inbox prefix (no `js.subscribe`, which would look the stream up
with `$JS.API.STREAM.NAMES`), unacked (AckPolicy NONE); once unsubscribed, the server removes the
consumer after `INACTIVE_SECONDS` (an agent may not delete consumers).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import msgspec
import nats.errors
from nats.aio.msg import Msg
from nats.js import api as js_api

from trellis_core import subjects
from trellis_core.bus import Bus
from trellis_core.events import ApprovalDecided, ApprovalRequested

_decode = msgspec.json.Decoder(ApprovalDecided).decode
INACTIVE_SECONDS = 30.0


class BusApprovals:
    def __init__(self, bus: Bus) -> None:
        self._bus = bus

    async def request_and_wait(self, request: ApprovalRequested) -> ApprovalDecided:
        decided: asyncio.Future[ApprovalDecided] = asyncio.get_running_loop().create_future()

        async def on_message(msg: Msg) -> None:
            try:
                decision = _decode(msg.data)
            except (msgspec.DecodeError, msgspec.ValidationError):
                return
            mine = decision.activity_id == request.activity_id and decision.attempt == request.attempt
            if mine and not decided.done():
                decided.set_result(decision)

        subject = subjects.run_event(request.tenant, request.run_id, "approval.decided")
        nc = self._bus.nc
        deliver = nc.new_inbox()  # under the agent's inbox prefix
        sub = await nc.subscribe(deliver, cb=on_message)
        config = js_api.ConsumerConfig(
            name=f"approval-{uuid.uuid4().hex}",
            deliver_subject=deliver,
            deliver_policy=js_api.DeliverPolicy.ALL,
            ack_policy=js_api.AckPolicy.NONE,
            filter_subject=subject,
            inactive_threshold=INACTIVE_SECONDS,
        )
        try:
            await self._bus.js.add_consumer(subjects.STREAM_EVENTS, config)
        except BaseException:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()
            raise
        try:
            await self._bus.publish_event(request)
            return await decided
        finally:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()
