"""`trellis tenant create NAME`: a new tenant through the gateway (the platform admin token), its
admin token printed once, and its first agent credentials written for `trellis agent`."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

import msgspec

from trellis_cli.gateway_client import GatewayClient
from trellis_core.embedded import write_private
from trellis_core.errors import ConfigError
from trellis_core.settings import Settings
from trellis_store.api import AgentCredentials


class TenantBody(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    admin_user: str = "admin"


class TenantCreated(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    token: str
    user: str
    role: str
    agent: AgentCredentials


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser(
        "tenant", help="create tenants (platform admin, through the gateway)",
        description="Tenants, through the gateway: TRELLIS_GATEWAY_URL and TRELLIS_ADMIN_TOKEN (the platform "
        "admin's; `trellis dev up` prints both).",
    )
    sub = parser.add_subparsers(dest="tenant_command", required=True, metavar="ACTION")
    create = sub.add_parser("create", help="a new tenant: its admin token (shown once) and agent credentials")
    create.add_argument("name", metavar="NAME")
    create.add_argument("--admin-user", default="admin", help="who the first admin token is for (default: admin)")
    create.add_argument(
        "--agent-credentials", metavar="FILE", type=Path,
        help="write the agent's nkey seed here (0600; TRELLIS_NATS_NKEY_SEED_FILE) and its settings to FILE.env "
        "(default: ./NAME.nk)",
    )
    create.set_defaults(func=_create)


def credentials_env(created: AgentCredentials, seed_file: Path, nats_url: str) -> str:
    """The settings `trellis agent` runs with: source it (`set -a; . FILE.env`) before starting it."""
    lines = [
        f"# trellis agent credentials of tenant {created.tenant} (nkey {created.public_key})",
        f"# the agent connects with inbox prefix {created.inbox_prefix} (derived from TRELLIS_TENANT)",
        f"TRELLIS_TENANT={created.tenant}",
        f"TRELLIS_NATS_NKEY_SEED_FILE={seed_file.absolute()}",
    ]
    if nats_url:
        lines.append(f"TRELLIS_NATS_URL={nats_url}")
    return "\n".join(lines) + "\n"


def write_credentials(created: AgentCredentials, seed_file: Path, nats_url: str) -> Path:
    """The seed (all the file holds: nats-py reads it as is) and its .env beside it, both 0600."""
    if seed_file.exists():
        raise ConfigError(f"{seed_file} exists: credentials are never overwritten; name another --agent-credentials")
    write_private(seed_file, created.seed + "\n")
    env = seed_file.with_name(seed_file.name + ".env")
    write_private(env, credentials_env(created, seed_file, nats_url))
    return env


def _create(args: argparse.Namespace) -> int:
    settings = Settings.from_env(None)
    if not settings.gateway_url:
        raise ConfigError("`trellis tenant create` works through the gateway: set TRELLIS_GATEWAY_URL")
    if not settings.admin_token:
        raise ConfigError("`trellis tenant create` needs the platform admin token: set TRELLIS_ADMIN_TOKEN")
    seed_file: Path = args.agent_credentials or Path(f"{args.name}.nk")
    if seed_file.exists():  # before the tenant is made: its seed is shown once only
        raise ConfigError(f"{seed_file} exists: credentials are never overwritten; name another --agent-credentials")
    admin = msgspec.structs.replace(settings, token=settings.admin_token)

    async def work() -> TenantCreated:
        async with GatewayClient(admin) as gw:
            created, _ = await gw.call(
                "POST", "/v1/tenants", TenantCreated, body=TenantBody(name=args.name, admin_user=args.admin_user)
            )
            return created

    created = asyncio.run(work())  # a GatewayError names the gateway's refusal
    env = write_credentials(created.agent, seed_file, settings.nats_url)
    print(f"tenant {created.name} created")
    print(f"admin token of {created.user} (shown once): {created.token}")
    print(f"agent credentials: {seed_file} (nkey seed, 0600) and {env}")
    print(f"run its agent with: set -a; . {env}; set +a; trellis agent")
    return 0
