"""The store's read ops: each one query (or two) filtered by tenant, rows turned into api Structs.

Another tenant's object is simply not found: every WHERE names the tenant."""

from __future__ import annotations

from typing import Any

import msgspec

from trellis_core.events import Problem, SourceFile
from trellis_core.workflow import Workflow
from trellis_store import drift_rows, links
from trellis_store.api import (
    ActivityRow,
    Approval,
    ApprovalGet,
    AuditEntries,
    AuditEntry,
    AuditList,
    DeployRecord,
    DeployRecordGet,
    Documents,
    Environment,
    EnvironmentGet,
    EnvironmentList,
    EnvironmentListed,
    Environments,
    LogChunkRow,
    LogChunks,
    LogsGet,
    Ping,
    Pong,
    Principal,
    RunDetail,
    RunGet,
    RunList,
    Runs,
    RunSummary,
    StoreError,
    TemplateBundle,
    TemplateBundleGet,
    TemplateDocument,
    TemplateList,
    TemplateRef,
    TokenVerify,
    WebhookResolve,
    WebhookTarget,
)
from trellis_store.context import Encoded, StoreContext, check_limit, error, etag_of
from trellis_store.outputs import masked_last_deploy, masked_outputs, masked_resources, seal_resources

_activities = msgspec.json.Decoder(tuple[ActivityRow, ...])
_sources = msgspec.json.Decoder(tuple[SourceFile, ...])
_problems = msgspec.json.Decoder(tuple[Problem, ...])
_workflow = msgspec.json.Decoder(Workflow)
_str_map = msgspec.json.Decoder(dict[str, str])
_outputs = msgspec.json.Decoder(dict[str, dict[str, Any]])
_any = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()

DOCUMENT_COLUMNS = "kind, name, version, description, path, digest, published_at, published_by"


def document_of(row: Any) -> TemplateDocument:
    return TemplateDocument(
        kind=row["kind"],
        name=row["name"],
        version=row["version"],
        description=row["description"],
        path=row["path"],
        digest=row["digest"],
        published_at=row["published_at"],
        published_by=row["published_by"],
    )


async def token_verify(ctx: StoreContext, req: TokenVerify) -> Principal | StoreError:
    row = await ctx.pool.fetchrow(
        'SELECT token_id, tenant, role, "user" FROM tokens WHERE sha256 = $1 AND revoked_at IS NULL',
        req.token_sha256.lower(),
    )
    if row is None:
        return error("not_found", "no such token (unknown or revoked)", "token_sha256")
    return Principal(tenant=row["tenant"], role=row["role"], user=row["user"], token_id=row["token_id"])


async def template_list(ctx: StoreContext, req: TemplateList) -> Documents:
    rows = await ctx.pool.fetch(
        f"SELECT {DOCUMENT_COLUMNS} FROM templates WHERE tenant = $1 AND ($2 = '' OR kind = $2) "
        "AND ($3 = '' OR name = $3) ORDER BY kind, name, version",
        req.tenant,
        req.kind,
        req.name,
    )
    return Documents(documents=tuple(document_of(r) for r in rows))


async def template_bundle(ctx: StoreContext, req: TemplateBundleGet) -> TemplateBundle | StoreError:
    text = await ctx.pool.fetchval(
        "SELECT b.sources::text FROM templates t "
        "JOIN template_bundles b ON b.tenant = t.tenant AND b.digest = t.bundle "
        "WHERE t.tenant = $1 AND t.kind = 'EnvironmentTemplate' AND t.name = $2 AND t.version = $3",
        req.tenant,
        req.name,
        req.version,
    )
    if text is None:
        return error("not_found", f"no EnvironmentTemplate {req.name}@{req.version} is published", "name")
    return TemplateBundle(name=req.name, version=req.version, sources=_sources.decode(text))


ENV_COLUMNS = (
    "name, template_name, template_version, variables::text AS variables, sealed::text AS sealed, sensitive, agents, "
    "status, revision, outputs::text AS outputs, last_run_id, created_at, updated_at"
)

RUN_COLUMNS = (
    "run_id, environment, action, status, requested_by, requested_at, started_at, finished_at, message, purpose"
)


