"""One attempt on this agent: started event, heartbeats, the executor, log chunks, the end event.

The executor starts while ActivityStarted awaits its PubAck (a round trip saved per attempt);
the terminal event is published after that ack and after the last log chunk, so a reader that
sees an activity finish has seen it start and already has all of its output. A cancel command
cancels the executor (it cleans up) and ends the attempt as cancelled; a shutdown cancel ends
it as a retryable failure, so the scheduler runs a new attempt (with fresh event identities)
elsewhere. Outputs over MAX_OUTPUT_BYTES (encoded) fail the attempt, saying so: they could not
travel in its activity.completed event, nor in the run's run.completed.
"""

from __future__ import annotations

import asyncio
import contextlib
import traceback
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import msgspec

from trellis_agent.config import AgentConfig
from trellis_agent.executors.base import Executor, Outcome, Workspace, execute, with_default_timeout
from trellis_agent.secrets import AgentKeys, KeysUnavailable, OpenFailed, open_work, seal_outputs
from trellis_agent.sink import LogSink, Masker
from trellis_core import subjects
from trellis_core.events import (
    ActivityCancelled,
    ActivityCompleted,
    ActivityEvent,
    ActivityFailed,
    ActivityHeartbeat,
    ActivityLogChunk,
    ActivityStarted,
    Event,
    WorkItem,
)
from trellis_core.logs import get_logger
from trellis_core.settings import MAX_OUTPUT_BYTES

log = get_logger("agent")

DEFAULT_HEARTBEAT_SECONDS = 2.0
_PUBLISH_BACKOFF = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0)


class Publisher(Protocol):
    """The two calls of `trellis_core.bus.Bus` the runner needs."""

    async def publish(self, subject: str, message: msgspec.Struct | bytes, *, msg_id: str | None = None) -> Any: ...

    async def publish_event(self, event: Event, *, route: str = "") -> Any: ...


async def publish_reliably(send: Callable[[], Awaitable[Any]], what: str, attempts: int = 30) -> None:
    """Retry a publish through a NATS outage (JetStream dedupes the repeats by msg id)."""
    for n in range(attempts):
        try:
            await send()
            return
        except Exception as exc:
            if n == attempts - 1:
                raise
            delay = _PUBLISH_BACKOFF[min(n, len(_PUBLISH_BACKOFF) - 1)]
            log.warning("publish_retry", what=what, error=repr(exc), retry_in=delay)
            await asyncio.sleep(delay)


