"""The catalog: one published EnvironmentTemplate version as a launch form needs it, read from the
bundle it was published with: its variables (with their override rules, never a sensitive
default), and the day-2 actions and schedules it declares."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import msgspec
from aiohttp import web

from trellis_core.events import SourceFile
from trellis_gateway.context import GATEWAY, ApiProblem, endpoint, json_response, ok, require, store_problem
from trellis_gateway.environments_routes import environment_document
from trellis_gateway.templates_routes import dns_label
from trellis_store.api import Documents, StoreError, TemplateBundle, TemplateBundleGet, TemplateList, TemplateRef
from trellis_templates.action_compile import environment_actions
from trellis_templates.actions import action_labels
from trellis_templates.bundle import doc_version
from trellis_templates.documents import Document, EnvironmentTemplate, OverrideType, ValueType, Variable
from trellis_templates.errors import Problems
from trellis_templates.loader import Budget, gc_paused, load_text
from trellis_templates.validate import SourceDocument, read_leniently

routes = web.RouteTableDef()

MAX_VERSION = 128  # as TemplateChoice.version
# The environment the declared actions are looked up for: any name no published Environment has.
_PREVIEW_ENVIRONMENT = "trellis-catalog-preview"


class TemplateVariable(msgspec.Struct, frozen=True, kw_only=True):
    """One variable of the EnvironmentTemplate as a launch form shows it. Values are text as an
    environment's `variables` take them (a value that is not a string as its JSON, which is how
    the compiler compares it with `restricted_values`)."""

    name: str
    value_type: ValueType
    description: str = ""
    required: bool = False
    sensitive: bool = False
    override: OverrideType = "allowed"
    restricted_values: tuple[str, ...] = ()
    multi_select: bool = False  # restricted: several of restricted_values may be chosen (a JSON array)
    default: str | None = None  # the template's value; never given for a sensitive variable
    has_default: bool = False  # whether the template gives a value (a sensitive one's too)


class TemplateAction(msgspec.Struct, frozen=True, kw_only=True):
    """A day-2 action as a run names it (`resource.action` where two resources declare one name)."""

    name: str
    type: str
    description: str = ""
    resource: str = ""


class TemplateSchedule(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    type: str
    description: str = ""


class EnvironmentTemplateView(msgspec.Struct, frozen=True, kw_only=True):
    """A published EnvironmentTemplate version: what launching an environment from it takes."""

    name: str
    version: str
    description: str = ""
    variables: tuple[TemplateVariable, ...] = ()
    actions: tuple[TemplateAction, ...] = ()
    schedules: tuple[TemplateSchedule, ...] = ()


def as_text(value: Any) -> str:
    """A variable's value as an environment's variables hold it (the compiler's comparison form)."""
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def variable_view(variable: Variable) -> TemplateVariable:
    options = variable.options
    has_default = variable.value is not None
    return TemplateVariable(
        name=variable.name,
        value_type=variable.value_type,
        description=options.description,
        required=options.required,
        sensitive=options.sensitive,
        override=options.override.type,
        restricted_values=tuple(as_text(v) for v in options.override.restricted_values),
        multi_select=options.override.type == "restricted" and options.override.multi_select,
        default=as_text(variable.value) if has_default and not options.sensitive else None,
        has_default=has_default,
    )


def template_view(sources: tuple[SourceFile, ...], name: str, version: str) -> EnvironmentTemplateView | None:
    """The view of EnvironmentTemplate `name`@`version` in its published bundle (pure; None when
    the bundle does not hold it). Problems are not reported: the bundle was checked when published."""
    problems = Problems()
    with gc_paused():
        budget = Budget()
        raws = [raw for f in sources for raw in load_text(f.text, f.path, problems, budget=budget)]
        docs, _ = read_leniently(raws, problems)
    template = next(
        (
            d.document
            for d in docs
            if isinstance(d.document, EnvironmentTemplate)
            and d.document.metadata.name == name
            and doc_version(d.document) == version
        ),
        None,
    )
    if template is None:
        return None
    preview = environment_document(_PREVIEW_ENVIRONMENT, TemplateRef(name=name, version=version), ())
    bundle: list[SourceDocument | Document] = [*docs, preview]
    found, _ = environment_actions(bundle, _PREVIEW_ENVIRONMENT)
    return EnvironmentTemplateView(
        name=name,
        version=version,
        description=template.metadata.description or template.spec.description,
        variables=tuple(variable_view(v) for v in template.spec.variables),
        actions=tuple(
            TemplateAction(
                name=label, type=entry.action.type, description=entry.action.description, resource=entry.resource
            )
            for label, entry in action_labels(found)
        ),
        schedules=tuple(
            TemplateSchedule(name=s.name, type=s.type, description=s.description) for s in template.spec.schedules
        ),
    )


def _path_parameters(request: web.Request) -> tuple[str, str]:
    name, version = request.match_info["name"], request.match_info["version"]
    if not dns_label(name):
        raise ApiProblem(
            422, "Unprocessable Content", f"template name {name[:80]!r} is not a DNS label, as template names are",
            path="name",
        )  # fmt: skip
    if not version or len(version) > MAX_VERSION:
        raise ApiProblem(422, "Unprocessable Content", f"version must be 1 to {MAX_VERSION} characters", path="version")
    return name, version


async def _not_found(request: web.Request, tenant: str, name: str, version: str) -> ApiProblem:
    """404 naming what is missing: the template, or only this version of it (with those published)."""
    store = request.app[GATEWAY].store
    listed = ok(await store.ask(TemplateList(tenant=tenant, kind="EnvironmentTemplate", name=name), Documents))
    versions = sorted({document.version for document in listed.documents})
    if not versions:
        detail = f"no EnvironmentTemplate {name!r} is published (GET /v1/templates lists them)"
        return ApiProblem(404, "Not Found", detail, path="name")
    detail = f"EnvironmentTemplate {name!r} has no version {version[:80]!r} (published: {', '.join(versions)})"
    return ApiProblem(404, "Not Found", detail, path="version")


@endpoint(
    routes,
    "GET",
    "/v1/environment-templates/{name}/{version}",
    summary="A published EnvironmentTemplate version: its variables (no sensitive default), actions and schedules",
    response=EnvironmentTemplateView,
)
async def get_environment_template(request: web.Request) -> web.Response:
    who = require(request, "viewer")
    name, version = _path_parameters(request)
    store = request.app[GATEWAY].store
    bundle = await store.ask(TemplateBundleGet(tenant=who.tenant, name=name, version=version), TemplateBundle)
    if isinstance(bundle, StoreError):
        if bundle.code != "not_found":
            raise store_problem(bundle)
        raise await _not_found(request, who.tenant, name, version)
    view = await asyncio.to_thread(template_view, bundle.sources, name, version)
    if view is None:  # pragma: no cover - the store keeps each template with the bundle that holds it
        raise await _not_found(request, who.tenant, name, version)
    return json_response(view)
