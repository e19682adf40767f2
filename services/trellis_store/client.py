"""Ask the state store: one typed request, its typed answer or a `StoreError` (errors are values)."""

from __future__ import annotations

from typing import TypeVar

import msgspec
from nats.aio.client import Client as NATS

from trellis_core.rpc import NoResponders, Requester, RpcError
from trellis_store.api import Reply, StoreError, StoreRequest, subject_of

T = TypeVar("T")

_encoder = msgspec.json.Encoder()
_reply_decoder = msgspec.json.Decoder(Reply)


class StoreClient:
    def __init__(self, nc: NATS, *, timeout: float = 10.0) -> None:
        self._requester = Requester(nc)
        self.timeout = timeout

    async def ask(
        self, request: StoreRequest, into: type[T], *, timeout: float | None = None  # noqa: ASYNC109
    ) -> T | StoreError:
        """The answer decoded as `into`, or why there is none (`unavailable` if no store answers)."""
        subject = subject_of(request)
        try:
            data = await self._requester.request(subject, _encoder.encode(request), timeout=timeout or self.timeout)
        except NoResponders:
            return StoreError(code="unavailable", message="the state store is not running (no service answers)")
        except RpcError as exc:
            return StoreError(code="unavailable", message=f"the state store did not answer: {exc}")
        try:
            reply = _reply_decoder.decode(data)
            if reply.error is not None:
                return reply.error
            if not reply.result:
                return StoreError(code="internal", message=f"the store answered {subject} with nothing")
            return msgspec.json.decode(reply.result, type=into)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return StoreError(code="internal", message=f"the store's answer to {subject} is unreadable: {exc}")

    async def close(self) -> None:
        await self._requester.close()
