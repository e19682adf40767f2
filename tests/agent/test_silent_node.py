"""An agent whose NATS node vanishes without closing its connection (a host lost: no FIN, no RST)
notices within seconds and carries on through another connection, its heartbeats stored before
the scheduler's heartbeat timeout: otherwise the scheduler declares the attempt lost and runs it
again elsewhere while the first one still runs. Slow (about 20 s): `make test-slow`."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import pytest
from agent_support import shell, work_item
from test_agent_on_the_bus import dispatch, recording

from running_agent import running_agent
from trellis_core.bus import Bus
from trellis_core.embedded import free_port
from trellis_core.events import ActivityCompleted, ActivityHeartbeat, ActivityStarted
from trellis_core.settings import Settings

pytestmark = pytest.mark.slow


class SilentProxy:
    """A TCP relay to the nats-server. `silence()` makes the connections open now drop everything
    both ways, as a vanished host would; connections made after it are relayed as before."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.port = free_port()
        self._open: list[dict[str, bool]] = []
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> SilentProxy:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._server is not None:
            self._server.close()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        state = {"silent": False}
        self._open.append(state)

        async def pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            while data := await source.read(65536):
                if not state["silent"]:
                    sink.write(data)
                    await sink.drain()

        with contextlib.suppress(OSError):
            await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))

    def silence(self) -> None:
        for state in self._open:
            state["silent"] = True


async def test_an_agent_behind_a_vanished_node_beats_again_before_the_heartbeat_timeout(
    bus: Bus, settings: Settings, unique: str, tmp_path: Path
) -> None:
    host, port = settings.nats_url.removeprefix("nats://").split(":")
    work = work_item(shell("sleep 20"), tenant=unique)
    async with SilentProxy((host, int(port))) as proxy:
        agent_settings = Settings.from_env({}, nats_url=f"nats://127.0.0.1:{proxy.port}", log_level="error")
        agent_bus = await Bus.connect(agent_settings, name="agent-behind-a-node")
        try:
            async with (
                recording(bus, unique) as rec,
                running_agent(agent_bus, tmp_path, tenant=unique, heartbeat_seconds=1.0),
            ):
                await dispatch(bus, work)
                await rec.first(ActivityStarted, work.run_id)
                await rec.wait(lambda: len(rec.of(ActivityHeartbeat, work.run_id)) >= 2)
                before = len(rec.of(ActivityHeartbeat, work.run_id))
                proxy.silence()
                silent_at = time.monotonic()
                await rec.wait(lambda: len(rec.of(ActivityHeartbeat, work.run_id)) > before, within=30)
                silent_for = time.monotonic() - silent_at
                completed = await rec.first(ActivityCompleted, work.run_id, within=30)
        finally:
            await agent_bus.close()
    timeout = Settings.from_env({}).heartbeat_timeout_seconds  # the scheduler's default, not the tests' short one
    assert silent_for < timeout - 3, f"no heartbeat stored for {silent_for:.1f} s (the timeout is {timeout:g} s)"
    assert completed.attempt == 1
