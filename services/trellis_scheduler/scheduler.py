"""The scheduler while it leads: feed run events to the engine, carry out its commands.

Events arrive in batches from a durable pull consumer (the bus's fetch loop); a large workflow
that a run.compiled names by digest is fetched from the workflow store before the lock is taken,
then the batch is folded, `decide` runs once, its commands are published (pipelined: every publish is confirmed
before the next snapshot), then the batch is acked. An event that cannot be decoded, that the
engine's bounds refuse, or that cannot be folded is dead-lettered, and the batch goes on. A work
item too large for the bus fails its activity, with its size and the limit, instead of going out.
Snapshots are written a few times a second for the runs that changed; a run's first snapshot
is written before its RunCompiled is acked, so every run is found again after a crash, and the
events after its snapshot are replayed from the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import api as js_api

from trellis_core import subjects
from trellis_core.bus import Bus, ensure_work_stream, stored_workflow
from trellis_core.consume import (
    Choice,
    Handled,
    Outcome,
    Park,
    Rejected,
    Undecodable,
    admit,
    carry_out,
    choose,
    decode_error,
    delivery,
    fetch_loop,
    raise_if_cancelled,
)
from trellis_core.errors import ConfigError
from trellis_core.events import (
    ActivityCancelled,
    ActivityFailed,
    RunCompiled,
    RunCompleted,
    RunEvent,
    decode_run_event,
    encode,
)
from trellis_core.logs import get_logger
from trellis_core.pull import BatchPull
from trellis_core.settings import Settings
from trellis_core.workflow import Workflow
from trellis_engine.binding import Renderer
from trellis_engine.bounds import refusal
from trellis_engine.commands import Cancel, Command, Dispatch, PublishEvent, ScheduleWake
from trellis_engine.decide import decide, fold
from trellis_engine.runs import forget
from trellis_engine.state import TERMINAL_RUN, EngineConfig, SchedulerState
from trellis_scheduler.callbacks import CallbackMinter
from trellis_scheduler.kv import run_state_bucket
from trellis_scheduler.partitions import Partition
from trellis_scheduler.publisher import PipelinedPublisher
from trellis_scheduler.store import SnapshotStore, encode_snapshot
from trellis_templates.expressions import LATE

log = get_logger("scheduler")
FETCH_BATCH = 256
FETCH_WAIT_SECONDS = 0.5
ACK_WAIT_SECONDS = 10.0
MAX_DELIVER = 5  # a batch redelivered this often (its leaders died on it) is dead-lettered unread
HEADER_ROOM = 1024  # of the bus's max_payload, kept for a work item's subject and headers


class _Header(msgspec.Struct):
    environment: str = ""


class _Ref(msgspec.Struct):
    """Of a run.compiled, what is read before folding it; the rest is skipped, not decoded."""

    workflow_ref: str = ""
    workflow: _Header = msgspec.field(default_factory=_Header)


_decode_ref = msgspec.json.Decoder(_Ref).decode


def _floor(info: js_api.ConsumerInfo) -> int:
    """The stream sequence up to which a durable has acknowledged everything it was given."""
    return info.ack_floor.stream_seq if info.ack_floor else 0


FOREIGN_EVENTS = (
    "run.compiled",
    "run.cancel_requested",
    "activity.started",
    "activity.heartbeat",
    "activity.completed",
    "activity.failed",
    "activity.cancelled",
    "approval.requested",
    "approval.decided",
)


def engine_config(settings: Settings) -> EngineConfig:
    return EngineConfig(
        max_parallel_per_run=settings.max_parallel_per_run,
        max_parallel_per_tenant=settings.max_parallel_per_tenant,
        heartbeat_timeout_seconds=settings.heartbeat_timeout_seconds,
        cancel_grace_seconds=max(30.0, settings.heartbeat_timeout_seconds * 2),
    )


class Scheduler:
    """One leader's term: recover, consume, decide, dispatch, snapshot, until stopped."""

    def __init__(
        self,
        bus: Bus,
        settings: Settings,
        *,
        tenant: str = "*",
        partition: Partition | None = None,
        config: EngineConfig | None = None,
        snapshot_interval: float = 0.2,
        render: Renderer | None = None,
        mint: CallbackMinter | None = None,
    ) -> None:
        self.bus = bus
        self.settings = settings
        self.partition = partition if partition is not None else Partition(0, 1, tenant)
        self.tenant = self.partition.tenant
        self.durable = self.partition.name
        self.st = SchedulerState(config=config or engine_config(settings))
        self.snapshot_interval = snapshot_interval
        self.render = render if render is not None else LATE
        self.mint = mint if mint is not None else CallbackMinter(settings)
        self.lock = asyncio.Lock()
        self.unsaved: set[str] = set()  # runs changed since their last snapshot (not SchedulerState.dirty)
        self.publisher = PipelinedPublisher(bus)
        self.wake_at: float | None = None
        self.wake_changed = asyncio.Event()
        self.store: SnapshotStore | None = None
        self.work_streams: set[str] = set()  # tenants whose work stream this process has ensured
        self.term_over = asyncio.Event()  # run()'s stop: no decision is taken once it is set
        self.term_started_at = 0.0

    async def run(self, stop: asyncio.Event, *, ready: asyncio.Event | None = None) -> None:
        self.term_over = stop
        self.term_started_at = time.time()
        kv = await run_state_bucket(self.bus.js, self.settings)
        self.store = SnapshotStore(kv, self.bus.js, self.partition.snapshot_prefix)
        await self.publisher.start()
        async with self.lock:
            live = await self.store.load_all(self.st, time.time(), tenant=self.tenant)
            self.unsaved.update(self.st.runs)
            await self._step()
        log.info("scheduler_leading", runs=live, durable=self.durable, partition=str(self.partition))
        sub = await self._subscribe()
        if ready is not None:
            ready.set()
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._wake_loop(stop))
                tasks.create_task(self._snapshot_loop(stop))
                await self._consume(sub, stop)
        finally:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()
        async with self.lock:  # leave a fresh snapshot behind for whoever leads next
            await self._save_unsaved()
        await self.publisher.close()

    async def _subscribe(self) -> Any:
        # Events are handled strictly in order, so acking a batch's last message acks it all.
        # The scheduler's own events are folded when it emits them: only the others come back.
        config = js_api.ConsumerConfig(
            durable_name=self.durable,
            ack_policy=js_api.AckPolicy.ALL,
            # What a leader that died had fetched is read again by its successor (see _start_at).
            ack_wait=ACK_WAIT_SECONDS,
            max_deliver=-1,
            max_ack_pending=FETCH_BATCH * 16,
            filter_subjects=self._filter(),
        )
        own: js_api.ConsumerInfo | None = None
        with contextlib.suppress(nats.js.errors.NotFoundError):
            own = await self.bus.js.consumer_info(subjects.STREAM_EVENTS, self.durable)
        start = await self._start_at(own)
        if own is not None and start is None:  # kept: an update may not move where it delivers from
            config.deliver_policy, config.opt_start_seq = own.config.deliver_policy, own.config.opt_start_seq
        elif start is not None:
            if own is not None:
                await self.bus.js.delete_consumer(subjects.STREAM_EVENTS, self.durable)
            config.deliver_policy, config.opt_start_seq = js_api.DeliverPolicy.BY_START_SEQUENCE, start
        try:
            await self.bus.js.add_consumer(subjects.STREAM_EVENTS, config)
        except nats.js.errors.APIError as exc:
            if own is None:
                raise
            # An older scheduler left the durable with another shape (an ack policy cannot be
            # updated): made anew, it reads on from where that one had acknowledged.
            log.warning("consumer_recreated", durable=self.durable, error=exc.description)
            await self.bus.js.delete_consumer(subjects.STREAM_EVENTS, self.durable)
            config.deliver_policy, config.opt_start_seq = js_api.DeliverPolicy.BY_START_SEQUENCE, _floor(own) + 1
            await self.bus.js.add_consumer(subjects.STREAM_EVENTS, config)
        return await BatchPull(self.bus.nc, subjects.STREAM_EVENTS, self.durable).start()

    def _filter(self) -> list[str]:
        """The events of others: on their plain subjects, and with several partitions also those
        agents route to this one (WorkItem.route). Every partition reads the plain ones (run.compiled,
        cancels and approvals from the gateway, events of agents from before routes); agents' events,
        the bulk, reach their partition only."""
        plain = [f"{subjects.PREFIX}.{self.tenant}.run.*.{kind}" for kind in FOREIGN_EVENTS]
        route = self.partition.route
        return plain + [f"{subject}.{route}" for subject in plain if route and not subject.endswith("run.compiled")]

    async def _start_at(self, own: js_api.ConsumerInfo | None) -> int | None:
        """Where a term reads from: None to read this partition's durable as it stands (or to make
        it, reading from the stream's start); else the stream sequence a durable made anew starts at:

        * past what durables of other partition counts acknowledged, when that is past this one's
          floor or it has none: the count changed (docs/scaling.md: runs are drained first), maybe
          back to this one, whose durable was left where it stood then. Read from its floor, every
          run.compiled that other count handled would start its run again.
        * this durable's own ack floor, when it holds deliveries no one acknowledged: a leader died
          (or lost its lease) in the middle of a batch. Its successor would be handed what comes
          after, and the first ack (AckPolicy.ALL) would acknowledge that batch too; a run.compiled
          in it, its run not saved yet, would be lost. Read again, what was folded folds as nothing.
        """
        floor = _floor(own) if own is not None else 0
        latest = 0
        offset = 0
        while page := await self.bus.js.consumers_info(subjects.STREAM_EVENTS, offset=offset):
            offset += len(page)  # the server lists at most 256 at a time
            others = [_floor(info) for info in page if info.name and self.partition.other_layout(info.name)]
            latest = max([latest, *others])
        if latest > floor:
            log.warning("partition_durable_after_another_layout", durable=self.durable, after_seq=latest, was_at=floor)
            return latest + 1
        if own is not None and own.num_ack_pending:
            log.warning("durable_read_again_from_ack_floor", durable=self.durable, after_seq=floor,
                        unacknowledged=own.num_ack_pending)  # fmt: skip
            return floor + 1
        return None

    async def _consume(self, sub: Any, stop: asyncio.Event) -> None:
        await fetch_loop(sub, stop, self._on_batch, batch=FETCH_BATCH, wait=FETCH_WAIT_SECONDS, log=log)

    async def _on_batch(self, msgs: list[Msg], _owned: int) -> None:
        """Fold the batch, decide once, then ack its last message (so all of it)."""
        last = msgs[-1]
        if self.partition.count > 1:
            msgs = self._mine(msgs)
        if msgs:
            await self._handle(msgs)
        with contextlib.suppress(nats.errors.Error):
            await last.ack()

    def _mine(self, msgs: list[Msg]) -> list[Msg]:
        """The events this partition folds: of a run it walks, a run.compiled of one of its
        environments (and what follows it in the batch), and of a run it does not know those sent
        to it (routed here; partition 0: on the plain subjects), to dead-letter what cannot be read
        or claims another subject, as a single scheduler does (the rest folds as nothing).
        Every partition's consumer reads the plain subjects; the others' events there are passed
        over undecoded, without the lock or a decision. A run.compiled whose environment cannot
        be read falls to partition 0."""
        adopted: set[str] = set()
        mine: list[Msg] = []
        checks_plain = self.partition.index == 0
        routed = f".{self.partition.route}"
        for msg in msgs:
            parts = msg.subject.split(".", 4)  # the consumer's filter: trellis.<tenant>.run.<run>.<kind>
            if len(parts) < 5:
                continue
            _, tenant, _, run_id, kind = parts
            if run_id in self.st.runs or run_id in adopted:
                mine.append(msg)
            elif kind == "run.compiled":
                if self._compiled_here(msg.data, tenant):
                    adopted.add(run_id)
                    mine.append(msg)
            elif kind.endswith(routed) or checks_plain:  # a plain subject's kind has no route token
                mine.append(msg)
        return mine

    def _compiled_here(self, data: bytes, tenant: str) -> bool:
        try:
            environment = _decode_ref(data).workflow.environment
        except Exception:  # not only msgspec's errors
            return self.partition.index == 0
        return self.partition.owns(tenant, environment)

    async def _handle(self, msgs: list[Msg]) -> None:
        workflows = await self._stored_workflows(msgs)
        async with self.lock:
            new_runs = [run_id for msg in msgs if (run_id := await self._fold(msg, workflows)) is not None]
            await self._step()
            if new_runs:  # a run is acked only once it can be found again after a crash
                await self.publisher.confirm()
                for run_id in new_runs:
                    run = self.st.runs.get(run_id)
                    if run is not None and self.store is not None:
                        await self.store.save(run)

    async def _stored_workflows(self, msgs: list[Msg]) -> dict[str, Workflow | str]:
        """The workflows the batch's run.compiled events name by digest (or why one cannot be
        had), fetched before the lock is taken: one fetch per large run."""
        found: dict[str, Workflow | str] = {}
        for msg in msgs:
            if not msg.subject.endswith(".run.compiled"):
                continue
            try:
                ref = _decode_ref(msg.data).workflow_ref
            except Exception:  # not only msgspec's errors; folding reports it
                continue
            if ref and ref not in found:
                found[ref] = await stored_workflow(self.bus.js, ref)
        return found

    async def _fold(self, msg: Msg, workflows: dict[str, Workflow | str]) -> str | None:
        """Fold one message; the run id if it created a run. One that is delivered too often,
        cannot be decoded or folded is dead-lettered, and the batch goes on without it (its
        delivery is settled by the batch's ack: terminating it would ack those before it too)."""
        delivered, seq = delivery(msg)
        choice: Choice | None = admit(delivered, MAX_DELIVER)
        created: str | None = None
        if choice is None:
            outcome, created = self._apply(msg.data, msg.subject, seq, workflows)
            choice = choose(delivered, MAX_DELIVER, outcome, backoff=(FETCH_WAIT_SECONDS,))
        if isinstance(choice, Park):
            await carry_out(msg, choice, park=self._park, log=log)
        return created

    def _apply(
        self, data: bytes, subject: str, seq: int, workflows: dict[str, Workflow | str]
    ) -> tuple[Outcome, str | None]:
        """Decode, check and fold one event; what came of it, and the run id if it created a run."""
        try:
            event: RunEvent = decode_run_event(data)
        except Exception as exc:  # not only msgspec's errors: deep nesting raises RecursionError
            return Undecodable(decode_error(exc)), None
        if reason := subjects.subject_mismatch(subject, event.tenant, event.run_id) or refusal(event):
            return Rejected(reason), None
        run = self.st.runs.get(event.run_id)
        if (run is not None and seq <= run.last_seq) or event.run_id in self.st.finished:
            return Handled(), None
        if isinstance(event, RunCompiled) and event.workflow_ref:
            workflow = workflows.get(event.workflow_ref, "its workflow was not fetched")
            if isinstance(workflow, str):
                return Rejected(workflow), None
            event = msgspec.structs.replace(event, workflow=workflow)
        created = isinstance(event, RunCompiled) and run is None
        try:
            fold(self.st, event)
        except Exception as exc:  # a bug in the engine: one event must not stop every run
            log.exception("fold_failed", tenant=event.tenant, run=event.run_id, subject=subject)
            return Rejected(f"the engine could not fold it: {exc!r}"), None
        run = self.st.runs.get(event.run_id)
        if run is None:
            return Handled(), None
        if created:
            run.compiled_seq = seq
        run.last_seq = seq
        self.unsaved.add(run.run_id)
        return Handled(), run.run_id if created else None

    async def _park(self, msg: Msg, reason: str) -> None:
        # Named for the scope, not the partition: two partitions parking one plain-subject event
        # (its run's, and partition 0 that checks every such event) write one letter (msg id).
        await self.bus.dead_letter(
            msg, stream=subjects.STREAM_EVENTS, consumer=self.partition.scope, reason=reason, terminate=False
        )

    async def _step(self) -> None:
        """Decide now and carry the commands out (publishes are confirmed later, in order). Not
        once the term is over: what was folded since is in the snapshot it leaves, and the next
        leader decides, alone (this one may have lost its lease while it waited for the lock).
        Not while the bus is away either: an agent's heartbeats cannot reach a deaf scheduler, and
        its attempts are not lost for that (the timeout counts from when it hears again)."""
        if self.term_over.is_set() or not self.bus.nc.is_connected:
            return  # nothing decided can go out; the wake loop decides once the bus is back
        # Heartbeats missed while this scheduler heard nothing are no agent's fault.
        self.st.heard_since = max(self.term_started_at, self.bus.connected_at)
        again = True
        while again:
            _, cmds = decide(self.st, time.time(), render=self.render, mint=self.mint)
            again = await self._execute(cmds)

    async def _execute(self, cmds: list[Command]) -> bool:
        """Carry the commands out; True if that changed the state (decide again)."""
        wake: float | None = None
        changed = False
        for cmd in cmds:
            match cmd:
                case Dispatch():
                    changed = not await self._dispatch(cmd) or changed
                case PublishEvent(event=event):
                    self.unsaved.add(event.run_id)
                    subject = subjects.run_event(event.tenant, event.run_id, event.kind)
                    await self.publisher.publish(subject, self._encode_fitting(event), event.msg_id())
                    if isinstance(event, RunCompleted):
                        log.info("run_completed", tenant=event.tenant, run=event.run_id, status=event.status)
                case Cancel():
                    changed = await self._cancel(cmd) or changed
                case ScheduleWake(at=at):
                    wake = at
        if wake != self.wake_at:
            self.wake_at = wake
            self.wake_changed.set()
        if len(self.publisher.pending) > 4096:
            await self.publisher.confirm()
        return changed

    async def _dispatch(self, cmd: Dispatch) -> bool:
        """Send the work item; False if it is too large for the bus (its activity failed instead)."""
        self.unsaved.add(cmd.run_id)
        subject = subjects.work(cmd.tenant, cmd.pool, cmd.agent or None)
        if cmd.tenant not in self.work_streams and not await self._ensure_work_stream(cmd):
            return False
        item = cmd.work_item(self.partition.route)
        payload = encode(item)
        limit = self.bus.nc.max_payload - HEADER_ROOM
        if len(payload) > limit:
            await self._fail(cmd, f"work item is {len(payload)} bytes, over the {limit}-byte limit of the bus")
            return False
        await self.publisher.publish(subject, payload, item.msg_id(), track=(cmd.run_id, cmd.activity.id, cmd.attempt))
        return True

    async def _ensure_work_stream(self, cmd: Dispatch) -> bool:
        """Create the tenant's work stream before its first dispatch from this process (once a
        tenant, not once an item); False if it cannot be had (then the activity failed, saying why:
        a work item on a subject no stream captures would be lost)."""
        try:
            await ensure_work_stream(self.bus, cmd.tenant)
        except (ConfigError, nats.errors.Error, nats.js.errors.Error) as exc:
            stream = subjects.work_stream(cmd.tenant)
            await self._fail(cmd, f"cannot create tenant {cmd.tenant}'s work stream {stream}: {exc}")
            return False
        self.work_streams.add(cmd.tenant)
        return True

    async def _fail(self, cmd: Dispatch, reason: str) -> None:
        """End the dispatched attempt as a failure that no retry can help."""
        event = ActivityFailed(
            tenant=cmd.tenant,
            run_id=cmd.run_id,
            activity_id=cmd.activity.id,
            attempt=cmd.attempt,
            reason=reason,
            retryable=False,
        )
        log.warning("activity_undeliverable", run=cmd.run_id, activity=cmd.activity.id, reason=reason)
        fold(self.st, event)
        subject = subjects.run_event(event.tenant, event.run_id, event.kind)
        await self.publisher.publish(subject, encode(event), event.msg_id())

    async def _cancel(self, cmd: Cancel) -> bool:
        """Tell the pool's agents to stop the attempt, and withdraw its work item if no agent took
        it yet (then it is cancelled at once, instead of running later for nothing)."""
        with contextlib.suppress(nats.errors.Error):
            await self.bus.nc.publish(subjects.control(cmd.tenant, cmd.pool), encode(cmd.control()))
        seq = self.publisher.stored.pop((cmd.run_id, cmd.activity_id, cmd.attempt), None)
        if seq is None:
            return False
        try:
            withdrawn = await self.bus.js.delete_msg(subjects.work_stream(cmd.tenant), seq)
        except (nats.js.errors.Error, nats.errors.Error):
            return False  # an agent took it: its answer to the cancel decides
        if not withdrawn:
            return False
        event = ActivityCancelled(
            tenant=cmd.tenant,
            run_id=cmd.run_id,
            activity_id=cmd.activity_id,
            attempt=cmd.attempt,
            reason=f"withdrawn before an agent took it ({cmd.reason})" if cmd.reason else "withdrawn",
        )
        fold(self.st, event)
        self.unsaved.add(cmd.run_id)
        subject = subjects.run_event(event.tenant, event.run_id, event.kind)
        await self.publisher.publish(subject, encode(event), event.msg_id())
        return True

    def _encode_fitting(self, event: RunEvent) -> bytes:
        """The event encoded; a run.completed whose outputs make it too large for the bus goes
        without them (each is in its activity's activity.completed), saying so."""
        payload = encode(event)
        limit = self.bus.nc.max_payload - HEADER_ROOM
        if isinstance(event, RunCompleted) and len(payload) > limit:
            note = f"the run's outputs are left out: with them run.completed is {len(payload)} bytes"
            note += f", over the {limit}-byte limit"
            message = f"{event.message}; {note}" if event.message else note
            payload = encode(msgspec.structs.replace(event, outputs={}, message=message))
        return payload

    async def _save_unsaved(self) -> None:
        if not self.unsaved or self.store is None:
            return
        await self.publisher.confirm()
        unsaved, self.unsaved = self.unsaved, set()
        for run_id in sorted(unsaved):
            run = self.st.runs.get(run_id)
            if run is None:
                continue
            await self.store.kv.put(self.store.key(run), encode_snapshot(run))
            if run.status in TERMINAL_RUN:
                forget(self.st, run_id)
                self.mint.forget(run_id)

    async def _snapshot_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            raise_if_cancelled()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.snapshot_interval)
            async with self.lock:
                try:
                    await self._save_unsaved()
                except (nats.errors.Error, TimeoutError) as exc:
                    log.warning("snapshot_failed", error=repr(exc))

    async def _wake_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            raise_if_cancelled()
            self.wake_changed.clear()
            delay = 1.0 if self.wake_at is None else max(0.0, self.wake_at - time.time())
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake_changed.wait(), timeout=min(delay, 1.0))
                continue
            async with self.lock:
                self.wake_at = None
                await self._step()


__all__ = ["Scheduler", "engine_config"]
