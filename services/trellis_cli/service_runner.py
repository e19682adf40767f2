"""Running one service as a process: settings, logs, signals, the bus, and the exit code."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from trellis_core import subjects
from trellis_core.bus import Bus, stop_on_signals
from trellis_core.errors import TrellisError
from trellis_core.health import Health, serving
from trellis_core.logs import configure
from trellis_core.settings import Settings

Serve = Callable[[Bus, asyncio.Event], Awaitable[None]]


def run_service(
    name: str,
    settings: Settings,
    serve: Serve,
    *,
    connection_name: str | None = None,
    agent_tenant: str | None = None,
    health: Health | None = None,
) -> int:
    """Connect, declare the streams, serve until SIGTERM/SIGINT, drain. 0 when stopped, 1 on error.

    A tenant's agent (`agent_tenant`) connects with its tenant's inbox prefix, the only inboxes its
    permissions allow, and declares no streams: that is the control plane's job.
    With TRELLIS_HEALTH_LISTEN set, /healthz and /readyz answer from before the bus connects until
    the service has drained (trellis_core.health); `health` adds the service's own readiness."""
    configure(settings)
    probes = health if health is not None else Health(name)

    async def main() -> None:
        stop = asyncio.Event()
        stop_on_signals(stop)
        probes.stopping = stop
        async with serving(settings.health_listen, probes):
            prefix = subjects.inbox_prefix(agent_tenant) if agent_tenant is not None else ""
            bus = await Bus.connect(settings, name=connection_name or name, inbox_prefix=prefix)
            probes.nats_connected = lambda: bus.nc.is_connected
            try:
                if agent_tenant is None:
                    await bus.ensure_streams()
                if not probes.service_signals_ready:
                    probes.serving.set()
                await serve(bus, stop)
            finally:
                await bus.close()

    try:
        asyncio.run(main())
    except TrellisError as exc:
        print(f"trellis {name}: {exc}", file=sys.stderr)
        return 1
    return 0


def settings_or_exit(name: str, **overrides: Any) -> Settings | int:
    """Settings from the environment, or exit code 2 with the error naming the variable."""
    try:
        return Settings.from_env(None, **overrides)
    except TrellisError as exc:
        print(f"trellis {name}: {exc}", file=sys.stderr)
        return 2
