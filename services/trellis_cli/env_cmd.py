"""`trellis env list|show|apply|deploy|destroy`: environments kept by the gateway (TRELLIS_GATEWAY_URL)."""

from __future__ import annotations

import argparse
import importlib
import uuid
from typing import Any

import msgspec
from rich.console import Console

from trellis_cli.drift_display import drift_lines
from trellis_cli.gateway_client import GatewayClient, GatewayError, quoted
from trellis_cli.gateway_common import output_lines, run_on_gateway, show, table, when
from trellis_cli.gateway_run import follow_run
from trellis_cli.run_progress import RunView, Screen, print_summary
from trellis_core.errors import ConfigError
from trellis_core.settings import Settings
from trellis_store.api import Environment, Environments, TemplateRef

# Modules adding `trellis env` subcommands of their own: each has `register_env(sub)`, given the
# `env` command's subparsers (day-2 actions, schedules and TTL, drift...).
ENV_SUBCOMMAND_MODULES: tuple[str, ...] = (
    "trellis_cli.state_cmd",
    "trellis_cli.env_action_cmd",
    "trellis_cli.env_schedule_cmd",
    "trellis_cli.env_drift_cmd",
)

NEEDS = "Works through the gateway: TRELLIS_GATEWAY_URL and TRELLIS_TOKEN (`trellis dev up` prints them)."


class EnvironmentBody(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """`PUT /v1/environments/{name}`."""

    template: TemplateRef
    variables: dict[str, str] = {}
    agents: tuple[str, ...] = ()


class RunBody(msgspec.Struct, frozen=True, kw_only=True):
    """`POST /v1/environments/{name}/runs`."""

    action: str


class RunAccepted(msgspec.Struct, frozen=True, kw_only=True):
    run_id: str


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser("env", help="list, show, apply, deploy and destroy environments (gateway)",
                                   description=f"Environments kept by the gateway. {NEEDS}")
    sub = parser.add_subparsers(dest="env_command", required=True, metavar="ACTION")
    sub.add_parser("list", help="every environment of the tenant with its status").set_defaults(func=_list)
    show = sub.add_parser("show", help="one environment: template, variables, status, outputs, last run")
    show.add_argument("name", metavar="NAME")
    show.add_argument("--json", action="store_true", help="print the gateway's JSON document")
    show.set_defaults(func=_show)
    apply = sub.add_parser("apply", help="create or update an environment (its template and variables)")
    apply.add_argument("name", metavar="NAME")
    apply.add_argument("--template", metavar="NAME@VERSION", help="the EnvironmentTemplate (default: the current one)")
    apply.add_argument("--var", action="append", default=[], metavar="K=V", help="a variable (repeatable)")
    apply.add_argument("--agent", action="append", default=[], metavar="POOL", help="an agent pool (repeatable)")
    apply.set_defaults(func=_apply)
    for action in ("deploy", "destroy"):
        cmd = sub.add_parser(action, help=f"start a {action} run of the environment and follow it")
        cmd.add_argument("name", metavar="NAME")
        cmd.add_argument("--no-wait", action="store_true", help="print the run id and return at once")
        cmd.add_argument("--follow", "-f", action="store_true", help="stream every activity's log lines")
        if action == "destroy":
            cmd.add_argument("--force", action="store_true", help="skip every hook and go on past failures")
        cmd.set_defaults(func=_start, action=action)
    for name in ENV_SUBCOMMAND_MODULES:
        importlib.import_module(name).register_env(sub)


def parse_template(text: str) -> TemplateRef:
    name, sep, version = text.partition("@")
    if not sep or not name or not version:
        raise ConfigError(f"--template {text!r}: write NAME@VERSION (e.g. web-stack@v1)")
    return TemplateRef(name=name, version=version)


def parse_pairs(option: str, pairs: list[str]) -> dict[str, str]:
    values: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"{option} {pair!r}: write NAME=VALUE")
        values[key] = value
    return values


def _list(args: argparse.Namespace) -> int:
    async def work(gw: GatewayClient, settings: Settings) -> int:
        found, _ = await gw.call("GET", "/v1/environments", Environments)
        if not found.environments:
            print(f"no environments in tenant {settings.tenant} yet (trellis env apply NAME --template N@V)")
            return 0
        rows = [(e.name, f"{e.template.name}@{e.template.version}", e.status, e.last_run_id or "-",
                 when(e.updated_at)) for e in found.environments]
        print(table(("NAME", "TEMPLATE", "STATUS", "LAST RUN", "UPDATED"), rows))
        return 0

    return run_on_gateway("env list", work)