def environment_of(row: Any) -> Environment:
    """The API's view of a row: sensitive variables and outputs as the tokens stored (the
    gateway and the CLI mask tokens for display; only an agent opens them). Nothing here is in
    clear but what was given in clear: a sensitive output stored in clear before sealing reads
    `********`."""
    variables = _str_map.decode(row["variables"])
    variables.update(_str_map.decode(row["sealed"]))
    return Environment(
        name=row["name"],
        template=TemplateRef(name=row["template_name"], version=row["template_version"]),
        status=row["status"],
        etag=etag_of(row["revision"]),
        variables=variables,
        sensitive=tuple(row["sensitive"]),
        agents=tuple(row["agents"]),
        outputs=masked_resources(_outputs.decode(row["outputs"])),
        last_run_id=row["last_run_id"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


async def environment_get(ctx: StoreContext, req: EnvironmentGet) -> Environment | StoreError:
    """`reveal` changes nothing any more: sensitive values are tokens either way, and the gateway
    starts a run with the tokens (the agent opens them)."""
    row = await ctx.pool.fetchrow(
        f"SELECT {ENV_COLUMNS} FROM environments WHERE tenant = $1 AND name = $2", req.tenant, req.name
    )
    if row is None:
        return error("not_found", f"no environment {req.name!r}", "name")
    async with ctx.pool.acquire() as conn:
        reads = await links.depends_on(conn, req.tenant, req.name)
        readers = await links.dependents(conn, req.tenant, req.name)
    drift = await drift_rows.last_check(ctx.pool, req.tenant, req.name)
    return msgspec.structs.replace(environment_of(row), depends_on=reads or msgspec.UNSET,
                                   dependents=readers or msgspec.UNSET, drift=drift or msgspec.UNSET)


# One page of the list in one query: each environment with its newest run of any kind (by id, as
# run.list orders them: ids are time-ordered), found through runs_by_environment, and its time to
# live's expiry (the ttl schedule's next_due_at, NULL until armed).
ENV_LIST = """
SELECT e.name, e.template_name, e.template_version, e.variables::text AS variables, e.sealed::text AS sealed,
    e.sensitive, e.agents, e.status, e.revision, e.outputs::text AS outputs, e.last_run_id, e.created_at,
    e.updated_at,
    r.run_id AS run_run_id, r.environment AS run_environment, r.action AS run_action, r.status AS run_status,
    r.requested_by AS run_requested_by, r.requested_at AS run_requested_at, r.started_at AS run_started_at,
    r.finished_at AS run_finished_at, r.message AS run_message, r.purpose AS run_purpose,
    (SELECT min(s.next_due_at) FROM schedules s
     WHERE s.tenant = e.tenant AND s.environment = e.name AND s.kind = 'ttl') AS expires_at
FROM environments e
LEFT JOIN LATERAL (
    SELECT * FROM runs WHERE runs.tenant = e.tenant AND runs.environment = e.name ORDER BY runs.run_id DESC LIMIT 1
) r ON true
WHERE e.tenant = $1 AND e.name > $2 ORDER BY e.name LIMIT $3
"""


def listed_of(row: Any) -> EnvironmentListed:
    """A row of ENV_LIST: the environment, its newest run (run_* columns, NULL without one), its expiry."""
    latest = None
    if row["run_run_id"] is not None:
        latest = RunSummary(**{name: row[f"run_{name}"] for name in RunSummary.__struct_fields__})
    fields = msgspec.structs.asdict(environment_of(row))
    return EnvironmentListed(**fields, latest_run=latest, expires_at=row["expires_at"])


async def environment_list(ctx: StoreContext, req: EnvironmentList) -> Environments | StoreError:
    if (bad := check_limit(req.limit)) is not None:
        return bad
    rows = await ctx.pool.fetch(ENV_LIST, req.tenant, req.after, req.limit)
    return Environments(environments=tuple(listed_of(r) for r in rows))


async def webhook_resolve(ctx: StoreContext, req: WebhookResolve) -> WebhookTarget | StoreError:
    row = await ctx.pool.fetchrow(
        "SELECT tenant, name FROM environments WHERE webhook_sha256 = $1 AND name = $2",
        req.secret_sha256.lower(),
        req.environment,
    )
    if row is None:
        return error("not_found", f"no webhook of environment {req.environment!r} has this secret", "secret_sha256")
    return WebhookTarget(tenant=row["tenant"], environment=row["name"])


# The whole activity list built by PostgreSQL as one JSON array in workflow order: one round
# trip and one msgspec decode, however many activities (a 7,000-activity run stays fast).
ACTIVITIES_JSON = """
SELECT coalesce(json_agg(json_build_object(
    'id', activity_id, 'kind', kind, 'status', status, 'resource', resource, 'stage', stage,
    'depends_on', depends_on, 'attempts', attempts, 'agent', agent, 'started_at', started_at,
    'finished_at', finished_at, 'outputs', outputs, 'reason', reason, 'exit_code', exit_code
) ORDER BY ordinal), '[]')::text
FROM activities WHERE tenant = $1 AND run_id = $2
"""


def summary_fields(row: Any) -> dict[str, Any]:
    return {
        "run_id": row["run_id"],
        "environment": row["environment"],
        "action": row["action"],
        "status": row["status"],
        "requested_by": row["requested_by"],
        "requested_at": row["requested_at"],
        "started_at": row["started_at"],
        "finished_at": row["finished_at"],
        "message": row["message"],
        "purpose": row["purpose"],
    }


class _RunTail(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What RunDetail holds after its activities, with RunDetail's defaults (so omitted alike)."""

    errors: tuple[Problem, ...] = ()
    outputs: dict[str, dict[str, Any]] = {}
    workflow: Workflow | None = None


_ACTIVITIES_KEY = b',"activities":'
if msgspec.structs.fields(RunDetail) != (
    *msgspec.structs.fields(RunSummary),
    *(f for f in msgspec.structs.fields(RunDetail) if f.name == "activities"),
    *msgspec.structs.fields(_RunTail),
):  # a field added to RunDetail must be added here too, or answers would silently lack it
    raise TypeError("run_detail_json does not build RunDetail's fields: update _RunTail")


def run_detail_json(summary: RunSummary, activities: bytes, tail: _RunTail) -> Encoded:
    """The bytes `encode(RunDetail(...))` gives, in pieces around an already encoded activity
    list: RunDetail's fields in order (the summary's, activities, then errors, outputs, workflow)
    with its defaults omitted."""
    head = _encoder.encode(summary)  # never "{}": run_id, environment, action and status are always there
    rest = _encoder.encode(tail)
    parts = [head[:-1]]
    if activities != b"[]":
        parts += [_ACTIVITIES_KEY, activities]
    parts.append(b"}" if rest == b"{}" else b"," + rest[1:])
    return Encoded(tuple(parts))


async def run_get(ctx: StoreContext, req: RunGet) -> Encoded | StoreError:
    """The run and every activity in workflow order, answered as the encoded RunDetail. The
    activity list of a big run is read and encoded once per projected event (ActivityCache);
    run row, version and activities come from one snapshot."""
    floor = ctx.projection.projected_events  # before the snapshot: every event up to it is in it
    workflow = ", r.workflow::text AS workflow" if req.with_workflow else ", NULL::text AS workflow"
    async with ctx.pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        row = await conn.fetchrow(
            f"SELECT {RUN_COLUMNS}, errors::text AS errors, outputs::text AS outputs{workflow}, "
            "(SELECT coalesce(max(e.seq), 0) FROM events e WHERE e.tenant = r.tenant AND e.run_id = r.run_id) "
            "AS version "
            "FROM runs r WHERE r.tenant = $1 AND r.run_id = $2",
            req.tenant,
            req.run_id,
        )
        if row is None:
            return error("not_found", f"no run {req.run_id!r}", "run_id")
        version = row["version"]
        activities = ctx.activities.get(req.tenant, req.run_id, version)
        if activities is None:
            rows = tuple(
                masked(r) for r in _activities.decode(await conn.fetchval(ACTIVITIES_JSON, req.tenant, req.run_id))
            )
            activities = _encoder.encode(rows)
            ctx.activities.put(
                req.tenant, req.run_id, version, activities, count=len(rows), complete=version <= floor
            )
    tail = _RunTail(
        errors=_problems.decode(row["errors"]),
        outputs=masked_resources(_outputs.decode(row["outputs"])),
        workflow=_masked_workflow(row["workflow"]),
    )
    return run_detail_json(RunSummary(**summary_fields(row)), activities, tail)


def _masked_workflow(text: str | None) -> Workflow | None:
    """The stored workflow, its last deploy's sensitive outputs masked (as the projection stores
    them; this keeps rows projected before it did so from answering them)."""
    if not text:
        return None
    workflow = _workflow.decode(text)
    if workflow.last_deploy is None or not workflow.last_deploy.outputs:
        return workflow
    return msgspec.structs.replace(workflow, last_deploy=masked_last_deploy(workflow))


def masked(row: ActivityRow) -> ActivityRow:
    """The row with its sensitive outputs masked (the projection stores them masked already;
    this keeps rows projected before it did so, or by an older store, from answering them)."""
    if not row.outputs or (outputs := masked_outputs(row.outputs)) is row.outputs:
        return row
    return msgspec.structs.replace(row, outputs=outputs)


async def run_list(ctx: StoreContext, req: RunList) -> Runs | StoreError:
    if (bad := check_limit(req.limit)) is not None:
        return bad
    rows = await ctx.pool.fetch(
        f"SELECT {RUN_COLUMNS} FROM runs WHERE tenant = $1 AND ($2 = '' OR environment = $2) "
        "AND ($3 = '' OR run_id < $3) ORDER BY run_id DESC LIMIT $4",
        req.tenant,
        req.environment,
        req.before,
        req.limit,
    )
    return Runs(runs=tuple(RunSummary(**summary_fields(r)) for r in rows))


async def logs_get(ctx: StoreContext, req: LogsGet) -> LogChunks | StoreError:
    if (bad := check_limit(req.limit)) is not None:
        return bad
    if req.after < 0:
        return error("invalid", f"after must be 0 or a position, got {req.after}", "after")
    async with ctx.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT position, activity_id, attempt, sequence, stream, data, occurred_at FROM log_chunks "
            "WHERE tenant = $1 AND run_id = $2 AND position > $3 AND ($4 = '' OR activity_id = $4) "
            "ORDER BY position LIMIT $5",
            req.tenant,
            req.run_id,
            req.after,
            req.activity_id,
            req.limit,
        )
        if not rows and not await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM runs WHERE tenant = $1 AND run_id = $2)", req.tenant, req.run_id
        ):
            return error("not_found", f"no run {req.run_id!r}", "run_id")
    return LogChunks(chunks=tuple(LogChunkRow(**dict(r)) for r in rows))