class ActivityRun:
    """Runs one work item to a terminal event; `cancel(reason)` stops it from outside."""

    def __init__(
        self,
        work: WorkItem,
        *,
        executor: Executor,
        publisher: Publisher,
        config: AgentConfig,
        data_dir: Any,
        on_started: Callable[[], Awaitable[None]] | None = None,
        keys: AgentKeys | None = None,
    ) -> None:
        """`keys`: the tenant's data keys, to open the item's sealed tokens right before the
        executor runs and seal sensitive outputs (None: tokens reach the executor as they are)."""
        self.work = with_default_timeout(work, config.default_timeout_seconds)
        self._executor = executor
        self._publisher = publisher
        self._config = config
        self._workspace = Workspace.for_work(data_dir, work)
        self._on_started = on_started
        self._keys = keys
        self._cancel_reason: str | None = None
        self._retry_after_cancel = False
        self._task: asyncio.Task[Outcome] | None = None

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.work.run_id, self.work.activity.id, self.work.attempt)

    def cancel(self, reason: str, *, retry: bool = False) -> None:
        """Stop the executor. `retry`: end as a retryable failure (the agent is shutting down)."""
        self._cancel_reason = reason or "cancelled"
        self._retry_after_cancel = retry
        if self._task is not None:
            self._task.cancel()

    def _event_fields(self) -> dict[str, Any]:
        w = self.work
        return {"tenant": w.tenant, "run_id": w.run_id, "activity_id": w.activity.id, "attempt": w.attempt}

    async def run(self) -> ActivityEvent:
        """Publish started, run, publish and return the terminal event."""
        bound = log.bind(tenant=self.work.tenant, run=self.work.run_id, activity=self.work.activity.id)
        started = ActivityStarted(agent=self._config.agent_id, **self._event_fields())
        # Its PubAck is awaited only before the end event goes out: the attempt starts meanwhile.
        # Should it never be stored, the executor is stopped and run() raises (the item is handed back).
        reported = asyncio.create_task(self._report_started(started, bound))
        reported.add_done_callback(self._stop_unless_reported)
        # Heartbeats go on until the end event is stored: the last log chunks, and the end behind
        # them, may wait out an election of their stream for longer than the heartbeat timeout.
        beating = asyncio.Event()
        beating.set()
        beats = asyncio.create_task(self._heartbeats(beating), name="heartbeats")
        try:
            try:
                end = await self._attempt()
                await reported  # the end event is stored after ActivityStarted
            finally:
                if not reported.done():
                    reported.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await reported
            await publish_reliably(lambda: self._publisher.publish_event(end, route=self.work.route), end.kind)
        finally:
            beating.clear()
            beats.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beats
        bound.info("activity_finished", outcome=end.kind, attempt=self.work.attempt)
        return end

    async def _report_started(self, started: ActivityStarted, bound: Any) -> None:
        await publish_reliably(
            lambda: self._publisher.publish_event(started, route=self.work.route), "activity.started"
        )
        bound.info("activity_started", attempt=self.work.attempt)
        if self._on_started is not None:
            await self._on_started()

    def _stop_unless_reported(self, reported: asyncio.Task[None]) -> None:
        if not reported.cancelled() and reported.exception() is not None:
            self.cancel("activity.started could not be published")

    async def _attempt(self) -> ActivityEvent:
        """Open the item's tokens, run the executor with its log sink, seal what must leave
        sealed; the terminal event (not yet sent)."""
        opened: set[str] = set()
        work = self.work
        unopened = ""
        retry_unopened = True  # no control plane answered: another attempt may; a bad token: never
        if self._keys is not None:
            try:
                work = await open_work(self._keys, self.work, opened)
            except (KeysUnavailable, OpenFailed) as exc:
                unopened = f"the activity's sealed values could not be opened: {exc}"
                retry_unopened = isinstance(exc, KeysUnavailable)
        sink = LogSink.for_work(
            self.work,
            self._publish_log,
            opened=opened,
            flush_seconds=self._config.log_flush_seconds,
            chunk_bytes=self._config.log_chunk_bytes,
        )
        outcome: Outcome | None = None
        async with sink:
            if unopened:
                await sink.system(unopened)
                outcome = Outcome.failed(unopened, retryable=retry_unopened)
            else:
                outcome = await self._execute(work, sink)
            if outcome is None:
                await sink.system(f"cancelled: {self._cancel_reason}")
            if outcome is not None and outcome.ok:
                outcome = await self._sealed(outcome, sink.masker)
        return self._terminal(outcome, sink.masker)

    async def _sealed(self, outcome: Outcome, masker: Masker) -> Outcome:
        """The outcome with its sensitive outputs sealed (see `secrets.seal_outputs`); a failure
        when they must be sealed and the keys cannot be had (they never leave in clear)."""
        if self._keys is None or not outcome.outputs:
            return outcome
        marked = any(isinstance(v, dict) and v.get("sensitive") is True for v in outcome.outputs.values())
        if not marked and not masker.holds_opened(msgspec.json.encode(outcome.outputs).decode()):
            return outcome
        try:
            keys = await self._keys.keys()
        except KeysUnavailable as exc:
            return Outcome.failed(f"the activity's sensitive outputs could not be sealed: {exc}")
        outputs = seal_outputs(keys, outcome.outputs, masker.holds_opened)
        return msgspec.structs.replace(outcome, outputs=outputs)

    async def _execute(self, work: WorkItem, sink: LogSink) -> Outcome | None:
        """The executor's Outcome on `work` (opened), or None when a cancel command stopped it."""
        if self._cancel_reason is not None:
            return None
        self._task = asyncio.create_task(execute(self._executor, work, self._workspace, sink))
        try:
            return await self._task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if self._cancel_reason is not None and (current is None or current.cancelling() == 0):
                return None
            raise
        except Exception as exc:  # a bug in an executor must not take the agent down
            # The traceback's values may hold opened secrets: it is logged masked.
            trace = sink.masker.mask(traceback.format_exc())
            log.error("executor_crashed", activity=self.work.activity.id, traceback=trace)
            return Outcome.failed(f"the agent's executor crashed: {type(exc).__name__}: {exc}")

    def _terminal(self, outcome: Outcome | None, masker: Masker) -> ActivityEvent:
        fields = self._event_fields()
        if outcome is None and self._retry_after_cancel:
            return ActivityFailed(reason=self._cancel_reason or "", retryable=True, **fields)
        if outcome is None:
            return ActivityCancelled(reason=self._cancel_reason or "", **fields)
        if outcome.ok and (size := len(msgspec.json.encode(outcome.outputs))) > MAX_OUTPUT_BYTES:
            reason = f"the activity's outputs are {size} bytes, over the {MAX_OUTPUT_BYTES}-byte limit"
            return ActivityFailed(reason=reason, exit_code=outcome.exit_code, retryable=False, **fields)
        if outcome.ok:
            return ActivityCompleted(outputs=outcome.outputs, exit_code=outcome.exit_code, **fields)
        return ActivityFailed(
            reason=masker.mask(outcome.reason),
            exit_code=outcome.exit_code,
            retryable=outcome.retryable,
            timed_out=outcome.timed_out,
            **fields,
        )

    async def _publish_log(self, chunk: ActivityLogChunk) -> None:
        subject = subjects.logs(chunk.tenant, chunk.run_id, chunk.activity_id)
        await self._publisher.publish(subject, chunk, msg_id=chunk.msg_id())

    async def _heartbeats(self, beating: asyncio.Event) -> None:
        """Beat while `beating` is set. The attempt also cancels this task, but a cancel that lands
        as a publish completes can be lost (asyncio.wait_for before Python 3.12, inside nats-py,
        returns the result instead): without the event the beats, and the attempt awaiting their
        end, went on for ever, its activity never completed."""
        for sequence in range(1, 1 << 62):
            await asyncio.sleep(self._config.heartbeat_seconds or DEFAULT_HEARTBEAT_SECONDS)
            if not beating.is_set():
                return
            beat = ActivityHeartbeat(agent=self._config.agent_id, sequence=sequence, **self._event_fields())
            try:
                await self._publisher.publish_event(beat, route=self.work.route)
            except Exception as exc:  # a missed heartbeat is not fatal; the next one may pass
                log.warning("heartbeat_failed", activity=self.work.activity.id, error=repr(exc))
