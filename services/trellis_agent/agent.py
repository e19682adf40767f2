"""The agent: claims its tenant's work from JetStream, runs it, reports back, obeys cancels.

Two durable pull consumers feed one pool of N slots: the pool's (`trellis.T.work.P`, shared by
every agent of the pool, so each item goes to one of them) and the agent's own pinned subject
(`trellis.T.work.P.<agent>`, work that needs the workspace this agent holds).

A work item is acked once `activity.started` is out: from then on the scheduler owns it
(heartbeats prove the agent alive; their loss makes it retry as a new attempt). Redelivering
a started item would re-run the same attempt under the same event identities, which the
dedupe window would partly drop. On stop the agent claims nothing more, lets running work
finish within the grace period, ends what is left as a retryable failure, and hands back
(naks) anything claimed but not yet started.

Both consumers live on the tenant's own work stream `TRELLIS_WORK_<tenant>`, which the control
plane creates (the scheduler before its first dispatch, `trellis tenant create`, the dev stack):
an agent never creates streams, and waits for its stream if it is not there yet.

What an agent asks of nats-server, end to end (`AGENT_JETSTREAM_API`; the nats-auth helper
builds a tenant agent's permissions from it, <t> the tenant): every request's reply comes back
under its inbox prefix `_INBOX_<t>` (Bus.connect(inbox_prefix=...)).
  publish, request/reply:
    $JS.API.STREAM.INFO.TRELLIS_WORK_<t>                  wait for its work stream
    $JS.API.CONSUMER.DURABLE.CREATE.TRELLIS_WORK_<t>.*    its pool's and its pinned durables
    $JS.API.CONSUMER.MSG.NEXT.TRELLIS_WORK_<t>.*          pull fetches
    $JS.API.CONSUMER.CREATE.TRELLIS_EVENTS.*.trellis.<t>.>  approval wait (ephemeral, named)
    $JS.API.STREAM.INFO.OBJ_trellis_bundles_<t>           bundle store
    $JS.API.STREAM.MSG.GET.OBJ_trellis_bundles_<t>        bundle meta and chunks
    trellis.<t>.>                                         events, logs, dead letters (publish
                                                          acks come back on _INBOX_<t>.>), keys
  publish only (no reply): $JS.ACK.TRELLIS_WORK_<t>.>   ack / nak / in-progress / term of work
                           $JS.ACK.TRELLIS_EVENTS.>     (flow control of the approval consumer:
                                                          nothing is acked there, AckPolicy NONE)
  subscribe: _INBOX_<t>.>, trellis.<t>.control.>        replies and deliveries; cancels
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import api as js_api

from trellis_agent.approvals import BusApprovals
from trellis_agent.bundles import Bundles, WithBundles
from trellis_agent.config import AgentConfig
from trellis_agent.executors.approval import ApprovalExecutor
from trellis_agent.executors.base import Executor
from trellis_agent.executors.function import FunctionExecutor, FunctionHost
from trellis_agent.executors.http import HttpExecutor
from trellis_agent.executors.iac import IacExecutor
from trellis_agent.executors.process import ProcessExecutor
from trellis_agent.executors.router import Router
from trellis_agent.guard import guard_agent_process
from trellis_agent.janitor import prune
from trellis_agent.runner import ActivityRun, publish_reliably
from trellis_agent.secrets import AgentKeys, nats_request
from trellis_core import subjects
from trellis_core.bus import Bus, get_bundle
from trellis_core.consume import PermanentError, Settling, Slots, decode_error, fetch_loop, settle
from trellis_core.events import ActivityFailed, CancelActivity, WorkItem
from trellis_core.logs import get_logger
from trellis_core.settings import Settings

MAX_DELIVER = 5
WORK_ACK_SECONDS = 2.0  # for the server's confirmation of a work item's ack, each try
FETCH_WAIT_SECONDS = 0.5
PINNED_INACTIVE_SECONDS = 7 * 86_400.0
JANITOR_INTERVAL_SECONDS = 3600.0

STREAM_WAIT_LOG_SECONDS = 30.0
CANCEL_MEMORY_SECONDS = 600.0
CANCEL_MEMORY_SIZE = 10_000

# The JetStream API subjects a tenant's agent calls (see the module docstring), "<t>" its tenant.
AGENT_JETSTREAM_API = (
    "$JS.API.STREAM.INFO.TRELLIS_WORK_<t>",
    "$JS.API.CONSUMER.DURABLE.CREATE.TRELLIS_WORK_<t>.*",
    "$JS.API.CONSUMER.MSG.NEXT.TRELLIS_WORK_<t>.*",
    "$JS.API.CONSUMER.CREATE.TRELLIS_EVENTS.*.trellis.<t>.>",
    "$JS.API.STREAM.INFO.OBJ_trellis_bundles_<t>",
    "$JS.API.STREAM.MSG.GET.OBJ_trellis_bundles_<t>",
)
AGENT_ACKS = ("$JS.ACK.TRELLIS_WORK_<t>.>", "$JS.ACK.TRELLIS_EVENTS.>")


def agent_jetstream_api(tenant: str) -> list[str]:
    """AGENT_JETSTREAM_API for one tenant (the tenant checked as a subject token)."""
    t = subjects.tenant_token(tenant)
    return [subject.replace("<t>", t) for subject in AGENT_JETSTREAM_API]


_decode_work = msgspec.json.Decoder(WorkItem).decode
_decode_control = msgspec.json.Decoder(CancelActivity).decode


class _ActivityRef(msgspec.Struct):
    id: str


class _WorkRef(msgspec.Struct):
    """What names a work item's attempt: readable where the whole item is not (a spec this agent's
    version does not know)."""

    tenant: str
    run_id: str
    attempt: int
    activity: _ActivityRef
    route: str = ""


_decode_work_ref = msgspec.json.Decoder(_WorkRef).decode


class Agent:
    def __init__(self, bus: Bus, config: AgentConfig, executor: Executor, data_dir: Path) -> None:
        self.bus = bus
        self.config = config
        self.executor = executor
        self.data_dir = data_dir
        self.log = get_logger("agent", tenant=config.tenant, pool=config.pool, agent=config.agent_id)
        self.running: dict[tuple[str, str, int], ActivityRun] = {}
        self._slots = Slots(config.concurrency)  # a slot freed twice raises
        self._settling = Settling(max_deliver=MAX_DELIVER, backoff=(2.0,), park=self._park, log=self.log)
        self._tasks: set[asyncio.Task[None]] = set()  # running work, owned by run()'s task group
        # Cancels of attempts this agent was not running when they came, by when they came: the
        # scheduler cancels, then withdraws the work item, which this agent may have fetched already.
        self._cancelled_early: collections.OrderedDict[tuple[str, str, int], float] = collections.OrderedDict()
        self.keys = AgentKeys(config.tenant, self._keys_request)  # asked only when work holds a token

    async def _keys_request(self, subject: str, payload: bytes, wait: float) -> bytes:
        """The keys request over this agent's connection, looked up when first asked."""
        return await nats_request(self.bus.nc)(subject, payload, wait)

    @property
    def pool_durable(self) -> str:
        return f"agent-{self.config.tenant}-{self.config.pool}"

    @property
    def pinned_durable(self) -> str:
        return f"agent-{self.config.tenant}-{self.config.pool}-{self.config.agent_id}"

    async def _subscribe(self, durable: str, subject: str, *, pinned: bool) -> JetStreamContext.PullSubscription:
        config = js_api.ConsumerConfig(
            durable_name=durable,
            ack_policy=js_api.AckPolicy.EXPLICIT,
            ack_wait=30.0,
            max_deliver=-1,  # counted here: a poison item is dead-lettered, not dropped silently
            # The pool's durable is shared by agents of any concurrency: one fixed config for all.
            max_ack_pending=1000,
            filter_subject=subject,
            inactive_threshold=PINNED_INACTIVE_SECONDS if pinned else None,
        )
        await self.bus.js.add_consumer(self.stream, config)
        return await self.bus.js.pull_subscribe_bind(durable=durable, stream=self.stream)

    @property
    def stream(self) -> str:
        return subjects.work_stream(self.config.tenant)

    async def _wait_for_stream(self, stop: asyncio.Event) -> bool:
        """Wait until the tenant's work stream exists (the control plane creates it: an agent
        started first waits rather than fail, saying so); False if stopped first."""
        delay, waited, said = 0.2, 0.0, -STREAM_WAIT_LOG_SECONDS
        while not stop.is_set():
            try:
                await self.bus.js.stream_info(self.stream)
                return True
            except nats.js.errors.NotFoundError:
                pass
            if waited - said >= STREAM_WAIT_LOG_SECONDS:
                said = waited
                self.log.warning(
                    "work_stream_missing",
                    stream=self.stream,
                    waited_seconds=round(waited),
                    hint="the control plane creates it (the scheduler on the tenant's first dispatch, "
                    "or `trellis tenant create`): is the scheduler running against this NATS?",
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            waited += delay
            delay = min(delay * 2, 1.0)  # one cheap request a second: work starts soon after it exists
        return False

    async def run(self, stop: asyncio.Event, *, ready: asyncio.Event | None = None) -> None:
        """Serve until `stop` is set, then drain (see the module docstring)."""
        cfg = self.config
        if not await self._wait_for_stream(stop):
            return
        pool_sub = await self._subscribe(self.pool_durable, subjects.work(cfg.tenant, cfg.pool), pinned=False)
        pinned_sub = await self._subscribe(
            self.pinned_durable, subjects.work(cfg.tenant, cfg.pool, cfg.agent_id), pinned=True
        )
        control = await self.bus.nc.subscribe(subjects.control(cfg.tenant, cfg.pool), cb=self._on_control)
        self.log.info("agent_ready", concurrency=cfg.concurrency)
        if ready is not None:
            ready.set()
        try:
            # `work` owns every activity task: if this agent is cancelled, so is its work (each
            # executor cleans up, each item is handed back).
            async with asyncio.TaskGroup() as work:
                async with asyncio.TaskGroup() as claims:
                    claims.create_task(self._claim(pinned_sub, stop, work))
                    claims.create_task(self._claim(pool_sub, stop, work))
                    if cfg.workspace_retention_hours > 0:
                        claims.create_task(self._prune_workspaces(stop))
                await self._drain()
        finally:
            for sub in (control, pool_sub, pinned_sub):
                with contextlib.suppress(nats.errors.Error):
                    await sub.unsubscribe()
            self.log.info("agent_stopped")

    async def _claim(
        self, sub: JetStreamContext.PullSubscription, stop: asyncio.Event, work: asyncio.TaskGroup
    ) -> None:
        """Whenever slots are free, fetch up to that many items and start them in `work`, until
        stopped (the bus's fetch loop: it ramps the batch up to the free slots, see `fetch_loop`)."""

        async def start(msgs: list[Msg], owned: int) -> None:
            for n, msg in enumerate(msgs):
                task = work.create_task(self._handle(msg, owns_slot=n < owned))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

        await fetch_loop(
            sub,
            stop,
            start,
            batch=self.config.concurrency,
            slots=self._slots,
            wait=FETCH_WAIT_SECONDS,
            log=self.log,
        )

    async def _prune_workspaces(self, stop: asyncio.Event) -> None:
        """Now and every hour until stopped: remove local workspaces of old runs."""
        while not stop.is_set():
            try:
                await prune(
                    self.data_dir / self.config.tenant,
                    now=time.time(),
                    older_than_seconds=self.config.workspace_retention_hours * 3600,
                    active={run_id for run_id, _, _ in self.running},
                )
            except OSError as exc:
                self.log.warning("workspace_prune_failed", error=str(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), JANITOR_INTERVAL_SECONDS)

    async def _drain(self) -> None:
        """Let running work finish within the grace period, then stop it as retryable."""
        if not self._tasks:
            return
        self.log.info("agent_draining", running=len(self._tasks))
        await asyncio.wait(set(self._tasks), timeout=self.config.shutdown_grace_seconds)
        for run in list(self.running.values()):
            run.cancel(f"agent {self.config.agent_id} shut down", retry=True)
        if self._tasks:  # executors kill what they started; then the ends are published
            await asyncio.wait(set(self._tasks), timeout=self.config.kill_grace_seconds + 10)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks))

    async def _handle(self, msg: Msg, *, owns_slot: bool = True) -> None:
        """Run one claimed item, then free its slot; never raises except on cancellation (then naks)."""
        try:
            await settle(msg, _decode_work, self._run_item, self._settling)
        finally:
            if owns_slot:
                self._slots.give_back()

    async def _run_item(self, work: WorkItem, msg: Msg) -> None:
        """Run the item. A failure before it started hands it back (raises); once started (and
        so acked) the scheduler owns the attempt, and a failure here is only logged."""
        if work.tenant != self.config.tenant:
            raise PermanentError(f"work of tenant {work.tenant!r} reached an agent of {self.config.tenant!r}")
        try:  # it names the workspace's directory and the subjects of the attempt's events
            subjects.token(work.run_id, "the work item's run id")
        except subjects.InvalidSubjectToken as exc:
            raise PermanentError(str(exc)) from None
        if self._cancelled_early.pop((work.run_id, work.activity.id, work.attempt), None) is not None:
            # Cancelled as this agent took it: the scheduler has ended the attempt (withdrawn).
            self.log.info("activity_cancelled_before_start", run=work.run_id, activity=work.activity.id)
            return
        started = False

        async def on_started() -> None:
            nonlocal started
            # Acked and confirmed (a double ack), retried through a NATS failover: an ack lost while
            # the work stream's consumer elects a new leader would hand the item out again after
            # the ack wait, and run an attempt that may have finished a second time.
            await publish_reliably(lambda: msg.ack_sync(timeout=WORK_ACK_SECONDS), "work ack")
            started = True

        try:
            await self._execute(work, on_started)
        except Exception as exc:
            if not started:
                raise
            self.log.exception("work_failed", subject=msg.subject, error=repr(exc))

    async def _execute(self, work: WorkItem, on_started: Callable[[], Awaitable[None]]) -> None:
        run = ActivityRun(
            work,
            executor=self.executor,
            publisher=self.bus,
            config=self.config,
            data_dir=self.data_dir,
            on_started=on_started,
            keys=self.keys,
        )
        if run.key in self.running:  # a redelivery of what we already run
            with contextlib.suppress(nats.errors.Error):
                await on_started()
            return
        self.running[run.key] = run
        try:
            await run.run()
        finally:
            del self.running[run.key]

    def _remember_cancel(self, key: tuple[str, str, int]) -> None:
        """Keep a cancel for an attempt not running here for CANCEL_MEMORY_SECONDS (at most
        CANCEL_MEMORY_SIZE of them): most are for other agents' work, a few for an item this one
        has fetched but not yet started."""
        now = time.monotonic()
        self._cancelled_early[key] = now
        self._cancelled_early.move_to_end(key)
        while self._cancelled_early and (
            len(self._cancelled_early) > CANCEL_MEMORY_SIZE
            or next(iter(self._cancelled_early.values())) < now - CANCEL_MEMORY_SECONDS
        ):
            self._cancelled_early.popitem(last=False)

    async def _park(self, msg: Msg, reason: str) -> None:
        """Dead-letter an item this agent will not run, and tell the scheduler its attempt failed:
        nothing else would (only pinned work has a start timeout), and its run would wait for ever."""
        await self.bus.dead_letter(msg, stream=self.stream, consumer=self.pool_durable, reason=reason)
        try:
            ref = _decode_work_ref(msg.data)
            subjects.token(ref.run_id, "run id")
            subjects.activity_token(ref.activity.id)
            if ref.route:
                subjects.token(ref.route, "route")
        except Exception:  # not only msgspec's: deep nesting raises RecursionError
            return  # nothing names the attempt: the dead letter is all there is
        if ref.tenant != self.config.tenant or ref.attempt < 1:
            return  # another tenant's run is not this agent's to speak for
        failed = ActivityFailed(
            tenant=ref.tenant,
            run_id=ref.run_id,
            activity_id=ref.activity.id,
            attempt=ref.attempt,
            reason=f"agent {self.config.agent_id} could not take its work item, dead-lettered: {reason}",
            retryable=False,
        )
        try:
            await publish_reliably(lambda: self.bus.publish_event(failed, route=ref.route), "activity.failed")
        except Exception as exc:
            self.log.error("parked_work_not_reported", run=ref.run_id, activity=ref.activity.id, error=repr(exc))

    async def _on_control(self, msg: Msg) -> None:
        try:
            command = _decode_control(msg.data)
        except Exception as exc:  # not only msgspec's errors: deep nesting raises RecursionError
            self.log.warning("control_undecodable", error=decode_error(exc))
            return
        if command.tenant != self.config.tenant:
            return
        key = (command.run_id, command.activity_id, command.attempt)
        run = self.running.get(key)
        if run is None:
            self._remember_cancel(key)
            return
        self.log.info("activity_cancel_requested", run=command.run_id, activity=command.activity_id)
        run.cancel(command.reason)


