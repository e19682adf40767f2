"""Environments: create or update one from a published EnvironmentTemplate and its variables
(checked by compiling the stored bundle with them, as a run would), read them, and rotate the
secret of an environment's webhook trigger."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Annotated, NamedTuple

import msgspec
from aiohttp import web

from trellis_core import sealed
from trellis_core.events import Problem, SourceFile
from trellis_core.logs import get_logger
from trellis_gateway.context import (
    GATEWAY,
    ApiProblem,
    endpoint,
    json_response,
    ok,
    query_int,
    read_body,
    remote,
    require,
    store_problem,
)
from trellis_gateway.templates_routes import dns_label
from trellis_store.api import (
    Environment,
    EnvironmentGet,
    EnvironmentList,
    EnvironmentPut,
    Environments,
    RunDetail,
    RunGet,
    RunSummary,
    StoreError,
    TemplateBundle,
    TemplateBundleGet,
    TemplateRef,
    WebhookRotate,
    WebhookSecret,
)
from trellis_templates.bundle import Bundle
from trellis_templates.compiler import compile_bundle, sorted_problems
from trellis_templates.documents import (
    DnsName,
    EnvironmentSpec,
    Metadata,
    NameRef,
    VariableName,
    VersionedRef,
)
from trellis_templates.documents import Environment as EnvironmentDocument
from trellis_templates.errors import Problems, Source
from trellis_templates.loader import Budget, gc_paused, load_text
from trellis_templates.resolved import RunInfo, resolve_documents
from trellis_templates.scope import resolve_variables
from trellis_templates.validate import SourceDocument, read_leniently

routes = web.RouteTableDef()
log = get_logger("gateway.environments")

NAME_PATH = "/v1/environments/{name}"
_IF_MATCH = (("If-Match", "the ETag of the environment being updated (required to update; `*`: any)"),)


class TemplateChoice(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A published EnvironmentTemplate, by name and version."""

    name: DnsName
    version: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]


class EnvironmentBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    template: TemplateChoice
    variables: dict[VariableName, str] = {}
    agents: tuple[DnsName, ...] = ()


class EnvironmentView(Environment, frozen=True, kw_only=True):
    """An environment with a summary of its last run (when it has one)."""

    last_run: RunSummary | None = None


class WebhookIssued(msgspec.Struct, frozen=True, kw_only=True):
    """The environment's new webhook secret (shown once) and the URL a git push hook POSTs to."""

    environment: str
    secret: str
    url: str


# ---- the check: the stored bundle compiled with the environment's variables -------------------

_VARIABLE_NAMED = re.compile(r"variable '([^']+)'")


class Checked(NamedTuple):
    errors: tuple[Problem, ...]
    sensitive: tuple[str, ...]  # the given variables some template declares sensitive


def environment_document(name: str, template: TemplateRef, agents: Sequence[str]) -> EnvironmentDocument:
    """The Environment document an API environment stands for (its variables are a run's inputs)."""
    return EnvironmentDocument(
        api_version="trellis.dev/v1",
        metadata=Metadata(name=name),
        spec=EnvironmentSpec(
            template=VersionedRef(name=template.name, version=template.version),
            agents=[NameRef(name=agent) for agent in agents],
        ),
    )


def check_environment(
    sources: Sequence[SourceFile],
    name: str,
    template: TemplateRef,
    variables: Mapping[str, str],
    agents: Sequence[str] = (),
) -> Checked:
    """Compile the published bundle for a deploy of environment `name` with `variables`, as a run
    would, with the pure compiler: an unknown variable, a required one missing, a value outside
    restrictedValues or an override a template forbids are its problems, each at `variables.<name>`.
    An Environment document of that name published in the bundle is the one compiled (as a run
    of the environment compiles it, the variables still given as the run's); else one is made."""
    problems = Problems()
    with gc_paused():
        budget = Budget()
        raws = [raw for f in sources for raw in load_text(f.text, f.path, problems, budget=budget)]
        docs, unreadable = read_leniently(raws, problems)
    bundle: list[SourceDocument | EnvironmentDocument] = list(docs)
    published = [d.document for d in docs if isinstance(d.document, EnvironmentDocument)]
    document = next((d for d in published if d.metadata.name == name), None)
    if document is None:
        document = environment_document(name, template, agents)
        bundle.append(document)
    result = compile_bundle(
        bundle, name, variables, "deploy", require_inputs=True, strict_inputs=True, unreadable=unreadable
    )
    errors = sorted_problems([*problems.errors, *result.errors])
    if errors:
        return Checked(tuple(_at_field(problem, variables) for problem in errors), ())
    return Checked((), _sensitive(bundle, document, variables))


