"""`trellis gateway`: run the hook-gateway (the REST API) until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser(
        "gateway",
        help="serve the REST API, live streams, approval callbacks and webhooks (the hook-gateway)",
        description="Serve /v1 on TRELLIS_GATEWAY_LISTEN (host:port). Needs TRELLIS_NATS_URL and a running "
        "state store; TRELLIS_ADMIN_TOKEN enables POST /v1/tenants, TRELLIS_CALLBACK_KEY approval callbacks.",
    )
    parser.set_defaults(func=run_gateway)


def run_gateway(args: argparse.Namespace) -> int:
    from trellis_cli.service_runner import run_service, settings_or_exit
    from trellis_gateway.app import serve

    settings = settings_or_exit("gateway")
    if isinstance(settings, int):
        return settings
    return run_service("gateway", settings, lambda bus, stop: serve(bus, settings, stop))
