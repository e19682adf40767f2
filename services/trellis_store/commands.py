"""The store's write ops: each in one transaction, all or none, with an audit row for every change
made through the API. Conflicts and failed preconditions are answered as StoreErrors."""

from __future__ import annotations

import hashlib
from typing import Any

import asyncpg
import msgspec

from trellis_core.events import Problem
from trellis_core.sealed import SealError, TenantKeys, is_token
from trellis_store import links
from trellis_store.api import (
    MASK,
    AuditRecord,
    CallbackRedeem,
    Documents,
    Environment,
    EnvironmentPut,
    IssuedToken,
    Ok,
    Redeemed,
    RunCreate,
    RunCreated,
    StoreError,
    TemplateDocument,
    TemplatePublish,
    TenantCreate,
    TokenCreate,
    WebhookRotate,
    WebhookSecret,
)
from trellis_store.context import ENVIRONMENT_NAME, TENANT_NAME, StoreContext, error, etag_of
from trellis_store.queries import DOCUMENT_COLUMNS, ENV_COLUMNS, document_of, environment_of
from trellis_store.tokens import new_id, new_secret, new_token, sha256_hex

_json = msgspec.json.Encoder()
_str_map = msgspec.json.Decoder(dict[str, str])


def to_json(value: Any) -> str:
    return _json.encode(value).decode()


async def audit(
    conn: Any, tenant: str, actor: str, action: str, target: str, detail: dict[str, Any], remote: str
) -> None:
    await conn.execute(
        "INSERT INTO audit (tenant, actor, action, target, detail, remote) VALUES ($1, $2, $3, $4, $5::jsonb, $6)",
        tenant,
        actor or "unknown",
        action,
        target,
        to_json(detail),
        remote,
    )


async def tenant_exists(conn: Any, tenant: str) -> bool:
    return bool(await conn.fetchval("SELECT EXISTS (SELECT 1 FROM tenants WHERE name = $1)", tenant))


async def _issue_token(conn: Any, tenant: str, role: str, user: str) -> IssuedToken:
    token, token_id = new_token(), new_id("tok")
    await conn.execute(
        'INSERT INTO tokens (token_id, sha256, tenant, role, "user") VALUES ($1, $2, $3, $4, $5)',
        token_id,
        sha256_hex(token),
        tenant,
        role,
        user,
    )
    return IssuedToken(tenant=tenant, role=role, user=user, token_id=token_id, token=token)  # type: ignore[arg-type]


async def tenant_create(ctx: StoreContext, req: TenantCreate) -> IssuedToken | StoreError:
    """A new tenant and its first (admin) token.

    A tenant the projection already knows from bus runs (its row, written for those runs, but no
    token) is adopted: created for the API like a new one, keeping the runs and environments the
    projection holds for it. That is deliberate: the dev stack runs `trellis run` on the bus as
    tenant `default` before anyone creates it through the API. Only a tenant with a token is
    taken (`conflict`). The audit entry of an adoption says so (`adopted: true`), so whoever
    reads it knows the runs already there came before the tenant was created."""
    if not TENANT_NAME.match(req.name):
        return error("invalid", f"tenant name {req.name!r} must be 1-128 of A-Z a-z 0-9 _ -", "name")
    if not req.admin_user.strip():
        return error("invalid", "admin_user must not be empty", "admin_user")
    async with ctx.pool.acquire() as conn, conn.transaction():
        inserted = await conn.fetchval(
            "INSERT INTO tenants (name) VALUES ($1) ON CONFLICT DO NOTHING RETURNING name", req.name
        )
        await conn.execute("SELECT 1 FROM tenants WHERE name = $1 FOR UPDATE", req.name)
        if await conn.fetchval("SELECT EXISTS (SELECT 1 FROM tokens WHERE tenant = $1)", req.name):
            return error("conflict", f"tenant {req.name!r} exists", "name")
        issued = await _issue_token(conn, req.name, "admin", req.admin_user)
        detail: dict[str, Any] = {"admin_user": req.admin_user}
        if inserted is None:  # the projection's row, from bus runs: adopted
            detail["adopted"] = True
        await audit(conn, req.name, req.actor, "tenant.create", req.name, detail, "")
    return issued


async def token_create(ctx: StoreContext, req: TokenCreate) -> IssuedToken | StoreError:
    if not req.user.strip():
        return error("invalid", "user must not be empty", "user")
    async with ctx.pool.acquire() as conn, conn.transaction():
        if not await tenant_exists(conn, req.tenant):
            return error("not_found", f"no tenant {req.tenant!r}", "tenant")
        issued = await _issue_token(conn, req.tenant, req.role, req.user)
        detail = {"role": req.role, "user": req.user, "token_id": issued.token_id}
        await audit(conn, req.tenant, req.actor, "token.create", issued.token_id, detail, "")
    return issued