def declared_sensitive(
    sources: Sequence[SourceFile],
    name: str,
    template: TemplateRef,
    variables: Mapping[str, str],
    agents: Sequence[str] = (),
) -> tuple[str, ...]:
    """The names among `variables` that the bundle's templates declare sensitive, for environment
    `name` as `check_environment` reads it (its published Environment document, else one made),
    without compiling: what a launch checks is sealed before anything is published. Problems are
    not reported here (the bundle was checked when published, the variables when PUT)."""
    problems = Problems()
    with gc_paused():
        raws = [raw for f in sources for raw in load_text(f.text, f.path, problems, budget=Budget())]
        docs, _ = read_leniently(raws, problems)
    bundle: list[SourceDocument | EnvironmentDocument] = list(docs)
    published = [d.document for d in docs if isinstance(d.document, EnvironmentDocument)]
    document = next((d for d in published if d.metadata.name == name), None)
    if document is None:
        document = environment_document(name, template, agents)
        bundle.append(document)
    return _sensitive(bundle, document, variables)


def _at_field(problem: Problem, variables: Mapping[str, str]) -> Problem:
    """The problem with `path` naming the request's field it is about."""
    named = _VARIABLE_NAMED.search(problem.message)
    if named:
        return msgspec.structs.replace(problem, path=f"variables.{named[1]}")
    if not problem.file and problem.path.startswith("spec.agents"):
        return msgspec.structs.replace(problem, path=problem.path.removeprefix("spec."))
    if not problem.file and (problem.path.startswith("spec.template") or not problem.path):
        return msgspec.structs.replace(problem, path="template")
    return problem


def _sensitive(
    docs: Sequence[SourceDocument | EnvironmentDocument], document: EnvironmentDocument, variables: Mapping[str, str]
) -> tuple[str, ...]:
    problems = Problems()
    bundle = Bundle.index(docs, problems)
    resolved = resolve_documents(bundle, document, Source(), problems)
    if resolved is None:  # pragma: no cover - the compile above found the template
        return ()
    layered = resolve_variables(resolved, inputs=variables, info=RunInfo(action="deploy"), problems=problems)
    return tuple(sorted(name for name in variables if name in layered.sensitive))


def clear_in_answer(answered: Mapping[str, str], given: Mapping[str, str], sensitive: Sequence[str]) -> str:
    """Why the store's answer to a PUT is refused ("" if it is not): it holds a sensitive value
    given in clear as it was given, where the store must have sealed it (a token, or masked)."""
    leaked = sorted(
        name
        for name in sensitive
        if given.get(name) and not sealed.is_token(given[name]) and answered.get(name) == given[name]
    )
    if not leaked:
        return ""
    return (
        f"the state store answered the sensitive variable(s) {', '.join(leaked)} in clear instead of sealed: "
        "it must seal every variable a template declares sensitive (is it a version from before sealed "
        "tokens, or is TRELLIS_SEAL_KEY missing?); nothing was published"
    )


def clear_sensitive(variables: Mapping[str, str], sensitive: Iterable[str]) -> list[str]:
    """The names among `sensitive` whose value in `variables` is not a sealed token (an empty
    value holds nothing to seal): what must never go out in a run request."""
    return sorted(name for name in set(sensitive) if variables.get(name, "") and not sealed.is_token(variables[name]))


# ---- routes -------------------------------------------------------------------------------------


def environment_name(request: web.Request) -> str:
    name = request.match_info["name"]
    if not dns_label(name):
        raise ApiProblem(
            422,
            "Unprocessable Content",
            f"environment name {name[:80]!r} is not a DNS label (lowercase letters, digits and '-', at most 63)",
            path="name",
        )
    return name


def opaque(tag: str) -> str:
    """An entity tag without its quotes and weak marker: `W/"3"` and `"3"` are both `3`."""
    tag = tag.strip().removeprefix("W/")
    if len(tag) >= 2 and tag[0] == tag[-1] == '"':
        tag = tag[1:-1]
    return tag


def etag_header(environment: Environment) -> dict[str, str]:
    return {"ETag": f'"{opaque(environment.etag)}"'}


def parse_if_match(header: str) -> list[str]:
    """The entity tags of an If-Match header, opaque (`*` kept)."""
    return [tag for part in header.split(",") if (tag := opaque(part))]


async def current(request: web.Request, tenant: str, name: str) -> Environment | None:
    answer = await request.app[GATEWAY].store.ask(EnvironmentGet(tenant=tenant, name=name), Environment)
    if isinstance(answer, StoreError):
        if answer.code == "not_found":
            return None
        raise store_problem(answer)
    return answer


def if_match_for(request: web.Request, existing: Environment | None) -> str:
    """The ETag the update is conditional on ("" to create); 412 when the header is missing for
    an update, names another version, or is given for an environment that does not exist."""
    header = request.headers.get("If-Match")
    if existing is None:
        if header is not None:
            raise ApiProblem(
                412, "Precondition Failed", "If-Match was given but the environment does not exist", path="If-Match"
            )
        return ""
    if header is None:
        raise ApiProblem(
            412,
            "Precondition Failed",
            "the environment exists: updating it needs If-Match with its ETag (GET it first)",
            path="If-Match",
        )
    tags = parse_if_match(header)
    if "*" in tags or opaque(existing.etag) in tags:
        return existing.etag
    raise ApiProblem(
        412,
        "Precondition Failed",
        f"If-Match {header!r} does not match the environment's ETag: it changed since it was read",
        path="If-Match",
    )


