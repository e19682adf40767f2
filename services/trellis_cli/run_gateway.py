"""`trellis run PATH... -e NAME` through the gateway (TRELLIS_GATEWAY_URL set): publish the bundle,
apply the environment with the template its Environment document names, start the run and follow
it from the gateway's event stream. Ctrl-C once asks to cancel the run; twice stops waiting."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from typing import NamedTuple

from rich.console import Console

from trellis_cli.env_cmd import apply_environment, current, start_run
from trellis_cli.gateway_client import GatewayClient, gateway_settings, quoted
from trellis_cli.gateway_run import follow_run
from trellis_cli.publish import publish
from trellis_cli.run_progress import RunView, Screen, as_json, print_summary
from trellis_cli.sources import template_files
from trellis_core.errors import ConfigError, TrellisError
from trellis_core.settings import Settings
from trellis_store.api import TemplateDocument, TemplateRef
from trellis_templates.compiler import read_bundle
from trellis_templates.documents import Environment

POLL_SECONDS = 0.1


class LocalEnvironment(NamedTuple):
    """What the bundle's Environment document says, as the gateway's environment takes it."""

    template: TemplateRef
    variables: dict[str, str]
    agents: tuple[str, ...]


def environment_of(
    paths: list[str], environment: str, published: tuple[TemplateDocument, ...]
) -> LocalEnvironment | None:
    """The bundle's Environment document `environment`: its template (the version written, else
    the highest one published), its text and JSON variable values, its agents. The gateway builds
    the run's Environment document from these (it leaves the bundle's out). None when the
    bundle has no such document."""
    docs, _, _ = read_bundle(template_files(paths))
    documents = (d.document for d in docs)
    found = [doc for doc in documents if isinstance(doc, Environment) and doc.metadata.name == environment]
    if not found:
        return None
    spec = found[0].spec
    version = spec.template.version
    if not version:
        name = spec.template.name
        versions = sorted(d.version for d in published if d.kind == "EnvironmentTemplate" and d.name == name)
        if not versions:
            raise ConfigError(f"environment {environment} names template {spec.template.name}, which the bundle lacks")
        version = versions[-1]
    variables = {
        v.name: v.value if isinstance(v.value, str) else json.dumps(v.value)
        for v in spec.variables
        if v.value is not None and v.value_type in ("text", "json")
    }
    agents = tuple(agent.name for agent in spec.agents)
    return LocalEnvironment(TemplateRef(name=spec.template.name, version=version), variables, agents)


async def _submit(gw: GatewayClient, settings: Settings, args: argparse.Namespace, variables: dict[str, str]) -> str:
    documents = await publish(gw, args.paths, settings)
    local = environment_of(args.paths, args.environment, documents)
    if local is None:
        existing, _ = await current(gw, args.environment)
        if existing is None:
            raise ConfigError(
                f"no Environment document named {args.environment} in {', '.join(args.paths)}, and the gateway "
                f"has no such environment (trellis env apply {args.environment} --template NAME@VERSION)"
            )
        await apply_environment(gw, args.environment, None, variables, existing.agents)
    else:
        await apply_environment(gw, args.environment, local.template, local.variables | variables, local.agents)
    return await start_run(gw, args.environment, args.action)


async def _follow(gw: GatewayClient, screen: Screen) -> None:
    """Follow to the end; one Ctrl-C asks the gateway to cancel the run, a second stops waiting."""
    hits = 0
    loop = asyncio.get_running_loop()

    def hit() -> None:
        nonlocal hits
        hits += 1

    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGINT, hit)
    following = asyncio.create_task(follow_run(gw, screen, logs=screen.follow))
    try:
        cancel_sent = False
        while not following.done():
            await asyncio.wait({following}, timeout=POLL_SECONDS)
            if hits == 1 and not cancel_sent:
                cancel_sent = True
                await gw.send("POST", f"/v1/runs/{quoted(screen.view.run_id)}/cancel", body={"reason": "interrupted"})
                screen.note("[yellow]cancelling the run (Ctrl-C again to stop waiting)…")
            if hits >= 2:
                following.cancel()
                screen.view.status = screen.view.status if screen.view.finished else "cancelled"
                screen.view.message = screen.view.message or "stopped waiting (Ctrl-C twice)"
        with contextlib.suppress(asyncio.CancelledError):
            await following
    finally:
        following.cancel()
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(signal.SIGINT)


async def _run(settings: Settings, args: argparse.Namespace, variables: dict[str, str], console: Console) -> RunView:
    async with GatewayClient(settings) as gw:
        if not args.json:
            console.print(f"[dim]starting through the gateway at {settings.gateway_url}…")
        run_id = await _submit(gw, settings, args, variables)
        if not args.json:
            console.print(f"[dim]run {run_id}", highlight=False)
        view = RunView(run_id=run_id, environment=args.environment, action=args.action)
        await _follow(gw, Screen(console, view, follow=args.follow, as_document=args.json))
        return view


def run_through_gateway(args: argparse.Namespace, variables: dict[str, str]) -> int:
    try:
        settings = gateway_settings("run", args.tenant)
    except ConfigError as exc:
        print(f"trellis run: {exc}", file=sys.stderr)
        return 2
    console = Console(stderr=args.json)
    try:
        view = asyncio.run(_run(settings, args, variables, console))
    except TrellisError as exc:
        print(f"trellis run: {exc}", file=sys.stderr)
        return 1
    if args.json:
        sys.stdout.write(as_json(view).decode() + "\n")
    else:
        print_summary(console, view)
        if view.activities and view.status != "succeeded":
            hint = f"[dim]every log line of the run: trellis logs {view.run_id}"
            console.print(hint, highlight=False, soft_wrap=True)
    return 0 if view.status == "succeeded" else 1
