"""A pull subscription to a durable that takes each batch through one subscription callback.

nats-py's `fetch` awaits every message of a batch through `asyncio.wait_for` (a task per message);
at thousands of events a second that is most of the projection's own CPU. This speaks the same
JetStream pull protocol (`$JS.API.CONSUMER.MSG.NEXT`) and is a `consume.Fetcher`, so the one
`fetch_loop` drives it: ask for what is there now (`no_wait`), and when nothing is, wait up to
the timeout for the first message.
"""

from __future__ import annotations

import asyncio
import contextlib
import json

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

_STATUS = "Status"


class BatchPull:
    """Batches from durable `durable` of `stream` (bind to an existing consumer)."""

    def __init__(self, nc: NATS, stream: str, durable: str, *, api_prefix: str = "$JS.API") -> None:
        self.nc = nc
        self.next_subject = f"{api_prefix}.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self.inbox = nc.new_inbox()
        self.msgs: list[Msg] = []
        self._want = 0
        self._ended = asyncio.Event()
        self._ended.set()  # no request open yet
        self._open_for = 0.0  # how long the last request may stay open at the server
        self._sub: Subscription | None = None

    async def start(self) -> BatchPull:
        self._sub = await self.nc.subscribe(self.inbox, cb=self._on_msg)
        return self

    async def _on_msg(self, msg: Msg) -> None:
        if msg.headers and msg.headers.get(_STATUS):  # 404 none left, 408 expired, 409...: the request is over
            self._ended.set()
            return
        self.msgs.append(msg)
        if len(self.msgs) >= self._want:
            self._ended.set()

    async def fetch(self, batch: int, timeout: float) -> list[Msg]:  # noqa: ASYNC109 - the Fetcher protocol's
        """What the durable has now, up to about `batch`; else the first to come within `timeout`
        (raises TimeoutError if none does)."""
        if not self.msgs:
            await self._ask({"batch": batch, "no_wait": True}, batch, timeout)
        if not self.msgs:
            # One message, not a batch: a lingering request for more would go on delivering after
            # a stop, and what it delivered then would sit unacked for the whole ack wait.
            await self._ask({"batch": 1, "expires": int(timeout * 1e9)}, 1, timeout)
        msgs, self.msgs = self.msgs, []
        if not msgs:
            raise TimeoutError
        return msgs

    async def _ask(self, request: dict[str, object], want: int, timeout: float) -> None:  # noqa: ASYNC109
        self._want = want
        self._ended = asyncio.Event()
        self._open_for = timeout
        await self.nc.publish(self.next_subject, json.dumps(request).encode(), reply=self.inbox)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ended.wait(), timeout + 0.5)

    async def unsubscribe(self) -> None:
        """Stop; messages taken but never handed out go back at once (nak), not after the ack wait.

        A request still open at the server is waited out first (at most its expiry): on a loaded
        machine its publish can leave the client after `fetch` gave up on it, and what it delivered
        after the unsubscribe would reach no one and sit unacked for the whole ack wait."""
        if not self._ended.is_set():
            with contextlib.suppress(nats.errors.Error, TimeoutError):
                await self.nc.flush(timeout=2)  # the request has reached the server: its expiry runs
                await asyncio.wait_for(self._ended.wait(), self._open_for + 0.5)
        leftover, self.msgs = self.msgs, []
        for msg in leftover:
            with contextlib.suppress(nats.errors.Error):
                await msg.nak()
        if self._sub is not None:
            with contextlib.suppress(nats.errors.Error):
                await self._sub.unsubscribe()
