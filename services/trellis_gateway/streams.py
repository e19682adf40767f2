"""A run's events and logs as server-sent events, read from JetStream directly; logs as text from the store.

The SSE `id:` of every message is its stream sequence (TRELLIS_EVENTS for events, TRELLIS_LOGS for
log chunks), so a client reconnecting with `Last-Event-ID: n` gets everything after n, no gap and
no duplicate. Each stream reads through its own ephemeral ordered consumer, removed when the
client goes (a failed write, found at the latest by the next heartbeat) or the run has ended.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import msgspec
import nats.errors
import nats.js.errors
from aiohttp import web
from nats.aio.msg import Msg
from nats.js import api as js_api
from nats.js.client import JetStreamContext

from trellis_core import sealed, subjects
from trellis_core.errors import TrellisError
from trellis_core.events import (
    ActivityCompleted,
    ActivityLogChunk,
    RunCompiled,
    RunCompleted,
    RunRequested,
    decode_run_event,
)
from trellis_core.logs import get_logger
from trellis_gateway.context import GATEWAY, ApiProblem, endpoint, masked, ok, principal
from trellis_gateway.runs_routes import run_of
from trellis_gateway.stream_limits import RETRY_AFTER_SECONDS
from trellis_store.api import MASK, LogChunkRow, LogChunks, LogsGet, RunDetail

routes = web.RouteTableDef()
log = get_logger("gateway.streams")

SSE_HEARTBEAT = web.AppKey("sse_heartbeat_seconds", float)  # optional on the app; default below
HEARTBEAT_SECONDS = 15.0
POLL_SECONDS = 0.25  # a stream with nothing to send checks this often whether to stop, end or heartbeat
INACTIVE_SECONDS = 10.0  # the server drops a consumer whose gateway vanished without deleting it
CLOSE_SECONDS = 2.0
LOG_PAGE = 1000
MAX_SEQUENCE_DIGITS = 19  # a JetStream sequence is a uint64
TERMINAL_EVENTS = ("run.completed", "run.rejected")
_decode_log = msgspec.json.Decoder(ActivityLogChunk).decode


# ---- SSE framing ------------------------------------------------------------------------------


def last_event_id(request: web.Request) -> int:
    """The stream sequence the client has already seen (0: none); 400 if the header is not one."""
    text = request.headers.get("Last-Event-ID", "").strip()
    if not text:
        return 0
    if not (text.isascii() and text.isdigit()) or len(text) > MAX_SEQUENCE_DIGITS:
        raise ApiProblem(400, "Bad Request", f"Last-Event-ID must be a stream sequence (a whole number), not {text!r}")
    return int(text)


def sse_frame(data: bytes, *, event: str = "", id_: int | None = None) -> bytes:
    """One SSE message; `data` is one line of JSON (it holds no raw newline). Every frame is made
    here, so this is where its sealed tokens are masked (`context.masked`)."""
    head = (f"id: {id_}\n" if id_ is not None else "") + (f"event: {event}\n" if event else "")
    return head.encode() + b"data: " + masked(data) + b"\n\n"


async def _open_sse(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )
    await response.prepare(request)
    return response


def _heartbeat(request: web.Request) -> float:
    return request.app.get(SSE_HEARTBEAT, HEARTBEAT_SECONDS)


@contextlib.contextmanager
def stream_slot(request: web.Request) -> Iterator[None]:
    """One of the caller's capped stream slots, held while the block runs; a 429 problem (with
    Retry-After) when their token or tenant has as many streams open as allowed. Enter it before
    the response is prepared: once streaming, no status can be answered."""
    limits = request.app[GATEWAY].streams
    who = principal(request)
    refusal = limits.refusal(who.tenant, who.token_id)
    if refusal:
        log.info("sse_stream_refused", tenant=who.tenant, token_id=who.token_id, why=refusal)
        raise ApiProblem(429, "Too Many Requests", refusal, headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
    with limits.held(who.tenant, who.token_id):
        yield


async def feed(
    response: web.StreamResponse, sub: Any, *, heartbeat: float, stopping: asyncio.Event, lifetime: float
) -> AsyncIterator[Msg | None]:
    """The messages of `sub`, and None after each POLL_SECONDS without one (the caller's moment
    to check on things). After `heartbeat` quiet seconds a comment goes out, which is also how a
    client that has gone is found. Ends when the gateway stops, the client has gone or `lifetime`
    seconds have passed (the client resumes with Last-Event-ID)."""
    loop = asyncio.get_running_loop()
    quiet_since = loop.time()
    ends_at = quiet_since + lifetime
    while not stopping.is_set() and loop.time() < ends_at:
        try:
            msg: Msg = await sub.next_msg(timeout=min(POLL_SECONDS, heartbeat))
        except nats.errors.TimeoutError:
            if loop.time() - quiet_since >= heartbeat:
                if not await _write(response, b": keepalive\n\n"):
                    return
                quiet_since = loop.time()
            yield None
            continue
        quiet_since = loop.time()
        yield msg


@contextlib.asynccontextmanager
async def ordered(js: JetStreamContext, stream: str, subject: str, after: int) -> AsyncIterator[Any]:
    """An ephemeral ordered consumer of `subject` from sequence `after + 1`; deleted on exit."""
    config = js_api.ConsumerConfig(
        deliver_policy=js_api.DeliverPolicy.BY_START_SEQUENCE if after else js_api.DeliverPolicy.ALL,
        opt_start_seq=after + 1 if after else None,
        inactive_threshold=INACTIVE_SECONDS,
    )
    sub = await js.subscribe(subject, stream=stream, config=config, ordered_consumer=True)
    try:
        yield sub
    finally:
        await close_ordered(js, sub)


async def close_ordered(js: JetStreamContext, sub: Any) -> None:
    """Unsubscribe and delete the consumer now: unsubscribing alone leaves it on the server until
    its inactive threshold (the name changes when an ordered consumer resets: ask for it)."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(CLOSE_SECONDS):
            info = await sub.consumer_info()
            await sub.unsubscribe()
            await js.delete_consumer(info.stream_name, info.name)
    with contextlib.suppress(Exception):  # the consumer could not be asked for: unsubscribe at least
        await asyncio.wait_for(sub.unsubscribe(), CLOSE_SECONDS)


