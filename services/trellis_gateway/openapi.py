"""`/openapi.json`: the OpenAPI 3.1 document, derived from the endpoint registry (`context.ENDPOINTS`)
and the JSON Schema msgspec writes for the very Structs the handlers decode and encode.

Nothing here is a hand-written schema: a path's parameters come from its route template, bodies
and answers from `msgspec.json.schema_components`, errors from `ProblemDetail`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import msgspec

from trellis_gateway.context import PROBLEM_JSON, EndpointDoc, ProblemDetail

REF = "#/components/schemas/{name}"
_PARAM = re.compile(r"\{(\w+)(?::[^{}]*)?\}")
_REASONS = {
    400: "The body is not JSON",
    401: "No bearer token, or one the gateway does not know",
    403: "The token's role is too low for this",
    404: "No such object (another tenant's objects are absent too)",
    405: "Method not allowed",
    409: "Conflicts with what is stored",
    412: "If-Match is missing or stale",
    413: "The body is too large",
    422: "The request is not valid: `path` names the field, `problems` lists template problems",
    429: "Too many event streams open for the token or the tenant (see Retry-After)",
    500: "Unexpected error",
    503: "The state store or the bus is not reachable",
}


def openapi_path(template: str) -> str:
    """aiohttp's `/v1/runs/{run_id}/approvals/{activity:.+}` as OpenAPI's `.../{activity}`."""
    return _PARAM.sub(lambda m: "{" + m[1] + "}", template)


def path_parameters(template: str) -> list[str]:
    return [m[1] for m in _PARAM.finditer(template)]


def document(endpoints: Iterable[EndpointDoc], *, title: str = "Trellis gateway", version: str = "1") -> dict[str, Any]:
    """The whole OpenAPI document for `endpoints`."""
    endpoints = list(endpoints)
    types = _struct_types(endpoints)
    _, components = msgspec.json.schema_components(types, ref_template=REF)
    paths: dict[str, dict[str, Any]] = {}
    for doc in endpoints:
        paths.setdefault(openapi_path(doc.path), {})[doc.method.lower()] = _operation(doc)
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def _struct_types(endpoints: list[EndpointDoc]) -> list[Any]:
    seen: dict[Any, None] = {ProblemDetail: None}
    for doc in endpoints:
        for t in (doc.body, doc.response):
            if t is not None:
                seen[t] = None
    return list(seen)


def _schema_of(t: Any) -> dict[str, Any]:
    """A reference for a Struct, an inline schema for anything else msgspec can describe."""
    if isinstance(t, type) and issubclass(t, msgspec.Struct):
        return {"$ref": REF.format(name=t.__name__)}
    schema, _ = msgspec.json.schema_components([t], ref_template=REF)
    return dict(schema[0])


def _operation(doc: EndpointDoc) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "operationId": _operation_id(doc),
        "summary": doc.summary,
        "responses": _responses(doc),
    }
    parameters = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
        for name in path_parameters(doc.path)
    ]
    parameters += [
        {"name": name, "in": "query", "required": False, "description": text, "schema": {"type": "string"}}
        for name, text in doc.query
    ]
    parameters += [
        {"name": name, "in": "header", "required": False, "description": text, "schema": {"type": "string"}}
        for name, text in doc.headers
    ]
    if parameters:
        operation["parameters"] = parameters
    if doc.body is not None:
        operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": _schema_of(doc.body)}}}
    if doc.role is not None:
        operation["security"] = [{"bearer": []}]
        operation["x-trellis-role"] = doc.role
    return operation


def _operation_id(doc: EndpointDoc) -> str:
    words = re.sub(r"[^A-Za-z0-9]+", "_", openapi_path(doc.path)).strip("_")
    return f"{doc.method.lower()}_{words}"


def _responses(doc: EndpointDoc) -> dict[str, Any]:
    content: dict[str, Any] = {}
    for media in doc.produces:
        if media == "application/json" and doc.response is not None:
            content[media] = {"schema": _schema_of(doc.response)}
        else:
            content[media] = {"schema": {"type": "string"}}
    answer: dict[str, Any] = {"description": doc.summary}
    if content and doc.status != 204:
        answer["content"] = content
    responses: dict[str, Any] = {str(doc.status): answer}
    problem = {PROBLEM_JSON: {"schema": {"$ref": REF.format(name="ProblemDetail")}}}
    for status in sorted(_error_statuses(doc)):
        responses[str(status)] = {"description": _REASONS.get(status, "Refused"), "content": problem}
    responses["default"] = {"description": "Any other problem", "content": problem}
    return responses


def _error_statuses(doc: EndpointDoc) -> set[int]:
    statuses = {500, 503, *doc.errors}
    if doc.role is not None:
        statuses |= {401, 403}
    if doc.body is not None:
        statuses |= {400, 413, 422}
    if path_parameters(doc.path):
        statuses.add(404)
    return statuses
