"""The store's old at-rest sealing (`v1:<nonce b64>:<ciphertext b64>`, AES-GCM straight under
TRELLIS_SEAL_KEY) converted to sealed tokens once, at start-up after the migrations.

Migration 0003 moves the old sealed blobs of requested and deployed variables aside
(`runs.variables_v1`, `environments.deployed_variables_v1`); this opens them, and the `v1:`
values of `environments.sealed` and the `{"sealed": "v1:..."}` sensitive outputs of runs and
environments, with the master key as the old sealer used it (the current one, then each retired
one: a rotation may have come first), and seals them as tokens of the row's tenant. It is
idempotent: it only finds what is still in the old form, so a second start does nothing, and it
runs under an advisory lock, so store replicas starting together convert each row once.

A requested-variables blob held the whole request in one seal, sensitive or not; which names were
sensitive is not recorded with it, so every value of it becomes a token (never in clear; the
agent opens every token it is given).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable
from typing import Any

import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from trellis_core.logs import get_logger
from trellis_core.sealed import MasterKeyring, SealError, TenantKeys
from trellis_store.outputs import plain_text

log = get_logger("store")

PREFIX = "v1:"
# Not the migration lock's key: conversion runs after the migrations, under its own.
ADVISORY_LOCK_KEY = 0x7472656C6C6973 + 3
BATCH = 200

_json = msgspec.json.Encoder()
_any = msgspec.json.Decoder()
_str_map = msgspec.json.Decoder(dict[str, str])


class LegacyOpener:
    """Opens what `Sealer(seal_key).seal` made, with any of the master keys given."""

    def __init__(self, keys_b64: Iterable[str]) -> None:
        self._aeads = []
        for text in keys_b64:
            try:
                key = base64.b64decode(text.strip(), validate=True)
            except (binascii.Error, ValueError):
                continue  # MasterKeyring has refused a bad key already; nothing to try here
            if len(key) == 32:
                self._aeads.append(AESGCM(key))

    @classmethod
    def from_settings(cls, settings: Any) -> LegacyOpener:
        retired = [k for k in str(getattr(settings, "seal_keys_retired", "")).split(",") if k.strip()]
        return cls([settings.seal_key, *retired])

    def open(self, sealed: str) -> str:
        version, _, rest = sealed.partition(":")
        nonce_b64, _, data_b64 = rest.partition(":")
        if f"{version}:" != PREFIX or not nonce_b64 or not data_b64:
            raise SealError("not an old sealed value (v1:<nonce>:<ciphertext>)")
        try:
            nonce, data = base64.b64decode(nonce_b64), base64.b64decode(data_b64)
        except (binascii.Error, ValueError):
            raise SealError("an old sealed value is not base64") from None
        for aead in self._aeads:
            try:
                return aead.decrypt(nonce, data, None).decode()
            except (InvalidTag, ValueError, UnicodeDecodeError):
                continue
        raise SealError(
            "an old sealed value opens with neither TRELLIS_SEAL_KEY nor any TRELLIS_SEAL_KEYS_RETIRED key: "
            "set the key it was sealed with as a retired key and restart the store"
        )


def is_legacy(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(PREFIX)


def convert_sealed(sealed: dict[str, str], opener: LegacyOpener, keys: TenantKeys) -> dict[str, str]:
    """environments.sealed: each `v1:` value as a token; tokens stay."""
    return {name: keys.seal(opener.open(v)) if is_legacy(v) else v for name, v in sealed.items()}


def convert_blob(blob: str, opener: LegacyOpener, keys: TenantKeys) -> dict[str, str]:
    """A sealed variables blob (the JSON object of a request's variables): every value a token."""
    variables = _str_map.decode(opener.open(blob))
    return {name: keys.seal(value) for name, value in variables.items()}


def convert_outputs(outputs: dict[str, Any], opener: LegacyOpener, keys: TenantKeys) -> dict[str, Any]:
    """resource -> name -> entry: `{"sealed": "v1:<JSON of the value>", ...}` entries become
    `{"value": "<token>", ...}`, the token sealing the value as the agent does (outputs.plain_text)."""

    def one(entry: Any) -> Any:
        if not (isinstance(entry, dict) and is_legacy(entry.get("sealed"))):
            return entry
        value = _any.decode(opener.open(entry["sealed"]))
        return {**{k: v for k, v in entry.items() if k != "sealed"}, "value": keys.seal(plain_text(value))}

    return {
        resource: {name: one(e) for name, e in named.items()} if isinstance(named, dict) else named
        for resource, named in outputs.items()
    }


_LEGACY_OUTPUT = '%"sealed": "v1:%'

_ENVIRONMENTS = f"""
SELECT tenant, name, sealed::text AS sealed, outputs::text AS outputs, deployed_variables_v1
FROM environments
WHERE (tenant, name) > ($1, $2)
  AND (deployed_variables_v1 IS NOT NULL OR sealed::text LIKE '%"v1:%' OR outputs::text LIKE '{_LEGACY_OUTPUT}')
ORDER BY tenant, name LIMIT $3 FOR UPDATE
"""

_RUNS = f"""
SELECT tenant, run_id, outputs::text AS outputs, variables_v1
FROM runs
WHERE (tenant, run_id) > ($1, $2) AND (variables_v1 IS NOT NULL OR outputs::text LIKE '{_LEGACY_OUTPUT}')
ORDER BY tenant, run_id LIMIT $3 FOR UPDATE
"""


class _Keys:
    """Each tenant's keys, derived once per conversion."""

    def __init__(self, keyring: MasterKeyring) -> None:
        self.keyring = keyring
        self._tenants: dict[str, TenantKeys] = {}

    def __call__(self, tenant: str) -> TenantKeys:
        if tenant not in self._tenants:
            self._tenants[tenant] = self.keyring.for_tenant(tenant)
        return self._tenants[tenant]


async def convert(pool: Any, keyring: MasterKeyring, opener: LegacyOpener, *, batch: int = BATCH) -> int:
    """Convert every old sealed value still stored; return how many rows changed. A row whose
    old values do not open is left as it was and logged (naming the row, never a value): the
    next start, with the right key among the retired ones, converts it."""
    keys = _Keys(keyring)
    changed = 0
    async with pool.acquire() as conn:
        await conn.execute("SELECT pg_advisory_lock($1)", ADVISORY_LOCK_KEY)
        try:
            changed += await _environments(conn, keys, opener, batch)
            changed += await _runs(conn, keys, opener, batch)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", ADVISORY_LOCK_KEY)
    if changed:
        log.info("store_legacy_sealing_converted", rows=changed)
    return changed


async def _environments(conn: Any, keys: _Keys, opener: LegacyOpener, batch: int) -> int:
    after, changed = ("", ""), 0
    while True:
        async with conn.transaction():
            rows = await conn.fetch(_ENVIRONMENTS, *after, batch)
            for row in rows:
                tenant = row["tenant"]
                try:
                    sealed = convert_sealed(_str_map.decode(row["sealed"]), opener, keys(tenant))
                    outputs = convert_outputs(_any.decode(row["outputs"]), opener, keys(tenant))
                    blob = row["deployed_variables_v1"]
                    deployed = None if blob is None else convert_blob(blob, opener, keys(tenant))
                except (SealError, msgspec.DecodeError, msgspec.ValidationError) as exc:
                    log.error("store_legacy_sealing_unconverted", table="environments", tenant=tenant,
                              name=row["name"], error=str(exc))  # fmt: skip
                    continue
                await conn.execute(
                    "UPDATE environments SET sealed = $3::jsonb, outputs = $4::jsonb, "
                    "deployed_variables = CASE WHEN $5::text IS NULL THEN deployed_variables ELSE $5::jsonb END, "
                    "deployed_variables_v1 = NULL WHERE tenant = $1 AND name = $2",
                    tenant,
                    row["name"],
                    _json.encode(sealed).decode(),
                    _json.encode(outputs).decode(),
                    None if deployed is None else _json.encode(deployed).decode(),
                )
                changed += 1
        if len(rows) < batch:
            return changed
        after = (rows[-1]["tenant"], rows[-1]["name"])


async def _runs(conn: Any, keys: _Keys, opener: LegacyOpener, batch: int) -> int:
    after, changed = ("", ""), 0
    while True:
        async with conn.transaction():
            rows = await conn.fetch(_RUNS, *after, batch)
            for row in rows:
                tenant = row["tenant"]
                try:
                    outputs = convert_outputs(_any.decode(row["outputs"]), opener, keys(tenant))
                    blob = row["variables_v1"]
                    variables = None if blob is None else convert_blob(blob, opener, keys(tenant))
                except (SealError, msgspec.DecodeError, msgspec.ValidationError) as exc:
                    log.error("store_legacy_sealing_unconverted", table="runs", tenant=tenant,
                              run_id=row["run_id"], error=str(exc))  # fmt: skip
                    continue
                await conn.execute(
                    "UPDATE runs SET outputs = $3::jsonb, "
                    "variables = CASE WHEN $4::text IS NULL THEN variables ELSE $4::jsonb END, "
                    "variables_v1 = NULL WHERE tenant = $1 AND run_id = $2",
                    tenant,
                    row["run_id"],
                    _json.encode(outputs).decode(),
                    None if variables is None else _json.encode(variables).decode(),
                )
                changed += 1
        if len(rows) < batch:
            return changed
        after = (rows[-1]["tenant"], rows[-1]["run_id"])
