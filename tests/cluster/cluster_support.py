"""What the cluster tests share: the control plane and a process agent in this process, each
service on its own NATS connection (as separate processes would be, so a node's death moves
each of them on its own), and reading runs, events and logs back from the store's database."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import msgspec

from running_agent import running_agent
from trellis_core import subjects
from trellis_core.bus import Bus
from trellis_core.events import BundleFile, RunRequested, SourceFile
from trellis_core.ids import new_run_id
from trellis_core.settings import Settings

SEAL_KEY = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="  # base64 of bytes 0..31: tests only
START_SECONDS = 60.0
ENDED = ("succeeded", "failed", "cancelled", "rejected")


async def _serving(
    stack: AsyncExitStack, what: str, serve: Callable[[asyncio.Event, asyncio.Event], Awaitable[None]]
) -> None:
    """Start `serve(stop, ready)` as a task, wait until ready (its own error if it stopped
    first), and have `stack` stop it and wait for it."""
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(serve(stop, ready), name=what)
    waiting = asyncio.ensure_future(ready.wait())
    await asyncio.wait([waiting, task], timeout=START_SECONDS, return_when=asyncio.FIRST_COMPLETED)
    waiting.cancel()
    if task.done():
        task.result()
    assert ready.is_set(), f"{what} not ready within {START_SECONDS:g} s"

    async def stopped() -> None:
        stop.set()
        async with asyncio.timeout(60):
            await task

    stack.push_async_callback(stopped)


async def connect(stack: AsyncExitStack, settings: Settings, name: str) -> Bus:
    bus = await Bus.connect(settings, name=name)
    stack.push_async_callback(bus.close)
    return bus


@asynccontextmanager
async def control_plane(
    settings: Settings, database_url: str, tenant: str, data_dir: Path, **agent: Any
) -> AsyncIterator[Bus]:
    """The state store (on `database_url`), the compiler, a scheduler for `tenant` and a process
    agent of `tenant`, each on its own connection; yields a connection for the test."""
    from trellis_compiler.service import serve as compiler
    from trellis_scheduler.service import serve as scheduler
    from trellis_store.service import serve as store

    store_settings = msgspec.structs.replace(settings, database_url=database_url, seal_key=SEAL_KEY)
    async with AsyncExitStack() as stack:
        test_bus = await connect(stack, settings, "test")
        await test_bus.ensure_streams()
        store_bus = await connect(stack, store_settings, "store")
        await _serving(stack, "the store", lambda stop, ready: store(store_bus, store_settings, stop, ready))
        compiler_bus = await connect(stack, settings, "compiler")
        await _serving(stack, "the compiler", lambda stop, ready: compiler(compiler_bus, stop, ready=ready))
        scheduler_bus = await connect(stack, settings, "scheduler")
        await _serving(
            stack,
            "the scheduler",
            lambda stop, ready: scheduler(scheduler_bus, settings, stop, tenant=tenant, ready=ready),
        )
        agent_bus = await connect(stack, settings, "agent")
        await stack.enter_async_context(
            running_agent(agent_bus, data_dir, tenant=tenant, executor="process", shutdown_grace_seconds=2.0, **agent)
        )
        yield test_bus


async def request_run(
    bus: Bus, tenant: str, text: str, environment: str, files: tuple[BundleFile, ...] = ()
) -> str:
    """Ask for a deploy of the templates `text` as the CLI and the gateway do."""
    run = RunRequested(
        tenant=tenant,
        run_id=new_run_id(),
        environment=environment,
        action="deploy",
        sources=(SourceFile(path="templates.yaml", text=text),),
        files=files,
    )
    await bus.publish(subjects.runs_requested(tenant), run, msg_id=f"{run.run_id}/request")
    return run.run_id


async def wait_runs_ended(db: asyncpg.Connection, tenant: str, run_ids: list[str], within: float) -> dict[str, str]:
    """Each run's status once the store shows every one of them ended."""
    statuses: dict[str, str] = {}
    try:
        async with asyncio.timeout(within):
            while True:
                rows = await db.fetch(
                    "SELECT run_id, status, message, errors FROM runs WHERE tenant = $1 AND run_id = ANY($2)",
                    tenant,
                    run_ids,
                )
                statuses = {r["run_id"]: r["status"] for r in rows}
                if len(statuses) == len(run_ids) and all(s in ENDED for s in statuses.values()):
                    for r in rows:
                        if r["status"] != "succeeded":
                            statuses[r["run_id"]] += f": {r['message']} {r['errors']}"
                    return statuses
                await asyncio.sleep(0.2)
    except TimeoutError:
        raise AssertionError(f"not every run ended within {within:g} s: {statuses}") from None


def ledger_lines(ledger: Path) -> list[str]:
    """The lines the activities appended to `ledger` (one each time one ran)."""
    return ledger.read_text().splitlines() if ledger.exists() else []


async def ran_at_least(ledger: Path, count: int, within: float = 60.0) -> None:
    try:
        async with asyncio.timeout(within):
            while len(ledger_lines(ledger)) < count:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"{len(ledger_lines(ledger))} activities ran, not {count}, within {within:g} s") from None


def custom_task(name: str, script: str) -> str:
    """A ResourceTemplate `name` with one script task `run` (the script indented for YAML)."""
    body = "\n".join(f"                {line}" for line in script.strip().splitlines())
    return f"""\
apiVersion: trellis.dev/v1
kind: ResourceTemplate
metadata: {{name: {name}}}
spec:
  provider: custom
  providerOptions:
    custom:
      tasks:
        - name: run
          type: script
          options:
            script:
              script: |
{body}
"""


def environment(name: str, resources: list[str], environments: list[str]) -> str:
    """EnvironmentTemplate `name` of `resources` (independent) and an Environment on it for each
    of `environments`."""
    listed = "\n".join(f"    - name: {r}" for r in resources)
    template = f"""\
apiVersion: trellis.dev/v1
kind: EnvironmentTemplate
metadata: {{name: {name}}}
spec:
  version: v1
  agents: [{{name: default}}]
  resources:
{listed}
"""
    envs = "".join(
        f"---\napiVersion: trellis.dev/v1\nkind: Environment\nmetadata: {{name: {e}}}\n"
        f"spec:\n  template: {{name: {name}, version: v1}}\n"
        for e in environments
    )
    return template + envs
