"""Pipelined JetStream publishing: send now, collect the acks on one inbox, confirm later.

`Bus.publish` waits for each ack in turn: correct, but a round trip per message. The scheduler
sends two messages per dispatch, so it sends them all at once and, before a snapshot that
depends on them, waits until every one is stored (re-sending through `Bus.publish`, with the
same dedupe id, whatever was refused or never answered). A message larger than the bus's
max_payload can never be sent: that publish fails for good (logged, and counted in
`too_large`), it is never retried.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Hashable

import msgspec
import nats.errors
from nats.aio.msg import Msg

from trellis_core.bus import Bus
from trellis_core.logs import get_logger

log = get_logger("scheduler.publisher")
_Item = tuple[str, bytes, str]  # subject, payload, msg id
MAX_TRACKED = 100_000


class _PubAck(msgspec.Struct):
    seq: int


class PipelinedPublisher:
    def __init__(self, bus: Bus, *, confirm_timeout: float = 5.0) -> None:
        self.bus = bus
        self.confirm_timeout = confirm_timeout
        self.prefix = bus.nc.new_inbox()
        self.pending: dict[str, _Item] = {}
        self.refused: list[_Item] = []
        self.settled = asyncio.Event()
        self.settled.set()
        self._seq = 0
        self.too_large = 0  # publishes given up because the message is over the bus's max_payload
        self._sub: object | None = None
        self._tracked: dict[str, Hashable] = {}
        # key -> stream sequence of stored messages that may be withdrawn (work items)
        self.stored: collections.OrderedDict[Hashable, int] = collections.OrderedDict()

    async def start(self) -> None:
        self._sub = await self.bus.nc.subscribe(f"{self.prefix}.*", cb=self._on_ack)

    async def close(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(nats.errors.Error):
                await self._sub.unsubscribe()  # type: ignore[attr-defined]

    async def publish(self, subject: str, payload: bytes, msg_id: str, *, track: Hashable = None) -> bool:
        """Send; with a `track` key, remember where the message is stored (`stored[key]`).
        False if the message is too large for the bus (then it is dropped, never retried)."""
        if len(payload) > self.bus.nc.max_payload:
            self._give_up(subject, msg_id, len(payload))
            return False
        self._seq += 1
        token = str(self._seq)
        if track is not None:
            self._tracked[msg_id] = track
        self.pending[token] = (subject, payload, msg_id)
        self.settled.clear()
        try:
            await self.bus.nc.publish(subject, payload, reply=f"{self.prefix}.{token}", headers={"Nats-Msg-Id": msg_id})
        except nats.errors.MaxPayloadError:
            self.pending.pop(token)
            self._tracked.pop(msg_id, None)
            self._give_up(subject, msg_id, len(payload))
            if not self.pending:
                self.settled.set()
            return False
        except nats.errors.Error:
            self.refused.append(self.pending.pop(token))
        return True

    def _give_up(self, subject: str, msg_id: str, size: int) -> None:
        self.too_large += 1
        log.error("publish_too_large", subject=subject, msg_id=msg_id, size=size, max_payload=self.bus.nc.max_payload)

    async def _on_ack(self, msg: Msg) -> None:
        item = self.pending.pop(msg.subject.rpartition(".")[2], None)
        if item is not None and (not msg.data or b'"error"' in msg.data):
            self.refused.append(item)  # no stream answered, or the stream refused it
        elif item is not None and item[2] in self._tracked:
            key = self._tracked.pop(item[2])
            with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
                self.stored[key] = msgspec.json.decode(msg.data, type=_PubAck).seq
                while len(self.stored) > MAX_TRACKED:
                    self.stored.popitem(last=False)
        if not self.pending:
            self.settled.set()

    async def confirm(self) -> None:
        """Return once everything published so far is stored."""
        if self.pending:
            try:
                await asyncio.wait_for(self.settled.wait(), timeout=self.confirm_timeout)
            except TimeoutError:
                self.refused.extend(self.pending.values())
                self.pending.clear()
                self.settled.set()
        while self.refused:
            subject, payload, msg_id = self.refused.pop(0)
            await self._publish_until_stored(subject, payload, msg_id)

    async def _publish_until_stored(self, subject: str, payload: bytes, msg_id: str) -> None:
        delay = 0.1
        while True:
            try:
                await self.bus.publish(subject, payload, msg_id=msg_id)
                return
            except nats.errors.MaxPayloadError:
                self._give_up(subject, msg_id, len(payload))
                return
            except (nats.errors.Error, TimeoutError) as exc:
                log.warning("publish_retry", subject=subject, error=repr(exc), retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