def _bundle_digest(req: TemplatePublish) -> str:
    sources = sorted(req.sources, key=lambda s: s.path)
    return hashlib.sha256(_json.encode(sources)).hexdigest()


def _check_documents(req: TemplatePublish) -> StoreError | None:
    if not req.sources:
        return error("invalid", "a bundle needs at least one source file", "sources")
    if not req.documents:
        return error("invalid", "a bundle needs at least one document", "documents")
    seen: dict[tuple[str, str, str], int] = {}
    for i, doc in enumerate(req.documents):
        for field in ("kind", "name", "version", "digest"):
            if not getattr(doc, field):
                return error("invalid", f"document {i} has no {field}", f"documents[{i}].{field}")
        key = (doc.kind, doc.name, doc.version)
        if key in seen:
            return error(
                "invalid",
                f"{doc.kind} {doc.name}@{doc.version} appears twice (documents[{seen[key]}])",
                f"documents[{i}]",
            )
        seen[key] = i
    return None


async def template_publish(ctx: StoreContext, req: TemplatePublish) -> Documents | StoreError:
    """All or none: a version already published with other content refuses the whole bundle;
    a version published with the same content is left as it was (re-publishing is a no-op)."""
    if (bad := _check_documents(req)) is not None:
        return bad
    try:
        return await _publish(ctx, req)
    except _Rollback as refused:
        return refused.answer


async def _publish(ctx: StoreContext, req: TemplatePublish) -> Documents | StoreError:
    digest = _bundle_digest(req)
    async with ctx.pool.acquire() as conn, conn.transaction():
        if not await tenant_exists(conn, req.tenant):
            return error("not_found", f"no tenant {req.tenant!r}", "tenant")
        await conn.execute(
            "INSERT INTO template_bundles (tenant, digest, sources) VALUES ($1, $2, $3::jsonb) ON CONFLICT DO NOTHING",
            req.tenant,
            digest,
            to_json(req.sources),
        )
        inserted = await conn.fetch(
            "INSERT INTO templates (tenant, kind, name, version, digest, description, path, bundle, published_by) "
            "SELECT $1, d.kind, d.name, d.version, d.digest, d.description, d.path, $2, $3 "
            "FROM unnest($4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[]) "
            "AS d(kind, name, version, digest, description, path) "
            "ON CONFLICT DO NOTHING RETURNING kind, name, version",
            req.tenant,
            digest,
            req.actor,
            *_columns(req.documents),
        )
        rows = await conn.fetch(
            f"SELECT {DOCUMENT_COLUMNS} FROM templates t WHERE tenant = $1 AND (kind, name, version) IN "
            "(SELECT * FROM unnest($2::text[], $3::text[], $4::text[]))",
            req.tenant,
            [d.kind for d in req.documents],
            [d.name for d in req.documents],
            [d.version for d in req.documents],
        )
        stored = {(r["kind"], r["name"], r["version"]): r for r in rows}
        problems = _changed_versions(req.documents, stored)
        if problems:  # leave the transaction by an exception: nothing of the bundle is kept
            message = "; ".join(p.message for p in problems)
            raise _Rollback(
                StoreError(code="conflict", message=message, path=problems[0].path, problems=tuple(problems))
            )
        if inserted:
            names = [f"{r['kind']}/{r['name']}@{r['version']}" for r in inserted]
            await audit(conn, req.tenant, req.actor, "template.publish", digest, {"documents": names}, req.remote)
    return Documents(documents=tuple(document_of(stored[(d.kind, d.name, d.version)]) for d in req.documents))


def _columns(documents: tuple[TemplateDocument, ...]) -> list[list[str]]:
    """The documents as six parallel arrays, for one INSERT ... SELECT FROM unnest(...)."""
    fields = ("kind", "name", "version", "digest", "description", "path")
    return [[getattr(d, f) for d in documents] for f in fields]


def _changed_versions(
    documents: tuple[TemplateDocument, ...], stored: dict[tuple[str, str, str], Any]
) -> list[Problem]:
    problems = []
    for i, doc in enumerate(documents):
        row = stored[(doc.kind, doc.name, doc.version)]
        if row["digest"] != doc.digest:
            problems.append(
                Problem(
                    message=f"{doc.kind} {doc.name} version {doc.version} is already published with other content: "
                    "publish it under a new version",
                    file=doc.path,
                    path=f"documents[{i}]",
                    hint="a published version never changes",
                )
            )
    return problems


class _Rollback(Exception):
    def __init__(self, answer: StoreError) -> None:
        super().__init__(answer.message)
        self.answer = answer


