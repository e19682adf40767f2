"""`trellis run PATH... --environment NAME`: submit a run, follow its DAG live, print its outputs.

With TRELLIS_NATS_URL set the run goes to that bus (services already running there); with
neither it nor TRELLIS_GATEWAY_URL set, the embedded stack (NATS, every service, a local
agent) starts in this process for the run and stops after it. Exit 0 when the run succeeded.
Ctrl-C once asks to cancel the run (hooks that always run still run); twice stops waiting.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import os
import signal
import sys
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
from rich.console import Console
from rich.live import Live

from trellis_cli.run_progress import RunView, as_json, outputs_table, problems_text, progress_table
from trellis_core import subjects
from trellis_core.bus import Bus
from trellis_core.errors import ConfigError, TrellisError
from trellis_core.events import RunCancelRequested, RunEvent, RunRequested, SourceFile
from trellis_core.ids import new_run_id
from trellis_core.logs import configure
from trellis_core.settings import Settings, data_dir_help

TEMPLATE_SUFFIXES = (".yaml", ".yml")
_decode = msgspec.json.Decoder(RunEvent).decode


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser(
        "run",
        help="deploy or destroy an environment from templates, following the run live",
        description="Compile the templates at PATH (files or directories) for ENVIRONMENT, run the "
        "activity DAG on the agents and show its progress. Without TRELLIS_NATS_URL the embedded "
        "stack starts for the run (or a running `trellis dev up`'s is used). Exit code 0 when the run "
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
    parser.set_defaults(func=run_command)


def read_sources(paths: Sequence[str]) -> list[SourceFile]:
    """Every template file named or found (recursively, *.yaml/*.yml) under the paths, sorted."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.suffix in TEMPLATE_SUFFIXES and p.is_file()))
        elif path.is_file():
            files.append(path)
        else:
            raise ConfigError(f"{raw}: no such file or directory")
    if not files:
        raise ConfigError(f"no template files (*.yaml, *.yml) in {', '.join(paths)}")
    return [SourceFile(path=str(f), text=f.read_text(encoding="utf-8")) for f in files]


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
            variables=parse_vars(args.var),
            requested_by=_user(),
        )
        subjects.runs_requested(settings.tenant)
    except TrellisError as exc:
        print(f"trellis run: {exc}", file=sys.stderr)
        return 2
    if settings.gateway_url and not settings.nats_url:
        why = (
            "trellis run: submitting through TRELLIS_GATEWAY_URL is not supported yet; set TRELLIS_NATS_URL "
            "to a bus with the services running, or unset both to run on the embedded stack"
        )
        print(why, file=sys.stderr)
        return 2
    quiet = settings if "TRELLIS_LOG_LEVEL" in os.environ else msgspec.structs.replace(settings, log_level="error")
    configure(quiet)
    console = Console(stderr=args.json)
    try:
        with _stdout_to_stderr(args.json):
            view = asyncio.run(_run(settings, request, console, as_document=args.json))
    except TrellisError as exc:
        print(f"trellis run: {exc}", file=sys.stderr)
        return 1
    if args.json:
        sys.stdout.write(as_json(view).decode() + "\n")
    else:
        _print_summary(console, view)
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


def _user() -> str:
    with contextlib.suppress(Exception):
        return getpass.getuser()
    return ""


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
            await bus.close()
        return
    from trellis_cli.devstack import DevStack, default_services

    services = default_services(settings)
    async with DevStack(settings, with_postgres="store" in services, services=services) as stack:
        assert stack.bus is not None
        yield stack.bus


async def _run(settings: Settings, request: RunRequested, console: Console, *, as_document: bool) -> RunView:
    view = RunView(run_id=request.run_id, environment=request.environment, action=request.action)
    if not as_document:
        console.print(f"[dim]starting {'on ' + settings.nats_url if settings.nats_url else 'the embedded stack'}…")
    async with _bus_for(settings) as bus:
        events: asyncio.Queue[RunEvent] = asyncio.Queue()

        async def on_msg(msg: Any) -> None:
            with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
                events.put_nowait(_decode(msg.data))

        sub = await bus.js.subscribe(
            subjects.run_events(request.tenant, request.run_id), cb=on_msg, ordered_consumer=True
        )
        try:
            await bus.publish(subjects.runs_requested(request.tenant), request, msg_id=f"{request.run_id}/request")
            await _follow(bus, request, view, events, console, live=not as_document and console.is_terminal)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
    return view


async def _follow(
    bus: Bus,
    request: RunRequested,
    view: RunView,
    events: asyncio.Queue[RunEvent],
    console: Console,
    *,
    live: bool,
) -> None:
    interrupts = _Interrupts()
    answered = False
    patience = bus.settings.run_answer_timeout_seconds
    deadline = asyncio.get_running_loop().time() + patience
    with interrupts, Live(console=console, auto_refresh=False, transient=False) if live else _NoLive() as display:
        while not view.finished:
            if interrupts.count == 1 and not interrupts.cancel_sent:
                interrupts.cancel_sent = True
                cancel = RunCancelRequested(
                    tenant=request.tenant, run_id=request.run_id, reason="interrupted", requested_by=_user()
                )
                await bus.publish_event(cancel)
                console.print("[yellow]cancelling the run (Ctrl-C again to stop waiting)…")
            if interrupts.count >= 2:
                view.status = view.status if view.finished else "cancelled"
                return
            try:
                event = await asyncio.wait_for(events.get(), timeout=0.25)
            except TimeoutError:
                if not answered and asyncio.get_running_loop().time() > deadline:
                    raise TrellisError(
                        f"no answer to run {request.run_id} within {patience:g} s: "
                        f"are `trellis compiler` and `trellis scheduler` running against {bus.settings.nats_url}?"
                    ) from None
                display.update(progress_table(view, datetime.now(UTC)), refresh=True)
                continue
            answered = True
            view.apply(event)
            if not live and not view.finished:
                _print_line(console, view, event)
            display.update(progress_table(view, datetime.now(UTC)), refresh=True)


def _print_line(console: Console, view: RunView, event: RunEvent) -> None:
    """Without a terminal: one line per activity status change."""
    activity_id = getattr(event, "activity_id", None)
    if activity_id is None or console.stderr:
        return
    status = next((a.shown_status for a in view.activities if a.id == activity_id), "")
    if event.kind in ("activity.dispatched", "activity.heartbeat", "activity.log"):
        return
    console.print(f"{event.occurred_at:%H:%M:%S} {activity_id} {status}", highlight=False)


def _print_summary(console: Console, view: RunView) -> None:
    if view.status == "rejected":
        console.print(f"[bold red]the templates have errors:[/]\n{problems_text(view.errors)}", highlight=False)
        return
    if view.outputs:
        console.print(outputs_table(view))
    style = "green" if view.status == "succeeded" else "bold red"
    elapsed = ""
    if view.started_at and view.finished_at:
        elapsed = f" in {(view.finished_at - view.started_at).total_seconds():.1f}s"
    console.print(
        f"[{style}]run {view.run_id} {view.status}{elapsed}[/]" + (f": {view.message}" if view.message else "")
    )


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


class _NoLive:
    def __enter__(self) -> _NoLive:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, *args: Any, **kwargs: Any) -> None:
        return None
