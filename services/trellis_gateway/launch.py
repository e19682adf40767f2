"""Start a run from the API: the stored environment and its template bundle become a
`RunRequested`, recorded in the store first and then published exactly as the CLI publishes it.

Shared by `POST /v1/environments/{name}/runs` and the webhook trigger. The order is
record-then-publish: a crash between them leaves a `requested` run that a retry with the same
`Idempotency-Key` publishes again (JetStream's dedupe id `<run>/request` drops the copy if the
first publish did land), so the bus stays the only way work reaches the compiler.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import msgspec

from trellis_core import subjects
from trellis_core.errors import TrellisError
from trellis_core.events import RunRequested, SourceFile
from trellis_core.ids import uuid7
from trellis_core.logs import get_logger
from trellis_core.workflow import NO_PURPOSE, Action, RunPurpose
from trellis_gateway.context import ApiProblem, Gateway, ok
from trellis_gateway.environments_routes import clear_sensitive, declared_sensitive
from trellis_store.api import (
    AuditRecord,
    Environment,
    EnvironmentGet,
    Ok,
    Principal,
    RunCreate,
    RunCreated,
    RunDetail,
    RunGet,
    StoreError,
    TemplateBundle,
    TemplateBundleGet,
)
from trellis_store.links import destroy_refusal
from trellis_templates.errors import Problems
from trellis_templates.loader import load_text

log = get_logger("gateway.launch")
GENERATED_ENVIRONMENT_PATH = "trellis-gateway/environment.yaml"  # the synthesized Environment document


class _RequestDigest(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What makes two POSTs the same request (an idempotency key reused for another is refused)."""

    environment: str
    action: Action
    purpose: RunPurpose = NO_PURPOSE
    variables: dict[str, str] = {}


def request_digest(
    environment: str, action: Action, purpose: RunPurpose = NO_PURPOSE, variables: Mapping[str, str] | None = None
) -> str:
    digest = _RequestDigest(environment=environment, action=action, purpose=purpose, variables=dict(variables or {}))
    return hashlib.sha256(msgspec.json.encode(digest)).hexdigest()


def _actor(who: Principal | str) -> str:
    return who.user if isinstance(who, Principal) else who


async def start_run(
    gateway: Gateway,
    principal_or_actor: Principal | str,
    tenant: str,
    environment: str,
    action: Action,
    *,
    idempotency_key: str = "",
    remote: str = "",
    purpose: RunPurpose = NO_PURPOSE,
    variables: Mapping[str, str] | None = None,
    trigger: Mapping[str, Any] | None = None,
) -> RunCreated:
    """Record and publish a run of `environment` (the store audits `run.create`). Raises ApiProblem:
    404 unknown environment or template, 409 an idempotency key reused for another request, 413 a
    bundle too large for the bus, 422 a purpose that does not go with the action, 409 a destroy
    (force too) of an environment others read through static resources (static-resources.md).

    `purpose`: a day-2 action, a force-destroy or a drift check (RunPurpose). `variables`: this
    run's own values over the environment's stored ones (sensitive ones must be sealed tokens
    already). `trigger`: what templates read as `trigger.*` (`{"type": ..., "payload": ...}`)."""
    if why := purpose.problem(action):
        raise ApiProblem(422, "Unprocessable Content", why, path="action")
    actor = _actor(principal_or_actor)
    try:
        subjects.runs_requested(tenant)
    except TrellisError as exc:
        raise ApiProblem(422, "Unprocessable Content", str(exc), path="tenant") from None
    env = ok(await gateway.store.ask(EnvironmentGet(tenant=tenant, name=environment), Environment))
    if action == "destroy" and (why := destroy_refusal(environment, env.dependents or ())):
        raise ApiProblem(409, "Conflict", why, path="environment")  # the store refuses it too (run.create)
    bundle = ok(
        await gateway.store.ask(
            TemplateBundleGet(tenant=tenant, name=env.template.name, version=env.template.version), TemplateBundle
        )
    )
    require_sealed(tenant, env, bundle)
    created = ok(
        await gateway.store.ask(
            RunCreate(
                tenant=tenant,
                run_id=uuid7(),
                environment=environment,
                action=action,
                requested_by=actor,
                idempotency_key=idempotency_key,
                request_digest=request_digest(environment, action, purpose, variables),
                purpose=purpose.label,
                remote=remote,
            ),
            RunCreated,
        )
    )
    request = RunRequested(
        tenant=tenant,
        run_id=created.run_id,
        environment=environment,
        action=action,
        sources=run_sources(env, bundle),
        variables={**env.variables, **(variables or {})},
        requested_by=actor,
        purpose=purpose,
        trigger=dict(trigger or {}),
    )
    if created.created or await _still_requested(gateway, tenant, created.run_id):
        await publish_request(gateway, request)
    log.info("run_started", tenant=tenant, run=created.run_id, environment=environment, created=created.created)
    return created


