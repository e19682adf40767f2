"""The bus side of approvals: publish ApprovalRequested, wait for the matching ApprovalDecided.

The wait reads the run's `approval.decided` events from JetStream from the start of the
stream, so a decision made while the agent was restarting is still seen.
"""

from __future__ import annotations

import asyncio
import contextlib

import msgspec
import nats.errors
from nats.aio.msg import Msg
from nats.js import api as js_api

from trellis_core import subjects
from trellis_core.bus import Bus
from trellis_core.events import ApprovalDecided, ApprovalRequested

_decode = msgspec.json.Decoder(ApprovalDecided).decode


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
        sub = await self._bus.js.subscribe(
            subject, cb=on_message, ordered_consumer=True, deliver_policy=js_api.DeliverPolicy.ALL
        )
        try:
            await self._bus.publish_event(request)
            return await decided
        finally:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()
