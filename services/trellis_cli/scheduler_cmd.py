"""`trellis scheduler`: run a scheduler replica (leader or standby) until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser(
        "scheduler",
        help="walk workflow runs: dispatch activities to agents, retry, time out, cancel",
        description="Run one scheduler replica. Each partition of the runs (TRELLIS_SCHEDULER_PARTITIONS, "
        "1 by default) has a leader lease in NATS KV: with one, one replica leads and the others take "
        "over within seconds if it dies; with several, the live replicas share them evenly. Settings "
        "come from TRELLIS_* variables (TRELLIS_NATS_URL, TRELLIS_MAX_PARALLEL_PER_RUN, ...).",
    )
    parser.add_argument("--tenant", default="*", help="schedule only this tenant's runs (default: every tenant)")
    parser.set_defaults(func=run_scheduler)


def run_scheduler(args: argparse.Namespace) -> int:
    from trellis_cli.service_runner import run_service, settings_or_exit
    from trellis_scheduler.service import serve

    settings = settings_or_exit("scheduler")
    if isinstance(settings, int):
        return settings
    # Ready once started, leading or standing by (a standby takes over within the lease's TTL).
    return run_service("scheduler", settings, lambda bus, stop: serve(bus, settings, stop, tenant=args.tenant))