def require_sealed(tenant: str, env: Environment, bundle: TemplateBundle) -> None:
    """Refuse (500, before the run is recorded) an environment whose store answer holds a
    sensitive variable in clear: the request would carry it onto the bus. Sensitive are the names
    the store marks and those the templates declare, so a store that forgot to mark one is caught
    too; their values must be the sealed tokens the store keeps (published as they are)."""
    declared = declared_sensitive(bundle.sources, env.name, env.template, env.variables, env.agents)
    clear = clear_sensitive(env.variables, {*env.sensitive, *declared})
    if clear:
        log.error("sensitive_variable_not_sealed", tenant=tenant, environment=env.name, variables=clear)
        raise ApiProblem(
            500,
            "Internal Server Error",
            f"environment {env.name}: the state store answered the sensitive variable(s) {', '.join(clear)} "
            "not sealed (a sealed token is expected): no run request is published with a sensitive value in "
            "clear. PUT the environment again once the store seals sensitive values (TRELLIS_SEAL_KEY).",
        )


async def _still_requested(gateway: Gateway, tenant: str, run_id: str) -> bool:
    """Whether a run found by its idempotency key has not been answered yet (nothing after its
    request reached the store): only then is its request published again."""
    run = await gateway.store.ask(RunGet(tenant=tenant, run_id=run_id), RunDetail)
    return isinstance(run, RunDetail) and run.status == "requested"


async def publish_request(gateway: Gateway, request: RunRequested) -> None:
    """Publish as `trellis run` does: same subject, same dedupe id."""
    payload = msgspec.json.encode(request)
    limit = gateway.bus.nc.max_payload
    if len(payload) > limit:
        raise ApiProblem(
            413,
            "Content Too Large",
            f"the run request is {len(payload):,} bytes and the bus takes at most {limit:,}: "
            "the template bundle travels in one message",
        )
    await gateway.bus.publish(subjects.runs_requested(request.tenant), payload, msg_id=f"{request.run_id}/request")


def run_sources(env: Environment, bundle: TemplateBundle) -> tuple[SourceFile, ...]:
    """The bundle's files, plus an `Environment` document made from the stored environment unless
    the bundle holds one of that name already (then the published one, richer, is compiled; the
    stored variables still override its inputs as `--var` would)."""
    if env.name in _environment_names(bundle.sources):
        return bundle.sources
    return (*bundle.sources, SourceFile(path=GENERATED_ENVIRONMENT_PATH, text=environment_document(env)))


def environment_document(env: Environment) -> str:
    """The stored environment as a trellis.dev/v1 Environment document (JSON is YAML)."""
    document = {
        "apiVersion": "trellis.dev/v1",
        "kind": "Environment",
        "metadata": {"name": env.name},
        "spec": {
            "template": {"name": env.template.name, "version": env.template.version},
            **({"agents": [{"name": agent} for agent in env.agents]} if env.agents else {}),
        },
    }
    return msgspec.json.encode(document).decode() + "\n"


def _environment_names(sources: tuple[SourceFile, ...]) -> set[str]:
    names: set[str] = set()
    problems = Problems()  # a bundle was validated when published: problems here are the compiler's to report
    for source in sources:
        for raw in load_text(source.text, source.path, problems):
            data = raw.data
            if isinstance(data, dict) and data.get("kind") == "Environment":
                metadata = data.get("metadata")
                if isinstance(metadata, dict) and isinstance(metadata.get("name"), str):
                    names.add(metadata["name"])
    return names


async def audit(
    gateway: Gateway,
    tenant: str,
    actor: str,
    action: str,
    target: str,
    detail: dict[str, object],
    remote: str,
) -> None:
    """Keep an audit record; one the store could not keep is logged, not raised (the action stands)."""
    answer = await gateway.store.ask(
        AuditRecord(tenant=tenant, actor=actor, action=action, target=target, detail=detail, remote=remote), Ok
    )
    if isinstance(answer, StoreError):
        log.warning("audit_not_recorded", tenant=tenant, action=action, target=target, error=answer.message)
