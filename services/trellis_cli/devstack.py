"""The embedded stack: NATS and PostgreSQL (or the ones configured), then every service and one
local agent, in this process. Used by `trellis dev up`, `trellis run` without a gateway, and tests."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import TracebackType

import msgspec

from trellis_core.bus import Bus
from trellis_core.embedded import EmbeddedNats, EmbeddedPostgres
from trellis_core.logs import get_logger
from trellis_core.settings import Settings

log = get_logger("devstack")

Service = Callable[[Bus, Settings, asyncio.Event], Awaitable[None]]


def default_services(settings: Settings) -> dict[str, Service]:
    """Every service that has landed, and one local process agent for the settings' tenant."""
    from trellis_agent.agent import serve as agent
    from trellis_agent.config import AgentConfig
    from trellis_compiler.service import serve as compiler
    from trellis_scheduler.service import serve as scheduler

    agent_config = AgentConfig.from_env(tenant=settings.tenant, executor="process")
    return {
        "compiler": lambda bus, _settings, stop: compiler(bus, stop),
        "scheduler": scheduler,
        "agent": lambda bus, s, stop: agent(bus, s, stop, agent_config),
    }


class DevStack:
    """`async with DevStack(settings) as stack:` — servers up, services running; all stopped on exit.

    With `nats_url` / `database_url` set in settings those servers are used instead of embedded ones.
    `ephemeral` keeps data in a temp dir removed afterwards (for `trellis run`), else under data_dir.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        ephemeral: bool = False,
        with_postgres: bool = True,
        services: dict[str, Service] | None = None,
    ) -> None:
        self._requested = settings
        self.settings = settings
        self.ephemeral = ephemeral
        self.with_postgres = with_postgres
        self._services = services
        self._nats: EmbeddedNats | None = None
        self._postgres: EmbeddedPostgres | None = None
        self._tmp: Path | None = None
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.bus: Bus | None = None

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

    async def _start(self) -> None:
        base = self._requested.data_dir
        if self.ephemeral:
            self._tmp = Path(tempfile.mkdtemp(prefix="trellis-"))
            base = self._tmp
        base.mkdir(parents=True, exist_ok=True)
        updates: dict[str, object] = {"data_dir": base}
        if not self._requested.nats_url:
            self._nats = EmbeddedNats(base / "nats")
            updates["nats_url"] = await asyncio.to_thread(self._nats.start)
            log.info("nats_started", url=updates["nats_url"], data=str(base / "nats"))
        if self.with_postgres and not self._requested.database_url:
            self._postgres = EmbeddedPostgres(base / "postgres", durable=not self.ephemeral)
            updates["database_url"] = await asyncio.to_thread(self._postgres.start)
            log.info("postgres_started", url=updates["database_url"])
        self.settings = msgspec.structs.replace(self._requested, **updates)
        self.bus = await Bus.connect(self.settings, name="devstack")
        await self.bus.ensure_streams()
        services = self._services if self._services is not None else default_services(self.settings)
        for name, serve in services.items():
            task = asyncio.create_task(self._supervise(name, serve), name=f"service-{name}")
            self._tasks.append(task)

    async def _supervise(self, name: str, serve: Service) -> None:
        """Run one service on its own connection; a crash is logged and the service restarted."""
        assert self.bus is not None
        while not self._stop.is_set():
            bus = await Bus.connect(self.settings, name=name)
            try:
                await serve(bus, self.settings, self._stop)
            except Exception:
                log.exception("service_crashed", service=name)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), 1.0)
            finally:
                await bus.close()

    async def _shutdown(self) -> None:
        self._stop.set()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=30)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            self._tasks.clear()
        if self.bus is not None:
            await self.bus.close()
            self.bus = None
        if self._postgres is not None:
            await asyncio.to_thread(self._postgres.stop)
            self._postgres = None
        if self._nats is not None:
            await asyncio.to_thread(self._nats.stop)
            self._nats = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
