"""Key rotation end to end: values sealed under key A, the store restarted with B current and A
retired, `trellis keys rotate` run: every stored token is under B and opens to what it held, the
environment's variables still work, and the retired key is no longer needed."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest
from store_api_support import RunningStore, env_put, running_store, tenant_with_template

from trellis_cli.main import main
from trellis_core.bus import Bus
from trellis_core.sealed import TOKEN_PATTERN, MasterKeyring, new_master_key, token_kids
from trellis_core.settings import Settings
from trellis_store.api import (
    AuditEntries,
    AuditList,
    Environment,
    EnvironmentGet,
    KeysReseal,
    Resealed,
    Sealed,
    SealValues,
)

# Every column keys.reseal walks, read back whole (the check is on the stored text, not the API).
COLUMNS = {
    "environments": ("variables", "sealed", "outputs", "deployed_variables"),
    "runs": ("workflow", "outputs", "variables", "errors", "message"),
    "activities": ("outputs", "reason"),
    "events": ("body",),
    "audit": ("detail",),
    "log_chunks": ("data",),
}


async def stored_tokens(store: RunningStore, tenant: str) -> list[str]:
    found: list[str] = []
    for table, columns in COLUMNS.items():
        for column in columns:
            rows = await store.sql(f"SELECT {column}::text AS c FROM {table} WHERE tenant = $1", tenant)
            found += [m[0] for r in rows if r["c"] for m in TOKEN_PATTERN.finditer(r["c"])]
    return found


async def seed(store: RunningStore, tenant: str, secret: str) -> dict[str, str]:
    """Tokens of `tenant` in every kind of place: an environment's variables and outputs, a run's
    workflow, outputs and variables, an activity's outputs, an event body, an audit detail and a
    log chunk. Returns what each token opens to."""
    await tenant_with_template(store, tenant)
    await store.ask(env_put(tenant, variables={"pw": secret, "region": "eu"}, sensitive=("pw",)), Environment)
    sealed = (await store.ask(SealValues(tenant=tenant, values={"a": "alpha", "b": "beta", "c": "gamma"}), Sealed))
    a, b, c = sealed.values["a"], sealed.values["b"], sealed.values["c"]
    outputs = msgspec.json.encode({"vpc": {"pw": {"value": a, "sensitive": True}}}).decode()
    await store.sql(
        "UPDATE environments SET outputs = $2::jsonb, deployed_variables = $3::jsonb WHERE tenant = $1",
        tenant, outputs, msgspec.json.encode({"db": b}).decode(),
    )  # fmt: skip
    await store.sql(
        "INSERT INTO runs (tenant, run_id, environment, action, status, outputs, variables, workflow, message) "
        "VALUES ($1, 'r1', 'dev', 'deploy', 'succeeded', $2::jsonb, $3::jsonb, $4::jsonb, $5)",
        tenant, outputs, msgspec.json.encode({"db": b}).decode(),
        msgspec.json.encode({"scope": {"url": f"postgres://u:{c}@db"}}).decode(), f"failed near {c}",
    )  # fmt: skip
    await store.sql(
        "INSERT INTO activities (tenant, run_id, activity_id, kind, status, outputs) "
        "VALUES ($1, 'r1', 'resource/vpc/apply', 'container', 'succeeded', $2::jsonb->'vpc')",
        tenant, outputs,
    )  # fmt: skip
    await store.sql(
        "INSERT INTO events (seq, event_id, tenant, run_id, kind, occurred_at, body) "
        "VALUES ((SELECT coalesce(max(seq), 0) + 1000000 FROM events), $1 || '-e1', $1, 'r1', 'run.completed', "
        "now(), $2::jsonb)",
        tenant, outputs,
    )  # fmt: skip
    await store.sql(
        "INSERT INTO log_chunks (position, tenant, run_id, activity_id, attempt, sequence, stream, data, occurred_at) "
        "VALUES ((SELECT coalesce(max(position), 0) + 1000000 FROM log_chunks), $1, 'r1', 'a', 1, 1, 'stdout', "
        "'echo ' || $2 || ' and ' || $3, now())",
        tenant, a, b,
    )  # fmt: skip
    await store.sql(
        "INSERT INTO audit (tenant, actor, action, detail) VALUES ($1, 'x', 'test', $2::jsonb)",
        tenant, msgspec.json.encode({"given": c}).decode(),
    )  # fmt: skip
    return {"alpha": a, "beta": b, "gamma": c}


def rotate(nats_url: str, *args: str, monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setenv("TRELLIS_NATS_URL", nats_url)
    return main(["keys", "rotate", *args])


async def test_rotation_reseals_every_stored_token_under_the_new_key(
    bus: Bus, settings: Settings, database_url: str, unique: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    key_a, key_b = new_master_key(), new_master_key()
    secret, other = f"pw-{unique}", f"{unique}o"
    async with running_store(bus, settings, database_url, seal_key=key_a) as store:
        await seed(store, unique, secret)
        await seed(store, other, secret)
        kid_a = MasterKeyring(key_a).current
        before = await stored_tokens(store, unique)
        assert len(before) >= 10
        assert token_kids(before) == {kid_a}

    async with running_store(bus, settings, database_url, seal_key=key_b, seal_keys_retired=key_a) as store:
        ring = MasterKeyring(key_b, [key_a])
        keys = ring.for_tenant(unique)
        opened_before = [keys.open(t) for t in before]

        code = await asyncio.to_thread(rotate, settings.nats_url, "--tenant", unique, monkeypatch=monkeypatch)
        out = capsys.readouterr()
        assert code == 0, out.err
        assert f"re-sealed {len(before)} values under key {ring.current} (tenant {unique})" in out.out

        after = await stored_tokens(store, unique)
        assert token_kids(after) == {ring.current}
        assert len(after) == len(before)
        b_only = MasterKeyring(key_b).for_tenant(unique)  # the retired key is not needed any more
        assert sorted(b_only.open(t) for t in after) == sorted(opened_before)
        env = await store.ask(EnvironmentGet(tenant=unique, name="dev"), Environment)
        assert env.variables["region"] == "eu"
        assert b_only.open(env.variables["pw"]) == secret
        assert token_kids(await stored_tokens(store, other)) == {kid_a}, "--tenant touches that tenant only"
        audit = await store.ask(AuditList(tenant=unique, limit=5), AuditEntries)
        assert audit.entries[0].action == "keys.reseal"
        assert audit.entries[0].detail == {"values": len(before), "current": ring.current, "still_sealed_with": []}

        again = await store.ask(KeysReseal(tenant=unique), Resealed)
        assert (again.tenants, again.values, again.still_sealed_with) == (1, 0, ())

        whole: Any = await store.ask(KeysReseal(), Resealed)  # every tenant: the other one now
        assert whole.values >= len(before)
        assert token_kids(await stored_tokens(store, other)) == {ring.current}

    # a key dropped too early: what it sealed is named, not lost silently
    async with running_store(bus, settings, database_url, seal_key=key_a) as store:
        stuck = await store.ask(KeysReseal(tenant=unique), Resealed)
        assert stuck.values == 0
        assert stuck.still_sealed_with == (MasterKeyring(key_b).current,)
        code = await asyncio.to_thread(rotate, settings.nats_url, "--tenant", unique, monkeypatch=monkeypatch)
        assert code == 1
        assert "TRELLIS_SEAL_KEYS_RETIRED" in capsys.readouterr().err


async def test_rotate_names_what_was_wrong(
    bus: Bus, settings: Settings, database_url: str, unique: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    async with running_store(bus, settings, database_url):
        code = await asyncio.to_thread(rotate, settings.nats_url, "--tenant", unique, monkeypatch=monkeypatch)
        assert code == 2
        assert f"not_found (tenant): no tenant '{unique}'" in capsys.readouterr().err
        code = await asyncio.to_thread(rotate, settings.nats_url, "--tenant", "a.b", monkeypatch=monkeypatch)
        assert code == 2
        assert "invalid (tenant)" in capsys.readouterr().err
    monkeypatch.delenv("TRELLIS_NATS_URL", raising=False)
    assert await asyncio.to_thread(main, ["keys", "rotate"]) == 2
    assert "TRELLIS_NATS_URL" in capsys.readouterr().err
