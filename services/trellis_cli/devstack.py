"""The embedded stack: NATS and PostgreSQL (or the ones configured), then every service (the state
store, the gateway on a free loopback port, the compiler, the scheduler) and one local agent, in
this process; or a running `trellis dev up`'s, joined. For `dev up`, `run`, tests. Its keys and
tokens are kept in `<data_dir>/credentials.json` (0600). Its agent may call loopback (services on
this machine) unless TRELLIS_AGENT_EGRESS_ALLOW is set."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import shutil
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

import msgspec
import nats.errors

from trellis_cli.bootstrap import ok_answer, tenant_token, wait_for_gateway, wait_for_store
from trellis_cli.credentials import Credentials
from trellis_cli.reaper import Reaper
from trellis_cli.stack_lock import StackLock, StackRecord, claim
from trellis_core import nats_auth, subjects
from trellis_core.bus import Bus, ensure_work_stream
from trellis_core.embedded import EmbeddedNats, EmbeddedPostgres, free_port, write_private
from trellis_core.errors import BusUnavailable, ConfigError
from trellis_core.logs import get_logger
from trellis_core.settings import Settings
from trellis_store.api import AgentCredentials, AgentCredentialsCreate, NatsUsers, NatsUsersList
from trellis_store.client import StoreClient

if TYPE_CHECKING:
    from trellis_agent.agent import Agent

log = get_logger("devstack")

Service = Callable[[Bus, Settings, asyncio.Event], Awaitable[None]]
# How long stopping waits for the services beyond the local agent's own drain (its grace for
# running work, then the time its executors take to kill what is left): then they are cancelled.
STOP_MARGIN_SECONDS = 20.0
LOOPBACK = ("127.0.0.0/8", "::1/128")
UNTRACKED_DRAIN_SECONDS = 30.0  # the agent default's grace, for services given without their agents


def default_services(settings: Settings, agents: list[Agent] | None = None) -> dict[str, Service]:
    """Every service that has landed — the state store, the gateway, the compiler, the scheduler —
    and one local process agent for the settings' tenant (appended to `agents` while it runs, so
    its running work can be counted)."""
    from trellis_agent.agent import Agent, executors_for
    from trellis_agent.config import AgentConfig
    from trellis_compiler.service import serve as compiler
    from trellis_scheduler.service import serve as scheduler

    # The embedded stack calls services on this machine: loopback is allowed unless
    # TRELLIS_AGENT_EGRESS_ALLOW says otherwise (other internal addresses stay refused).
    loopback = None if "TRELLIS_AGENT_EGRESS_ALLOW" in os.environ else LOOPBACK
    agent_config = AgentConfig.from_env(tenant=settings.tenant, executor="process", egress_allow=loopback)

    async def agent(bus: Bus, s: Settings, stop: asyncio.Event) -> None:
        cfg = agent_config.with_defaults_from(heartbeat_seconds=s.heartbeat_seconds)
        async with executors_for(cfg, bus) as router:
            local = Agent(bus, cfg, router, cfg.workspaces(s.data_dir))
            if agents is not None:
                agents.append(local)
            try:
                await local.run(stop)
            finally:
                if agents is not None:
                    agents.remove(local)

    services: dict[str, Service] = {}
    for name, module in (("store", "trellis_store.service"), ("gateway", "trellis_gateway.app")):
        serve = _service_of(module)
        if serve is not None:
            services[name] = serve
    services |= {"compiler": lambda bus, _settings, stop: compiler(bus, stop), "scheduler": scheduler, "agent": agent}
    return services


def _service_of(module: str) -> Service | None:
    """`module.serve`, imported now (not when the CLI starts); None, logged, while that service
    is not part of this build."""
    try:
        serve: Service = getattr(importlib.import_module(module), "serve")  # noqa: B009
    except ModuleNotFoundError as exc:
        if exc.name is None or not module.startswith(exc.name):
            raise
        log.warning("service_not_built", module=module)
        return None
    return serve


def _to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class DevStack:
    """`async with DevStack(settings) as stack:` — servers up, services running; all stopped on exit.

    With `nats_url` / `database_url` set in settings those servers are used instead of embedded ones.
    `ephemeral` keeps data in a temp dir removed afterwards, else under data_dir, which one stack
    at a time owns: a second one waits for it, or (`may_join`) uses a running `trellis dev up`'s
    servers and services. `shareable` (dev up) lets later commands join this one.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        ephemeral: bool = False,
        with_postgres: bool = True,
        services: dict[str, Service] | None = None,
        nats_port: int | None = None,
        shareable: bool = False,
        may_join: bool = True,
        command: str = "trellis run",
        notify: Callable[[str], None] = _to_stderr,
        secure: bool = False,
    ) -> None:
        """`secure`: the embedded nats-server runs from a generated config (nkey users, per-user
        permissions: trellis_core.nats_auth); every service connects with the control plane's nkey
        and the local agent with its tenant's agent credentials, as a deployed cluster would."""
        self._requested = settings
        self.secure = secure
        self.settings = settings
        self.ephemeral = ephemeral
        self.with_postgres = with_postgres
        self._services = services
        self._nats_port = nats_port
        self._shareable = shareable
        self._may_join = may_join
        self._command = command
        self._notify = notify
        self._nats: EmbeddedNats | None = None
        self._postgres: EmbeddedPostgres | None = None
        self._lock: StackLock | None = None
        self._reaper: Reaper | None = None
        self._tmp: Path | None = None
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.agents: list[Agent] = []
        self.joined: StackRecord | None = None  # the running stack this one joined, if any
        self.bus: Bus | None = None
        self._credentials: Credentials | None = None

    async def __aenter__(self) -> DevStack:
        try:
            await self._start()
        except BaseException:
            await self._shutdown()
            raise
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._shutdown()

    def running_activities(self) -> int:
        """Activities the local agent runs now (what stopping waits for)."""
        return sum(len(agent.running) for agent in self.agents)

    def drain_seconds(self) -> float:
        """How long the local agent lets running work finish when the stack stops."""
        return max((agent.config.shutdown_grace_seconds for agent in self.agents), default=0.0)

    def hurry(self) -> None:
        """Stop without waiting for running work: the local agent cancels it now, as it would after
        its grace period, and hands it back as retryable."""
        for agent in self.agents:
            for run in list(agent.running.values()):
                run.cancel("the embedded stack stopped", retry=True)

    async def _start(self) -> None:
        base = self._requested.data_dir
        if self.ephemeral:
            self._tmp = Path(tempfile.mkdtemp(prefix="trellis-"))
            base = self._tmp
        base.mkdir(parents=True, exist_ok=True)
        updates: dict[str, object] = {"data_dir": base}
        if not self._requested.nats_url:
            if not self.ephemeral:
                self._lock = StackLock(base)
                wait = self._requested.stack_wait_seconds
                self.joined = await claim(self._lock, may_join=self._may_join, wait_seconds=wait, notify=self._notify)
            if self.joined is not None:
                await self._join(self.joined)
                return
            self._publish("")
            self._nats = EmbeddedNats(base / "nats", port=self._nats_port, secure=self.secure)
            updates["nats_url"] = await asyncio.to_thread(self._nats.start)
            if self.secure:
                updates |= {
                    "nats_nkey_seed_file": str(self._nats.control_seed_file),
                    "nats_auth_file": str(self._nats.auth_file),
                    "nats_pid_file": str(self._nats.pid_file),
                }
            log.info("nats_started", url=updates["nats_url"], data=str(base / "nats"))
            self._publish(str(updates["nats_url"]))
        if self.with_postgres and not self._requested.database_url:
            self._postgres = EmbeddedPostgres(base / "postgres", durable=not self.ephemeral)
            updates["database_url"] = await asyncio.to_thread(self._postgres.start)
            log.info("postgres_started", url=updates["database_url"])
        self.settings = msgspec.structs.replace(self._requested, **updates)
        services = self._services if self._services is not None else default_services(self.settings, self.agents)
        if "store" in services and not self.settings.database_url:
            raise ConfigError(
                "the state store needs PostgreSQL: set TRELLIS_DATABASE_URL or let the stack start its own"
            )
        if "store" in services or "gateway" in services:
            self.settings = self._with_credentials(self.settings, base, gateway="gateway" in services)
        self.bus = await Bus.connect(self.settings, name="devstack")
        await self.bus.ensure_streams()
        await ensure_work_stream(self.bus, self.settings.tenant)  # its agent binds at once
        if "agent" in services:
            self._reaper = Reaper(base / "agent")
            self._reaper.start()
        # In secure mode the agent waits for its tenant's credentials, which the store makes.
        later = {"agent"} if self.secure and "store" in services else set()
        for name, serve in services.items():
            if name not in later:
                self._start_service(name, serve, self.settings)
        if "store" in services:
            await self._bootstrap_tenant(base)
        if self.secure and "agent" in services and "store" in services:
            agent_settings = await self._agent_credentials(base)
            prefix = subjects.inbox_prefix(self.settings.tenant)
            self._start_service("agent", services["agent"], agent_settings, prefix)
        if "gateway" in services:
            await wait_for_gateway(self.settings.gateway_url)
            self._publish(self.settings.nats_url, self.settings.gateway_url)

    def _with_credentials(self, settings: Settings, base: Path, *, gateway: bool) -> Settings:
        """The stack's keys and platform admin token (from credentials.json, made on the first
        start; values set in TRELLIS_* win) and, with a gateway, a free loopback port for it."""
        from trellis_cli import credentials

        self._credentials = credentials.load_or_create(credentials.path_in(base))
        saved = self._credentials
        updates: dict[str, object] = {
            "seal_key": settings.seal_key or saved.seal_key,
            "callback_key": settings.callback_key or saved.callback_key,
            "admin_token": settings.admin_token or saved.admin_token,
        }
        if gateway:
            host = "127.0.0.1"
            port = free_port(host)
            url = f"http://{host}:{port}"
            updates |= {"gateway_listen": f"{host}:{port}", "gateway_url": url}
            updates["gateway_public_url"] = settings.gateway_public_url or url
        return msgspec.structs.replace(settings, **updates)

    async def _bootstrap_tenant(self, base: Path) -> None:
        """Once the store answers: the tenant's admin token (saved, or made now and saved)."""
        from trellis_cli import credentials

        assert self.bus is not None
        assert self._credentials is not None
        tenant = self.settings.tenant
        await wait_for_store(self.bus.nc)
        saved = self._credentials.tenants.get(tenant, "")
        token = await tenant_token(self.bus.nc, tenant, saved)
        if token != saved:
            self._credentials = credentials.with_tenant_token(self._credentials, tenant, token)
            credentials.save(credentials.path_in(base), self._credentials)
        self.settings = msgspec.structs.replace(self.settings, token=self._requested.token or token)

    def _publish(self, nats_url: str, gateway_url: str = "") -> None:
        """Tell later commands on this data dir who owns it and (once up) where its NATS and its
        gateway listen."""
        if self._lock is not None:
            record = StackRecord(
                pid=os.getpid(), command=self._command, nats_url=nats_url, joinable=self._shareable,
                gateway_url=gateway_url,
            )
            self._lock.publish(record)

    async def _join(self, owner: StackRecord) -> None:
        """Use the running stack's bus (its services serve what this command submits) and its
        gateway, with the tenant's token it saved."""
        self._notify(f"using the stack of {owner.command} (pid {owner.pid}) at {owner.nats_url}")
        updates: dict[str, object] = {"nats_url": owner.nats_url}
        control_seed = self._requested.data_dir / "nats" / "control.nk"
        if control_seed.exists() and not self._requested.nats_nkey_seed_file:  # a secure stack: its nkey
            updates["nats_nkey_seed_file"] = str(control_seed)
        if owner.gateway_url and not self._requested.gateway_url:
            updates["gateway_url"] = owner.gateway_url
            updates["token"] = self._requested.token or self._saved_token(self._requested.data_dir)
        self.settings = msgspec.structs.replace(self._requested, **updates)
        self.bus = await Bus.connect(self.settings, name="devstack-joined")
        await self.bus.ensure_streams()

    def _saved_token(self, base: Path) -> str:
        from trellis_cli import credentials

        saved = credentials.load(credentials.path_in(base))
        return saved.tenants.get(self._requested.tenant, "") if saved is not None else ""

    def _start_service(self, name: str, serve: Service, settings: Settings, inbox_prefix: str = "") -> None:
        task = asyncio.create_task(self._supervise(name, serve, settings, inbox_prefix), name=f"service-{name}")
        self._tasks.append(task)

    async def _agent_credentials(self, base: Path) -> Settings:
        """Secure mode: the local agent's settings with its tenant's agent nkey (kept, 0600, in the
        nats folder while the store still knows its public key; else made now by the store), and
        the server's authorization rewritten and reloaded so it knows that key."""
        assert self.bus is not None
        assert self._nats is not None
        tenant = self.settings.tenant
        seed_file = self._nats.data_dir / f"agent-{tenant}.nk"
        store = StoreClient(self.bus.nc, timeout=10.0)
        try:
            users = ok_answer(await store.ask(NatsUsersList(), NatsUsers), "list the agent keys")
            known = {u.public_key for u in users.users if u.tenant == tenant}
            if not (seed_file.exists() and nats_auth.public_key_of(seed_file.read_text()) in known):
                made = ok_answer(
                    await store.ask(
                        AgentCredentialsCreate(tenant=tenant, name="dev-stack", actor="trellis dev stack"),
                        AgentCredentials,
                    ),
                    f"make tenant {tenant}'s agent credentials",
                )
                write_private(seed_file, made.seed + "\n")
                users = ok_answer(await store.ask(NatsUsersList(), NatsUsers), "list the agent keys")
        finally:
            await store.close()
        self._nats.write_authorization([(u.tenant, u.public_key) for u in users.users])
        self._nats.reload()
        agent_settings = msgspec.structs.replace(self.settings, nats_nkey_seed_file=str(seed_file))
        await self._wait_known(agent_settings, subjects.inbox_prefix(tenant))
        return agent_settings

    @staticmethod
    async def _wait_known(settings: Settings, inbox_prefix: str, within: float = 15.0) -> None:
        """nats-server reloads on its own time: wait until the agent's key connects."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            try:
                bus = await Bus.connect(settings, name="agent-probe", inbox_prefix=inbox_prefix)
            except (BusUnavailable, nats.errors.Error):
                if loop.time() > deadline:
                    raise
                await asyncio.sleep(0.1)
                continue
            await bus.close()
            return

    async def _supervise(self, name: str, serve: Service, settings: Settings, inbox_prefix: str = "") -> None:
        """Run one service on its own connection; a crash is logged and the service restarted."""
        assert self.bus is not None
        while not self._stop.is_set():
            bus = await Bus.connect(settings, name=name, inbox_prefix=inbox_prefix)
            try:
                await serve(bus, settings, self._stop)
            except Exception:
                log.exception("service_crashed", service=name)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), 1.0)
            finally:
                await bus.close()

    async def _shutdown(self) -> None:
        self._stop.set()
        if self._tasks:
            agents_drain = self.drain_seconds() + max((a.config.kill_grace_seconds for a in self.agents), default=0.0)
            limit = agents_drain if self.agents else UNTRACKED_DRAIN_SECONDS
            _, pending = await asyncio.wait(self._tasks, timeout=limit + STOP_MARGIN_SECONDS)
            for task in pending:
                task.cancel()
            if pending:
                _, stuck = await asyncio.wait(pending, timeout=STOP_MARGIN_SECONDS)
                if stuck:
                    log.error("services_not_stopped", services=sorted(t.get_name() for t in stuck))
            self._tasks.clear()
        if self._reaper is not None:
            await asyncio.to_thread(self._reaper.stop)
            self._reaper = None
        if self.bus is not None:
            await self.bus.close()
            self.bus = None
        if self._postgres is not None:
            await asyncio.to_thread(self._postgres.stop)
            self._postgres = None
        if self._nats is not None:
            await asyncio.to_thread(self._nats.stop)
            self._nats = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
