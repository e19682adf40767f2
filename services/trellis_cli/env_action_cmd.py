"""`trellis env action NAME [ACTION]`: run a day-2 action of a deployed environment and follow it,
or list the environment's actions with their last runs and outputs (docs/day2-actions.md)."""

from __future__ import annotations

import argparse
import uuid
from typing import Any

import msgspec

from trellis_cli.env_cmd import RunAccepted, parse_pairs, watch
from trellis_cli.gateway_client import GatewayClient, quoted
from trellis_cli.gateway_common import output_lines, run_on_gateway, table, when
from trellis_cli.run_progress import RunView
from trellis_core.settings import Settings
from trellis_store.api import RunSummary


class ActionBody(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """`POST /v1/environments/{name}/actions/{action}`."""

    variables: dict[str, str] = {}


class ActionView(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    type: str
    description: str = ""
    resource: str = ""
    last_run: RunSummary | None = None
    outputs: dict[str, dict[str, Any]] = {}


class EnvironmentActions(msgspec.Struct, frozen=True, kw_only=True):
    environment: str
    actions: tuple[ActionView, ...]


def register_env(sub: argparse._SubParsersAction[Any]) -> None:
    cmd = sub.add_parser(
        "action",
        help="run a day-2 action of a deployed environment and follow it (no ACTION: list its actions)",
        description="Run one of the templates' actions on the deployed environment without redeploying it: "
        "its outputs are kept on the run, the environment's stay those of its last deploy.",
    )
    cmd.add_argument("name", metavar="NAME")
    cmd.add_argument("action_name", metavar="ACTION", nargs="?", help="the action (RESOURCE.ACTION for a resource's)")
    cmd.add_argument("--var", action="append", default=[], metavar="K=V", help="a variable of this run (repeatable)")
    cmd.add_argument("--no-wait", action="store_true", help="print the run id and return at once")
    cmd.add_argument("--follow", "-f", action="store_true", help="stream every activity's log lines")
    cmd.set_defaults(func=_action)


async def start_action(gw: GatewayClient, name: str, action: str, variables: dict[str, str]) -> str:
    """Start the action; a retried POST (same Idempotency-Key) starts one run."""
    headers = {"Idempotency-Key": str(uuid.uuid4())}
    path = f"/v1/environments/{quoted(name)}/actions/{quoted(action)}"
    accepted, _ = await gw.call("POST", path, RunAccepted, body=ActionBody(variables=variables), headers=headers)
    return accepted.run_id


def describe_actions(found: EnvironmentActions) -> str:
    if not found.actions:
        return f"environment {found.environment}: its templates declare no actions"
    rows = []
    for view in found.actions:
        run = view.last_run
        last = f"{run.run_id} {run.status}" if run is not None else "-"
        rows.append((view.name, view.type, last, when(run.finished_at) if run else "-", view.description or "-"))
    lines = [table(("ACTION", "TYPE", "LAST RUN", "FINISHED", "DESCRIPTION"), rows)]
    for view in found.actions:
        if view.outputs:
            lines += [f"outputs of {view.name}:", *output_lines(view.outputs, "  ")]
    return "\n".join(lines)


def _action(args: argparse.Namespace) -> int:
    async def listing(gw: GatewayClient, settings: Settings) -> int:
        found, _ = await gw.call("GET", f"/v1/environments/{quoted(args.name)}/actions", EnvironmentActions)
        print(describe_actions(found))
        return 0

    async def work(gw: GatewayClient, settings: Settings) -> int:
        run_id = await start_action(gw, args.name, args.action_name, parse_pairs("--var", args.var))
        print(f"run {run_id}: action {args.action_name} of environment {args.name} started", flush=True)
        if args.no_wait:
            return 0
        view = RunView(run_id=run_id, environment=args.name, action="deploy")
        return await watch(gw, view, follow=args.follow)

    if not args.action_name:
        return run_on_gateway("env action", listing)
    return run_on_gateway("env action", work)
