"""The JetStream bus: connect, declare streams, publish with dedupe, dead letters, and `Consumer`.

Every service goes through this module and `consume.py` (the one fetch loop and the ack / nak /
dead-letter choice), so retry, backoff, dead-lettering and draining are written once. A consumer
acks only after its handler returned (its effect is durable), naks with backoff when it raised,
and dead-letters a message that cannot be decoded, was refused, or has failed `max_deliver`
times — then goes on with the next one.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

import msgspec
import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.object_store import ObjectStore

from trellis_core import subjects
from trellis_core.consume import PermanentError as PermanentError  # handlers raise it
from trellis_core.consume import Settling, Slots, decode_error, fetch_loop, settle
from trellis_core.errors import BusUnavailable, ConfigError
from trellis_core.events import DeadLetter, Event, encode
from trellis_core.logs import get_logger
from trellis_core.settings import MAX_WORKFLOW_BYTES, Settings
from trellis_core.workflow import Workflow

T = TypeVar("T")

_DAY = 86_400.0
log = get_logger("bus")


@dataclass(frozen=True)
class StreamSpec:
    name: str
    subjects: list[str]
    retention: js_api.RetentionPolicy
    max_age_seconds: float = 0.0
    max_bytes: int = -1


def stream_specs(settings: Settings) -> list[StreamSpec]:
    """The shared streams of docs/architecture.md ("Subjects and streams"), sized from settings.
    Work has one stream a tenant instead (`work_stream_spec`, created by `ensure_work_stream`)."""
    limits = js_api.RetentionPolicy.LIMITS
    return [
        StreamSpec(subjects.STREAM_RUNS, subjects.STREAM_SUBJECTS[subjects.STREAM_RUNS], limits, 30 * _DAY),
        StreamSpec(
            subjects.STREAM_EVENTS,
            subjects.STREAM_SUBJECTS[subjects.STREAM_EVENTS],
            limits,
            settings.events_max_age_days * _DAY,
        ),
        StreamSpec(
            subjects.STREAM_LOGS,
            subjects.STREAM_SUBJECTS[subjects.STREAM_LOGS],
            limits,
            settings.logs_max_age_days * _DAY,
            settings.logs_max_bytes,
        ),
        StreamSpec(
            subjects.STREAM_DEADLETTER, subjects.STREAM_SUBJECTS[subjects.STREAM_DEADLETTER], limits, 30 * _DAY
        ),
    ]


def work_stream_spec(tenant: str) -> StreamSpec:
    """The tenant's own work queue: `TRELLIS_WORK_<tenant>` capturing `trellis.<tenant>.work.>`."""
    return StreamSpec(
        subjects.work_stream(tenant), [subjects.tenant_work(tenant)], js_api.RetentionPolicy.WORK_QUEUE
    )


@dataclass
class Delivery:
    """What a handler knows about the message besides its decoded body."""

    subject: str
    deliveries: int
    stream_sequence: int
    headers: dict[str, str]
    _msg: Msg = field(repr=False)

    async def in_progress(self) -> None:
        """Tell JetStream the handler is still working (resets the ack wait)."""
        await self._msg.in_progress()


