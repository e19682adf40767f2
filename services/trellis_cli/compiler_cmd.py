"""`trellis compiler`: run the template compiler service until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import Any

from trellis_core.errors import TrellisError


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser(
        "compiler",
        help="compile run requests into workflows (the compiler service)",
        description="Consume run requests of every tenant from NATS, compile their template bundles and "
        "publish run.compiled or run.rejected. Settings come from TRELLIS_* variables "
        "(TRELLIS_NATS_URL, ...); TRELLIS_EMAIL_RELAY_URL is where email notifications are posted.",
    )
    parser.set_defaults(func=run_compiler)


def run_compiler(args: argparse.Namespace) -> int:
    from trellis_compiler.service import serve
    from trellis_core.bus import Bus, stop_on_signals
    from trellis_core.logs import configure
    from trellis_core.settings import Settings

    try:
        settings = Settings.from_env()
    except TrellisError as exc:
        print(f"trellis compiler: {exc}", file=sys.stderr)
        return 2
    configure(settings)
    relay = os.environ.get("TRELLIS_EMAIL_RELAY_URL", "")

    async def main() -> None:
        stop = asyncio.Event()
        stop_on_signals(stop)
        bus = await Bus.connect(settings, name="compiler")
        try:
            await bus.ensure_streams()
            await serve(bus, stop, email_relay_url=relay)
        finally:
            await bus.close()

    try:
        asyncio.run(main())
    except TrellisError as exc:
        print(f"trellis compiler: {exc}", file=sys.stderr)
        return 1
    return 0
