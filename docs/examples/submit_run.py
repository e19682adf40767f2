"""Submit a run on the Trellis bus and follow it to its end: docs/bus-protocol.md in one file.

    python docs/examples/submit_run.py --nats-url nats://127.0.0.1:4222 --environment demo examples/demo

Needs only nats-py. Prints each step of the run, then `run <id> <status>` as its last line;
exits 0 when the run succeeded, 1 when it failed, was cancelled or rejected, or no end came.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import uuid
from pathlib import Path
from typing import Any

import nats

QUIET = {"activity.heartbeat"}  # proof of life, not news


def bundle(paths: list[str]) -> list[dict[str, str]]:
    """Every *.yaml/*.yml file named or found under the paths, as `{"path", "text"}`."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        found = sorted(p for p in path.rglob("*") if p.suffix in (".yaml", ".yml")) if path.is_dir() else [path]
        files.extend(found)
    return [{"path": str(f), "text": f.read_text(encoding="utf-8")} for f in files]


def describe(event: dict[str, Any]) -> str:
    kind = event["type"]
    if "activity_id" in event:
        detail = event.get("reason") or event.get("agent") or ""
        return f"{kind:<20} {event['activity_id']} (attempt {event['attempt']}) {detail}".rstrip()
    return f"{kind:<20} {event.get('reason') or event.get('message') or ''}".rstrip()


async def submit_and_follow(args: argparse.Namespace) -> tuple[str, str]:
    """Publish the request, print the run's events; the run id and its terminal status."""
    nc = await nats.connect(args.nats_url, connect_timeout=5, max_reconnect_attempts=3)
    js = nc.jetstream()
    run_id = str(uuid.uuid4())  # any 1-128 letters, digits, '-' or '_'; `trellis run` uses a UUIDv7
    events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def on_event(msg: Any) -> None:
        await events.put(json.loads(msg.data))

    # Every event of this run. The events are kept in the TRELLIS_EVENTS stream and an ordered
    # consumer starts from the first one, so subscribing before or after publishing both work.
    sub = await js.subscribe(f"trellis.{args.tenant}.run.{run_id}.>", cb=on_event, ordered_consumer=True)
    request = {
        "type": "run.requested",
        "tenant": args.tenant,
        "run_id": run_id,
        "environment": args.environment,
        "action": args.action,
        "sources": bundle(args.paths),
        "variables": dict(pair.split("=", 1) for pair in args.var),
        "requested_by": "submit_run.py",
    }
    await js.publish(
        f"trellis.{args.tenant}.runs.requested",
        json.dumps(request).encode(),
        headers={"Nats-Msg-Id": f"{run_id}/request"},  # a resend within the dedupe window is dropped
    )
    print(f"run {run_id} requested", flush=True)
    try:
        async with asyncio.timeout(args.timeout):
            while True:
                event = await events.get()
                if event["type"] in QUIET:
                    continue
                print(describe(event), flush=True)
                if event["type"] == "run.rejected":  # the templates have errors: no run.completed follows
                    for problem in event["errors"]:
                        print(f"  {problem.get('file', '')}:{problem.get('line', 0)}: {problem['message']}")
                    return run_id, "rejected"
                if event["type"] == "run.completed":
                    for resource, outputs in sorted(event.get("outputs", {}).items()):
                        for name, output in sorted(outputs.items()):
                            value = "***" if output.get("sensitive") else json.dumps(output.get("value"))
                            print(f"  output {resource}.{name} = {value}")
                    return run_id, str(event["status"])
    except TimeoutError:
        print(f"no end of run {run_id} within {args.timeout:g} s: are the services running?", file=sys.stderr)
        return run_id, "unknown"
    finally:
        await sub.unsubscribe()
        await nc.drain()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", help="template files or directories")
    parser.add_argument("--nats-url", default="nats://127.0.0.1:4222")
    parser.add_argument("--tenant", default="default")
    parser.add_argument("--environment", required=True)
    parser.add_argument("--action", choices=("deploy", "destroy"), default="deploy")
    parser.add_argument("--var", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the run's end")
    args = parser.parse_args()
    run_id, status = asyncio.run(submit_and_follow(args))
    print(f"run {run_id} {status}")
    return 0 if status == "succeeded" else 1


if __name__ == "__main__":
    sys.exit(main())
