"""The projection: every run event (TRELLIS_EVENTS) and log chunk (TRELLIS_LOGS) into PostgreSQL.

Two durable pull consumers fetch batches of a few hundred messages (the next batch is fetched
while the last is written); each batch is written in ONE transaction (bulk `unnest` inserts and
pipelined upserts, `projection_rows`), then every message of it is acked. Writes are idempotent
(see `projection_rows`), so a redelivery or a replay of the whole stream leaves the same rows.
PostgreSQL down: the batch is neither acked nor given up, it is written again after a backoff
(its messages told "in progress" meanwhile) until PostgreSQL is back, so nothing is lost and
the projection then catches up. A message that cannot be decoded, or that PostgreSQL refuses on
its own (found by writing the refused batch one message at a time), is dead-lettered and the
projection goes on. Heartbeats are fetched and acked but not stored: they say an agent is alive,
which no row keeps.

Acks are explicit, message by message, rather than "all before": several store replicas share the
durables and each writes the batches it fetched. `projected_events` / `projected_logs` are the
highest stream sequences written with everything before them written (this replica's own
in-order count, or the durable's ack floor when other replicas took part).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import msgspec
import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import api as js_api

from trellis_core import subjects
from trellis_core.bus import Bus, stored_workflow
from trellis_core.consume import admit, decode_error, delivery, fetch_loop
from trellis_core.events import ActivityLogChunk, RunCompiled, RunEvent, decode_run_event
from trellis_core.logs import get_logger
from trellis_core.pull import BatchPull
from trellis_core.sealed import MasterKeyring, TenantKeys
from trellis_core.settings import Settings
from trellis_core.workflow import Workflow
from trellis_store import drift_rows, links, retention
from trellis_store import projection_rows as rows

EVENTS_DURABLE = "trellis_store_events"
LOGS_DURABLE = "trellis_store_logs"
BATCH = 500
FETCH_WAIT_SECONDS = 0.5
ACK_WAIT_SECONDS = 30.0
RETRY_SECONDS = (0.5, 1.0, 2.0, 4.0)  # backoff while PostgreSQL is unreachable, the last repeated
# A message delivered this often was in every batch a store died writing (a workflow too large
# for memory?): parked unread, so it cannot take the store down for ever. A PostgreSQL outage
# does not count: the batch is held (in progress), not redelivered.
MAX_DELIVER = 20
# What says "PostgreSQL is away, or will take it later": retried, the batch held. Anything else
# (a value PostgreSQL or the driver refuses) is the message's: found out and dead-lettered. Our
# own SQL or a schema behind this code (class 42) is retried too: better stalled than thrown away.
_TRANSIENT = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.OperatorInterventionError,
    asyncpg.InsufficientResourcesError,
    asyncpg.TransactionRollbackError,
    asyncpg.SyntaxOrAccessError,
)


def transient(exc: Exception) -> bool:
    """Whether writing may succeed later as it is (the driver's own data errors are ValueErrors)."""
    if isinstance(exc, _TRANSIENT):
        return True
    return isinstance(exc, asyncpg.InterfaceError) and not isinstance(exc, ValueError)


_decode_log = msgspec.json.Decoder(ActivityLogChunk).decode

log = get_logger("projection")


@dataclass(frozen=True)
class _Stream:
    name: str  # the JetStream stream
    durable: str
    subject: str
    kind: str  # "events" or "logs": which progress it moves


@dataclass
class _Decoded:
    msg: Msg
    seq: int
    value: RunEvent | ActivityLogChunk | None  # None: dead-lettered, acked with the batch


class Projection:
    """Projects run events and log chunks into PostgreSQL until stopped (`run`)."""

    def __init__(
        self,
        bus: Bus,
        pool: asyncpg.Pool,
        settings: Settings,
        sealer: MasterKeyring | rows.TenantSeal | None = None,
        *,
        events_durable: str = EVENTS_DURABLE,
        logs_durable: str = LOGS_DURABLE,
        batch: int = BATCH,
        retry: tuple[float, ...] = RETRY_SECONDS,
        retention_interval: float = retention.INTERVAL_SECONDS,
        tenant: str = "*",
    ) -> None:
        self.bus = bus
        self.pool = pool
        self.settings = settings
        # How a sensitive output an old agent sent in clear is sealed: with the tenant's current
        # key (a keyring), by a given function (tests), or masked (None).
        self.seal: rows.TenantSeal | None = self._keyring_seal(sealer) if isinstance(sealer, MasterKeyring) else sealer
        self.batch = batch
        self.retry = retry
        self.retention_interval = retention_interval
        # `tenant`: only that tenant's messages (tests sharing one NATS); "*" in service.
        self.events = _Stream(subjects.STREAM_EVENTS, events_durable, subjects.all_run_events(tenant), "events")
        self.logs = _Stream(subjects.STREAM_LOGS, logs_durable, f"{subjects.PREFIX}.{tenant}.logs.>", "logs")
        self.projected_events = 0
        self.projected_logs = 0
        self.dead_lettered = 0
        self.write_failures = 0  # batches PostgreSQL could not take (then retried)
        self.stalled = asyncio.Event()  # set while a batch waits for PostgreSQL to take it
        self._progress = asyncio.Condition()

    # ---- the barrier a consistent read waits on ----------------------------------------------

    async def events_last_seq(self) -> int:
        """The last sequence of TRELLIS_EVENTS now: what a consistent read waits to be projected."""
        info = await self.bus.js.stream_info(subjects.STREAM_EVENTS)
        return int(info.state.last_seq)

    async def wait_projected(self, seq: int, timeout: float) -> bool:  # noqa: ASYNC109 - a deadline, not a cancel
        """True once every run event up to stream sequence `seq` is written; False after `timeout`."""
        return await self._wait(self.events, seq, timeout)

    async def wait_logs_projected(self, seq: int, timeout: float) -> bool:  # noqa: ASYNC109
        """True once every log chunk up to TRELLIS_LOGS sequence `seq` is written; False after `timeout`."""
        return await self._wait(self.logs, seq, timeout)

    def _projected(self, stream: _Stream) -> int:
        return self.projected_events if stream.kind == "events" else self.projected_logs

    async def _wait(self, stream: _Stream, seq: int, timeout: float) -> bool:  # noqa: ASYNC109
        deadline = time.monotonic() + timeout
        while self._projected(stream) < seq:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            async with self._progress:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        self._progress.wait_for(lambda: self._projected(stream) >= seq), min(remaining, 0.5)
                    )
            if self._projected(stream) < seq:  # another replica may have written it: ask the durable
                await self._refresh(stream)
        return True

    async def _advance(self, stream: _Stream, seqs: list[int]) -> None:
        """Move the in-order progress over a written batch; past a gap, ask the durable's ack floor."""
        current = self._projected(stream)
        for seq in sorted(seqs):
            if seq == current + 1:
                current = seq
            elif seq > current:
                break
        await self._set(stream, current)
        if current < max(seqs):
            await self._refresh(stream)

    async def _refresh(self, stream: _Stream) -> None:
        with contextlib.suppress(nats.errors.Error, nats.js.errors.Error, TimeoutError):
            await self.bus.nc.flush(timeout=2)  # our acks reach the server before we ask
            info = await self.bus.js.consumer_info(stream.name, stream.durable)
            if info.ack_floor is not None and info.ack_floor.stream_seq is not None:
                await self._set(stream, int(info.ack_floor.stream_seq))

    async def _set(self, stream: _Stream, seq: int) -> None:
        async with self._progress:
            if stream.kind == "events":
                self.projected_events = max(self.projected_events, seq)
            else:
                self.projected_logs = max(self.projected_logs, seq)
            self._progress.notify_all()

    # ---- the loops ---------------------------------------------------------------------------

    @staticmethod
    def _keyring_seal(keyring: MasterKeyring) -> rows.TenantSeal:
        tenants: dict[str, TenantKeys] = {}

        def seal(tenant: str, plain: str) -> str:
            keys = tenants.get(tenant)
            if keys is None:
                keys = tenants[tenant] = keyring.for_tenant(tenant)
            return keys.seal(plain)

        return seal

    async def run(self, stop: asyncio.Event, ready: asyncio.Event | None = None) -> None:
        """Project both streams (and delete expired log chunks) until `stop` is set."""
        subs = [await self._subscribe(self.events), await self._subscribe(self.logs)]
        await self._refresh(self.events)
        await self._refresh(self.logs)
        if ready is not None:
            ready.set()
        log.info("projection_started", events=self.events.durable, logs=self.logs.durable)
        try:
            async with asyncio.TaskGroup() as tasks:
                for stream, sub in zip((self.events, self.logs), subs, strict=True):
                    tasks.create_task(self._consume(stream, sub, stop))
                tasks.create_task(
                    retention.run(self.pool, self.settings.store_logs_retention_days, stop, self.retention_interval)
                )
        finally:
            for sub in subs:
                with contextlib.suppress(nats.errors.Error):
                    await sub.unsubscribe()
        log.info("projection_stopped")

    async def _subscribe(self, stream: _Stream) -> BatchPull:
        config = js_api.ConsumerConfig(
            durable_name=stream.durable,
            ack_policy=js_api.AckPolicy.EXPLICIT,
            ack_wait=ACK_WAIT_SECONDS,
            max_deliver=-1,  # we never give a message up while PostgreSQL is away
            max_ack_pending=self.batch * 4,
            deliver_policy=js_api.DeliverPolicy.ALL,
            filter_subject=stream.subject,
        )
        await self.bus.js.add_consumer(stream.name, config)
        return await BatchPull(self.bus.nc, stream.name, stream.durable).start()

    async def _consume(self, stream: _Stream, sub: BatchPull, stop: asyncio.Event) -> None:
        """Fetch and write in step: the next batch is fetched while the last one is written (one
        batch ahead at most, so what is held unacked stays well under max_ack_pending)."""
        fetched: asyncio.Queue[list[Msg] | None] = asyncio.Queue(maxsize=1)

        async def deliver(msgs: list[Msg], _owned: int) -> None:
            await fetched.put(msgs)

        async def write() -> None:
            while (msgs := await fetched.get()) is not None:
                await self._project(stream, msgs, stop)

        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(write())
            try:
                # What was fetched is written, even after `stop`: PostgreSQL is still there, and a
                # batch handed back (nak) is lost if the nats-server stops too before redelivering
                # it (the embedded stack stops both): the next start would wait out the ack wait.
                await fetch_loop(
                    sub, stop, deliver, batch=self.batch, wait=FETCH_WAIT_SECONDS, log=log, finish_fetched=True
                )
                if last := await sub.last_taken():
                    await fetched.put(last)
            finally:
                await fetched.put(None)

    async def _project(self, stream: _Stream, msgs: list[Msg], stop: asyncio.Event) -> None:
        """Write one batch (retrying while PostgreSQL is away), then ack all of it."""
        decoded = [await self._decode(stream, msg) for msg in msgs]
        workflows = await self._workflows(decoded) if stream.kind == "events" else {}
        attempt = 0
        while True:
            try:
                await self._write(stream, decoded, workflows)
                break
            except Exception as exc:
                if not transient(exc):
                    await self._write_one_by_one(stream, decoded, workflows, exc)
                    break
                # PostgreSQL down or restarting, a broken connection: hold the batch and retry
                if stop.is_set():  # hand the batch back: whoever projects next writes it
                    for msg in msgs:
                        with contextlib.suppress(nats.errors.Error):
                            await msg.nak()
                    return
                delay = self.retry[min(attempt, len(self.retry) - 1)]
                attempt += 1
                self.write_failures += 1
                self.stalled.set()
                log.warning("projection_write_failed", stream=stream.name, error=repr(exc), retry_in=delay,
                            messages=len(msgs))
                for msg in msgs:
                    with contextlib.suppress(nats.errors.Error):
                        await msg.in_progress()
                await asyncio.sleep(delay)
        self.stalled.clear()
        for msg in msgs[:-1]:
            with contextlib.suppress(nats.errors.Error):
                await msg.ack()
        with contextlib.suppress(nats.errors.Error, TimeoutError):  # confirmed: the ack floor now counts the batch
            await msgs[-1].ack_sync(timeout=5)
        await self._advance(stream, [d.seq for d in decoded])

    async def _decode(self, stream: _Stream, msg: Msg) -> _Decoded:
        delivered, seq = delivery(msg)
        if (refused := admit(delivered, MAX_DELIVER)) is not None:
            await self._park(stream, msg, refused.reason)
            return _Decoded(msg, seq, None)
        try:
            value: RunEvent | ActivityLogChunk = (
                decode_run_event(msg.data) if stream.kind == "events" else _decode_log(msg.data)
            )
        except Exception as exc:  # not only msgspec's errors: deep nesting raises RecursionError
            await self._park(stream, msg, f"undecodable: {decode_error(exc)}")
            return _Decoded(msg, seq, None)
        run_id = value.run_id if stream.kind == "events" else None
        reason = subjects.subject_mismatch(msg.subject, value.tenant, run_id)
        if not reason and stream.kind == "logs" and msg.subject.split(".")[3:4] != [value.run_id]:
            reason = f"log chunk names run {value.run_id!r} but travels on subject {msg.subject}"
        if reason:
            await self._park(stream, msg, f"rejected: {reason}")
            return _Decoded(msg, seq, None)
        return _Decoded(msg, seq, value)

    async def _park(self, stream: _Stream, msg: Msg, reason: str) -> None:
        """Dead-letter one message (settled by the batch's ack); a letter that cannot be written
        now is retried until it can, so the message is never dropped unrecorded."""
        self.dead_lettered += 1
        log.error("message_dead_lettered", stream=stream.name, subject=msg.subject, reason=reason)
        while True:
            try:
                await self.bus.dead_letter(msg, stream=stream.name, consumer=stream.durable, reason=reason,
                                           terminate=False)
                return
            except Exception as exc:
                log.warning("dead_letter_failed", subject=msg.subject, error=repr(exc))
                await asyncio.sleep(self.retry[-1])

    async def _workflows(self, decoded: list[_Decoded]) -> dict[str, Workflow | None]:
        """The workflows the batch's run.compiled events name by digest (None: not to be had)."""
        found: dict[str, Workflow | None] = {}
        for d in decoded:
            if isinstance(d.value, RunCompiled) and d.value.workflow_ref and d.value.workflow_ref not in found:
                workflow = await stored_workflow(self.bus.js, d.value.workflow_ref)
                if isinstance(workflow, str):
                    log.error("workflow_missing", tenant=d.value.tenant, run=d.value.run_id, reason=workflow)
                found[d.value.workflow_ref] = None if isinstance(workflow, str) else workflow
        return found

    async def _write(
        self, stream: _Stream, decoded: list[_Decoded], workflows: dict[str, Workflow | None]
    ) -> None:
        batch = rows.Batch(seal=self.seal)
        oldest = datetime.now(UTC) - timedelta(days=self.settings.store_logs_retention_days)
        for d in decoded:
            match d.value:
                case None:
                    pass
                case ActivityLogChunk() if stream.kind == "logs":
                    if d.value.occurred_at >= oldest:  # an expired chunk replayed stays deleted
                        batch.add_log(d.value, d.seq)
                case RunCompiled(workflow_ref=ref) if ref:
                    batch.add_event(d.value, d.seq, workflows.get(ref))
                case _:
                    batch.add_event(d.value, d.seq)
        async with self.pool.acquire() as conn, conn.transaction():
            await _execute(conn, batch)
            await conn.execute(rows.PROGRESS, stream.name, max(d.seq for d in decoded))

    async def _write_one_by_one(
        self, stream: _Stream, decoded: list[_Decoded], workflows: dict[str, Workflow | None], first: Exception
    ) -> None:
        """PostgreSQL refused the batch: write each message alone and dead-letter the ones refused."""
        log.warning("projection_batch_refused", stream=stream.name, error=repr(first), messages=len(decoded))
        for d in decoded:
            if d.value is None:
                continue
            for attempt in range(1_000_000):
                try:
                    await self._write(stream, [d], workflows)
                    break
                except Exception as exc:
                    if not transient(exc):
                        await self._park(stream, d.msg, f"cannot be stored: {type(exc).__name__}: {exc}")
                        break
                    log.warning("projection_write_failed", stream=stream.name, error=repr(exc))
                    await asyncio.sleep(self.retry[min(attempt, len(self.retry) - 1)])


