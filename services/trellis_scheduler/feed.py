"""The scheduler's events as they come: one JetStream pull request kept open at all times.

A fetch per batch (nats-py's, or `trellis_store.pull.BatchPull`) asks the server and waits for
its answer every time: a request, a round trip and a closing status per batch, and the
scheduler's batches are small (a few events each while agents trickle results in). Here a
request for up to `batch` messages stays open at the server, which delivers each event as soon as
it is stored, and the next request goes out as soon as one is over (answered in full, or
expired: a status says so), so `fetch` mostly just takes what has arrived. It is a
`consume.Fetcher`, so `consume.fetch_loop` drives it as it drives the others.

Only one request is open at a time, so every delivery counts toward it. A stop waits the open
one out (until its status says it is over), and hands back (nak) what was taken but not handed
out: what a request delivered after the subscription is gone would reach no one, and the next
leader's first ack (the durable acks all before it) would settle it unseen.
"""

from __future__ import annotations

import asyncio
import contextlib
import json

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from trellis_core.logs import get_logger

log = get_logger("scheduler.feed")
_STATUS = "Status"
_OVER = ("404", "408")  # no messages / request expired: the request is over, nothing is wrong
_LOST_SECONDS = 5.0  # past its expiry, a request no status ended is taken as over (a reconnect)


class PullFeed:
    """Batches from durable `durable` of `stream` (bind to an existing pull consumer)."""

    def __init__(
        self,
        nc: NATS,
        stream: str,
        durable: str,
        *,
        batch: int,
        expires: float,
        api_prefix: str = "$JS.API",
    ) -> None:
        self.nc = nc
        self.next_subject = f"{api_prefix}.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self.inbox = nc.new_inbox()
        self.batch = batch
        self.expires = expires
        self.msgs: list[Msg] = []
        self._open: str | None = None  # reply subject of the request the server may still answer
        self._left = 0  # what that request may still deliver
        self._asked_at = 0.0
        self._asked = 0
        self._quiet_until = 0.0  # after a status that is not a plain end: wait before asking again
        self._arrived = asyncio.Event()
        self._sub: Subscription | None = None

    async def start(self) -> PullFeed:
        self._sub = await self.nc.subscribe(f"{self.inbox}.*", cb=self._on_msg)
        return self

    async def _on_msg(self, msg: Msg) -> None:
        status = msg.headers.get(_STATUS) if msg.headers else None
        if status == "100":  # an idle heartbeat (not asked for)
            return
        if status:  # a status comes on the request's own reply subject: that request is over
            if msg.subject == self._open:
                self._open = None
            if status not in _OVER:
                description = msg.headers.get("Description", "") if msg.headers else ""
                log.warning("pull_refused", status=status, description=description)
                self._quiet_until = asyncio.get_running_loop().time() + self.expires
        else:  # on the stream's subject; only one request is open, so it answers that one
            self.msgs.append(msg)
            if self._open is not None:
                self._left -= 1
                if self._left <= 0:
                    self._open = None
        self._arrived.set()

    async def fetch(self, batch: int, timeout: float) -> list[Msg]:  # noqa: ASYNC109 - the Fetcher protocol's
        """What has arrived (all of it: `batch` bounds each request instead); else the first to
        come within `timeout` (raises TimeoutError if none does)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self.msgs:
            now = loop.time()
            if now >= deadline:
                raise TimeoutError
            await self._keep_asking(now)
            self._arrived.clear()
            wait = deadline - now if self._open is not None else min(deadline, self._quiet_until) - now
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(wait, 0.0)):
                    await self._arrived.wait()
        msgs, self.msgs = self.msgs, []
        await self._keep_asking(loop.time())  # the next ones flow in while these are handled
        return msgs

    async def _keep_asking(self, now: float) -> None:
        if self._open is not None and now - self._asked_at > self.expires + _LOST_SECONDS:
            self._open = None  # its status was lost (a reconnect): it is long over at the server
        if self._open is not None or now < self._quiet_until:
            return
        self._asked += 1
        reply = f"{self.inbox}.{self._asked}"
        self._open, self._left, self._asked_at = reply, self.batch, now  # before: its answer may come at once
        request = {"batch": self.batch, "expires": int(self.expires * 1e9)}
        try:
            await self.nc.publish(self.next_subject, json.dumps(request).encode(), reply=reply)
        except BaseException:
            self._open = None
            raise

    async def unsubscribe(self) -> None:
        """Stop: wait the open request out, then hand back (nak) what was taken but never handed
        out. The wait ends with the request's status (at its expiry), not a guess at when that
        comes: the durable acks all before a sequence at once, so a delivery stranded at a gone
        subscription would be acked by the next leader's first ack, and lost, not redelivered.
        Only a status that never comes (a reconnect lost it) is given up on, well past the expiry."""
        if self._open is not None:
            # On a loaded machine the request can reach the server late, and its expiry runs from
            # then: once a flush returns, it has arrived.
            with contextlib.suppress(nats.errors.Error, TimeoutError):
                await self.nc.flush(timeout=2)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.expires + _LOST_SECONDS):
                    while self._open is not None:
                        self._arrived.clear()
                        await self._arrived.wait()
        if self._sub is not None:
            with contextlib.suppress(nats.errors.Error):
                await self._sub.unsubscribe()
        leftover, self.msgs = self.msgs, []
        for msg in leftover:
            with contextlib.suppress(nats.errors.Error):
                await msg.nak()
