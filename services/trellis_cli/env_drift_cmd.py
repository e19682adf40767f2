"""`trellis env drift NAME`: start a drift check of a deployed environment, follow it and print
what it found (exit 0 in sync, 3 drifted, 1 when the check failed or could not tell)."""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from typing import Any

import msgspec

from trellis_cli.drift_display import drift_lines
from trellis_cli.env_cmd import RunAccepted, watch
from trellis_cli.gateway_client import GatewayClient, quoted
from trellis_cli.gateway_common import run_on_gateway
from trellis_cli.run_progress import RunView
from trellis_core.settings import Settings
from trellis_store.api import Environment

DRIFTED_EXIT = 3
RECORD_WAIT_SECONDS = 15.0  # the store writes the results once it has projected the run's end


def register_env(sub: argparse._SubParsersAction[Any]) -> None:
    cmd = sub.add_parser("drift", help="check whether the deployed environment drifted (plan-only, changes nothing)")
    cmd.add_argument("name", metavar="NAME")
    cmd.add_argument("--no-wait", action="store_true", help="print the run id and return at once")
    cmd.add_argument("--follow", "-f", action="store_true", help="stream every activity's log lines")
    cmd.set_defaults(func=_drift)


async def start_drift(gw: GatewayClient, name: str) -> str:
    """POST the check; a retried POST (same Idempotency-Key) starts one run."""
    headers = {"Idempotency-Key": str(uuid.uuid4())}
    accepted, _ = await gw.call("POST", f"/v1/environments/{quoted(name)}/drift", RunAccepted, headers=headers)
    return accepted.run_id


async def recorded(gw: GatewayClient, name: str, run_id: str, wait: float = RECORD_WAIT_SECONDS) -> Environment:
    """The environment once it shows this run's drift results (or as it is after `wait` seconds)."""
    deadline = time.monotonic() + wait
    while True:
        env, _ = await gw.call("GET", f"/v1/environments/{quoted(name)}", Environment)
        shown = not isinstance(env.drift, msgspec.UnsetType) and env.drift.run_id == run_id
        if shown or time.monotonic() > deadline:
            return env
        await asyncio.sleep(0.25)


def _drift(args: argparse.Namespace) -> int:
    async def work(gw: GatewayClient, settings: Settings) -> int:
        run_id = await start_drift(gw, args.name)
        print(f"run {run_id}: drift check of environment {args.name} started", flush=True)
        if args.no_wait:
            return 0
        status = await watch(gw, RunView(run_id=run_id, environment=args.name, action="deploy"), follow=args.follow)
        env = await recorded(gw, args.name, run_id)
        if isinstance(env.drift, msgspec.UnsetType) or env.drift.run_id != run_id:
            print(f"the store shows no result of run {run_id} yet: trellis env show {args.name}")
            return 1
        print("\n".join(drift_lines(env.drift, "")))
        if env.drift.status == "drifted":
            return DRIFTED_EXIT
        return status if env.drift.status == "in-sync" else 1

    return run_on_gateway("env drift", work)