def describe(env: Environment) -> str:
    lines = [
        f"environment {env.name}: {env.status}",
        f"  template:  {env.template.name}@{env.template.version}",
        f"  last run:  {env.last_run_id or '-'}",
        f"  agents:    {', '.join(env.agents) or '-'}",
        f"  updated:   {when(env.updated_at)}",
    ]
    if env.variables:
        lines.append("  variables:")
        lines += [f"    {k} = {v}" for k, v in sorted(env.variables.items())]
    if env.outputs:
        lines += ["  outputs:", *output_lines(env.outputs, "    ")]
    if env.depends_on:  # static resources of kind environment (static-resources.md)
        lines += ["  depends on:", *(f"    {link.environment} (resource {link.resource})" for link in env.depends_on)]
    if env.dependents:
        lines += ["  dependents:", *(f"    {link.environment} (resource {link.resource})" for link in env.dependents)]
    lines += drift_lines(env.drift)
    return "\n".join(lines)


def _show(args: argparse.Namespace) -> int:
    return show("env show", f"/v1/environments/{quoted(args.name)}", Environment, describe, args.json)


async def current(gw: GatewayClient, name: str) -> tuple[Environment | None, str]:
    """The environment and its ETag, or (None, "") when there is none yet."""
    try:
        env, headers = await gw.call("GET", f"/v1/environments/{quoted(name)}", Environment)
    except GatewayError as exc:
        if exc.status == 404:
            return None, ""
        raise
    return env, headers.get("ETag") or headers.get("Etag") or env.etag


async def apply_environment(
    gw: GatewayClient, name: str, template: TemplateRef | None, variables: dict[str, str], agents: tuple[str, ...]
) -> Environment:
    """PUT the environment; an update sends the ETag just read (If-Match), so a change made in
    between is refused (412) rather than overwritten. Variables the templates declare sensitive
    are stored sealed and shown masked."""
    existing, etag = await current(gw, name)
    if template is None:
        if existing is None:
            raise ConfigError(f"environment {name} does not exist yet: say which template (--template NAME@VERSION)")
        template = existing.template
    body = EnvironmentBody(template=template, variables=variables, agents=agents)
    headers = {"If-Match": etag} if existing is not None and etag else {}
    env, _ = await gw.call("PUT", f"/v1/environments/{quoted(name)}", Environment, body=body, headers=headers)
    return env


def _apply(args: argparse.Namespace) -> int:
    async def work(gw: GatewayClient, settings: Settings) -> int:
        template = parse_template(args.template) if args.template else None
        variables = parse_pairs("--var", args.var)
        env = await apply_environment(gw, args.name, template, variables, tuple(args.agent))
        print(f"environment {env.name} applied: {env.template.name}@{env.template.version}, {env.status}")
        return 0

    return run_on_gateway("env apply", work)


async def start_run(gw: GatewayClient, name: str, action: str, *, force: bool = False) -> str:
    """Start a run of the environment; a retried POST (same Idempotency-Key) starts one run.
    `force`: a force-destroy (docs/day2-actions.md)."""
    headers = {"Idempotency-Key": str(uuid.uuid4())}
    if force:
        path = f"/v1/environments/{quoted(name)}/force-destroy"
        accepted, _ = await gw.call("POST", path, RunAccepted, headers=headers)
        return accepted.run_id
    accepted, _ = await gw.call("POST", f"/v1/environments/{quoted(name)}/runs", RunAccepted,
                                body=RunBody(action=action), headers=headers)
    return accepted.run_id


async def watch(gw: GatewayClient, view: RunView, *, follow: bool, console: Console | None = None) -> int:
    """Follow the run to its end, print its summary; 0 when it succeeded."""
    console = console or Console()
    screen = Screen(console, view, follow=follow, as_document=False)
    await follow_run(gw, screen, logs=follow)
    print_summary(console, view)
    if view.status != "succeeded" and view.activities:
        console.print(f"[dim]every log line of the run: trellis logs {view.run_id}", highlight=False, soft_wrap=True)
    return 0 if view.status == "succeeded" else 1


def _start(args: argparse.Namespace) -> int:
    async def work(gw: GatewayClient, settings: Settings) -> int:
        force = getattr(args, "force", False)
        run_id = await start_run(gw, args.name, args.action, force=force)
        what = "force-destroy" if force else args.action
        print(f"run {run_id}: {what} of environment {args.name} started", flush=True)
        if args.no_wait:
            return 0
        return await watch(gw, RunView(run_id=run_id, environment=args.name, action=args.action), follow=args.follow)

    return run_on_gateway(f"env {args.action}", work)
