"""Core NATS request/reply with answers of any size: a reply larger than one message travels
as numbered chunks on the requester's inbox, in order (NATS keeps one publisher's order).

`serve` answers a subject (a queue group, so replicas share the load); `Requester.request`
asks and reassembles. Used for the state store's queries (`trellis.store.>`).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Awaitable, Callable
from typing import cast

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from trellis_core.errors import TrellisError
from trellis_core.logs import get_logger

log = get_logger("rpc")

CHUNK_HEADER = "Trellis-Chunk"  # "<index>/<count>", present only when the reply is chunked
STATUS_HEADER = "Status"
NO_RESPONDERS = "503"
HEADER_ROOM = 1024  # what a message's headers and subject may take beside its payload
MAX_REPLY_BYTES = 256 * 1024**2


class RpcError(TrellisError):
    """The request got no answer: nobody serves the subject, or it timed out, or the answer broke."""


class NoResponders(RpcError):
    pass


Handler = Callable[[bytes], Awaitable[bytes]]


async def serve(nc: NATS, subject: str, handler: Handler, *, queue: str, concurrency: int = 64) -> Subscription:
    """Answer every request on `subject` with `handler(payload)`; at most `concurrency` at once.
    A handler that raises answers nothing (the caller times out): handlers answer errors as values."""
    slots = asyncio.Semaphore(concurrency)
    tasks: set[asyncio.Task[None]] = set()

    async def answer(msg: Msg) -> None:
        try:
            reply = await handler(msg.data)
        except Exception:
            log.exception("rpc_handler_failed", subject=msg.subject)
            return
        finally:
            slots.release()
        if msg.reply:
            await send_reply(nc, msg.reply, reply)

    async def on_message(msg: Msg) -> None:
        await slots.acquire()
        task = asyncio.create_task(answer(msg))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    return await nc.subscribe(subject, queue=queue, cb=on_message)


async def send_reply(nc: NATS, reply: str, data: bytes) -> None:
    limit = max(1, nc.max_payload - HEADER_ROOM)
    if len(data) <= limit:
        await nc.publish(reply, data)
        return
    count = -(-len(data) // limit)
    view = memoryview(data)  # chunks are views, not copies: nats-py copies each into its command anyway
    for index in range(count):
        chunk = cast(bytes, view[index * limit : (index + 1) * limit])
        await nc.publish(reply, chunk, headers={CHUNK_HEADER: f"{index}/{count}"})


class _Pending:
    def __init__(self) -> None:
        self.done: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.parts: list[bytes] = []
        self.size = 0
        self.count = 0  # chunks announced by the first one

    def take(self, msg: Msg) -> None:
        if self.done.done():
            return
        headers = msg.headers or {}
        if headers.get(STATUS_HEADER) == NO_RESPONDERS and not msg.data:
            self.done.set_exception(NoResponders("no service answers this subject"))
            return
        marker = headers.get(CHUNK_HEADER)
        if marker is None:
            self.done.set_result(msg.data)
            return
        try:
            index, count = (int(part) for part in marker.split("/"))
        except ValueError:
            index = count = -1
        if not 0 <= index < count:  # "0/0" or "3/2" would never complete: fail now, not at the timeout
            self.done.set_exception(RpcError(f"malformed {CHUNK_HEADER} header {marker!r}"))
            return
        if self.count and count != self.count:
            self.done.set_exception(RpcError(f"reply chunk {index}/{count} after a reply of {self.count} chunks"))
            return
        self.count = count
        if index != len(self.parts):
            self.done.set_exception(RpcError(f"reply chunk {index} arrived when {len(self.parts)} was due"))
            return
        self.parts.append(msg.data)
        self.size += len(msg.data)
        if self.size > MAX_REPLY_BYTES:
            self.done.set_exception(RpcError(f"reply is over {MAX_REPLY_BYTES} bytes"))
        elif len(self.parts) == count:
            self.done.set_result(b"".join(self.parts))


class Requester:
    """Requests over one wildcard inbox subscription (opened on first use) of one connection."""

    def __init__(self, nc: NATS) -> None:
        self.nc = nc
        self._prefix = ""
        self._pending: dict[str, _Pending] = {}
        self._sub: Subscription | None = None
        self._opening = asyncio.Lock()

    async def _open(self) -> None:
        async with self._opening:
            if self._sub is None:
                self._prefix = self.nc.new_inbox() + "."
                self._sub = await self.nc.subscribe(self._prefix + "*", cb=self._on_reply)

    async def _on_reply(self, msg: Msg) -> None:
        pending = self._pending.get(msg.subject[len(self._prefix) :])
        if pending is not None:
            pending.take(msg)

    async def request(self, subject: str, payload: bytes, *, timeout: float) -> bytes:  # noqa: ASYNC109
        """The whole answer; NoResponders if nobody serves `subject`, RpcError on timeout."""
        if self._sub is None:
            await self._open()
        token = secrets.token_hex(8)
        pending = self._pending[token] = _Pending()
        try:
            await self.nc.publish(subject, payload, reply=self._prefix + token)
            return await asyncio.wait_for(pending.done, timeout)
        except TimeoutError:
            raise RpcError(f"no answer on {subject} within {timeout:g}s") from None
        finally:
            del self._pending[token]

    async def close(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None