async def _execute(conn: asyncpg.Connection, b: rows.Batch) -> None:
    """The batch's statements, in an order where what one reads is already written."""
    if b.tenants:
        await conn.execute(rows.TENANTS, sorted(b.tenants))
    if b.events:
        await conn.execute(rows.EVENTS, *_columns(b.events, 9))
    if b.logs:
        await conn.execute(rows.LOGS, *_columns(b.logs, 9))
    if b.runs:
        await conn.executemany(rows.RUNS, b.runs)
    if b.workflows:
        await conn.executemany(rows.RUN_WORKFLOW, b.workflows)
    if b.compiled:
        await conn.executemany(rows.COMPILED_ACTIVITIES, b.compiled)
    if b.activities:
        await conn.execute(rows.ACTIVITIES, *b.activity_columns())
    for sql, args in (
        (rows.SKIPPED, b.skipped),
        (rows.APPROVAL_REQUESTED, b.approvals_requested),
        (rows.APPROVAL_DECIDED, b.approvals_decided),
        (rows.ENV_REQUESTED, b.env_requested),
        (rows.ENV_TEMPLATE, b.env_template),
        (rows.ENV_FINISHED, sorted(b.env_finished)),
        (links.LINKS_DROP, sorted(b.env_finished)),  # follow the deploy record ENV_FINISHED just set
        (links.LINKS_ADD, sorted(b.env_finished)),
    ):
        if args:
            await conn.executemany(sql, args)
    if b.drift_compiled:
        await conn.executemany(drift_rows.DRIFT_COMPILED, b.drift_compiled)
    for tenant, run_id in sorted(b.drift_finished):  # after the runs and activities it reads
        await drift_rows.write_finished(conn, tenant, run_id)


def _columns(records: list[tuple[Any, ...]], width: int) -> list[list[Any]]:
    return [[r[i] for r in records] for i in range(width)]
