"""`trellis cancel RUN`: ask the scheduler to cancel a run, from any terminal: through the gateway
when TRELLIS_GATEWAY_URL is set, else on the bus."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import msgspec

from trellis_cli.bus_cmd import connected, current_user, run_on_bus, stored_count
from trellis_cli.gateway_client import GatewayClient, gateway_configured, quoted
from trellis_cli.gateway_common import run_on_gateway
from trellis_core import subjects
from trellis_core.events import RunCancelRequested
from trellis_core.settings import Settings


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser(
        "cancel",
        help="cancel a run that is going on",
        description="Ask the scheduler to cancel run RUN: running activities are stopped, hooks that "
        "always run still run, and `trellis run` following it ends with the run cancelled. Through the "
        "gateway when TRELLIS_GATEWAY_URL is set (with TRELLIS_TOKEN), else on TRELLIS_NATS_URL: the bus "
        "the run goes on.",
    )
    parser.add_argument("run_id", metavar="RUN", help="the run id `trellis run` printed")
    parser.add_argument("--reason", default="cancelled from the command line", help="why, shown with the run")
    parser.add_argument("--tenant", default=None, help="the tenant (default: TRELLIS_TENANT)")
    parser.set_defaults(func=cancel_command)


async def _cancel(settings: Settings, run_id: str, reason: str) -> int:
    tenant, where = settings.tenant, f"tenant {settings.tenant} on {settings.nats_url}"
    async with connected(settings, "cli-cancel") as bus:
        if not await stored_count(bus, subjects.STREAM_EVENTS, subjects.run_events(tenant, run_id)):
            print(f"trellis cancel: no run {run_id} in {where} (is --tenant right?)", file=sys.stderr)
            return 1
        if await stored_count(bus, subjects.STREAM_EVENTS, subjects.run_event(tenant, run_id, "run.completed")):
            print(f"trellis cancel: run {run_id} has already finished", file=sys.stderr)
            return 1
        request = RunCancelRequested(tenant=tenant, run_id=run_id, reason=reason, requested_by=current_user())
        await bus.publish_event(request)
    print(f"asked to cancel run {run_id}")
    return 0


class CancelBody(msgspec.Struct, frozen=True, kw_only=True):
    """`POST /v1/runs/{id}/cancel`."""

    reason: str


async def _gateway_cancel(gw: GatewayClient, run_id: str, reason: str) -> int:
    await gw.send("POST", f"/v1/runs/{quoted(run_id)}/cancel", body=CancelBody(reason=reason))
    print(f"asked to cancel run {run_id}")
    return 0


def cancel_command(args: argparse.Namespace) -> int:
    if gateway_configured():
        work = lambda gw, _s: _gateway_cancel(gw, args.run_id, args.reason)  # noqa: E731
        return run_on_gateway("cancel", work, tenant=args.tenant)
    return run_on_bus("cancel", args.tenant, args.run_id, lambda s: _cancel(s, args.run_id, args.reason))
