"""Templates: publish a bundle (validated as `trellis template validate` does, with the same code,
then every document stored by kind, name and version) and list what is published."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import Annotated

import msgspec
from aiohttp import web

from trellis_core.events import Problem, SourceFile
from trellis_gateway.context import (
    GATEWAY,
    ApiProblem,
    endpoint,
    json_response,
    ok,
    read_body,
    remote,
    require,
)
from trellis_store.api import Documents, TemplateDocument, TemplateList, TemplatePublish
from trellis_templates.bundle import doc_version
from trellis_templates.compiler import sorted_problems, validate_documents
from trellis_templates.documents import DNS_LABEL, KINDS
from trellis_templates.errors import Problems
from trellis_templates.loader import Budget, gc_paused, load_text
from trellis_templates.validate import SourceDocument, read_leniently

routes = web.RouteTableDef()
_DNS = re.compile(DNS_LABEL)


def dns_label(text: str) -> bool:
    """Whether `text` is a DNS label: what every template, environment and agent is named."""
    return len(text) <= 63 and _DNS.match(text) is not None


MAX_SOURCES = 1000
_EMPTY_HINT = "a template bundle is YAML documents with apiVersion, kind and metadata"


class Source(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One template file of the bundle: its path (how problems name it) and its YAML text."""

    path: Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]
    text: str


class PublishBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    sources: Annotated[tuple[Source, ...], msgspec.Meta(min_length=1, max_length=MAX_SOURCES)]


class Published(msgspec.Struct, frozen=True, kw_only=True):
    """What is stored (identical re-published documents included) and the validator's warnings."""

    documents: tuple[TemplateDocument, ...]
    warnings: tuple[Problem, ...] = ()


def validate_sources(
    sources: Sequence[SourceFile],
) -> tuple[list[SourceDocument], tuple[Problem, ...], tuple[Problem, ...]]:
    """(documents, errors, warnings) of a bundle given as text: the read and compile checks of
    `trellis template validate` (`compiler.validate_bundle`) over text instead of files."""
    problems = Problems()
    with gc_paused():
        budget = Budget()
        raws = [raw for f in sources for raw in load_text(f.text, f.path, problems, budget=budget)]
        docs, unreadable = read_leniently(raws, problems)
    if not raws and not problems.errors:
        problems.error(
            None, (), "the bundle has no documents (" + ", ".join(f.path for f in sources) + ")", _EMPTY_HINT
        )
    errors, warnings = validate_documents(docs, unreadable)
    return (
        docs,
        sorted_problems([*problems.errors, *errors]),
        sorted_problems([*problems.warnings, *warnings]),
    )


def describe(document: SourceDocument) -> TemplateDocument:
    """A document's catalogue entry; `digest` is the SHA-256 of its canonical JSON (sorted keys),
    so a re-formatted but equal file is the same version and any real change is not."""
    doc = document.document
    canonical = msgspec.json.encode(doc, order="sorted")
    description = doc.metadata.description or str(getattr(doc.spec, "description", "") or "")
    return TemplateDocument(
        kind=document.kind,
        name=doc.metadata.name,
        version=doc_version(doc),
        description=description,
        path=document.source.file,
        digest=hashlib.sha256(canonical).hexdigest(),
    )


def _check_sizes(body: PublishBody, limit: int) -> None:
    seen: dict[str, int] = {}
    for index, source in enumerate(body.sources):
        if source.path in seen:
            raise ApiProblem(
                422,
                "Unprocessable Content",
                f"{source.path!r} appears twice (first as sources[{seen[source.path]}])",
                path=f"sources[{index}].path",
            )
        seen[source.path] = index
    size = sum(len(source.text.encode()) for source in body.sources)
    if size > limit:
        raise ApiProblem(
            413,
            "Content Too Large",
            f"the bundle's text is {size} bytes, over the {limit} a run can carry (TRELLIS_BUNDLE_MAX_BYTES)",
            path="sources",
        )


@endpoint(
    routes,
    "POST",
    "/v1/templates",
    summary="Validate a bundle of template files and publish every document (operator)",
    body=PublishBody,
    response=Published,
    status=201,
    role="operator",
    errors=(409,),
)
async def publish(request: web.Request) -> web.Response:
    who = require(request, "operator")
    body = await read_body(request, PublishBody)
    gateway = request.app[GATEWAY]
    _check_sizes(body, gateway.settings.bundle_max_bytes)
    sources = tuple(SourceFile(path=s.path, text=s.text) for s in body.sources)
    docs, errors, warnings = validate_sources(sources)
    if errors:
        count = f"{len(errors)} problem" + ("s" if len(errors) != 1 else "")
        raise ApiProblem(
            422, "Unprocessable Content", f"the bundle is not valid: {count}", path="sources", problems=errors
        )
    request_ = TemplatePublish(
        tenant=who.tenant,
        sources=sources,
        # Only versioned kinds are catalogue entries: an Environment (or ConfigContext, Repository)
        # document has no version and stays in the bundle's sources (a run's own replaces it).
        documents=tuple(describe(doc) for doc in docs if doc_version(doc.document)),
        actor=who.user,
        remote=remote(request),
    )
    stored = ok(await gateway.store.ask(request_, Documents))
    return json_response(Published(documents=stored.documents, warnings=warnings), status=201)


@endpoint(
    routes,
    "GET",
    "/v1/templates",
    summary="The published template documents of the caller's tenant",
    response=Documents,
    query=(("kind", "only this kind (EnvironmentTemplate, ResourceTemplate, ...)"), ("name", "only this name")),
)
async def list_templates(request: web.Request) -> web.Response:
    who = require(request, "viewer")
    kind, name = request.query.get("kind", ""), request.query.get("name", "")
    if kind and kind not in KINDS:
        raise ApiProblem(422, "Unprocessable Content", "kind must be one of " + ", ".join(KINDS), path="kind")
    if name and not dns_label(name):
        raise ApiProblem(422, "Unprocessable Content", "name must be a DNS label, as template names are", path="name")
    query = TemplateList(tenant=who.tenant, kind=kind, name=name)
    return json_response(ok(await request.app[GATEWAY].store.ask(query, Documents)))