# ---- events -----------------------------------------------------------------------------------


def masked_outputs(outputs: Any) -> Any:
    """`outputs` with the value of every output marked sensitive (OpenTofu's `{"value": ...,
    "sensitive": true}`, at any depth: an activity's by name, a run's by resource then name)
    read `********`, as the store shows them."""
    if not isinstance(outputs, dict):
        return outputs
    if outputs.get("sensitive") is True and "value" in outputs:
        return {**outputs, "value": MASK}
    return {key: masked_outputs(value) for key, value in outputs.items()}


def event_data(event: Any) -> bytes:
    """The event's JSON without what is bulky or sensitive: a request's bundle and variables,
    a compiled run's workflow (a summary instead), the values of sensitive outputs."""
    data: dict[str, Any] = msgspec.to_builtins(event)
    if isinstance(event, ActivityCompleted | RunCompleted):
        data["outputs"] = masked_outputs(data.get("outputs", {}))
    if isinstance(event, RunRequested):
        for key in ("sources", "files", "variables"):
            data.pop(key, None)
        data["variable_names"] = sorted(event.variables)
        data["source_paths"] = [f.path for f in event.sources]
    elif isinstance(event, RunCompiled):
        wf = event.workflow
        data["workflow"] = {
            "environment": wf.environment,
            "template": {"name": wf.template.name, "version": wf.template.version},
            "action": wf.action,
            "activities": len(wf.activities),
            "warnings": list(wf.warnings),
        }
    return msgspec.json.encode(data)


