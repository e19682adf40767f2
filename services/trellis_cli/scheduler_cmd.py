"""`trellis scheduler`: run a scheduler replica (leader or standby) until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from trellis_core.errors import TrellisError


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser(
        "scheduler",
        help="walk workflow runs: dispatch activities to agents, retry, time out, cancel",
        description="Run one scheduler replica. Replicas share a leader lease in NATS KV: one "
        "leads, the others take over within seconds if it dies. Settings come from TRELLIS_* "
        "variables (TRELLIS_NATS_URL, TRELLIS_MAX_PARALLEL_PER_RUN, ...).",
    )
    parser.add_argument("--tenant", default="*", help="schedule only this tenant's runs (default: every tenant)")
    parser.set_defaults(func=run_scheduler)


def run_scheduler(args: argparse.Namespace) -> int:
    from trellis_core.bus import Bus, stop_on_signals
    from trellis_core.logs import configure
    from trellis_core.settings import Settings
    from trellis_scheduler.service import serve

    try:
        settings = Settings.from_env()
    except TrellisError as exc:
        print(f"trellis scheduler: {exc}", file=sys.stderr)
        return 2
    configure(settings)

    async def main() -> None:
        stop = asyncio.Event()
        stop_on_signals(stop)
        bus = await Bus.connect(settings, name="scheduler")
        try:
            await bus.ensure_streams()
            await serve(bus, settings, stop, tenant=args.tenant)
        finally:
            await bus.close()

    try:
        asyncio.run(main())
    except TrellisError as exc:
        print(f"trellis scheduler: {exc}", file=sys.stderr)
        return 1
    return 0
