"""`trellis compiler`: run the template compiler service until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import os
from typing import Any


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
    from trellis_cli.service_runner import run_service, settings_or_exit
    from trellis_compiler.service import serve
    from trellis_core.health import Health

    settings = settings_or_exit("compiler")
    if isinstance(settings, int):
        return settings
    relay = os.environ.get("TRELLIS_EMAIL_RELAY_URL", "")
    health = Health("compiler", service_signals_ready=True)  # ready once its consumer runs
    return run_service(
        "compiler",
        settings,
        lambda bus, stop: serve(bus, stop, ready=health.serving, email_relay_url=relay),
        health=health,
    )
