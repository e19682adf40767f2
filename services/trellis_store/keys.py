"""The store's part of sealing: the tenants' data keys handed to their agents, `seal` for the CLI
and the gateway, and `keys.reseal`, which re-seals every stored token under the current key
after a rotation (docs/api.md, "Keys and rotation").

Why the store: it is the control-plane service every deployment runs, it already holds the master
keys (TRELLIS_SEAL_KEY, TRELLIS_SEAL_KEYS_RETIRED) and it holds every stored token.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from trellis_core import subjects
from trellis_core.logs import get_logger
from trellis_core.sealed import TOKEN_PATTERN, KeysAnswer, MasterKeyring, SealError, TenantKeys
from trellis_store.api import KeysReseal, Resealed, Sealed, SealValues, StoreError
from trellis_store.commands import audit, check_token
from trellis_store.context import TENANT_NAME, StoreContext, error

log = get_logger("store")

KEYS_QUEUE = "trellis-store-keys"
RESEAL_BATCH = 200

_encoder = msgspec.json.Encoder()


# ---- the keys responder -------------------------------------------------------------------------


def keys_answer(keyring: MasterKeyring, subject: str) -> KeysAnswer:
    """The answer to a request on `trellis.<tenant>.keys.get`: the tenant's material, the tenant
    taken from the subject (nats-server lets only that tenant's agents publish there)."""
    parts = subject.split(".")
    tenant = parts[1] if len(parts) == 4 else ""
    try:
        subjects.tenant_token(tenant)
    except subjects.InvalidSubjectToken as exc:
        return KeysAnswer(error=f"no keys for subject {subject}: {exc}")
    return KeysAnswer(material=keyring.for_tenant(tenant).material())


async def serve_keys(nc: NATS, keyring: MasterKeyring) -> Subscription:
    """Answer every tenant's keys requests (queue group KEYS_QUEUE, so store replicas share)."""

    async def on_request(msg: Msg) -> None:
        if not msg.reply:
            return
        answer = keys_answer(keyring, msg.subject)
        if answer.error:
            log.warning("keys_request_refused", subject=msg.subject, error=answer.error)
        else:
            log.info("keys_handed_out", subject=msg.subject)  # never the material
        try:
            await nc.publish(msg.reply, _encoder.encode(answer))
        except Exception as exc:  # a closed connection at shutdown: the agent asks again
            log.warning("keys_answer_failed", subject=msg.subject, error=f"{type(exc).__name__}: {exc}")

    return await nc.subscribe(subjects.ALL_KEYS_REQUESTS, queue=KEYS_QUEUE, cb=on_request)


# ---- seal -------------------------------------------------------------------------------------


async def seal_values(ctx: StoreContext, req: SealValues) -> Sealed | StoreError:
    """Each value sealed under the tenant's current key; a token given stays (once checked to open
    for this tenant). Not audited, and no value is ever logged: this is a pure function of the key."""
    if not TENANT_NAME.match(req.tenant) or req.tenant in subjects.RESERVED_TENANTS:
        return error("invalid", f"tenant {req.tenant!r} is not a tenant name", "tenant")
    keys = ctx.keys(req.tenant)
    sealed: dict[str, str] = {}
    for name, value in req.values.items():
        if (bad := check_token(keys, value, f"values.{name}")) is not None:
            return bad
        sealed[name] = keys.seal(value)
    return Sealed(values=sealed)


# ---- reseal -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Place:
    """A table whose columns may hold tokens: walked by its key within one tenant's rows."""

    table: str
    key: tuple[str, ...]  # the key after `tenant`, in order (unique within a tenant)
    start: tuple[Any, ...]  # a value below every key
    jsonb: tuple[str, ...] = ()
    text: tuple[str, ...] = ()

    @property
    def columns(self) -> tuple[str, ...]:
        return (*self.jsonb, *self.text)


# Every column a token can reach (the schema in migrations/): what the API stores as given
# (environment variables, audit details), what the projection keeps of events (bodies, rows,
# outputs, a compiled workflow's rendered strings, errors and reasons that quote them) and log
# chunks (an agent masks what it opened, but a tool may print a token it was given as it is).
PLACES = (
    Place("environments", ("name",), ("",), jsonb=("variables", "sealed", "outputs", "deployed_variables")),
    Place("runs", ("run_id",), ("",), jsonb=("workflow", "outputs", "variables", "errors"), text=("message",)),
    Place("activities", ("run_id", "activity_id"), ("", ""), jsonb=("outputs",), text=("reason",)),
    Place("events", ("seq",), (-1,), jsonb=("body",)),
    Place("approvals", ("run_id", "activity_id"), ("", ""), text=("comment",)),
    Place("audit", ("id",), (-1,), jsonb=("detail",)),
    Place("log_chunks", ("position",), (-1,), text=("data",)),
)


def _select(place: Place) -> str:
    n = len(place.key)
    keys = ", ".join(place.key)
    after = ", ".join(f"${i + 2}" for i in range(n))
    pattern = f"${n + 2}"
    cols = ", ".join(f"{c}::text AS {c}" for c in place.columns)
    stale = " OR ".join(f"{c}::text ~ {pattern}" for c in place.columns)
    return (
        f"SELECT {keys}, {cols} FROM {place.table} WHERE tenant = $1 AND ({keys}) > ({after}) "
        f"AND ({stale}) ORDER BY {keys} LIMIT ${n + 3} FOR UPDATE"
    )


def _update(place: Place, columns: list[str]) -> str:
    n = len(place.key)
    sets = ", ".join(
        f"{c} = ${n + 2 + i}::{'jsonb' if c in place.jsonb else 'text'}" for i, c in enumerate(columns)
    )
    where = " AND ".join(f"{k} = ${i + 2}" for i, k in enumerate(place.key))
    return f"UPDATE {place.table} SET {sets} WHERE tenant = $1 AND {where}"


def stale_pattern(current: str) -> str:
    """A PostgreSQL regular expression matching a token under any key but `current`."""
    return rf"\[\[trellis-sealed:v1:(?!{current}:)[0-9a-f]{{8}}:"


@dataclass
class _Tally:
    values: int = 0
    stuck: set[str] | None = None


def resealer(keys: TenantKeys, tally: _Tally) -> Callable[[str], str]:
    """`text` with every token not under the current key sealed again under it; a token that does
    not open (its key is not among the keys: dropped too early) stays, and its kid is noted."""
    stuck = tally.stuck if tally.stuck is not None else set()
    tally.stuck = stuck

    def one(match: re.Match[str]) -> str:
        if match["kid"] == keys.current:
            return match[0]
        try:
            plain = keys.open(match[0])
        except SealError:
            stuck.add(match["kid"])
            return match[0]
        tally.values += 1
        return keys.seal(plain)

    def text(value: str) -> str:
        return TOKEN_PATTERN.sub(one, value) if "[[trellis-sealed:" in value else value

    return text


async def reseal_tenant(conn: Any, keys: TenantKeys, *, batch: int = RESEAL_BATCH) -> _Tally:
    """Re-seal one tenant's stored tokens, place by place, one transaction a batch of rows."""
    tally = _Tally()
    reseal = resealer(keys, tally)
    pattern = stale_pattern(keys.current)
    for place in PLACES:
        select = _select(place)
        after = place.start
        while True:
            async with conn.transaction():
                rows = await conn.fetch(select, keys.tenant, *after, pattern, batch)
                for row in rows:
                    changed = {
                        c: new for c in place.columns if row[c] is not None and (new := reseal(row[c])) != row[c]
                    }
                    if changed:
                        columns = list(changed)
                        await conn.execute(
                            _update(place, columns),
                            keys.tenant,
                            *(row[k] for k in place.key),
                            *(changed[c] for c in columns),
                        )
            if len(rows) < batch:
                break
            after = tuple(rows[-1][k] for k in place.key)
    return tally


async def keys_reseal(ctx: StoreContext, req: KeysReseal) -> Resealed | StoreError:
    """Every stored token whose kid is not the current one, re-sealed under the current key: for
    one tenant, or (`tenant` empty) every tenant the store knows. Audited per tenant as
    `keys.reseal`. `still_sealed_with` names the kids of tokens that did not open (their key is
    neither current nor retired): those values are lost unless that key is set retired again."""
    if req.tenant and not TENANT_NAME.match(req.tenant):
        return error("invalid", f"tenant {req.tenant!r} is not a tenant name", "tenant")
    async with ctx.pool.acquire() as conn:
        if req.tenant:
            if not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM tenants WHERE name = $1)", req.tenant):
                return error("not_found", f"no tenant {req.tenant!r}", "tenant")
            tenants = [req.tenant]
        else:
            tenants = [r["name"] for r in await conn.fetch("SELECT name FROM tenants ORDER BY name")]
        values, stuck = 0, set()
        for tenant in tenants:
            tally = await reseal_tenant(conn, ctx.keys(tenant))
            values += tally.values
            still = sorted(tally.stuck or ())
            stuck.update(still)
            detail = {"values": tally.values, "current": ctx.keyring.current, "still_sealed_with": still}
            await audit(conn, tenant, req.actor, "keys.reseal", tenant, detail, "")
            log.info("keys_resealed", tenant=tenant, values=tally.values, still_sealed_with=still)
    return Resealed(
        tenants=len(tenants), values=values, current=ctx.keyring.current, still_sealed_with=tuple(sorted(stuck))
    )