def _seal_variables(
    ctx: StoreContext, req: EnvironmentPut, previous_sealed: dict[str, str]
) -> tuple[dict[str, str], dict[str, str]] | StoreError:
    """Split the variables into plain ones and sealed ones (tokens). A sensitive value given in
    clear is sealed under the tenant's current key; a token given stays as it is, once checked
    to open for this tenant (a token of another tenant, or altered, would only fail later, in the
    agent); the mask sent back (`********`, as a display showed it) keeps the token stored before."""
    plain: dict[str, str] = {}
    sealed: dict[str, str] = {}
    sensitive = set(req.sensitive)
    keys = ctx.keys(req.tenant)
    for name, value in req.variables.items():
        if name not in sensitive:
            plain[name] = value
        elif value == MASK and name in previous_sealed:
            sealed[name] = previous_sealed[name]
        elif (bad := check_token(keys, value, f"variables.{name}")) is not None:
            return bad
        else:
            sealed[name] = keys.seal(value)
    return plain, sealed


def check_token(keys: TenantKeys, value: str, path: str) -> StoreError | None:
    """A whole token must open for the tenant (its text is never put in the message)."""
    if not is_token(value):
        return None
    try:
        keys.open(value)
    except SealError as exc:
        return error("invalid", f"{path}: the sealed value given does not open: {exc}", path)
    return None


def _check_environment(req: EnvironmentPut) -> StoreError | None:
    if not ENVIRONMENT_NAME.match(req.name):
        return error(
            "invalid", f"environment name {req.name!r} must be 1-128 of A-Z a-z 0-9 _ . - (not first . or -)", "name"
        )
    if not req.template.name or not req.template.version:
        return error("invalid", "template needs a name and a version", "template")
    return None


async def environment_put(ctx: StoreContext, req: EnvironmentPut) -> Environment | StoreError:
    """Create, or update under If-Match: `if_match` must be the current ETag (`"<revision>"`);
    an existing environment with no `if_match` is refused unless `force`."""
    if (bad := _check_environment(req)) is not None:
        return bad
    async with ctx.pool.acquire() as conn, conn.transaction():
        if not await tenant_exists(conn, req.tenant):
            return error("not_found", f"no tenant {req.tenant!r}", "tenant")
        if not await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM templates WHERE tenant = $1 AND kind = 'EnvironmentTemplate' "
            "AND name = $2 AND version = $3)",
            req.tenant,
            req.template.name,
            req.template.version,
        ):
            return error(
                "invalid", f"no EnvironmentTemplate {req.template.name}@{req.template.version} is published", "template"
            )
        current = await conn.fetchrow(
            "SELECT revision, sealed::text AS sealed FROM environments WHERE tenant = $1 AND name = $2 FOR UPDATE",
            req.tenant,
            req.name,
        )
        if (refused := _precondition(req, current)) is not None:
            return refused
        split = _seal_variables(ctx, req, _str_map.decode(current["sealed"]) if current else {})
        if isinstance(split, StoreError):
            return split
        plain, sealed = split
        args = (req.tenant, req.name, req.template.name, req.template.version, to_json(plain), to_json(sealed),
                list(req.sensitive), list(req.agents))  # fmt: skip
        if current is None:
            row = await conn.fetchrow(
                "INSERT INTO environments (tenant, name, template_name, template_version, variables, sealed, "
                "sensitive, agents) VALUES ($1, $2, $3, $4, $5::jsonb, $6::jsonb, $7, $8) ON CONFLICT DO NOTHING "
                f"RETURNING {ENV_COLUMNS}",
                *args,
            )
            if row is None:
                return error(
                    "precondition_failed", f"environment {req.name!r} was created meanwhile: read it and retry"
                )
        else:
            row = await conn.fetchrow(
                "UPDATE environments SET template_name = $3, template_version = $4, variables = $5::jsonb, "
                "sealed = $6::jsonb, sensitive = $7, agents = $8, revision = revision + 1, updated_at = now() "
                f"WHERE tenant = $1 AND name = $2 RETURNING {ENV_COLUMNS}",
                *args,
            )
        detail = {"revision": row["revision"], "template": f"{req.template.name}@{req.template.version}",
                  "variables": sorted(req.variables), "created": current is None}  # fmt: skip
        await audit(conn, req.tenant, req.actor, "environment.put", req.name, detail, req.remote)
        return environment_of(row)


