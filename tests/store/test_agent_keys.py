"""The store's agent nkeys: created (seed answered once, public key kept), listed, revoked, audited,
and every change rewrites nats-server's authorization include and reloads a real secure server,
so a new agent key connects and a revoked one no longer does."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import nats
import nats.errors
import pytest

from trellis_core import nats_auth, subjects
from trellis_core.embedded import EmbeddedNats
from trellis_core.sealed import MasterKeyring, new_master_key
from trellis_core.settings import Settings
from trellis_store import agent_keys
from trellis_store.api import (
    AgentCredentials,
    AgentCredentialsCreate,
    AgentCredentialsRevoke,
    NatsUsersList,
    Ok,
    StoreError,
)
from trellis_store.context import StoreContext
from trellis_store.migrate import migrate


class Progress:
    projected_events = 0
    projected_logs = 0

    async def wait_projected(self, seq: int, timeout: float) -> bool:  # noqa: ASYNC109
        return True

    async def events_last_seq(self) -> int:
        return 0


@pytest.fixture
async def ctx(database_url: str) -> AsyncIterator[StoreContext]:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    await migrate(pool)
    yield StoreContext(pool=pool, keyring=MasterKeyring(new_master_key()), projection=Progress(), schema_version=4)
    await pool.close()


@pytest.fixture
def secure_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedNats]:
    server = EmbeddedNats(tmp_path_factory.mktemp("store-nats"), secure=True)
    server.start()
    yield server
    server.stop()


async def connects(url: str, seed: str, tmp: Path, tenant: str) -> bool:
    path = tmp / f"{tenant}.nk"
    path.write_text(seed)
    try:
        nc = await nats.connect(
            servers=[url], nkeys_seed=str(path), inbox_prefix=subjects.inbox_prefix(tenant),
            allow_reconnect=False, connect_timeout=3,
        )
    except (nats.errors.Error, OSError):
        return False
    await nc.close()
    return True


async def until(condition: object, within: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not await condition():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_credentials_are_made_listed_revoked_audited_and_reach_nats_server(
    ctx: StoreContext, secure_server: EmbeddedNats, tmp_path: Path, unique: str
) -> None:
    tenant = f"t{unique}"[:60]
    await ctx.pool.execute("INSERT INTO tenants (name) VALUES ($1)", tenant)
    settings = Settings.from_env(
        {}, nats_auth_file=str(secure_server.auth_file),
        nats_nkey_seed_file=str(secure_server.control_seed_file), nats_pid_file=str(secure_server.pid_file),
    )
    secure_server.auth_file.unlink()
    await agent_keys.start(settings, ctx.pool)  # the store's start writes the include from the table
    assert secure_server.control_public_key() in secure_server.auth_file.read_text()
    try:
        made = await agent_keys.agent_credentials_create(
            ctx, AgentCredentialsCreate(tenant=tenant, name="cluster-1", actor="alice")
        )
        assert isinstance(made, AgentCredentials)
        assert nats_auth.public_key_of(made.seed) == made.public_key
        assert made.inbox_prefix == subjects.inbox_prefix(tenant)
        row = await ctx.pool.fetchrow("SELECT * FROM agent_keys WHERE public_key = $1", made.public_key)
        assert made.seed not in str(dict(row))  # the seed is answered, never kept
        assert made.public_key in secure_server.auth_file.read_text()
        await until(lambda: connects(secure_server.url, made.seed, tmp_path, tenant))

        listed = await agent_keys.nats_users_list(ctx, NatsUsersList())
        assert [(u.tenant, u.name, u.public_key) for u in listed.users] == [(tenant, "cluster-1", made.public_key)]

        revoked = await agent_keys.agent_credentials_revoke(
            ctx, AgentCredentialsRevoke(tenant=tenant, public_key=made.public_key, actor="alice")
        )
        assert isinstance(revoked, Ok)
        assert made.public_key not in secure_server.auth_file.read_text()

        async def refused() -> bool:
            return not await connects(secure_server.url, made.seed, tmp_path, tenant)

        await until(refused)
        assert (await agent_keys.nats_users_list(ctx, NatsUsersList())).users == ()
        actions = [r["action"] for r in await ctx.pool.fetch(
            "SELECT action FROM audit WHERE tenant = $1 ORDER BY id", tenant
        )]
        assert actions == ["agent_credentials.create", "agent_credentials.revoke"]
    finally:
        agent_keys.configure(Settings.from_env({}))


async def test_bad_requests_are_refused_naming_the_field(ctx: StoreContext, unique: str) -> None:
    tenant = f"t{unique}"[:60]
    missing = await agent_keys.agent_credentials_create(ctx, AgentCredentialsCreate(tenant=tenant, actor="a"))
    assert isinstance(missing, StoreError)
    assert (missing.code, missing.path) == ("not_found", "tenant")
    reserved = await agent_keys.agent_credentials_create(ctx, AgentCredentialsCreate(tenant="store", actor="a"))
    assert isinstance(reserved, StoreError)
    assert (reserved.code, reserved.path) == ("invalid", "tenant")
    await ctx.pool.execute("INSERT INTO tenants (name) VALUES ($1)", tenant)
    blank = await agent_keys.agent_credentials_create(ctx, AgentCredentialsCreate(tenant=tenant, name=" ", actor="a"))
    assert isinstance(blank, StoreError)
    assert blank.path == "name"
    unknown = await agent_keys.agent_credentials_revoke(
        ctx, AgentCredentialsRevoke(tenant=tenant, public_key="UNKNOWN", actor="a")
    )
    assert isinstance(unknown, StoreError)
    assert (unknown.code, unknown.path) == ("not_found", "public_key")


def test_an_auth_file_without_the_control_plane_seed_is_a_config_error() -> None:
    with pytest.raises(nats_auth.NatsAuthError, match="TRELLIS_NATS_NKEY_SEED_FILE is not"):
        agent_keys.AuthFile.from_settings(Settings.from_env({}, nats_auth_file="/tmp/auth.conf"))
