"""What the commands that reach the bus of an earlier run (`trellis logs`, `trellis cancel`)
share: their settings, their connection, and how they report a missing or silent bus."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from trellis_core import subjects
from trellis_core.bus import Bus
from trellis_core.errors import ConfigError, TrellisError
from trellis_core.settings import Settings


def bus_settings(tenant: str | None) -> Settings:
    """The settings of a command that talks to the bus of an earlier run: TRELLIS_NATS_URL is required."""
    settings = Settings.from_env(None, **({"tenant": tenant} if tenant else {}))
    if not settings.nats_url:
        raise ConfigError(
            "no bus to reach: set TRELLIS_NATS_URL to the bus the run went on, or TRELLIS_GATEWAY_URL and "
            "TRELLIS_TOKEN to work through the gateway (`trellis dev up` prints them; the embedded stack of "
            "a plain `trellis run` stops with the run)"
        )
    return settings


@contextlib.asynccontextmanager
async def connected(settings: Settings, name: str) -> AsyncIterator[Bus]:
    bus = await Bus.connect(settings, name=name)
    try:
        yield bus
    finally:
        await bus.close()


async def stored_count(bus: Bus, stream: str, subject: str) -> int:
    """How many messages `stream` holds on subjects matching `subject`."""
    info = await bus.js.stream_info(stream, subjects_filter=subject)
    return sum((info.state.subjects or {}).values())


def current_user() -> str:
    """Who asks, for `requested_by`; empty when the system cannot say."""
    with contextlib.suppress(Exception):
        return getpass.getuser()
    return ""


def run_on_bus(
    command: str, tenant: str | None, run_id: str, work: Callable[[Settings], Coroutine[Any, Any, int]]
) -> int:
    """Run `work` against the bus of TRELLIS_NATS_URL: exit 2 when the command line or a setting
    is wrong (the message names it), 1 when the bus cannot be reached or does not answer."""
    try:
        settings = bus_settings(tenant)
        subjects.token(run_id, "run id")
        return asyncio.run(work(settings))
    except ConfigError as exc:
        print(f"trellis {command}: {exc}", file=sys.stderr)
        return 2
    except (TrellisError, TimeoutError) as exc:
        print(f"trellis {command}: {exc or 'the bus did not answer in time'}", file=sys.stderr)
        return 1
