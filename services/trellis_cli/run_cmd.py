"""`trellis run PATH... --environment NAME`: submit a run, follow its DAG live, print its outputs.

With TRELLIS_GATEWAY_URL set the bundle is published through that gateway and the run started and
followed there (run_gateway.py); else with TRELLIS_NATS_URL set the run goes to that bus (services
already running there); with neither, the embedded stack (NATS, PostgreSQL, every service, a local
agent) starts in this process for the run and stops after it. Exit 0 when the run succeeded.
Failures are shown with the last lines of their logs; `--follow` streams every log line.
Ctrl-C once asks to cancel the run (hooks that always run still run); twice stops waiting.
A bus gone for BUS_LOST_SECONDS ends the wait with an error. The `--var` values the templates
declare sensitive are sealed by the state store before the request is published (run_sealing.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import msgspec
from rich.console import Console

from trellis_cli.bus_cmd import current_user
from trellis_cli.run_progress import REFRESH_SECONDS, RunView, Screen, as_json, print_summary
from trellis_cli.run_sealing import sealed_request
from trellis_cli.sources import read_files, read_sources
from trellis_core import subjects
from trellis_core.bus import Bus, stored_workflow
from trellis_core.errors import ConfigError, TrellisError
from trellis_core.events import (
    ActivityLogChunk,
    RunCancelRequested,
    RunCompiled,
    RunEvent,
    RunRequested,
    decode_run_event,
)
from trellis_core.ids import new_run_id
from trellis_core.logs import configure, get_logger
from trellis_core.settings import Settings, data_dir_help

log = get_logger("cli.run")
_decode_log = msgspec.json.Decoder(ActivityLogChunk).decode
BUS_LOST_SECONDS = 3.0  # disconnected this long: say so and stop waiting
LOG_DRAIN_SECONDS = 3.0
LOST_SHUTDOWN_SECONDS = 3.0  # how long services may take to stop once the bus is gone


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser(
        "run",
        help="deploy or destroy an environment from templates, following the run live",
        description="Compile the templates at PATH (files or directories) for ENVIRONMENT, run the "
        "activity DAG on the agents and show its progress. With TRELLIS_GATEWAY_URL (and TRELLIS_TOKEN) "
        "the templates are published there and the run goes through the gateway; else without "
        "TRELLIS_NATS_URL the embedded stack starts for the run (or a running `trellis dev up`'s is "
        "used). Exit code 0 when the run "
        f"succeeded, 1 otherwise. {data_dir_help()}",
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="template files or directories")
    parser.add_argument("--environment", "-e", required=True, help="the Environment document's name")
    parser.add_argument(
        "--var", action="append", default=[], metavar="K=V", help="an environment variable value (repeatable)"
    )
    parser.add_argument("--action", choices=("deploy", "destroy"), default="deploy")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of tables")
    parser.add_argument("--tenant", default=None, help="the tenant (default: TRELLIS_TENANT)")
    parser.add_argument(
        "--follow",
        "-f",
        "--verbose",
        "-v",
        action="store_true",
        dest="follow",
        help="stream every activity's log lines as they come, prefixed with the activity id",
    )
    parser.set_defaults(func=run_command)


def parse_vars(pairs: Sequence[str]) -> dict[str, str]:
    values: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--var {pair!r}: expected NAME=VALUE")
        values[key] = value
    return values


def run_command(args: argparse.Namespace) -> int:
    try:
        overrides = {"tenant": args.tenant} if args.tenant else {}
        settings = Settings.from_env(None, **overrides)
        request = RunRequested(
            tenant=settings.tenant,
            run_id=new_run_id(),
            environment=args.environment,
            action=args.action,
            sources=tuple(read_sources(args.paths)),
            files=read_files(args.paths, settings),
            variables=parse_vars(args.var),
            requested_by=current_user(),
        )
        subjects.runs_requested(settings.tenant)
    except TrellisError as exc:
        print(f"trellis run: {exc}", file=sys.stderr)
        return 2
    if settings.gateway_url:
        from trellis_cli.run_gateway import run_through_gateway

        return run_through_gateway(args, request.variables)
    quiet = settings if "TRELLIS_LOG_LEVEL" in os.environ else msgspec.structs.replace(settings, log_level="error")
    configure(quiet)
    console = Console(stderr=args.json)
    try:
        with _stdout_to_stderr(args.json):
            view = asyncio.run(_run(settings, request, console, follow=args.follow, as_document=args.json))
    except TrellisError as exc:
        print(f"trellis run: {exc}", file=sys.stderr)
        return 1
    if args.json:
        sys.stdout.write(as_json(view).decode() + "\n")
    else:
        print_summary(console, view)
        if settings.nats_url and view.activities and view.status != "succeeded":
            console.print(
                f"[dim]every log line of the run: trellis logs {view.run_id}", highlight=False, soft_wrap=True
            )
    return 0 if view.status == "succeeded" else 1


@contextlib.contextmanager
def _stdout_to_stderr(enabled: bool) -> Iterator[None]:
    """With --json, stdout carries the document only: whatever else writes to it while the run
    goes on (loggers bound before `configure`) goes to stderr instead."""
    if not enabled:
        yield
        return
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


@contextlib.asynccontextmanager
async def _bus_for(settings: Settings) -> AsyncIterator[Bus]:
    """The configured bus, or the embedded stack started for this run. Its data stays in the
    per-user data directory (or TRELLIS_DATA_DIR), so a later destroy sees what was deployed."""
    if settings.nats_url:
        bus = await Bus.connect(settings, name="cli-run")
        try:
            await bus.ensure_streams()
            yield bus
        finally:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(None if bus.nc.is_connected else LOST_SHUTDOWN_SECONDS):
                    await bus.close()
        return
    from trellis_cli.devstack import DevStack, default_services

    # The compiler asks the store for the environment's last deploy: PostgreSQL always starts.
    stack = DevStack(settings, with_postgres=True, services=default_services(settings))
    await stack.__aenter__()
    try:
        assert stack.bus is not None
        yield stack.bus
    finally:
        # With its bus gone the services cannot stop cleanly: give them a moment, not the minute
        # they would spend retrying (the nats-server is gone; a database is stopped at exit anyway).
        lost = stack.bus is None or not stack.bus.nc.is_connected
        try:
            async with asyncio.timeout(LOST_SHUTDOWN_SECONDS if lost else None):
                await stack.__aexit__(None, None, None)
        except TimeoutError:
            log.warning("embedded_stack_abandoned", reason="the bus is gone")


async def _run(
    settings: Settings, request: RunRequested, console: Console, *, follow: bool, as_document: bool
) -> RunView:
    view = RunView(run_id=request.run_id, environment=request.environment, action=request.action)
    if not as_document:
        console.print(f"[dim]starting {'on ' + settings.nats_url if settings.nats_url else 'the embedded stack'}…")
    asyncio.get_running_loop().set_exception_handler(_log_loop_error)
    with _Interrupts() as interrupts:
        async with _bus_for(settings) as bus:
            if interrupts.count:
                view.status, view.message = "cancelled", "interrupted before the run was submitted"
                return view
            request = await sealed_request(bus, request)  # no sensitive value leaves in clear
            screen = Screen(console, view, follow=follow, as_document=as_document)
            payload = _fitting(request, bus.nc.max_payload)
            async with _subscribed(bus, request, screen) as (events, logs):
                await bus.publish(subjects.runs_requested(request.tenant), payload, msg_id=f"{request.run_id}/request")
                with screen:
                    await _follow(bus, request, view, events, screen, interrupts)
                if view.finished:
                    await _caught_up(logs, LOG_DRAIN_SECONDS)
    return view


def _fitting(request: RunRequested, max_payload: int) -> bytes:
    """The request's bytes, or a TrellisError naming the sizes when the bus would refuse them."""
    payload = msgspec.json.encode(request)
    if len(payload) <= max_payload:
        return payload
    sizes = [(len(f.text.encode()), f.path) for f in request.sources]
    sizes += [(len(f.data), f.path) for f in request.files]
    biggest = ", ".join(f"{path} ({size:,} bytes)" for size, path in sorted(sizes, reverse=True)[:3])
    raise ConfigError(
        f"the run request is {len(payload):,} bytes and the bus takes at most {max_payload:,} "
        f"(its max_payload): the templates and the files beside them travel in one message. "
        f"Largest: {biggest}"
    )


