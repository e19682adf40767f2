"""`trellis approve RUN ACTIVITY [--reject]`: decide an approval hook through the gateway, as one
of its approvers (the token's user must be among the hook's `internal.emails`, if it names any)."""

from __future__ import annotations

import argparse
from typing import Any, Literal

import msgspec

from trellis_cli.gateway_client import GatewayClient, quoted
from trellis_cli.gateway_common import run_on_gateway
from trellis_core.settings import Settings


class Decision(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """`POST /v1/runs/{id}/approvals/{activity}`."""

    decision: Literal["approve", "reject"]
    comment: str = ""


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser(
        "approve",
        help="approve (or --reject) an approval activity of a run (gateway)",
        description="Decide the approval activity ACTIVITY (its id as compiled, e.g. environment/on-init/gate) "
        "of run RUN. Works through the gateway: TRELLIS_GATEWAY_URL and TRELLIS_TOKEN.",
    )
    parser.add_argument("run_id", metavar="RUN")
    parser.add_argument("activity", metavar="ACTIVITY")
    parser.add_argument("--reject", action="store_true", help="reject instead of approving")
    parser.add_argument("--comment", default="", metavar="TEXT", help="why, kept with the decision")
    parser.set_defaults(func=_approve)


def approval_path(run_id: str, activity: str) -> str:
    """The activity id stays one tail of slash-separated, percent-encoded segments."""
    return f"/v1/runs/{quoted(run_id)}/approvals/" + "/".join(quoted(part) for part in activity.split("/"))


def _approve(args: argparse.Namespace) -> int:
    decision = Decision(decision="reject" if args.reject else "approve", comment=args.comment)

    async def work(gw: GatewayClient, settings: Settings) -> int:
        await gw.send("POST", approval_path(args.run_id, args.activity), body=decision)
        done = "rejected" if args.reject else "approved"
        print(f"{done} {args.activity} of run {args.run_id}")
        return 0

    return run_on_gateway("approve", work)
