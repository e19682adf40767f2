"""Builders and recording doubles shared by the agent tests (no bus needed)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from trellis_agent.sink import LogStream
from trellis_core.events import ActivityLogChunk, WorkItem
from trellis_core.ids import new_run_id
from trellis_core.workflow import Activity, ActivityKind, ActivitySpec, ContainerSpec


def work_item(
    spec: ActivitySpec | None = None,
    *,
    kind: ActivityKind = "container",
    tenant: str = "acme",
    activity_id: str = "resource/app/task/build",
    timeout_seconds: float | None = None,
    inputs: dict[str, Any] | None = None,
    sensitive: tuple[str, ...] = (),
    workspace: str = "",
    attempt: int = 1,
    run_id: str | None = None,
) -> WorkItem:
    return WorkItem(
        tenant=tenant,
        run_id=run_id or new_run_id(),
        environment="dev",
        action="deploy",
        attempt=attempt,
        activity=Activity(
            id=activity_id,
            kind=kind,
            spec=spec if spec is not None else ContainerSpec(command=("true",)),
            timeout_seconds=timeout_seconds,
            inputs=inputs or {},
            sensitive=sensitive,
            workspace=workspace,
        ),
    )


def shell(script: str, **env: str) -> ContainerSpec:
    return ContainerSpec(command=("sh", "-c", script), env=env)


def wait_for_file(path: Path, within: float = 30.0) -> str:
    """A shell fragment that waits until the test creates `path`; exits 99 after `within` seconds."""
    polls = int(within / 0.02)
    return f'n=0; until [ -e "{path}" ]; do n=$((n+1)); [ $n -gt {polls} ] && exit 99; sleep 0.02; done'


class RecordingSink:
    """A Sink that keeps every write and lets a test wait for a piece of text."""

    def __init__(self) -> None:
        self.writes: list[tuple[LogStream, str]] = []
        self._changed = asyncio.Condition()

    async def write(self, stream: LogStream, text: str) -> None:
        async with self._changed:
            self.writes.append((stream, text))
            self._changed.notify_all()

    async def system(self, text: str) -> None:
        await self.write("system", text + "\n")

    def text(self, stream: LogStream | None = None) -> str:
        return "".join(t for s, t in self.writes if stream is None or s == stream)

    async def wait_for(self, needle: str, within: float = 10.0) -> None:
        async with asyncio.timeout(within), self._changed:
            await self._changed.wait_for(lambda: needle in self.text())


class ChunkCollector:
    """A `publish` callable for LogSink that keeps the chunks."""

    def __init__(self) -> None:
        self.chunks: list[ActivityLogChunk] = []

    async def __call__(self, chunk: ActivityLogChunk) -> None:
        self.chunks.append(chunk)

    def text(self) -> str:
        return "".join(c.data for c in self.chunks)


def is_running(pid: int) -> bool:
    """True while `pid` exists and is not a zombie (a zombie has already been killed)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def wait_until_gone(pid: int, within: float = 5.0) -> bool:
    """Wait (polling /proc, which offers nothing to wait on) until `pid` is gone."""
    async with asyncio.timeout(within):
        while is_running(pid):  # noqa: ASYNC110 - /proc offers no event
            await asyncio.sleep(0.02)
    return True


def read_pid(path: Path) -> int:
    return int(path.read_text().strip())


def environ_path() -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
