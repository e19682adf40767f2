"""`trellis env schedules NAME` and `trellis env extend NAME DURATION`: an environment's schedules
and its time to live, through the gateway (docs/schedules.md)."""

from __future__ import annotations

import argparse
from typing import Any

import msgspec

from trellis_cli.gateway_client import GatewayClient, quoted
from trellis_cli.gateway_common import run_on_gateway, show, table, when
from trellis_core.errors import ConfigError
from trellis_core.settings import Settings
from trellis_store.api import ScheduleState, ScheduleStates
from trellis_templates.schedules import DURATION_HINT, parse_duration


class ExtendBody(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """`POST /v1/environments/{name}/extend`."""

    duration: str
    schedule: str | None = None


def register_env(sub: argparse._SubParsersAction[Any]) -> None:
    schedules = sub.add_parser("schedules", help="an environment's schedules: next firings, expiry, opt-outs")
    schedules.add_argument("name", metavar="NAME")
    schedules.add_argument("--json", action="store_true", help="print the gateway's JSON document")
    schedules.set_defaults(func=_schedules)
    extend = sub.add_parser(
        "extend", help="postpone the environment's time to live (or --schedule S) within its optOutOptions"
    )
    extend.add_argument("name", metavar="NAME")
    extend.add_argument("duration", metavar="DURATION", help="how much longer: 2h, 30m, 1d")
    extend.add_argument("--schedule", metavar="S", help="a cron schedule to skip for DURATION instead")
    extend.set_defaults(func=_extend)


def _moment(state: ScheduleState) -> str:
    if state.kind == "ttl":
        return f"expires {when(state.expires_at)}" if state.expires_at else "starts at the first deploy"
    return f"next {when(state.next_due_at)}"


def describe(states: ScheduleStates) -> str:
    if not states.schedules and not states.problems:
        waiting = "" if states.synced else " (the schedule loop has not read its latest revision yet)"
        return f"environment {states.environment} has no schedules{waiting}"
    rows = []
    for s in states.schedules:
        cadence = f"{s.cron} {s.timezone}" if s.kind == "cron" else f"time to live {s.time_to_live}"
        limits = "-"
        if s.allow_opt_out:
            cap = f"/{s.max_allowed_times}" if s.max_allowed_times else ""
            each = f", each <= {s.max_allowed_duration}" if s.max_allowed_duration else ""
            limits = f"{s.optouts}{cap} used{each}"
        rows.append((s.name, s.type, cadence, _moment(s), s.last_run_id or "-", limits))
    lines = [table(("SCHEDULE", "TYPE", "CADENCE", "WHEN", "LAST RUN", "OPT-OUTS"), rows)] if rows else []
    lines += [f"problem: {p}" for p in states.problems]
    return "\n".join(lines)


def _schedules(args: argparse.Namespace) -> int:
    path = f"/v1/environments/{quoted(args.name)}/schedules"
    return show("env schedules", path, ScheduleStates, describe, args.json)


def _extend(args: argparse.Namespace) -> int:
    async def work(gw: GatewayClient, settings: Settings) -> int:
        if parse_duration(args.duration) is None:
            raise ConfigError(f"DURATION {args.duration!r} is not a duration ({DURATION_HINT})")
        body = ExtendBody(duration=args.duration, schedule=args.schedule)
        state, _ = await gw.call("POST", f"/v1/environments/{quoted(args.name)}/extend", ScheduleState, body=body)
        print(f"environment {args.name}: schedule {state.name} {_moment(state)} (extended by {args.duration})")
        return 0

    return run_on_gateway("env extend", work)