class Bus:
    """A connected NATS client with its JetStream context."""

    def __init__(self, nc: NATS, settings: Settings, name: str) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        self.settings = settings
        self.name = name
        self.replicas_checked: set[str] = set()  # object stores scaled to the setting (ensure_replicas)
        self.connected_at = time.time()  # when the connection last came (back): wall clock

    @classmethod
    async def connect(cls, settings: Settings, *, name: str, inbox_prefix: str = "") -> Bus:
        """Connect, reconnecting for ever once connected; raise BusUnavailable if never reached.

        With `settings.nats_nkey_seed_file` it authenticates as that nkey user; a tenant's agent
        passes its `inbox_prefix` (subjects.inbox_prefix), the only inboxes its permissions allow."""
        if not settings.nats_url:
            raise ConfigError("TRELLIS_NATS_URL is not set: point it at a NATS server (nats://host:4222)")

        async def on_error(exc: Exception) -> None:
            log.warning("nats_error", service=name, error=str(exc))

        async def on_disconnect() -> None:
            if not (nc_ref and (nc_ref[0].is_draining or nc_ref[0].is_closed)):  # our own close is no news
                log.warning("nats_disconnected", service=name)

        async def on_reconnect() -> None:
            if bus_ref:
                bus_ref[0].connected_at = time.time()
            log.info("nats_reconnected", service=name)

        nc_ref: list[NATS] = []
        bus_ref: list[Bus] = []
        try:
            nc = await nats.connect(
                servers=settings.nats_servers(),
                name=f"trellis-{name}",
                connect_timeout=settings.connect_timeout_seconds,
                allow_reconnect=True,
                # Bounded while we have never connected (nats-py loops for ever at -1) ...
                max_reconnect_attempts=max(1, int(settings.connect_timeout_seconds / 0.5)),
                reconnect_time_wait=0.5,
                # A node that vanished without closing the connection (a host lost, a partition)
                # is noticed within ~6 s, then the client moves to another of TRELLIS_NATS_URL's:
                # well inside the scheduler's heartbeat timeout (15 s), or an agent whose beats
                # went nowhere meanwhile would have its attempt run a second time elsewhere.
                ping_interval=2,
                max_outstanding_pings=2,
                error_cb=on_error,
                disconnected_cb=on_disconnect,
                reconnected_cb=on_reconnect,
                user_credentials=settings.nats_creds_file or None,
                nkeys_seed=settings.nats_nkey_seed_file or None,
                **({"inbox_prefix": inbox_prefix} if inbox_prefix else {}),
            )
        except (nats.errors.NoServersError, OSError, TimeoutError, nats.errors.TimeoutError) as exc:
            raise BusUnavailable(
                f"cannot reach NATS at {settings.nats_url} ({type(exc).__name__}: {exc or 'no answer'}): "
                "is nats-server running with JetStream (-js), and is TRELLIS_NATS_URL right?"
            ) from None
        nc.options["max_reconnect_attempts"] = -1  # ... and unbounded once we have: ride out restarts
        nc_ref.append(nc)
        bus_ref.append(cls(nc, settings, name))
        return bus_ref[0]

    async def ensure_streams(self) -> None:
        """Create every shared stream, or update it to the configured limits (the control plane's
        job: agents never call it). A leftover shared TRELLIS_WORK is deleted when empty; holding
        messages, it stops this with a ConfigError (its work would be lost, and its subjects
        overlap every tenant's work stream)."""
        await self._remove_legacy_work_stream()
        for spec in stream_specs(self.settings):
            await self.ensure_stream(spec)

    async def _remove_legacy_work_stream(self) -> None:
        name = subjects.LEGACY_STREAM_WORK
        try:
            info = await self.js.stream_info(name)
        except nats.js.errors.NotFoundError:
            return
        held = info.state.messages
        if held:
            raise ConfigError(
                f"stream {name} (the shared work stream of older Trellis) still holds {held} message(s): "
                f"let the old agents drain it, or delete it yourself (nats stream rm {name}); each tenant's "
                "work now has its own stream TRELLIS_WORK_<tenant>"
            )
        with contextlib.suppress(nats.js.errors.NotFoundError):  # another service deleted it first
            await self.js.delete_stream(name)
        log.info("legacy_work_stream_deleted", stream=name)

    async def ensure_stream(self, spec: StreamSpec) -> None:
        """Create the stream of `spec`, or check and update the one there."""
        storage = js_api.StorageType.FILE if self.settings.stream_storage == "file" else js_api.StorageType.MEMORY
        config = js_api.StreamConfig(
            name=spec.name,
            subjects=spec.subjects,
            retention=spec.retention,
            storage=storage,
            num_replicas=self.settings.stream_replicas,
            max_age=spec.max_age_seconds or None,
            max_bytes=spec.max_bytes,
            duplicate_window=self.settings.dedupe_window_seconds,
        )
        try:
            info = await self.js.stream_info(spec.name)
        except nats.js.errors.NotFoundError:
            try:
                await self.js.add_stream(config)
                return
            except nats.js.errors.BadRequestError as exc:  # another service won the race
                if exc.err_code != 10058:  # stream name already in use
                    raise ConfigError(f"cannot create stream {spec.name}: {exc.description}") from None
            info = await self.js.stream_info(spec.name)
        if info.config.retention != spec.retention:
            raise ConfigError(
                f"stream {spec.name} exists with retention {info.config.retention}, "
                f"Trellis needs {spec.retention}: delete it or point TRELLIS_NATS_URL elsewhere"
            )
        if info.config.storage != storage:
            raise ConfigError(
                f"stream {spec.name} exists with {info.config.storage} storage but "
                f"TRELLIS_STREAM_STORAGE={self.settings.stream_storage}: JetStream cannot change it in place"
            )
        try:
            await self.js.update_stream(config)
        except nats.js.errors.BadRequestError as exc:
            raise ConfigError(f"cannot update stream {spec.name}: {exc.description}") from None

    async def publish(
        self, subject: str, message: msgspec.Struct | bytes, *, msg_id: str | None = None
    ) -> js_api.PubAck:
        """Publish to JetStream; `msg_id` makes a republish within the dedupe window a no-op."""
        payload = message if isinstance(message, bytes) else encode(message)
        headers = {"Nats-Msg-Id": msg_id} if msg_id else None
        return await self.js.publish(subject, payload, headers=headers)

    async def publish_event(self, event: Event, *, route: str = "") -> js_api.PubAck:
        """Publish a run event on its own subject (with `route` after it: `subjects.run_event`)
        with its identity as the dedupe id."""
        return await self.publish(
            subjects.run_event(event.tenant, event.run_id, event.kind, route), event, msg_id=event.msg_id()
        )

    async def dead_letter(self, msg: Msg, *, stream: str, consumer: str, reason: str, terminate: bool = True) -> None:
        """Park `msg` on `trellis.<tenant>.deadletter.<subject>` with why, then terminate its delivery
        (`terminate=False`: a consumer acking all before a sequence settles it with its batch).

        Every dead letter has the same shape and dedupe id, whoever writes it. A payload too
        large to fit in a letter is cut, and the reason says so."""
        meta = msg.metadata
        letter = DeadLetter(
            subject=msg.subject,
            stream=stream,
            consumer=consumer,
            reason=reason,
            deliveries=meta.num_delivered,
            data=msg.data.decode("utf-8", errors="replace"),
            headers=dict(msg.headers or {}),
        )
        await self.publish(
            subjects.deadletter(msg.subject),
            _fit(letter, self.nc.max_payload),
            msg_id=f"dl/{stream}/{consumer}/{meta.sequence.stream}",
        )
        if terminate:
            with contextlib.suppress(nats.errors.Error):
                await msg.term()

    def consumer(
        self,
        *,
        stream: str,
        durable: str,
        subjects: Sequence[str],
        decode: Callable[[bytes], T],
        handler: Callable[[T, Delivery], Awaitable[None]],
        max_deliver: int = 5,
        backoff: Sequence[float] = (0.5, 2.0, 10.0, 30.0),
        ack_wait: float = 30.0,
        concurrency: int = 1,
        batch: int = 64,
        deliver_new: bool = False,
    ) -> Consumer[T]:
        return Consumer(
            self,
            stream=stream,
            durable=durable,
            filter_subjects=list(subjects),
            decode=decode,
            handler=handler,
            max_deliver=max_deliver,
            backoff=tuple(backoff),
            ack_wait=ack_wait,
            concurrency=concurrency,
            batch=batch,
            deliver_new=deliver_new,
        )

    async def close(self) -> None:
        """Drain subscriptions and pending publishes, then close."""
        if self.nc.is_closed:
            return
        try:
            await asyncio.wait_for(self.nc.drain(), timeout=10)
        except (TimeoutError, nats.errors.Error) as exc:
            log.warning("nats_drain_failed", service=self.name, error=str(exc))
            await self.nc.close()


