"""`trellis logs RUN [ACTIVITY] [--follow]`: a run's log lines, oldest first, from the gateway when
TRELLIS_GATEWAY_URL is set, else from the bus's log stream."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import AsyncIterator
from typing import Any

import msgspec

from trellis_cli.bus_cmd import connected, run_on_bus, stored_count
from trellis_cli.gateway_client import GatewayClient, gateway_configured, quoted
from trellis_cli.gateway_common import run_on_gateway
from trellis_cli.gateway_run import LiveChunk
from trellis_core import subjects
from trellis_core.bus import Bus
from trellis_core.events import ActivityLogChunk
from trellis_core.settings import Settings

READ_TIMEOUT_SECONDS = 5.0  # for each chunk the stream said it holds
_decode = msgspec.json.Decoder(ActivityLogChunk).decode


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser(
        "logs",
        help="print a run's log lines (every activity's, or one's)",
        description="Print the log lines of run RUN (of ACTIVITY only, if given) as the agents stored "
        "them on the bus, masked, oldest first; each line is prefixed with its activity id when no "
        "ACTIVITY is given. Through the gateway when TRELLIS_GATEWAY_URL is set (with TRELLIS_TOKEN), "
        "else from TRELLIS_NATS_URL: the bus the run went on.",
    )
    parser.add_argument("run_id", metavar="RUN", help="the run id `trellis run` printed")
    parser.add_argument("activity", nargs="?", metavar="ACTIVITY", help="one activity id, e.g. resource/app/task/build")
    parser.add_argument("--tenant", default=None, help="the tenant (default: TRELLIS_TENANT)")
    parser.add_argument("--follow", "-f", action="store_true",
                        help="go on printing lines as they come until the run ends (gateway only)")
    parser.set_defaults(func=logs_command)


async def read_chunks(bus: Bus, subject: str, count: int) -> AsyncIterator[ActivityLogChunk]:
    """The first `count` log chunks stored on `subject`, in stream order."""
    sub = await bus.js.subscribe(subject, ordered_consumer=True)
    try:
        for _ in range(count):
            msg = await sub.next_msg(timeout=READ_TIMEOUT_SECONDS)
            with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
                yield _decode(msg.data)
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


def log_lines(chunks: list[ActivityLogChunk], *, prefixed: bool) -> list[str]:
    """Whole lines, each attempt's text joined across chunks; `id | line` when prefixed (with
    `#N` after the id for attempts after the first)."""
    texts: dict[tuple[str, int], list[str]] = {}
    for chunk in chunks:
        texts.setdefault((chunk.activity_id, chunk.attempt), []).append(chunk.data)
    lines: list[str] = []
    for (activity_id, attempt), parts in texts.items():
        label = activity_id + (f"#{attempt}" if attempt > 1 else "")
        for line in "".join(parts).removesuffix("\n").split("\n"):
            lines.append(f"{label} | {line}" if prefixed else line)
    return lines


async def _print_logs(settings: Settings, run_id: str, activity: str | None) -> int:
    tenant = settings.tenant
    subject = subjects.logs(tenant, run_id, activity) if activity else subjects.run_logs(tenant, run_id)
    async with connected(settings, "cli-logs") as bus:
        count = await stored_count(bus, subjects.STREAM_LOGS, subject)
        if not count:
            known = await stored_count(bus, subjects.STREAM_EVENTS, subjects.run_events(tenant, run_id))
            where = f"tenant {tenant} on {settings.nats_url}"
            if not known:
                print(f"trellis logs: no run {run_id} in {where} (is --tenant right?)", file=sys.stderr)
                return 1
            what = f"activity {activity} of run {run_id}" if activity else f"run {run_id}"
            print(f"trellis logs: {what} has no log lines in {where}", file=sys.stderr)
            return 1 if activity else 0
        chunks = [chunk async for chunk in read_chunks(bus, subject, count)]
    for line in log_lines(chunks, prefixed=activity is None):
        print(line)
    return 0


async def _gateway_logs(gw: GatewayClient, run_id: str, activity: str | None, follow: bool) -> int:
    path = f"/v1/runs/{quoted(run_id)}/logs"
    params = {"activity": activity} if activity else None
    if not follow:
        sys.stdout.write(await gw.text(path, params))
        return 0
    partial: dict[tuple[str, int], str] = {}
    async for sse in gw.events(path, params=params):
        if sse.event == "end":
            break
        with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
            chunk = msgspec.json.decode(sse.data, type=LiveChunk)
            key = (chunk.activity_id, chunk.attempt)
            *lines, partial[key] = (partial.get(key, "") + chunk.data).split("\n")
            for line in lines:
                print(f"{chunk.activity_id} | {line}" if activity is None else line, flush=True)
    for (activity_id, _), rest in partial.items():
        if rest:
            print(f"{activity_id} | {rest}" if activity is None else rest)
    return 0


def logs_command(args: argparse.Namespace) -> int:
    if gateway_configured():
        work = lambda gw, _s: _gateway_logs(gw, args.run_id, args.activity, args.follow)  # noqa: E731
        return run_on_gateway("logs", work, tenant=args.tenant)
    if args.follow:
        print("trellis logs: --follow works through the gateway: set TRELLIS_GATEWAY_URL and TRELLIS_TOKEN",
              file=sys.stderr)
        return 2
    return run_on_bus("logs", args.tenant, args.run_id, lambda s: _print_logs(s, args.run_id, args.activity))