async def _terminal_seen(js: JetStreamContext, tenant: str, run_id: str, after: int) -> bool:
    """Whether the run's last event (completed or rejected) is at or before sequence `after`:
    a client resuming after it has everything, and the stream would wait for ever."""
    for kind in TERMINAL_EVENTS:
        with contextlib.suppress(nats.js.errors.NotFoundError):
            msg = await js.get_last_msg(subjects.STREAM_EVENTS, subjects.run_event(tenant, run_id, kind))
            if msg.seq is not None and msg.seq <= after:
                return True
    return False


@endpoint(
    routes,
    "GET",
    "/v1/runs/{run_id}/events",
    summary="The run's events as server-sent events (id: stream sequence; resumable with Last-Event-ID)",
    produces=("text/event-stream",),
    errors=(400, 404, 429),
    headers=(("Last-Event-ID", "the id (stream sequence) of the last event seen: resume after it"),),
)
async def run_events(request: web.Request) -> web.StreamResponse:
    run = await run_of(request, request.match_info["run_id"])
    after = last_event_id(request)
    with stream_slot(request):
        return await _send_events(request, run.run_id, after)


async def _send_events(request: web.Request, run_id: str, after: int) -> web.StreamResponse:
    gateway = request.app[GATEWAY]
    tenant = principal(request).tenant
    js = gateway.bus.js
    response = await _open_sse(request)
    if after and await _terminal_seen(js, tenant, run_id, after):
        return response
    subject = subjects.run_events(tenant, run_id)
    with gateway.metrics.sse_client():
        async with ordered(js, subjects.STREAM_EVENTS, subject, after) as sub:
            messages = feed(
                response,
                sub,
                heartbeat=_heartbeat(request),
                stopping=gateway.stopping,
                lifetime=gateway.streams.lifetime,
            )
            async for msg in messages:
                if msg is None:
                    continue
                kind, frame = _event_frame(msg)
                if not await _write(response, frame) or kind in TERMINAL_EVENTS:
                    break
    return response


def _event_frame(msg: Msg) -> tuple[str, bytes]:
    seq = msg.metadata.sequence.stream
    try:
        event = decode_run_event(msg.data)
    except (msgspec.DecodeError, msgspec.ValidationError):
        log.warning("sse_event_undecodable", subject=msg.subject, seq=seq)
        return "", f"id: {seq}\n\n".encode()  # moves the client's Last-Event-ID on; dispatches nothing
    return event.kind, sse_frame(event_data(event), event=event.kind, id_=seq)


async def _write(response: web.StreamResponse, data: bytes) -> bool:
    """Write; False when the client has gone."""
    try:
        await response.write(data)
    except (ConnectionError, RuntimeError):  # reset, or the transport already closed
        return False
    return True


# ---- logs -------------------------------------------------------------------------------------


def _activity(request: web.Request, run: RunDetail) -> str:
    """The `?activity=` filter, checked: 404 if the compiled run has no such activity."""
    activity = request.query.get("activity", "")
    if not activity:
        return ""
    try:
        subjects.activity_token(activity)
    except TrellisError:
        raise ApiProblem(404, "Not Found", f"run {run.run_id} has no activity {activity!r}", path="activity") from None
    if run.activities and all(a.id != activity for a in run.activities):
        raise ApiProblem(404, "Not Found", f"run {run.run_id} has no activity {activity!r}", path="activity")
    return activity


@endpoint(
    routes,
    "GET",
    "/v1/runs/{run_id}/logs",
    summary="The run's log lines as text (every activity's, `id | line`, or one's); with Accept: "
    "text/event-stream, live chunks as server-sent events until the run has ended (resumable with Last-Event-ID)",
    query=(("activity", "one activity's logs only (its id as compiled, e.g. resource/vpc/plan)"),),
    produces=("text/plain", "text/event-stream"),
    errors=(400, 404, 429),
    headers=(("Last-Event-ID", "with text/event-stream: the id (stream sequence) of the last chunk seen"),),
)
async def run_logs(request: web.Request) -> web.StreamResponse:
    run = await run_of(request, request.match_info["run_id"])
    activity = _activity(request, run)
    if "text/event-stream" in request.headers.get("Accept", ""):
        with stream_slot(request):
            return await _live_logs(request, run, activity)
    return await _text_logs(request, run, activity)


