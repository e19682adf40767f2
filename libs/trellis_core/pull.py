"""A pull subscription to a durable that takes each batch through one subscription callback.

nats-py's `fetch` awaits every message of a batch through `asyncio.wait_for` (a task per message);
at thousands of events a second that is most of the projection's own CPU. This speaks the same
JetStream pull protocol (`$JS.API.CONSUMER.MSG.NEXT`) and is a `consume.Fetcher`, so the one
`fetch_loop` drives it: ask for what is there now (`no_wait`), and when nothing is, wait up to
the timeout for the first message.

Every request has its own reply subject, so the subscription knows which requests may still be
open at the server (a status ends one; a delivery counts toward one only while it is the only one
open, as the server does not say which request a message answers). A stop waits those out: what
an open request delivers after the subscription is gone reaches no one and sits unacked for the
whole ack wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

_STATUS = "Status"
_MARGIN_SECONDS = 0.5  # past a request's expiry: its last delivery or status is on its way
_FORGET_SECONDS = 30.0  # past its expiry, a request no status ended was answered in full


@dataclass
class _Request:
    want: int
    expires: float  # seconds from when the server got it (0: answered at once)
    asked_at: float
    got: int = 0


class BatchPull:
    """Batches from durable `durable` of `stream` (bind to an existing consumer)."""

    def __init__(self, nc: NATS, stream: str, durable: str, *, api_prefix: str = "$JS.API") -> None:
        self.nc = nc
        self.next_subject = f"{api_prefix}.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self.inbox = nc.new_inbox()
        self.msgs: list[Msg] = []
        self._open: dict[str, _Request] = {}  # reply subject -> a request the server may still answer
        self._changed = asyncio.Event()
        self._asked = 0
        self._sub: Subscription | None = None

    async def start(self) -> BatchPull:
        self._sub = await self.nc.subscribe(f"{self.inbox}.*", cb=self._on_msg)
        return self

    async def _on_msg(self, msg: Msg) -> None:
        if msg.headers and msg.headers.get(_STATUS):  # 404 none left, 408 expired, 409...: the request is over
            self._open.pop(msg.subject, None)  # a status comes on the request's own reply subject
        else:
            self.msgs.append(msg)  # on the stream's subject: which request it answers, only one open tells
            if len(self._open) == 1:
                reply, request = next(iter(self._open.items()))
                request.got += 1
                if request.got >= request.want:
                    del self._open[reply]
        self._changed.set()

    async def fetch(self, batch: int, timeout: float) -> list[Msg]:  # noqa: ASYNC109 - the Fetcher protocol's
        """What the durable has now, up to about `batch`; else the first to come within `timeout`
        (raises TimeoutError if none does)."""
        if not self.msgs:
            await self._ask({"batch": batch, "no_wait": True}, batch, timeout)
        if not self.msgs:
            # One message, not a batch: a lingering request for more would go on delivering after
            # a stop, and what it delivered then would be handed back only once it expired.
            await self._ask({"batch": 1, "expires": int(timeout * 1e9)}, 1, timeout)
        msgs, self.msgs = self.msgs, []
        if not msgs:
            raise TimeoutError
        return msgs

    async def _ask(self, request: dict[str, object], want: int, timeout: float) -> None:  # noqa: ASYNC109
        now = asyncio.get_running_loop().time()
        for stale in [r for r, o in self._open.items() if now - o.asked_at > o.expires + _FORGET_SECONDS]:
            del self._open[stale]
        self._asked += 1
        reply = f"{self.inbox}.{self._asked}"
        self._open[reply] = _Request(want, 0.0 if request.get("no_wait") else timeout, now)
        await self.nc.publish(self.next_subject, json.dumps(request).encode(), reply=reply)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout + _MARGIN_SECONDS):
                while reply in self._open:
                    self._changed.clear()
                    await self._changed.wait()

    async def last_taken(self) -> list[Msg]:
        """Once fetching has stopped: wait out the requests still open at the server (each at
        most until its expiry) and hand out what they delivered, to be handled like any batch."""
        await self._wait_open_out()
        msgs, self.msgs = self.msgs, []
        return msgs

    async def unsubscribe(self) -> None:
        """Stop; messages taken but never handed out go back (nak): whoever fetches next gets
        them at once while the server runs (a server stopped before it redelivers keeps them
        for the ack wait: `last_taken` first is better).

        Requests still open at the server are waited out first (each at most until its expiry):
        what one delivered after the unsubscribe would reach no one."""
        await self._wait_open_out()
        leftover, self.msgs = self.msgs, []
        for msg in leftover:
            with contextlib.suppress(nats.errors.Error):
                await msg.nak()
        if self._sub is not None:
            with contextlib.suppress(nats.errors.Error):
                await self._sub.unsubscribe()

    async def _wait_open_out(self) -> None:
        if self._open:
            # On a loaded machine a request can reach the server well after `fetch` gave up on it,
            # and its expiry runs from then: once a flush returns, every request has arrived.
            with contextlib.suppress(nats.errors.Error, TimeoutError):
                await self.nc.flush(timeout=2)
            longest = max(request.expires for request in self._open.values())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(longest + _MARGIN_SECONDS):
                    while self._open:
                        self._changed.clear()
                        await self._changed.wait()
