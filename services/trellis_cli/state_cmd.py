"""`trellis env state NAME [RESOURCE] [--unlock LOCK_ID]`: an environment's managed OpenTofu/Terraform
state (`backendType: system`, docs/state-backend.md): each resource's saves and lock, and an admin's
release of a lock a crashed run left behind."""

from __future__ import annotations

import argparse
from typing import Any

from trellis_cli.gateway_client import GatewayClient, quoted
from trellis_cli.gateway_common import run_on_gateway, table, when
from trellis_core.settings import Settings
from trellis_store.api import TfLockHolder, TfStateResource, TfStateSummary, TfStateWritten


def register_env(sub: argparse._SubParsersAction[Any]) -> None:
    state = sub.add_parser(
        "state",
        help="managed OpenTofu/Terraform state: each resource's saves and lock; --unlock releases a lock",
        description="An environment's managed state (backendType: system): history and locks. "
        "--unlock LOCK_ID (admin) releases the lock a crashed or cancelled run left behind.",
    )
    state.add_argument("name", metavar="NAME")
    state.add_argument("resource", metavar="RESOURCE", nargs="?", default="")
    state.add_argument("--unlock", metavar="LOCK_ID", default="", help="release this lock (needs RESOURCE; admin)")
    state.set_defaults(func=_state)


def lock_lines(lock: TfLockHolder, indent: str) -> list[str]:
    who = lock.info.get("Who", "") if isinstance(lock.info.get("Who"), str) else ""
    lines = [
        f"{indent}locked: {lock.lock_id} by run {lock.run_id or '-'} {who and f'({who}) '}since {when(lock.locked_at)}"
    ]
    if lock.ended:
        lines.append(
            f"{indent}  the run holding it ended {lock.run_status} at {when(lock.run_finished_at)}; {lock.hint}"
        )
    return lines


def describe(summary: TfStateSummary) -> str:
    if not summary.resources:
        return f"environment {summary.environment}: no managed state (no resource uses backendType: system yet)"
    lines = [f"environment {summary.environment}: managed state"]
    for resource in summary.resources:
        lines += resource_lines(resource)
    return "\n".join(lines)


def resource_lines(resource: TfStateResource) -> list[str]:
    lines = [f"  {resource.resource}:"]
    if resource.lock is not None:
        lines += lock_lines(resource.lock, "    ")
    rows = [
        (str(v.serial), "deleted" if v.deleted else f"{v.size} B", v.run_id or v.actor or "-", when(v.saved_at))
        for v in resource.history
    ]
    if rows:
        lines += ["    " + line for line in table(("SERIAL", "SIZE", "RUN", "SAVED"), rows).splitlines()]
    return lines


def _state(args: argparse.Namespace) -> int:
    if args.unlock and not args.resource:
        print("trellis env state: --unlock needs the RESOURCE whose lock it is")
        return 2
    base = f"/v1/environments/{quoted(args.name)}/state"
    path = f"{base}/{quoted(args.resource)}" if args.resource else base

    async def work(gw: GatewayClient, settings: Settings) -> int:
        if args.unlock:
            await gw.call("POST", f"{path}/unlock", TfStateWritten, body={"id": args.unlock})
            print(f"released lock {args.unlock} of {args.name}/{args.resource}")
            return 0
        summary, _ = await gw.call("GET", path, TfStateSummary)
        print(describe(summary))
        return 0

    return run_on_gateway("env state", work)
