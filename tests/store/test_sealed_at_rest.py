"""The store's side of "secrets never in clear": the keys responder on the bus, `seal`, and the
conversion of what the old store sealing (`v1:<nonce>:<ct>` straight under TRELLIS_SEAL_KEY)
left in the database into tokens at start-up."""

from __future__ import annotations

import base64
import os
from collections.abc import AsyncIterator

import asyncpg
import msgspec
import pytest
from store_api_support import RunningStore, running_store

from trellis_core import subjects
from trellis_core.bus import Bus
from trellis_core.sealed import KeysAnswer, MasterKeyring, SealError, TenantKeys, is_token, new_master_key
from trellis_core.settings import Settings
from trellis_store.api import Environment, EnvironmentGet, Sealed, SealValues
from trellis_store.legacy_sealing import LegacyOpener
from trellis_store.migrate import migrate

_answer = msgspec.json.Decoder(KeysAnswer)


@pytest.fixture
async def store(bus: Bus, settings: Settings, database_url: str) -> AsyncIterator[RunningStore]:
    async with running_store(bus, settings, database_url) as running:
        yield running


async def test_an_agent_gets_its_tenants_keys_on_the_bus_and_a_bad_subject_gets_an_error(
    store: RunningStore, bus: Bus, unique: str
) -> None:
    reply = await bus.nc.request(subjects.keys_request(unique), b"", timeout=5)
    answer = _answer.decode(reply.data)
    assert answer.error == ""
    assert answer.material is not None
    keyring = MasterKeyring.from_settings(store.settings)
    assert answer.material == keyring.for_tenant(unique).material()
    agent = TenantKeys.from_material(answer.material)
    assert keyring.for_tenant(unique).open(agent.seal("from the agent")) == "from the agent"

    reserved = _answer.decode((await bus.nc.request("trellis.store.keys.get", b"", timeout=5)).data)
    assert reserved.material is None
    assert "reserved" in reserved.error


async def test_seal_values_seals_under_the_current_key_and_keeps_tokens(store: RunningStore, unique: str) -> None:
    keys = MasterKeyring.from_settings(store.settings).for_tenant(unique)
    given = keys.seal("already")
    sealed = await store.ask(SealValues(tenant=unique, values={"pw": "s3cret", "tok": given}), Sealed)
    assert sealed.values["tok"] == given
    assert is_token(sealed.values["pw"])
    assert keys.open(sealed.values["pw"]) == "s3cret"
    assert keys.current in sealed.values["pw"]
    foreign = MasterKeyring(new_master_key()).for_tenant(unique).seal("x")
    refused = await store.refused(SealValues(tenant=unique, values={"k": foreign}))
    assert (refused.code, refused.path) == ("invalid", "values.k")
    bad = await store.refused(SealValues(tenant="store", values={"k": "v"}))
    assert (bad.code, bad.path) == ("invalid", "tenant")
    rows = await store.sql("SELECT count(*) AS n FROM audit WHERE tenant = $1", unique)
    assert rows[0]["n"] == 0  # sealing is not audited


def old_seal(key_b64: str, plain: str) -> str:
    """What the retired trellis_store.sealing.Sealer(key).seal made."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    nonce = os.urandom(12)
    sealed = AESGCM(base64.b64decode(key_b64)).encrypt(nonce, plain.encode(), None)
    return f"v1:{base64.b64encode(nonce).decode()}:{base64.b64encode(sealed).decode()}"


async def test_values_the_old_store_sealing_left_become_tokens_at_start_up(
    bus: Bus, settings: Settings, database_url: str, unique: str
) -> None:
    """Old-format rows in (a schema-2 database, as the old store wrote it), tokens out; idempotent."""
    old_key, secret = new_master_key(), f"old-secret-{unique}"
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    try:
        migrations = await _schema_2(pool)
        variables = old_seal(old_key, msgspec.json.encode({"region": "eu", "pw": secret}).decode())
        output = {"vpc": {"pw": {"type": "string", "sensitive": True, "sealed": old_seal(old_key, f'"{secret}"')},
                          "id": {"value": "vpc-1", "sensitive": False}}}  # fmt: skip
        await pool.execute("INSERT INTO tenants (name) VALUES ($1)", unique)
        await pool.execute(
            "INSERT INTO environments (tenant, name, template_name, template_version, variables, sealed, sensitive, "
            "status, outputs, deployed_variables, deployed) VALUES ($1, 'dev', 'web', '1', '{\"region\": \"eu\"}', "
            "$2::jsonb, '{pw}', 'deployed', $3::jsonb, jsonb_build_object('sealed', $4::text), true)",
            unique,
            msgspec.json.encode({"pw": old_seal(old_key, secret)}).decode(),
            msgspec.json.encode(output).decode(),
            variables,
        )
        await pool.execute(
            "INSERT INTO runs (tenant, run_id, environment, action, status, outputs, variables) "
            "VALUES ($1, 'r1', 'dev', 'deploy', 'succeeded', $2::jsonb, jsonb_build_object('sealed', $3::text))",
            unique,
            msgspec.json.encode(output).decode(),
            variables,
        )
        # the installation rotated since: the old key is retired now
        overrides = {"seal_key": new_master_key(), "seal_keys_retired": old_key}
        seen: list[tuple[str, str]] = []
        for _ in range(2):  # a second start finds nothing left to convert
            async with running_store(bus, settings, database_url, **overrides) as store:
                keys = MasterKeyring.from_settings(store.settings).for_tenant(unique)
                env = await store.ask(EnvironmentGet(tenant=unique, name="dev"), Environment)
                assert env.variables["region"] == "eu"
                assert keys.open(env.variables["pw"]) == secret
                assert keys.open(env.outputs["vpc"]["pw"]["value"]) == secret
                assert "sealed" not in env.outputs["vpc"]["pw"]
                assert env.outputs["vpc"]["id"] == {"value": "vpc-1", "sensitive": False}
                query = (
                    "SELECT e::text AS env, r::text AS run, e.deployed_variables::text AS dv, r.variables::text AS rv "
                    "FROM environments e JOIN runs r ON r.tenant = e.tenant WHERE e.tenant = $1"
                )
                row = (await store.sql(query, unique))[0]
                for text in (row["env"], row["run"]):
                    assert secret not in text
                    assert '"v1:' not in text
                for column in ("dv", "rv"):
                    assert keys.open_value(msgspec.json.decode(row[column])) == {"region": "eu", "pw": secret}
                seen.append((env.variables["pw"], row["dv"]))
        assert seen[0] == seen[1]  # the second start sealed nothing again
        assert migrations == 2
    finally:
        await pool.close()


async def _schema_2(pool: asyncpg.Pool) -> int:
    """The database as schema 2 left it: the migration files up to 0002 applied."""
    from pathlib import Path
    from tempfile import TemporaryDirectory

    from trellis_store.migrate import MIGRATIONS_DIR

    with TemporaryDirectory() as tmp:
        for name in ("0001_initial.sql", "0002_environment_deploy_seq.sql"):
            (Path(tmp) / name).write_text((MIGRATIONS_DIR / name).read_text())
        return await migrate(pool, Path(tmp))


def test_the_legacy_opener_names_what_to_do_when_no_key_opens() -> None:
    sealed = old_seal(new_master_key(), "x")
    opener = LegacyOpener([new_master_key()])
    with pytest.raises(SealError, match="TRELLIS_SEAL_KEYS_RETIRED"):
        opener.open(sealed)
