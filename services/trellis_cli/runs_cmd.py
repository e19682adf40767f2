"""`trellis runs list|show`: the run history the gateway keeps (TRELLIS_GATEWAY_URL)."""

from __future__ import annotations

import argparse
from typing import Any

from trellis_cli.gateway_client import GatewayClient, quoted
from trellis_cli.gateway_common import output_lines, run_on_gateway, show, table, when
from trellis_core.settings import Settings
from trellis_store.api import RunDetail, Runs

NEEDS = "Works through the gateway: TRELLIS_GATEWAY_URL and TRELLIS_TOKEN (`trellis dev up` prints them)."


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser("runs", help="list and show runs (gateway)", description=f"Runs. {NEEDS}")
    sub = parser.add_subparsers(dest="runs_command", required=True, metavar="ACTION")
    listing = sub.add_parser("list", help="the latest runs, newest first")
    listing.add_argument("--environment", "-e", default="", metavar="NAME", help="only this environment's runs")
    listing.set_defaults(func=_list)
    show = sub.add_parser("show", help="one run: status and every activity with its attempts, times and reason")
    show.add_argument("run_id", metavar="RUN")
    show.add_argument("--json", action="store_true", help="print the gateway's JSON document")
    show.set_defaults(func=_show)


def _list(args: argparse.Namespace) -> int:
    async def work(gw: GatewayClient, settings: Settings) -> int:
        params = {"environment": args.environment} if args.environment else None
        found, _ = await gw.call("GET", "/v1/runs", Runs, params=params)
        if not found.runs:
            print("no runs" + (f" of environment {args.environment}" if args.environment else ""))
            return 0
        rows = [(r.run_id, r.environment, r.purpose or r.action, r.status, when(r.requested_at), r.requested_by or "-")
                for r in found.runs]
        print(table(("RUN", "ENVIRONMENT", "ACTION", "STATUS", "REQUESTED", "BY"), rows))
        return 0

    return run_on_gateway("runs list", work)


def describe(run: RunDetail) -> str:
    message = f": {run.message}" if run.message else ""
    lines = [
        f"run {run.run_id}: {run.purpose or run.action} of {run.environment}, {run.status}{message}",
        f"  requested: {when(run.requested_at)} by {run.requested_by or '-'}",
        f"  started:   {when(run.started_at)}",
        f"  finished:  {when(run.finished_at)}",
    ]
    lines += [f"  {problem}" for problem in run.errors]
    if run.activities:
        rows = [(a.id, a.status, str(a.attempts), a.agent or "-", when(a.started_at), when(a.finished_at),
                 a.reason or "") for a in run.activities]
        body = table(("ACTIVITY", "STATUS", "ATTEMPTS", "AGENT", "STARTED", "FINISHED", "REASON"), rows)
        lines += ["", *body.splitlines()]
    if run.outputs:
        lines += ["", "outputs:", *output_lines(run.outputs, "  ")]
    return "\n".join(lines)


def _show(args: argparse.Namespace) -> int:
    return show("runs show", f"/v1/runs/{quoted(args.run_id)}", RunDetail, describe, args.json)