async def _text_logs(request: web.Request, run: RunDetail, activity: str) -> web.StreamResponse:
    """Page through the store's chunks, writing whole lines as they complete: each attempt's text
    is cut in chunks anywhere, so a partial line waits for the rest of it (per attempt)."""
    gateway = request.app[GATEWAY]
    tenant = principal(request).tenant
    response = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8"})
    await response.prepare(request)
    lines = LineJoiner(prefixed=not activity)
    after = 0
    while True:
        page = ok(
            await gateway.store.ask(
                LogsGet(tenant=tenant, run_id=run.run_id, activity_id=activity, after=after, limit=LOG_PAGE), LogChunks
            )
        )
        text = "".join(lines.add(chunk) for chunk in page.chunks)
        if text and not await _write(response, masked(text.encode())):
            return response
        if len(page.chunks) < LOG_PAGE:
            break
        after = page.chunks[-1].position
    if rest := lines.flush():
        await _write(response, masked(rest.encode()))
    with contextlib.suppress(ConnectionError, RuntimeError):
        await response.write_eof()
    return response


class LineJoiner:
    """Log chunks in, whole lines out: `id | line` when prefixed (`id#N` for attempts after the
    first), as `trellis logs` prints them; unprefixed, the text as it is, held back to its last
    line end. Whole lines only, because a chunk may end inside a sealed token (which holds no
    newline) and only a whole token is masked."""

    def __init__(self, *, prefixed: bool) -> None:
        self.prefixed = prefixed
        self._partial: dict[tuple[str, int], str] = {}
        self._tail = ""

    def add(self, chunk: LogChunkRow) -> str:
        if not self.prefixed:
            text = self._tail + chunk.data
            cut = text.rfind("\n") + 1
            self._tail = text[cut:]
            return text[:cut]
        key = (chunk.activity_id, chunk.attempt)
        *whole, partial = (self._partial.pop(key, "") + chunk.data).split("\n")
        if partial:
            self._partial[key] = partial
        return "".join(f"{self._label(key)} | {line}\n" for line in whole)

    def flush(self) -> str:
        rest = self._tail + "".join(f"{self._label(key)} | {line}\n" for key, line in self._partial.items())
        self._partial.clear()
        self._tail = ""
        return rest

    @staticmethod
    def _label(key: tuple[str, int]) -> str:
        return key[0] + (f"#{key[1]}" if key[1] > 1 else "")


def log_data(chunk: ActivityLogChunk, data: str | None = None) -> bytes:
    """The chunk's SSE data: its fields, with `data` as given (its tokens masked) if it is."""
    fields = ("activity_id", "attempt", "sequence", "stream", "data", "occurred_at")
    document: dict[str, Any] = {name: getattr(chunk, name) for name in fields}
    if data is not None:
        document["data"] = data
    return msgspec.json.encode(document)


class CutTokens:
    """Masks a sealed token that live log chunks cut in two, which `masked` cannot see whole:
    the head of one at a chunk's end reads `********` and its rest at the start of the next chunk
    of the same activity attempt is dropped (through its `]]`), also when the cut falls inside
    `[[trellis-sealed:` itself. Chunks of an attempt come in order on one stream; a client that
    resumes in the middle of a token sees the rest of its ciphertext, which opens nothing."""

    MARKER = "[[trellis-sealed:"

    def __init__(self) -> None:
        self._inside: dict[tuple[str, int], bool] = {}  # the last chunk ended inside a token
        self._prefix: dict[tuple[str, int], int] = {}  # ... or with this many characters of MARKER
        self._half_closed: dict[tuple[str, int], bool] = {}  # ... inside one, with its first `]`

    def data(self, key: tuple[str, int], text: str) -> str:
        inside, prefix = self._inside.pop(key, False), self._prefix.pop(key, 0)
        head = ""
        if prefix and not inside and self.MARKER[prefix:].startswith(text[: len(self.MARKER) - prefix]):
            inside = len(text) >= len(self.MARKER) - prefix or "]]" in text
            if not inside:  # still only a longer piece of the marker
                self._prefix[key] = prefix + len(text)
                return text
            head = sealed.MASK  # the marker's start went out as text: the token reads ******** here
        if inside:
            half_closed = self._half_closed.pop(key, False)  # the last chunk ended with the first `]`
            end = -1 if half_closed and text.startswith("]") else text.find("]]")
            if end == -1 and not (half_closed and text.startswith("]")):
                self._inside[key] = True
                self._half_closed[key] = text.endswith("]") or (half_closed and not text)
                return head
            text = head + text[end + 2 :]
        text = sealed.mask_tokens(text)
        start = text.rfind(self.MARKER)
        if start != -1 and "]]" not in text[start:]:
            self._inside[key] = True
            self._half_closed[key] = text.endswith("]")
            return text[:start] + sealed.MASK
        for length in range(min(len(self.MARKER) - 1, len(text)), 0, -1):
            if text.endswith(self.MARKER[:length]):
                self._prefix[key] = length
                break
        return text