@contextlib.asynccontextmanager
async def _subscribed(
    bus: Bus, request: RunRequested, screen: Screen
) -> AsyncIterator[tuple[asyncio.Queue[RunEvent], Any]]:
    """The run's events, queued for `_follow`, and its log chunks, handed to the screen as they come."""
    events: asyncio.Queue[RunEvent] = asyncio.Queue()

    async def on_event(msg: Any) -> None:
        with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
            events.put_nowait(decode_run_event(msg.data))

    async def on_log(msg: Any) -> None:
        with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
            screen.log(_decode_log(msg.data))

    tenant, run_id = request.tenant, request.run_id
    logs = await bus.js.subscribe(subjects.run_logs(tenant, run_id), cb=on_log, ordered_consumer=True)
    subs = [logs]
    try:
        subs.append(await bus.js.subscribe(subjects.run_events(tenant, run_id), cb=on_event, ordered_consumer=True))
        yield events, logs
    finally:
        for sub in subs:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(sub.unsubscribe(), 1.0)


async def _with_stored_workflow(bus: Bus, event: RunCompiled) -> RunCompiled:
    """A large run's workflow is in the workflow store, referenced by digest: fetch it so the
    view knows the activities (without it the run is still followed, as counts only)."""
    workflow = await stored_workflow(bus.js, event.workflow_ref)
    if isinstance(workflow, str):
        log.warning("workflow_not_fetched", run=event.run_id, reason=workflow)
        return event
    return msgspec.structs.replace(event, workflow=workflow)