async def approval_get(ctx: StoreContext, req: ApprovalGet) -> Approval | StoreError:
    row = await ctx.pool.fetchrow(
        "SELECT run_id, activity_id, attempt, approvers, requested_at, expires_at, decision, decided_by, comment "
        "FROM approvals WHERE tenant = $1 AND run_id = $2 AND activity_id = $3",
        req.tenant,
        req.run_id,
        req.activity_id,
    )
    if row is None:
        return error("not_found", f"run {req.run_id!r} has no approval {req.activity_id!r}", "activity_id")
    return Approval(**{**dict(row), "approvers": tuple(row["approvers"])})


async def audit_list(ctx: StoreContext, req: AuditList) -> AuditEntries | StoreError:
    if (bad := check_limit(req.limit)) is not None:
        return bad
    rows = await ctx.pool.fetch(
        "SELECT id, at, actor, action, target, detail::text AS detail, remote FROM audit WHERE tenant = $1 "
        "ORDER BY id DESC LIMIT $2",
        req.tenant,
        req.limit,
    )
    return AuditEntries(entries=tuple(AuditEntry(**{**dict(r), "detail": _any.decode(r["detail"])}) for r in rows))


async def deploy_record(ctx: StoreContext, req: DeployRecordGet) -> DeployRecord | StoreError:
    """A consistent read: first wait until the projection has written every event published
    before this request, so a deploy that just finished is seen."""
    last = await ctx.projection.events_last_seq()
    if not await ctx.projection.wait_projected(last, ctx.barrier_timeout):
        return error(
            "unavailable",
            f"the store's projection has not caught up with event {last} within {ctx.barrier_timeout:g}s",
        )
    row = await ctx.pool.fetchrow(
        "SELECT deployed, deploy_run_id, outputs::text AS outputs, deployed_variables::text AS variables "
        "FROM environments WHERE tenant = $1 AND name = $2",
        req.tenant,
        req.environment,
    )
    readers = tuple(dict.fromkeys(link.environment for link in await links.dependents(ctx.pool, req.tenant,
                                                                                      req.environment)))
    if row is None or not row["deployed"]:
        return DeployRecord(deployed=False, dependents=readers)
    try:
        variables = _str_map.decode(row["variables"])
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        return error("internal", f"environment {req.environment!r}: its deployed variables are unreadable: {exc}")
    # Tokens as stored: the compiler passes them on, the agent opens them. A sensitive output
    # stored in clear (before outputs were sealed) is sealed on the way out, never sent in clear.
    outputs = seal_resources(_outputs.decode(row["outputs"]), ctx.keys(req.tenant).seal)
    return DeployRecord(
        deployed=True, run_id=row["deploy_run_id"], outputs=outputs, variables=variables, dependents=readers
    )


async def ping(ctx: StoreContext, req: Ping) -> Pong:
    await ctx.pool.fetchval("SELECT 1")
    return Pong(
        schema_version=ctx.schema_version,
        projected_events=ctx.projection.projected_events,
        projected_logs=ctx.projection.projected_logs,
    )
