"""`trellis store`: run the state store service until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser(
        "store",
        help="project run events and logs into PostgreSQL and answer queries (the state store service)",
        description="Apply the schema migrations, project every run event and log chunk from JetStream into "
        "PostgreSQL, and answer the gateway's and the compiler's queries on trellis.store.api.>. "
        "Needs TRELLIS_NATS_URL, TRELLIS_DATABASE_URL and TRELLIS_SEAL_KEY.",
    )
    parser.set_defaults(func=run_store)


def run_store(args: argparse.Namespace) -> int:
    from trellis_cli.service_runner import run_service, settings_or_exit
    from trellis_core.health import Health, postgres_check
    from trellis_store.service import serve

    settings = settings_or_exit("store")
    if isinstance(settings, int):
        return settings
    # Ready once the projection runs and every op is answered, while its PostgreSQL answers.
    health = Health("store", service_signals_ready=True)
    health.add_check("postgres", postgres_check(settings.database_url))
    return run_service("store", settings, lambda bus, stop: serve(bus, settings, stop, health.serving), health=health)
