"""Running schedulers and agents against the session's nats-server, in-process or as processes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from running_agent import running_agent as shared_running_agent
from trellis_agent.agent import Agent
from trellis_core import subjects
from trellis_core.bus import Bus
from trellis_core.events import RunCompiled, RunCompleted, RunEvent, RunRequested, SourceFile, decode_run_event
from trellis_core.ids import new_run_id
from trellis_core.settings import Settings
from trellis_core.workflow import Action, Activity, ContainerSpec, TemplateRef, Workflow
from trellis_engine.state import EngineConfig
from trellis_scheduler.service import serve


def sh(id: str, script: str, *deps: str, **kw: Any) -> Activity:
    return Activity(id=id, kind="container", spec=ContainerSpec(command=("sh", "-c", script)), depends_on=deps, **kw)


def workflow(*activities: Activity, env: str = "dev") -> Workflow:
    return Workflow(environment=env, template=TemplateRef(name="t"), action="deploy", activities=activities)


class Recorder:
    """Every run event of one tenant as it is published (core NATS, so duplicates show too)."""

    def __init__(self) -> None:
        self.events: list[RunEvent] = []
        self._changed = asyncio.Condition()

    async def on_event(self, msg: Any) -> None:
        async with self._changed:
            self.events.append(decode_run_event(msg.data))
            self._changed.notify_all()

    def of(self, kind: type[Any], run_id: str | None = None) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind) and (run_id is None or e.run_id == run_id)]

    async def wait(self, predicate: Callable[[], bool], within: float = 30.0) -> None:
        async with asyncio.timeout(within), self._changed:
            await self._changed.wait_for(predicate)

    async def first(self, kind: type[Any], run_id: str, within: float = 30.0, **match: Any) -> Any:
        def found() -> list[Any]:
            return [e for e in self.of(kind, run_id) if all(getattr(e, k) == v for k, v in match.items())]

        await self.wait(lambda: bool(found()), within)
        return found()[0]

    async def completion(self, run_id: str, within: float = 30.0) -> RunCompleted:
        return await self.first(RunCompleted, run_id, within)  # type: ignore[no-any-return]


@asynccontextmanager
async def recording(bus: Bus, tenant: str) -> AsyncIterator[Recorder]:
    recorder = Recorder()
    sub = await bus.nc.subscribe(subjects.all_run_events(tenant), cb=recorder.on_event)
    await bus.nc.flush()
    try:
        yield recorder
    finally:
        await sub.unsubscribe()


def engine_config(settings: Settings) -> EngineConfig:
    return EngineConfig(heartbeat_timeout_seconds=settings.heartbeat_timeout_seconds, cancel_grace_seconds=5.0)


@asynccontextmanager
async def running_scheduler(bus: Bus, settings: Settings, tenant: str) -> AsyncIterator[None]:
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(serve(bus, settings, stop, tenant=tenant, config=engine_config(settings), ready=ready))
    async with asyncio.timeout(15):
        await ready.wait()
    try:
        yield
    finally:
        stop.set()
        async with asyncio.timeout(15):
            await task


@asynccontextmanager
async def running_agent(bus: Bus, tmp_path: Path, tenant: str, **overrides: Any) -> AsyncIterator[Agent]:
    async with shared_running_agent(
        bus, tmp_path, tenant=tenant, heartbeat_seconds=0.3, shutdown_grace_seconds=2.0, **overrides
    ) as agent:
        yield agent


SEAL_KEY = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="  # base64 of bytes 0..31: tests only


@asynccontextmanager
async def running_compiler(bus: Bus) -> AsyncIterator[None]:
    from trellis_compiler.service import serve as serve_compiler

    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(serve_compiler(bus, stop, ready=ready))
    async with asyncio.timeout(15):
        await ready.wait()
    try:
        yield
    finally:
        stop.set()
        async with asyncio.timeout(30):
            await task


@asynccontextmanager
async def running_store(bus: Bus, settings: Settings, database_url: str) -> AsyncIterator[None]:
    """The state store on the test's own database, answering `trellis.store.>` until the block
    ends. Its projection reads every tenant with the service's own durables, as in production:
    a deploy record is a consistent read up to the stream's last event, whoever's it is."""
    from msgspec.structs import replace

    from trellis_store.service import serve as serve_store

    stop, ready = asyncio.Event(), asyncio.Event()
    store_settings = replace(settings, database_url=database_url, seal_key=settings.seal_key or SEAL_KEY)
    task = asyncio.create_task(serve_store(bus, store_settings, stop, ready))
    waiting = asyncio.ensure_future(ready.wait())
    await asyncio.wait([waiting, task], timeout=60, return_when=asyncio.FIRST_COMPLETED)
    waiting.cancel()
    if task.done():
        task.result()  # its start-up error, as the test's failure
    assert ready.is_set(), "the store did not become ready within 60 s"
    try:
        yield
    finally:
        stop.set()
        async with asyncio.timeout(60):
            await task


def sources_of(text: str, path: str = "templates.yaml") -> tuple[SourceFile, ...]:
    return (SourceFile(path=path, text=text),)


async def request(
    bus: Bus,
    tenant: str,
    sources: tuple[SourceFile, ...],
    environment: str,
    action: Action = "deploy",
    variables: dict[str, str] | None = None,
) -> str:
    """Ask for a run as the CLI and the gateway do: a run.requested the compiler consumes."""
    run = RunRequested(
        tenant=tenant,
        run_id=new_run_id(),
        environment=environment,
        action=action,
        sources=sources,
        variables=variables or {},
    )
    await bus.publish(subjects.runs_requested(tenant), run, msg_id=f"{run.run_id}/request")
    return run.run_id


async def submit(bus: Bus, tenant: str, wf: Workflow, run_id: str | None = None) -> str:
    run_id = run_id or new_run_id()
    await bus.publish_event(RunCompiled(tenant=tenant, run_id=run_id, workflow=wf))
    return run_id


_CLI = (
    "import argparse, sys, importlib\n"
    "module = importlib.import_module(f'trellis_cli.{sys.argv[1]}_cmd')\n"
    "parser = argparse.ArgumentParser(); module.register(parser.add_subparsers())\n"
    "args = parser.parse_args(sys.argv[1:]); sys.exit(args.func(args))\n"
)


class Process:
    """A `trellis <command>` in its own process, so a test can SIGKILL it."""

    def __init__(self, settings: Settings, *argv: str, log: Path) -> None:
        env = {
            **os.environ,
            "TRELLIS_NATS_URL": settings.nats_url,
            "TRELLIS_STREAM_STORAGE": settings.stream_storage,
            "TRELLIS_HEARTBEAT_SECONDS": str(settings.heartbeat_seconds),
            "TRELLIS_HEARTBEAT_TIMEOUT_SECONDS": str(settings.heartbeat_timeout_seconds),
            "TRELLIS_AGENT_HEARTBEAT_SECONDS": str(settings.heartbeat_seconds),
            "TRELLIS_LOG_LEVEL": "info",
            "TRELLIS_LOG_FORMAT": "json",
        }
        self.log = log
        self._out = log.open("ab")
        # cwd: the default data dir (.trellis) lands in the test's tmp dir
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _CLI, *argv], env=env, stdout=self._out, stderr=self._out, cwd=log.parent
        )

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self._out.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._out.close()
