"""The embedded stack supervises its services: one that crashes is logged and started again on a
fresh connection, and the others never notice."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
import structlog

from trellis_cli.devstack import DevStack
from trellis_core.bus import Bus
from trellis_core.settings import Settings


async def test_a_crashed_service_is_restarted_and_the_rest_of_the_stack_keeps_running(
    settings: Settings, unique: str, tmp_path: Path
) -> None:
    starts: list[str] = []
    second_start, steady_stop = asyncio.Event(), asyncio.Event()
    steady_buses: list[Bus] = []

    async def flaky(bus: Bus, _settings: Settings, stop: asyncio.Event) -> None:
        starts.append(bus.nc.connected_url.netloc if bus.nc.connected_url else "?")
        if len(starts) == 1:
            raise RuntimeError("a bug on the first message")
        second_start.set()
        await stop.wait()

    async def steady(bus: Bus, _settings: Settings, stop: asyncio.Event) -> None:
        steady_buses.append(bus)
        await stop.wait()
        steady_stop.set()

    ours = msgspec.structs.replace(settings, tenant=unique, data_dir=tmp_path / "stack")
    with structlog.testing.capture_logs() as logs:
        async with DevStack(ours, with_postgres=False, services={"flaky": flaky, "steady": steady}):
            async with asyncio.timeout(15):
                await second_start.wait()
            crashes = [e for e in logs if e["event"] == "service_crashed"]
            assert [(e["service"], e["log_level"]) for e in crashes] == [("flaky", "error")]
            assert len(starts) == 2
            assert len(steady_buses) == 1
            assert steady_buses[0].nc.is_connected  # untouched by the crash
    assert steady_stop.is_set()
