"""Run snapshots in JetStream KV, and recovery: every snapshot plus the run's events after it.

A snapshot holds a run's dynamic state and two stream sequences: where its RunCompiled (and so
its workflow) sits, and the last event folded into it. Recovery reads the workflow back from
the stream (or, for a large one that run.compiled names by digest, from the workflow object
store), then replays the run's later events in stream order; folding is idempotent, so
whatever the snapshot already covered changes nothing.
"""

from __future__ import annotations

import contextlib
import zlib

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.kv import KeyValue

from trellis_core import subjects
from trellis_core.bus import stored_workflow
from trellis_core.consume import decode_error
from trellis_core.events import RunCompiled, decode_run_event
from trellis_core.logs import get_logger
from trellis_engine.bounds import refusal
from trellis_engine.fold import fold
from trellis_engine.graph import restore, snapshot
from trellis_engine.recovery import adopt
from trellis_engine.state import TERMINAL_RUN, RunSnapshot, RunState, SchedulerState

log = get_logger("scheduler.store")
_decode_snapshot = msgspec.json.Decoder(RunSnapshot).decode
_decode_compiled = msgspec.json.Decoder(RunCompiled).decode
_encoder = msgspec.json.Encoder()
# Deploy records (`deployed.<tenant>.<environment>`) that schedulers before the state store kept.
OLD_DEPLOY_PREFIX = "deployed."


def run_key(tenant: str, run_id: str, prefix: str = "run") -> str:
    """A run's snapshot key; `prefix` is its scheduler partition's (Partition.snapshot_prefix)."""
    return f"{prefix}.{tenant}.{run_id}"


def encode_snapshot(run: RunState) -> bytes:
    if run.status in TERMINAL_RUN:  # a tombstone: enough to ignore the run's late events
        snap = RunSnapshot(
            tenant=run.tenant, run_id=run.run_id, status=run.status, last_seq=run.last_seq, finished_at=run.finished_at
        )
        return zlib.compress(_encoder.encode(snap), 1)
    return zlib.compress(_encoder.encode(snapshot(run)), 1)


class SnapshotStore:
    """The snapshots of one scheduler partition: keys `<prefix>.<tenant>.<run>`."""

    def __init__(self, kv: KeyValue, js: JetStreamContext, prefix: str = "run") -> None:
        self.kv = kv
        self.js = js
        self.prefix = prefix

    def key(self, run: RunState) -> str:
        return run_key(run.tenant, run.run_id, self.prefix)

    async def save(self, run: RunState) -> None:
        await self.kv.put(self.key(run), encode_snapshot(run))

    async def load_all(self, st: SchedulerState, now: float, *, tenant: str = "*") -> int:
        """Rebuild every run (of `tenant`, or all) from its snapshot and later events; the
        number of live runs. A run that cannot be rebuilt is logged and left out: one bad
        snapshot must not keep every other run from its scheduler."""
        try:
            keys = await self.kv.keys()
        except nats.js.errors.NoKeysError:
            return 0
        if tenant != "*":
            keys = [k for k in keys if k.split(".")[1:2] == [tenant]]
        await self._drop_deploy_records([k for k in keys if k.startswith(OLD_DEPLOY_PREFIX)])
        live = 0
        for key in keys:
            if not key.startswith(f"{self.prefix}."):
                continue
            try:
                live += await self._load_run(st, key, now)
            except (nats.errors.Error, TimeoutError) as exc:
                if not isinstance(exc, nats.js.errors.NotFoundError):
                    raise  # the bus, not the run: this leader steps down and the next one tries
                log.error("run_unrecoverable", key=key, error=repr(exc))
            except Exception as exc:
                log.error("run_unrecoverable", key=key, error=repr(exc))
        return live

    async def _drop_deploy_records(self, keys: list[str]) -> None:
        """Delete the deploy records older schedulers kept here (the state store keeps them now)."""
        for key in keys:
            with contextlib.suppress(nats.js.errors.KeyNotFoundError):
                await self.kv.purge(key)
        if keys:  # a warning: the state store knows only the deploys its projection has seen
            log.warning("old_deploy_records_removed", count=len(keys), keys=keys[:10])

    async def _load_run(self, st: SchedulerState, key: str, now: float) -> int:
        """Rebuild the run of one snapshot key; 1 if it is live, else 0."""
        try:
            entry = await self.kv.get(key)
        except nats.js.errors.KeyNotFoundError:
            return 0
        if entry.value is None:
            return 0
        snap = _decode_snapshot(zlib.decompress(entry.value))
        if snap.status in TERMINAL_RUN:
            finished = snap.finished_at or now  # tombstones written before they kept a finish time
            if finished < now - st.config.tombstone_seconds:  # expired: the key goes too
                with contextlib.suppress(nats.js.errors.Error):
                    await self.kv.delete(key, last=entry.revision)
                return 0
            st.finished.add(snap.run_id, finished)
            return 0
        await self._recover(st, snap, now)
        return 1

    async def _recover(self, st: SchedulerState, snap: RunSnapshot, now: float) -> None:
        raw = await self.js.get_msg(subjects.STREAM_EVENTS, seq=snap.compiled_seq)
        compiled = _decode_compiled(raw.data or b"")
        workflow = await stored_workflow(self.js, compiled.workflow_ref) if compiled.workflow_ref else compiled.workflow
        if isinstance(workflow, str):
            raise LookupError(workflow)
        run = restore(snap, workflow)
        adopt(st, run, now)
        replayed = await self.replay(st, run)
        log.info("run_recovered", tenant=run.tenant, run=run.run_id, status=run.status, replayed=replayed)

    async def replay(self, st: SchedulerState, run: RunState) -> int:
        """Fold the run's events after `run.last_seq`, in stream order."""
        config = js_api.ConsumerConfig(
            deliver_policy=js_api.DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=run.last_seq + 1,
            ack_policy=js_api.AckPolicy.NONE,
            inactive_threshold=30.0,
        )
        sub = await self.js.pull_subscribe(
            subjects.run_events(run.tenant, run.run_id), stream=subjects.STREAM_EVENTS, config=config
        )
        count = 0
        try:
            pending = (await sub.consumer_info()).num_pending or 0
            while pending > 0:
                try:
                    msgs = await sub.fetch(min(pending, 256), timeout=5)
                except (TimeoutError, nats.errors.TimeoutError):
                    break
                for msg in msgs:
                    seq = msg.metadata.sequence.stream
                    pending = msg.metadata.num_pending or 0
                    if seq <= run.last_seq:
                        continue
                    run.last_seq = seq
                    count += _replay_one(st, msg, seq)
        finally:
            try:
                await sub.unsubscribe()
            except nats.errors.Error:
                pass
        return count


def _replay_one(st: SchedulerState, msg: Msg, seq: int) -> int:
    """Fold one stored event; 1 if it was folded. The leader that first saw it dead-lettered
    it if it was bad, so here it is only skipped."""
    try:
        event = decode_run_event(msg.data)
        if subjects.subject_mismatch(msg.subject, event.tenant, event.run_id) or refusal(event):
            return 0
        fold(st, event)
    except Exception as exc:  # not only msgspec's errors: deep nesting raises RecursionError
        log.error("replay_skipped_event", seq=seq, error=decode_error(exc))
        return 0
    return 1