async def _follow(
    bus: Bus,
    request: RunRequested,
    view: RunView,
    events: asyncio.Queue[RunEvent],
    screen: Screen,
    interrupts: _Interrupts,
) -> None:
    """Fold the run's events into the view until it ends; the screen redraws at most every
    REFRESH_SECONDS from the view's counts, so a large run costs O(1) an event here."""
    loop = asyncio.get_running_loop()
    answered = False
    patience = bus.settings.run_answer_timeout_seconds
    deadline = loop.time() + patience
    lost_since: float | None = None
    while not view.finished:
        if interrupts.count == 1 and not interrupts.cancel_sent:
            interrupts.cancel_sent = True
            await _request_cancel(bus, request, screen)
        if interrupts.count >= 2:
            view.status = view.status if view.finished else "cancelled"
            view.message = view.message or "stopped waiting (Ctrl-C twice)"
            return
        try:
            event = await asyncio.wait_for(events.get(), timeout=REFRESH_SECONDS)
        except TimeoutError:
            now = loop.time()
            if not answered and now > deadline:
                raise TrellisError(
                    f"no answer to run {request.run_id} within {patience:g} s: "
                    f"are `trellis compiler` and `trellis scheduler` running against {bus.settings.nats_url}?"
                ) from None
            lost_since = None if bus.nc.is_connected else (lost_since or now)
            if lost_since is not None and now - lost_since > BUS_LOST_SECONDS:
                raise TrellisError(
                    f"lost the bus at {bus.settings.nats_url} for {BUS_LOST_SECONDS:g} s (is nats-server still "
                    f"running?): run {request.run_id} was {view.status}; `trellis logs {request.run_id}` "
                    "and `trellis cancel` reach it once the bus is back"
                ) from None
            screen.refresh()
            continue
        answered = True
        while True:  # everything already queued, then one redraw
            if isinstance(event, RunCompiled) and event.workflow_ref:
                event = await _with_stored_workflow(bus, event)
            screen.apply(event)
            if view.finished or events.empty():
                break
            event = events.get_nowait()
        screen.refresh()


async def _request_cancel(bus: Bus, request: RunRequested, screen: Screen) -> None:
    cancel = RunCancelRequested(
        tenant=request.tenant, run_id=request.run_id, reason="interrupted", requested_by=current_user()
    )
    try:
        await asyncio.wait_for(bus.publish_event(cancel), bus.settings.connect_timeout_seconds)
    except Exception as exc:
        screen.note(f"[red]could not ask to cancel the run ({type(exc).__name__}); Ctrl-C again to stop waiting")
        return
    screen.note("[yellow]cancelling the run (Ctrl-C again to stop waiting)…")


async def _caught_up(sub: Any, within: float) -> None:
    """Wait (bounded) until the subscription has handled every message its stream holds: the
    agents store an activity's log before its end, so the tails are then complete."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    with contextlib.suppress(Exception):
        while loop.time() < deadline:
            info = await asyncio.wait_for(sub.consumer_info(), max(0.1, deadline - loop.time()))
            if not info.num_pending and not sub.pending_msgs:
                return
            await asyncio.sleep(0.02)


def _log_loop_error(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """A service task of the embedded stack that died while stopping (its bus gone, Ctrl-C) is
    a log event, not a traceback on the user's terminal."""
    log.warning("background_task_failed", message=context.get("message", ""), error=repr(context.get("exception")))


class _Interrupts:
    """Counts SIGINTs instead of raising KeyboardInterrupt while the run is followed."""

    def __init__(self) -> None:
        self.count = 0
        self.cancel_sent = False

    def __enter__(self) -> _Interrupts:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            asyncio.get_running_loop().add_signal_handler(signal.SIGINT, self._hit)
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            asyncio.get_running_loop().remove_signal_handler(signal.SIGINT)

    def _hit(self) -> None:
        self.count += 1
