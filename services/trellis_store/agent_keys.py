"""Tenants' agent nkeys, and the nats-server authorization made from them.

The store keeps each agent key's public half (the seed is in the create answer only, once). With
TRELLIS_NATS_AUTH_FILE set, every change (and the store's start) rewrites that authorization
include — the control plane's user (from TRELLIS_NATS_NKEY_SEED_FILE) plus every live agent key
with `trellis_core.nats_auth.agent_permissions(tenant)` — atomically, then sends SIGHUP to the
nats-server whose pid is in TRELLIS_NATS_PID_FILE so it reloads. Several store replicas may each
rewrite it: every one writes the whole file from the table, so the last write is complete."""

from __future__ import annotations

import asyncio
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trellis_core import nats_auth, subjects
from trellis_core.embedded import write_private
from trellis_core.logs import get_logger
from trellis_core.settings import Settings
from trellis_store.api import (
    AgentCredentials,
    AgentCredentialsCreate,
    AgentCredentialsRevoke,
    NatsUser,
    NatsUsers,
    NatsUsersList,
    Ok,
    StoreError,
)
from trellis_store.commands import audit, tenant_exists
from trellis_store.context import StoreContext, error

log = get_logger("store")

NAME_MAX = 128


@dataclass(frozen=True)
class AuthFile:
    """Where the authorization include lives, whose seed is the control plane's, whom to signal."""

    path: Path
    control_seed_file: Path
    pid_file: Path | None

    @classmethod
    def from_settings(cls, settings: Settings) -> AuthFile | None:
        if not settings.nats_auth_file:
            return None
        if not settings.nats_nkey_seed_file:
            raise nats_auth.NatsAuthError(
                "TRELLIS_NATS_AUTH_FILE is set but TRELLIS_NATS_NKEY_SEED_FILE is not: the generated "
                "authorization needs the control plane's own nkey"
            )
        return cls(
            Path(settings.nats_auth_file),
            Path(settings.nats_nkey_seed_file),
            Path(settings.nats_pid_file) if settings.nats_pid_file else None,
        )


_auth: AuthFile | None = None
_lock = asyncio.Lock()


def configure(settings: Settings) -> AuthFile | None:
    """Called once at the store's start: from now on every change rewrites the include."""
    global _auth
    _auth = AuthFile.from_settings(settings)
    return _auth


async def start(settings: Settings, pool: Any) -> None:
    """At the store's start: remember where the include is and write it from the table now (a
    server restarted from an old file, or keys changed while no store ran, get the current set)."""
    if configure(settings) is not None:
        await sync(pool)


async def live_keys(conn: Any) -> list[tuple[str, str, str]]:
    rows = await conn.fetch(
        "SELECT tenant, name, public_key FROM agent_keys WHERE revoked_at IS NULL ORDER BY tenant, created_at"
    )
    return [(r["tenant"], r["name"], r["public_key"]) for r in rows]


async def sync(pool: Any, auth: AuthFile | None = None) -> bool:
    """Rewrite the authorization include from the table and signal nats-server; False if there
    is no include to keep (TRELLIS_NATS_AUTH_FILE unset)."""
    target = auth or _auth
    if target is None:
        return False
    async with _lock:
        async with pool.acquire() as conn:
            keys = await live_keys(conn)
        control = nats_auth.public_key_of(target.control_seed_file.read_text())
        text = nats_auth.render_authorization(nats_auth.users(control, [(t, k) for t, _, k in keys]))
        write_private(target.path, text)
        reload_server(target.pid_file)
    log.info("nats_authorization_written", path=str(target.path), agent_keys=len(keys))
    return True


def reload_server(pid_file: Path | None) -> None:
    """SIGHUP the nats-server of `pid_file`: it re-reads its config (the include) without a restart."""
    if pid_file is None:
        return
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError) as exc:
        log.warning("nats_reload_skipped", pid_file=str(pid_file), error=str(exc))
        return
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        log.warning("nats_reload_skipped", pid_file=str(pid_file), error=f"no process {pid}")


async def agent_credentials_create(ctx: StoreContext, req: AgentCredentialsCreate) -> AgentCredentials | StoreError:
    try:
        prefix = subjects.inbox_prefix(req.tenant)
    except subjects.InvalidSubjectToken as exc:
        return error("invalid", str(exc), "tenant")
    name = req.name.strip()
    if not name or len(name) > NAME_MAX:
        return error("invalid", f"name must be 1-{NAME_MAX} characters", "name")
    seed, public_key = nats_auth.new_user_seed()
    async with ctx.pool.acquire() as conn, conn.transaction():
        if not await tenant_exists(conn, req.tenant):
            return error("not_found", f"tenant {req.tenant!r} does not exist", "tenant")
        await conn.execute(
            "INSERT INTO agent_keys (public_key, tenant, name) VALUES ($1, $2, $3)", public_key, req.tenant, name
        )
        await audit(conn, req.tenant, req.actor, "agent_credentials.create", public_key, {"name": name}, "")
    await sync(ctx.pool)
    return AgentCredentials(tenant=req.tenant, name=name, public_key=public_key, seed=seed, inbox_prefix=prefix)


async def agent_credentials_revoke(ctx: StoreContext, req: AgentCredentialsRevoke) -> Ok | StoreError:
    async with ctx.pool.acquire() as conn, conn.transaction():
        revoked = await conn.fetchval(
            "UPDATE agent_keys SET revoked_at = now() WHERE tenant = $1 AND public_key = $2 AND revoked_at IS NULL "
            "RETURNING public_key",
            req.tenant,
            req.public_key,
        )
        if revoked is None:
            return error("not_found", f"tenant {req.tenant!r} has no live agent key {req.public_key!r}", "public_key")
        await audit(conn, req.tenant, req.actor, "agent_credentials.revoke", req.public_key, {}, "")
    await sync(ctx.pool)
    return Ok()


async def nats_users_list(ctx: StoreContext, req: NatsUsersList) -> NatsUsers:
    async with ctx.pool.acquire() as conn:
        keys = await live_keys(conn)
    return NatsUsers(users=tuple(NatsUser(tenant=t, name=n, public_key=k) for t, n, k in keys))