class Consumer(Generic[T]):
    """A durable pull consumer with explicit acks, backoff on failure and a dead-letter subject."""

    def __init__(
        self,
        bus: Bus,
        *,
        stream: str,
        durable: str,
        filter_subjects: list[str],
        decode: Callable[[bytes], T],
        handler: Callable[[T, Delivery], Awaitable[None]],
        max_deliver: int,
        backoff: tuple[float, ...],
        ack_wait: float,
        concurrency: int,
        batch: int,
        deliver_new: bool,
    ) -> None:
        if max_deliver < 1 or concurrency < 1 or not backoff:
            raise ValueError("max_deliver and concurrency must be at least 1, backoff non-empty")
        self.bus = bus
        self.stream = stream
        self.durable = durable
        self.filter_subjects = filter_subjects
        self.decode = decode
        self.handler = handler
        self.ack_wait = ack_wait
        self.concurrency = concurrency
        self.batch = batch
        self.deliver_new = deliver_new
        self.log = get_logger("consumer", stream=stream, durable=durable)
        self.settling = Settling(max_deliver=max_deliver, backoff=backoff, park=self._park, log=self.log)

    async def declare(self) -> JetStreamContext.PullSubscription:
        """Create or update the durable consumer and bind to it."""
        config = js_api.ConsumerConfig(
            durable_name=self.durable,
            ack_policy=js_api.AckPolicy.EXPLICIT,
            ack_wait=self.ack_wait,
            # JetStream never gives up on its own: the loop counts deliveries and dead-letters.
            max_deliver=-1,
            max_ack_pending=max(self.concurrency * 4, self.batch * 2),
            deliver_policy=js_api.DeliverPolicy.NEW if self.deliver_new else js_api.DeliverPolicy.ALL,
        )
        if len(self.filter_subjects) == 1:
            config.filter_subject = self.filter_subjects[0]
        else:
            config.filter_subjects = self.filter_subjects
        await self.bus.js.add_consumer(self.stream, config)
        return await self.bus.js.pull_subscribe_bind(durable=self.durable, stream=self.stream)

    async def run(self, stop: asyncio.Event, *, ready: asyncio.Event | None = None) -> None:
        """Fetch and handle messages until `stop` is set; in-flight handlers finish first."""
        sub = await self.declare()
        if ready is not None:
            ready.set()
        slots = Slots(self.concurrency)
        async with asyncio.TaskGroup() as tasks:

            async def start(msgs: list[Msg], owned: int) -> None:
                for n, msg in enumerate(msgs):
                    tasks.create_task(self._handle(msg, slots if n < owned else None))

            await fetch_loop(sub, stop, start, batch=self.batch, slots=slots, log=self.log)
        with contextlib.suppress(nats.errors.Error):
            await sub.unsubscribe()

    async def _handle(self, msg: Msg, slot: Slots | None) -> None:
        try:
            await settle(msg, self.decode, self._call_handler, self.settling)
        finally:
            if slot is not None:
                slot.give_back()

    async def _call_handler(self, value: T, msg: Msg) -> None:
        meta = msg.metadata
        delivery = Delivery(
            subject=msg.subject,
            deliveries=meta.num_delivered,
            stream_sequence=meta.sequence.stream,
            headers=dict(msg.headers or {}),
            _msg=msg,
        )
        await self.handler(value, delivery)

    async def _park(self, msg: Msg, reason: str) -> None:
        await self.bus.dead_letter(msg, stream=self.stream, consumer=self.durable, reason=reason)


