"""`trellis scheduler` replicas as processes, for the cluster tests and bench-peers: each one's log
(JSON, info) says when it stands by and leads and its replica id, and the leases bucket which
partitions each one leads."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import msgspec
import nats.js.errors

from trellis_core import subjects
from trellis_core.bus import Bus
from trellis_core.settings import Settings
from trellis_scheduler.lease import LeaseRecord
from trellis_scheduler.partitions import Partition


class SchedulerProcess:
    """One `trellis scheduler --tenant T`; `holder` is its replica id, as its leases name it."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.standby, self.leading = asyncio.Event(), asyncio.Event()
        self.holder = ""
        self.lines: list[str] = []
        self.reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, settings: Settings, tenant: str, **env: str) -> SchedulerProcess:
        """Start one on `settings`' NATS; `env` adds TRELLIS_* variables."""
        environ = {
            **os.environ,
            "TRELLIS_NATS_URL": settings.nats_url,
            "TRELLIS_STREAM_STORAGE": settings.stream_storage,
            "TRELLIS_LOG_FORMAT": "json",
            "TRELLIS_LOG_LEVEL": "info",  # a line per run and per term at info, none per activity
            **env,
        }
        trellis = str(Path(sys.executable).with_name("trellis"))
        proc = await asyncio.create_subprocess_exec(
            trellis, "scheduler", "--tenant", tenant, env=environ, stderr=asyncio.subprocess.PIPE
        )
        return cls(proc)

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        async for raw in self.proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            self.lines.append(line)
            if '"scheduler_standby"' in line and not self.holder:
                self.holder = msgspec.json.decode(line)["replica"]
                self.standby.set()
            elif '"scheduler_leading"' in line:
                self.leading.set()


async def lease_holders(bus: Bus, tenant: str, partitions: int) -> list[str]:
    """Each partition's lease holder ("" where none holds it)."""
    try:
        kv = await bus.js.key_value(subjects.KV_LEASES)
    except nats.js.errors.BucketNotFoundError:  # no replica has started yet
        return [""] * partitions
    out = []
    for index in range(partitions):
        try:
            entry = await kv.get(Partition(index, partitions, tenant).name)
        except nats.js.errors.KeyNotFoundError:
            out.append("")
            continue
        out.append(msgspec.json.decode(entry.value, type=LeaseRecord).holder if entry.value else "")
    return out