@endpoint(
    routes,
    "PUT",
    NAME_PATH,
    summary="Create (201) or update (200, with If-Match) an environment from a published template (operator)",
    body=EnvironmentBody,
    response=Environment,
    role="operator",
    errors=(409, 412),
    headers=_IF_MATCH,
)
async def put_environment(request: web.Request) -> web.Response:
    who = require(request, "operator")
    name = environment_name(request)
    body = await read_body(request, EnvironmentBody)
    gateway = request.app[GATEWAY]
    ref = TemplateRef(name=body.template.name, version=body.template.version)
    bundle = await gateway.store.ask(
        TemplateBundleGet(tenant=who.tenant, name=ref.name, version=ref.version), TemplateBundle
    )
    if isinstance(bundle, StoreError):
        if bundle.code != "not_found":
            ok(bundle)
        raise ApiProblem(
            422,
            "Unprocessable Content",
            f"no EnvironmentTemplate {ref.name!r} version {ref.version!r} is published (GET /v1/templates lists them)",
            path="template",
        )
    checked = check_environment(bundle.sources, name, ref, body.variables, body.agents)
    if checked.errors:
        raise _invalid(checked.errors)
    existing = await current(request, who.tenant, name)
    put = EnvironmentPut(
        tenant=who.tenant,
        name=name,
        template=ref,
        variables=dict(body.variables),
        sensitive=checked.sensitive,
        agents=body.agents,
        if_match=if_match_for(request, existing),
        actor=who.user,
        remote=remote(request),
    )
    stored = ok(await gateway.store.ask(put, Environment))
    refusal = clear_in_answer(stored.variables, body.variables, checked.sensitive)
    if refusal:
        log.error("sensitive_variable_stored_in_clear", tenant=who.tenant, environment=name, why=refusal)
        raise ApiProblem(500, "Internal Server Error", f"environment {name}: {refusal}")
    status = 201 if existing is None else 200
    headers = {**etag_header(stored), "Location": f"/v1/environments/{name}"}
    return json_response(stored, status=status, headers=headers)


def _invalid(errors: tuple[Problem, ...]) -> ApiProblem:
    first = errors[0]
    count = f"{len(errors)} problem" + ("s" if len(errors) != 1 else "")
    return ApiProblem(
        422,
        "Unprocessable Content",
        f"the environment does not compile with these variables ({count}): {first.message}",
        path=first.path,
        problems=errors,
    )


@endpoint(
    routes,
    "GET",
    "/v1/environments",
    summary="The caller's tenant's environments, by name, each with its newest run and time to live's expiry",
    response=Environments,
    query=(("limit", "at most this many (1-500, default 100)"), ("after", "the last name of the previous page")),
)
async def list_environments(request: web.Request) -> web.Response:
    who = require(request, "viewer")
    after = request.query.get("after", "")
    if after and not dns_label(after):
        raise ApiProblem(422, "Unprocessable Content", "after must be an environment name (a DNS label)", path="after")
    query = EnvironmentList(tenant=who.tenant, limit=query_int(request, "limit", 100, 1, 500), after=after)
    return json_response(ok(await request.app[GATEWAY].store.ask(query, Environments)))


@endpoint(
    routes,
    "GET",
    NAME_PATH,
    summary="An environment: status, variables and outputs (sensitive ones masked), its last run",
    response=EnvironmentView,
)
async def get_environment(request: web.Request) -> web.Response:
    who = require(request, "viewer")
    name = environment_name(request)
    store = request.app[GATEWAY].store
    environment = ok(await store.ask(EnvironmentGet(tenant=who.tenant, name=name), Environment))
    last_run = None
    if environment.last_run_id:
        run = await store.ask(RunGet(tenant=who.tenant, run_id=environment.last_run_id), RunDetail)
        if not isinstance(run, StoreError):
            last_run = RunSummary(**{f: getattr(run, f) for f in RunSummary.__struct_fields__})
    view = EnvironmentView(**msgspec.structs.asdict(environment), last_run=last_run)
    return json_response(view, headers=etag_header(environment))


@endpoint(
    routes,
    "POST",
    NAME_PATH + "/webhook",
    summary="Set a new secret for the environment's webhook trigger and show it once (admin)",
    response=WebhookIssued,
    role="admin",
)
async def rotate_webhook(request: web.Request) -> web.Response:
    who = require(request, "admin")
    name = environment_name(request)
    gateway = request.app[GATEWAY]
    rotate = WebhookRotate(tenant=who.tenant, environment=name, actor=who.user, remote=remote(request))
    issued = ok(await gateway.store.ask(rotate, WebhookSecret))
    base = gateway.settings.gateway_public_url or f"{request.scheme}://{request.host}"
    url = f"{base.rstrip('/')}/v1/hooks/{name}/{issued.secret}"
    return json_response(WebhookIssued(environment=name, secret=issued.secret, url=url))
