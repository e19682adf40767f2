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

# How the store frames an answer (trellis_store.handlers.encode_reply): exactly the encoding of
# Reply(result=<answer>), so `ask_raw` can take the answer's bytes out without decoding them.
RESULT_FRAME = (b'{"result":', b"}")


class StoreClient:
    def __init__(self, nc: NATS, *, timeout: float = 10.0) -> None:
        self._requester = Requester(nc)
        self.timeout = timeout

    async def ask(
        self, request: StoreRequest, into: type[T], *, timeout: float | None = None  # noqa: ASYNC109
    ) -> T | StoreError:
        """The answer decoded as `into`, or why there is none (`unavailable` if no store answers)."""
        subject = subject_of(request)
        data = await self._request(subject, request, timeout)
        if isinstance(data, StoreError):
            return data
        try:
            reply = _reply_decoder.decode(data)
            if reply.error is not None:
                return reply.error
            if not reply.result:
                return StoreError(code="internal", message=f"the store answered {subject} with nothing")
            return msgspec.json.decode(reply.result, type=into)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return StoreError(code="internal", message=f"the store's answer to {subject} is unreadable: {exc}")

    async def _request(
        self, subject: str, request: StoreRequest, timeout: float | None  # noqa: ASYNC109
    ) -> bytes | StoreError:
        try:
            return await self._requester.request(subject, _encoder.encode(request), timeout=timeout or self.timeout)
        except NoResponders:
            return StoreError(code="unavailable", message="the state store is not running (no service answers)")
        except RpcError as exc:
            return StoreError(code="unavailable", message=f"the state store did not answer: {exc}")

    async def ask_raw(
        self, request: StoreRequest, *, timeout: float | None = None  # noqa: ASYNC109
    ) -> memoryview | StoreError:
        """The answer's JSON bytes as the store encoded them (a view into the reply, not a copy),
        or why there is none: for a caller that passes the answer on unchanged (the gateway's
        GET /v1/runs/{id} answers a 7,000-activity run's 2.5 MB without decoding it into Structs
        and encoding it again). An answer framed otherwise than the store frames it is read as a
        whole Reply."""
        subject = subject_of(request)
        data = await self._request(subject, request, timeout)
        if isinstance(data, StoreError):
            return data
        head, tail = RESULT_FRAME
        if data.startswith(head) and data.endswith(tail) and len(data) > len(head) + len(tail):
            return memoryview(data)[len(head) : -len(tail)]
        try:
            reply = _reply_decoder.decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return StoreError(code="internal", message=f"the store's answer to {subject} is unreadable: {exc}")
        if reply.error is not None:
            return reply.error
        if not reply.result:
            return StoreError(code="internal", message=f"the store answered {subject} with nothing")
        return memoryview(bytes(reply.result))

    async def close(self) -> None:
        await self._requester.close()