async def _live_logs(request: web.Request, run: RunDetail, activity: str) -> web.StreamResponse:
    """Log chunks from TRELLIS_LOGS as they come; once the run has ended (its run.completed or
    run.rejected is on the bus, and agents store an activity's logs before its end), the rest
    of the stream is sent and the response ends with an `end` event."""
    gateway = request.app[GATEWAY]
    tenant = principal(request).tenant
    js = gateway.bus.js
    after = last_event_id(request)
    token = subjects.activity_token(activity) if activity else "*"
    subject = f"{subjects.PREFIX}.{tenant}.logs.{run.run_id}.{token}"
    response = await _open_sse(request)
    ended: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def on_run_event(msg: Msg) -> None:
        kind = msg.subject.rsplit(".", 2)
        if f"{kind[-2]}.{kind[-1]}" in TERMINAL_EVENTS and not ended.done():
            status = "rejected" if kind[-1] == "rejected" else _status_of(msg.data)
            ended.set_result(status)

    run_subject = subjects.run_event(tenant, run.run_id, "run.*")
    watcher = await js.subscribe(
        run_subject,
        stream=subjects.STREAM_EVENTS,
        cb=on_run_event,
        ordered_consumer=True,
        inactive_threshold=INACTIVE_SECONDS,
    )
    try:
        with gateway.metrics.sse_client():
            async with ordered(js, subjects.STREAM_LOGS, subject, after) as sub:
                messages = feed(
                    response,
                    sub,
                    heartbeat=_heartbeat(request),
                    stopping=gateway.stopping,
                    lifetime=gateway.streams.lifetime,
                )
                await _send_logs(response, messages, sub, ended)
    finally:
        await close_ordered(js, watcher)
    return response


async def _send_logs(
    response: web.StreamResponse, messages: AsyncIterator[Msg | None], sub: Any, ended: asyncio.Future[str]
) -> None:
    cut = CutTokens()
    async for msg in messages:
        if msg is None:
            if ended.done() and await _drained(sub):
                await _write(response, sse_frame(msgspec.json.encode({"status": ended.result()}), event="end"))
                return
            continue
        seq = msg.metadata.sequence.stream
        try:
            chunk = _decode_log(msg.data)
            data = cut.data((chunk.activity_id, chunk.attempt), chunk.data)
            frame = sse_frame(log_data(chunk, data), event="log", id_=seq)
        except (msgspec.DecodeError, msgspec.ValidationError):
            frame = f"id: {seq}\n\n".encode()
        if not await _write(response, frame):
            return


async def _drained(sub: Any) -> bool:
    """Whether the consumer has delivered every message its stream holds for it."""
    try:
        info = await asyncio.wait_for(sub.consumer_info(), 2.0)
    except Exception:  # asked while the ordered consumer was being reset: not yet
        return False
    return not info.num_pending and not sub.pending_msgs


def _status_of(data: bytes) -> str:
    with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
        event = decode_run_event(data)
        return str(getattr(event, "status", ""))
    return ""