def _precondition(req: EnvironmentPut, current: Any) -> StoreError | None:
    if current is None:
        if req.if_match:
            return error("precondition_failed", f"environment {req.name!r} does not exist (If-Match given)", "if_match")
        return None
    etag = etag_of(current["revision"])
    if not req.if_match:
        if req.force:
            return None
        return error(
            "precondition_failed",
            f"environment {req.name!r} exists (ETag {etag}): send If-Match with its ETag to update it",
            "if_match",
        )
    if req.if_match not in ("*", etag, f"W/{etag}"):
        return error(
            "precondition_failed",
            f"environment {req.name!r} changed: its ETag is {etag}, not {req.if_match}",
            "if_match",
        )
    return None


async def webhook_rotate(ctx: StoreContext, req: WebhookRotate) -> WebhookSecret | StoreError:
    secret = new_secret()
    async with ctx.pool.acquire() as conn, conn.transaction():
        found = await conn.fetchval(
            "UPDATE environments SET webhook_sha256 = $3 WHERE tenant = $1 AND name = $2 RETURNING name",
            req.tenant,
            req.environment,
            sha256_hex(secret),
        )
        if found is None:
            return error("not_found", f"no environment {req.environment!r}", "environment")
        await audit(conn, req.tenant, req.actor, "webhook.rotate", req.environment, {}, req.remote)
    return WebhookSecret(environment=req.environment, secret=secret)


async def run_create(ctx: StoreContext, req: RunCreate) -> RunCreated | StoreError:
    """Record a requested run. A retry with the same idempotency key and request answers the
    first run; the same key with another request is a conflict."""
    if not req.run_id:
        return error("invalid", "run_id must not be empty", "run_id")
    async with ctx.pool.acquire() as conn:
        try:
            async with conn.transaction():
                if not await conn.fetchval(
                    "SELECT EXISTS (SELECT 1 FROM environments WHERE tenant = $1 AND name = $2)",
                    req.tenant,
                    req.environment,
                ):
                    return error("not_found", f"no environment {req.environment!r}", "environment")
                if req.idempotency_key and (earlier := await _idempotent(conn, req)) is not None:
                    return earlier
                if req.action == "destroy" and (refused := await links.refuse_destroy(conn, req.tenant,
                                                                                       req.environment)):
                    return refused
                await conn.execute(
                    "INSERT INTO runs (tenant, run_id, environment, action, status, requested_by, requested_at, "
                    "idempotency_key, request_digest, purpose) "
                    "VALUES ($1, $2, $3, $4, 'requested', $5, now(), $6, $7, $8)",
                    req.tenant,
                    req.run_id,
                    req.environment,
                    req.action,
                    req.requested_by,
                    req.idempotency_key or None,
                    req.request_digest,
                    req.purpose,
                )
                detail = {"action": req.action, "run_id": req.run_id}
                if req.purpose:
                    detail["purpose"] = req.purpose
                await audit(conn, req.tenant, req.requested_by, "run.create", req.environment, detail, req.remote)
        except asyncpg.UniqueViolationError as exc:
            if req.idempotency_key and exc.constraint_name == "runs_idempotency":
                earlier = await _idempotent(conn, req)  # a concurrent retry won the race
                if earlier is not None:
                    return earlier
            return error("conflict", f"run {req.run_id!r} exists", "run_id")
    return RunCreated(run_id=req.run_id, created=True)


async def _idempotent(conn: Any, req: RunCreate) -> RunCreated | StoreError | None:
    row = await conn.fetchrow(
        "SELECT run_id, request_digest FROM runs WHERE tenant = $1 AND idempotency_key = $2",
        req.tenant,
        req.idempotency_key,
    )
    if row is None:
        return None
    if row["request_digest"] != req.request_digest:
        return error(
            "conflict",
            f"idempotency key {req.idempotency_key!r} was used for another request (run {row['run_id']})",
            "idempotency_key",
        )
    return RunCreated(run_id=row["run_id"], created=False)


async def callback_redeem(ctx: StoreContext, req: CallbackRedeem) -> Redeemed | StoreError:
    if not req.token_id:
        return error("invalid", "token_id must not be empty", "token_id")
    used = await ctx.pool.fetchval(
        "INSERT INTO callback_tokens (token_id, tenant, expires_at) VALUES ($1, $2, $3) "
        "ON CONFLICT DO NOTHING RETURNING token_id",
        req.token_id,
        req.tenant,
        req.expires_at,
    )
    if used is None:
        return error("conflict", f"callback token {req.token_id!r} was already used", "token_id")
    return Redeemed(token_id=req.token_id)


async def audit_record(ctx: StoreContext, req: AuditRecord) -> Ok | StoreError:
    if not req.actor or not req.action:
        return error("invalid", "an audit record needs an actor and an action", "actor" if not req.actor else "action")
    async with ctx.pool.acquire() as conn:
        await audit(conn, req.tenant, req.actor, req.action, req.target, req.detail, req.remote)
    return Ok()
