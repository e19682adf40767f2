"""`trellis dev up`: the whole stack on this machine, until Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the bus and the servers load when the command runs, not when --help does
    from trellis_core.settings import Settings


async def _up(settings: Settings) -> int:
    from trellis_cli.devstack import DevStack
    from trellis_core.bus import stop_on_signals

    stop = asyncio.Event()
    stop_on_signals(stop)
    async with DevStack(settings) as stack:
        s = stack.settings
        print("Trellis is up. Ctrl-C stops everything.")
        print(f"  NATS:        {s.nats_url}")
        print(f"  PostgreSQL:  {s.database_url}")
        print("  Gateway:     not part of this build yet (runs go on the bus: trellis run ...)")
        print(f"  Agent:       tenant {s.tenant}, pool default, process executor")
        print(f"  Data:        {s.data_dir.resolve()}")
        print(f"  Use it:      export TRELLIS_NATS_URL={s.nats_url}", flush=True)
        await stop.wait()
        print("Stopping...", flush=True)
    print("Stopped.")
    return 0


def _run(args: argparse.Namespace) -> int:
    from trellis_core.logs import configure
    from trellis_core.settings import Settings

    settings = Settings.from_env()
    configure(settings)
    return asyncio.run(_up(settings))


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    dev = subparsers.add_parser("dev", help="the embedded stack on this machine")
    sub = dev.add_subparsers(metavar="ACTION")
    up = sub.add_parser("up", help="start NATS, PostgreSQL, every service and a local agent until Ctrl-C")
    up.set_defaults(func=_run)
