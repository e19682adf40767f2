"""Day-2 actions and force-destroys through the API: run one of the templates' actions on a
deployed environment, list the actions with their last runs, destroy past failures and hooks
(docs/day2-actions.md). Runs start through `launch.start_run`, which records and audits them."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import msgspec
from aiohttp import web

from trellis_core.events import SourceFile
from trellis_core.workflow import RunPurpose
from trellis_gateway.context import GATEWAY, ApiProblem, endpoint, json_response, read_body, remote, require
from trellis_gateway.environments_routes import declared_sensitive, environment_name
from trellis_gateway.launch import run_sources, start_run
from trellis_gateway.runs_routes import MAX_IDEMPOTENCY_KEY, RunAccepted
from trellis_store.api import (
    DeployRecord,
    DeployRecordGet,
    Environment,
    EnvironmentGet,
    RunDetail,
    RunGet,
    RunList,
    Runs,
    RunSummary,
    StoreError,
    TemplateBundle,
    TemplateBundleGet,
)
from trellis_templates.action_compile import environment_actions
from trellis_templates.actions import FoundAction, action_labels, action_names
from trellis_templates.documents import VariableName
from trellis_templates.errors import Problems
from trellis_templates.loader import Budget, gc_paused, load_text
from trellis_templates.validate import read_leniently

routes = web.RouteTableDef()

ACTION_NAME = re.compile(r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_IDEMPOTENCY = (("Idempotency-Key", "a retried POST with the same key and body answers the same run"),)
HISTORY = 500  # the environment's newest runs looked through for each action's last run


class ActionRunBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """`POST /v1/environments/{name}/actions/{action}`: this run's variables over the environment's."""

    variables: dict[VariableName, str] = {}


class ActionView(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """An action a run may name, and its newest run with the outputs that run wrote."""

    name: str
    type: str
    description: str = ""
    resource: str = ""  # the resource whose ResourceTemplate declares it ("": the EnvironmentTemplate)
    last_run: RunSummary | None = None
    outputs: dict[str, dict[str, Any]] = {}


class EnvironmentActions(msgspec.Struct, frozen=True, kw_only=True):
    environment: str
    actions: tuple[ActionView, ...]


def _idempotency_key(request: web.Request) -> str:
    key = request.headers.get("Idempotency-Key", "")
    if len(key) > MAX_IDEMPOTENCY_KEY:
        raise ApiProblem(422, "Unprocessable Content", f"Idempotency-Key is over {MAX_IDEMPOTENCY_KEY} characters")
    return key


def defined_actions(sources: tuple[SourceFile, ...], environment: str) -> list[FoundAction]:
    """The actions the environment's published templates declare (pure; run in a thread)."""
    problems = Problems()
    with gc_paused():
        budget = Budget()
        raws = [raw for f in sources for raw in load_text(f.text, f.path, problems, budget=budget)]
        docs, _ = read_leniently(raws, problems)
    found, _ = environment_actions(docs, environment)
    return found


async def _environment(request: web.Request, tenant: str, name: str) -> tuple[Environment, TemplateBundle]:
    store = request.app[GATEWAY].store
    env = await store.ask(EnvironmentGet(tenant=tenant, name=name), Environment)
    if isinstance(env, StoreError):
        if env.code == "not_found":
            raise ApiProblem(
                404, "Not Found", f"no environment {name!r} (GET /v1/environments lists them)", path="name"
            )
        raise ApiProblem(503, "Service Unavailable", f"the state store: {env.message}")
    template = TemplateBundleGet(tenant=tenant, name=env.template.name, version=env.template.version)
    bundle = await store.ask(template, TemplateBundle)
    if isinstance(bundle, StoreError):
        raise ApiProblem(404, "Not Found", f"environment {name}: template {env.template.name}@"
                         f"{env.template.version} is not published: {bundle.message}", path="name")  # fmt: skip
    return env, bundle


def _unknown(name: str, action: str, found: list[FoundAction]) -> ApiProblem:
    names = action_names(found)
    listed = f"its actions: {', '.join(names)}" if names else "its templates declare no actions"
    return ApiProblem(404, "Not Found", f"environment {name!r} has no action {action!r} ({listed})", path="action")


