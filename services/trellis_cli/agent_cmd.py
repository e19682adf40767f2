"""`trellis agent`: run an agent for one tenant's pool until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from trellis_core.errors import TrellisError


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser(
        "agent",
        help="run activities for one tenant's agent pool",
        description="Claim activities of TENANT's pool POOL from NATS and run them. Settings come "
        "from TRELLIS_* (TRELLIS_NATS_URL, ...) and TRELLIS_AGENT_* variables; flags override them.",
    )
    parser.add_argument("--tenant", required=True, help="the tenant whose work this agent runs")
    parser.add_argument("--pool", required=True, help="the agent pool (a template's `agents` name)")
    parser.add_argument("--concurrency", type=int, default=None, help="activities at once (default 4)")
    parser.add_argument(
        "--executor", choices=("process", "kubernetes", "docker"), default=None, help="container backend"
    )
    parser.add_argument("--agent-id", default=None, help="a stable id (default: a fresh one per start)")
    parser.add_argument("--data-dir", type=Path, default=None, help="where workspaces live")
    parser.set_defaults(func=run_agent)


def run_agent(args: argparse.Namespace) -> int:
    from trellis_agent.agent import serve
    from trellis_agent.config import AgentConfig
    from trellis_cli.service_runner import run_service, settings_or_exit
    from trellis_core.health import Health

    settings = settings_or_exit("agent", tenant=args.tenant)
    if isinstance(settings, int):
        return settings
    try:
        config = AgentConfig.from_env(
            tenant=args.tenant,
            pool=args.pool,
            concurrency=args.concurrency,
            executor=args.executor,
            agent_id=args.agent_id,
            data_dir=str(args.data_dir) if args.data_dir else None,
        )
    except TrellisError as exc:
        print(f"trellis agent: {exc}", file=sys.stderr)
        return 2
    health = Health("agent", service_signals_ready=True)  # ready once subscribed to its work
    return run_service(
        "agent",
        settings,
        lambda bus, stop: serve(bus, settings, stop, config, ready=health.serving),
        connection_name=f"agent-{config.agent_id}",
        agent_tenant=config.tenant,
        health=health,
    )