def _fit(letter: DeadLetter, max_payload: int) -> bytes:
    """The letter encoded, its data (and headers) cut until it fits in one message."""
    payload = encode(letter)
    if len(payload) <= max_payload:
        return payload
    keep = max(0, max_payload // 8 - 1024)  # JSON escapes a byte into at most six characters
    cut = msgspec.structs.replace(
        letter,
        data=letter.data[:keep],
        headers={},
        reason=f"{letter.reason[:4096]} (payload cut to its first {keep} of {len(letter.data)} characters, "
        "headers dropped)",
    )
    return encode(cut)


async def ensure_work_stream(bus: Bus, tenant: str) -> None:
    """Create the tenant's own work-queue stream (`TRELLIS_WORK_<tenant>`, capturing
    `trellis.<tenant>.work.>`), or check the one there: the control plane's job, never an agent's
    (its permissions name the stream, not create it)."""
    await bus.ensure_stream(work_stream_spec(tenant))


def stop_on_signals(stop: asyncio.Event) -> None:
    """Set `stop` on SIGTERM or SIGINT so services drain instead of dying mid-message."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)


def decoder(type_: Any) -> Callable[[bytes], Any]:
    """A fast msgspec JSON decoder for `type_`, for `Bus.consumer(decode=...)`."""
    return msgspec.json.Decoder(type_).decode


# ---- the bundle object store: the files beside a run's templates, once per digest -----------

BUNDLES_TTL_SECONDS = 30 * _DAY  # as long as the run requests that carried them


async def bundle_store(bus: Bus, tenant: str) -> ObjectStore:
    """The tenant's object store holding its run bundles by digest, created on first use (one
    bucket a tenant, so that a permission can give a tenant's agents its own and no other)."""
    what = f"the files beside tenant {tenant}'s run templates, by digest"
    return await _object_store(bus, subjects.bundles_bucket(tenant), what, BUNDLES_TTL_SECONDS)


async def ensure_replicas(js: JetStreamContext, stream: str, replicas: int) -> None:
    """Scale `stream` (a KV bucket's `KV_<bucket>`, an object store's `OBJ_<bucket>`) to
    `replicas` if it was made with another count: an installation moved from one nats-server
    to a cluster (TRELLIS_STREAM_REPLICAS=3) keeps its buckets and gets them replicated.
    Shared streams are updated by `Bus.ensure_stream` already."""
    info = await js.stream_info(stream)
    if info.config.num_replicas == replicas:
        return
    config = info.config
    config.num_replicas = replicas
    try:
        await js.update_stream(config)
    except nats.js.errors.BadRequestError as exc:
        raise ConfigError(f"cannot change stream {stream} to {replicas} replicas: {exc.description}") from None
    log.info("stream_replicas_changed", stream=stream, replicas=replicas)


async def _object_store(bus: Bus, bucket: str, description: str, ttl: float) -> ObjectStore:
    with contextlib.suppress(nats.js.errors.BucketNotFoundError):
        store = await bus.js.object_store(bucket)
        if bucket not in bus.replicas_checked:  # once a connection: puts come often
            await ensure_replicas(bus.js, f"OBJ_{bucket}", bus.settings.stream_replicas)
            bus.replicas_checked.add(bucket)
        return store
    config = js_api.ObjectStoreConfig(
        description=description,
        ttl=ttl,
        storage=js_api.StorageType.FILE if bus.settings.stream_storage == "file" else js_api.StorageType.MEMORY,
        replicas=bus.settings.stream_replicas,
    )
    try:
        return await bus.js.create_object_store(bucket, config=config)
    except nats.js.errors.BadRequestError:  # another service created it first
        return await bus.js.object_store(bucket)


async def put_bundle(bus: Bus, tenant: str, digest: str, blob: bytes) -> bool:
    """Store `blob` under `digest` in the tenant's bucket unless it is there and not half-way to
    expiry; True if written."""
    store = await bundle_store(bus, tenant)
    try:
        info = await store.get_info(digest)
    except nats.js.errors.ObjectNotFoundError:
        info = None
    if info is not None and info.mtime and _age_seconds(info.mtime) < BUNDLES_TTL_SECONDS / 2:
        return False
    await store.put(digest, blob)
    return True


async def get_bundle(bus: Bus, tenant: str, digest: str) -> bytes | None:
    """The tenant's stored bundle `digest`, or None if there is none (never written, or expired).

    Read with message gets on the bucket's own stream only (`$JS.API.STREAM.INFO.OBJ_<bucket>`,
    `$JS.API.STREAM.MSG.GET.OBJ_<bucket>`): nats-py's `ObjectStore.get` subscribes by subject,
    which looks streams up with `$JS.API.STREAM.NAMES`, an API a tenant's agent may not call."""
    bucket = subjects.bundles_bucket(tenant)
    stream = f"OBJ_{bucket}"
    try:
        store = await bus.js.object_store(bucket)
        info = await store.get_info(digest)
    except (nats.js.errors.BucketNotFoundError, nats.js.errors.ObjectNotFoundError):
        return None
    if info.is_link() or not info.nuid:
        raise ConfigError(f"bundle {digest} in {bucket} is a link or has no chunks: Trellis never writes those")
    chunks_subject = f"$O.{bucket}.C.{info.nuid}"
    data = bytearray()
    seq = 1
    for _ in range(info.chunks or 0):
        try:
            raw = await bus.js.get_msg(stream, seq=seq, subject=chunks_subject, next=True)
        except nats.js.errors.NotFoundError:
            return None  # expired (or replaced) while we read it
        data += raw.data or b""
        seq = (raw.seq or seq) + 1
    expected = (info.digest or "").partition("=")[2]
    actual = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).decode()
    if len(data) != (info.size or 0) or expected.rstrip("=") != actual.rstrip("="):
        return None  # replaced while we read it: as good as absent, the caller retries or fails
    return bytes(data)