@endpoint(
    routes,
    "POST",
    "/v1/environments/{name}/actions/{action}",
    summary="Run a day-2 action of the environment's templates on the deployed environment (operator)",
    body=ActionRunBody,
    response=RunAccepted,
    status=202,
    role="operator",
    errors=(404, 409, 413, 422),
    headers=_IDEMPOTENCY,
)
async def post_action(request: web.Request) -> web.StreamResponse:
    who = require(request, "operator")
    name, action = environment_name(request), request.match_info["action"]
    body = await read_body(request, ActionRunBody) if await request.read() else ActionRunBody()
    key = _idempotency_key(request)
    gateway = request.app[GATEWAY]
    env, bundle = await _environment(request, who.tenant, name)
    found = await asyncio.to_thread(defined_actions, run_sources(env, bundle), name)
    if not ACTION_NAME.match(action) or action not in action_names(found):
        raise _unknown(name, action[:80], found)
    record = await gateway.store.ask(DeployRecordGet(tenant=who.tenant, environment=name), DeployRecord)
    if isinstance(record, StoreError):
        raise ApiProblem(503, "Service Unavailable", f"the state store: {record.message}")
    if not record.deployed:
        why = f"environment {name} is not deployed ({env.status}): a day-2 action runs on a deployed "
        why += f'environment (POST /v1/environments/{name}/runs {{"action": "deploy"}} first)'
        raise ApiProblem(409, "Conflict", why)
    sensitive = declared_sensitive(bundle.sources, name, env.template, body.variables, env.agents)
    if sensitive:
        why = f"variable {sensitive[0]!r} is sensitive: a run does not take it in clear; "
        why += f"set it on the environment (PUT /v1/environments/{name}), where it is sealed"
        raise ApiProblem(422, "Unprocessable Content", why, path=f"variables.{sensitive[0]}")
    created = await start_run(
        gateway, who, who.tenant, name, "deploy",
        idempotency_key=key, remote=remote(request), purpose=RunPurpose(day2_action=action),
        variables=body.variables, trigger={"type": "api", "payload": {"action": action}},
    )  # fmt: skip
    location = {"Location": f"/v1/runs/{created.run_id}"}
    return json_response(RunAccepted(run_id=created.run_id), status=202, headers=location)


@endpoint(
    routes,
    "POST",
    "/v1/environments/{name}/force-destroy",
    summary="Destroy the environment skipping every hook and going on past failures (operator)",
    response=RunAccepted,
    status=202,
    role="operator",
    errors=(404, 409, 413),
    headers=_IDEMPOTENCY,
)
async def post_force_destroy(request: web.Request) -> web.StreamResponse:
    who = require(request, "operator")
    name = environment_name(request)
    created = await start_run(
        request.app[GATEWAY], who, who.tenant, name, "destroy",
        idempotency_key=_idempotency_key(request), remote=remote(request), purpose=RunPurpose(force=True),
        trigger={"type": "api"},
    )  # fmt: skip
    location = {"Location": f"/v1/runs/{created.run_id}"}
    return json_response(RunAccepted(run_id=created.run_id), status=202, headers=location)


@endpoint(
    routes,
    "GET",
    "/v1/environments/{name}/actions",
    summary="The actions a run of the environment may name, each with its newest run and that run's outputs",
    response=EnvironmentActions,
)
async def list_actions(request: web.Request) -> web.StreamResponse:
    who = require(request, "viewer")
    name = environment_name(request)
    env, bundle = await _environment(request, who.tenant, name)
    found = await asyncio.to_thread(defined_actions, run_sources(env, bundle), name)
    store = request.app[GATEWAY].store
    runs = await store.ask(RunList(tenant=who.tenant, environment=name, limit=HISTORY), Runs)
    newest: dict[str, RunSummary] = {}
    for summary in runs.runs if isinstance(runs, Runs) else ():
        if summary.purpose.startswith("action:"):
            newest.setdefault(summary.purpose.removeprefix("action:"), summary)  # newest first
    views = []
    for label, entry in action_labels(found):
        run: RunSummary | None = newest.get(label) or newest.get(entry.label)
        outputs: dict[str, dict[str, Any]] = {}
        if run is not None and run.status == "succeeded":
            detail = await store.ask(RunGet(tenant=who.tenant, run_id=run.run_id), RunDetail)
            outputs = detail.outputs if isinstance(detail, RunDetail) else {}
        views.append(ActionView(name=label, type=entry.action.type, description=entry.action.description,
                                resource=entry.resource, last_run=run, outputs=outputs))  # fmt: skip
    return json_response(EnvironmentActions(environment=name, actions=tuple(views)))