@contextlib.asynccontextmanager
async def executors_for(config: AgentConfig, bus: Bus | None) -> AsyncIterator[Router]:
    """The executor set of this agent's backend; closes sessions and clients on exit."""
    async with contextlib.AsyncExitStack() as stack:
        http = HttpExecutor(config.egress_policy())
        stack.push_async_callback(http.close)
        backend: Executor
        host: FunctionHost | None = None
        if config.executor == "process":
            backend = ProcessExecutor(
                inherit_env=config.inherit_env,
                kill_grace_seconds=config.kill_grace_seconds,
                container_workspace=config.container_workspace,
            )
        elif config.executor == "docker":
            from trellis_agent.executors.docker import DockerExecutor

            docker = DockerExecutor.from_config(config)
            stack.push_async_callback(docker.close)
            backend = host = docker
        else:
            from trellis_agent.executors.kubernetes import KubernetesExecutor

            kube = await KubernetesExecutor.from_config(config)
            stack.push_async_callback(kube.close)
            backend = kube
            host = kube if isinstance(kube, FunctionHost) else None
        if bus is not None and config.executor in ("process", "docker"):  # pods get no bundle files yet
            seen_at = config.container_workspace if config.executor == "docker" else ""
            backend = WithBundles(backend, Bundles(functools.partial(get_bundle, bus, config.tenant)), seen_at=seen_at)
        yield Router(
            container=backend,
            iac=IacExecutor(backend, git_binary=config.git_binary, image=config.iac_image, git_image=config.git_image),
            http=http,
            function=FunctionExecutor(http, host),
            approval=ApprovalExecutor(http, BusApprovals(bus) if bus is not None else None),
        )


async def serve(
    bus: Bus,
    settings: Settings,
    stop: asyncio.Event,
    config: AgentConfig | None = None,
    *,
    ready: asyncio.Event | None = None,
) -> None:
    """Run an agent on `bus` until `stop` is set (`trellis agent`, and `trellis dev up`'s local agent);
    `ready` is set once it is subscribed to its work."""
    cfg = config if config is not None else AgentConfig.from_env(tenant=settings.tenant)
    cfg = cfg.with_defaults_from(heartbeat_seconds=settings.heartbeat_seconds)
    if cfg.executor == "process":  # commands run beside the agent, as its user; it is connected
        guard_agent_process()
    async with executors_for(cfg, bus) as router:
        agent = Agent(bus, cfg, router, cfg.workspaces(settings.data_dir))
        await agent.run(stop, ready=ready)


__all__ = ["AGENT_ACKS", "AGENT_JETSTREAM_API", "Agent", "agent_jetstream_api", "executors_for", "serve"]