def _age_seconds(mtime: str) -> float:
    try:
        written = datetime.fromisoformat(mtime)
    except ValueError:
        return float("inf")
    if written.tzinfo is None:
        written = written.replace(tzinfo=UTC)
    return (datetime.now(UTC) - written).total_seconds()


# ---- the workflow object store: compiled workflows too large to travel inside run.compiled ---

WORKFLOWS_BUCKET = "trellis_workflows"


async def put_workflow(bus: Bus, digest: str, blob: bytes) -> bool:
    """Store an encoded workflow under `digest` (as long as the events that name it are kept);
    True if written, False if it was there already."""
    ttl = bus.settings.events_max_age_days * _DAY
    store = await _object_store(bus, WORKFLOWS_BUCKET, "compiled workflows named by run.compiled, by digest", ttl)
    try:
        await store.get_info(digest)
        return False
    except nats.js.errors.ObjectNotFoundError:
        pass
    await store.put(digest, blob)
    return True


async def get_workflow(js: JetStreamContext, digest: str, *, max_bytes: int) -> bytes | None:
    """The encoded workflow stored under `digest`, or None if there is none or it is larger
    than `max_bytes` (the store is written by the compiler, but read as input all the same)."""
    try:
        store = await js.object_store(WORKFLOWS_BUCKET)
        info = await store.get_info(digest)
        if (info.size or 0) > max_bytes:
            return None
        result = await store.get(digest)
    except (nats.js.errors.BucketNotFoundError, nats.js.errors.ObjectNotFoundError):
        return None
    return bytes(result.data or b"")


_WORKFLOW_DECODER = msgspec.json.Decoder(Workflow)


async def stored_workflow(js: JetStreamContext, digest: str) -> Workflow | str:
    """The workflow a run.compiled names by `digest`, or why it cannot be had. Decoded off the
    event loop: it may be tens of megabytes."""
    blob = await get_workflow(js, digest, max_bytes=MAX_WORKFLOW_BYTES)
    if blob is None:
        return f"its workflow {digest!r} is not in the workflow store (or is over {MAX_WORKFLOW_BYTES} bytes)"
    if hashlib.sha256(blob).hexdigest() != digest:
        return f"its workflow {digest!r} in the workflow store does not match that digest"
    try:
        return await asyncio.to_thread(_WORKFLOW_DECODER.decode, blob)
    except Exception as exc:  # not only msgspec's errors: deep nesting raises RecursionError
        return f"its workflow {digest!r} is undecodable: {decode_error(exc)}"
