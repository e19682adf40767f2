"""What every gateway handler shares: the app's services, the caller, problems, typed bodies,
and the endpoint registry the OpenAPI document is generated from.

A handler module declares its routes with `@endpoint(...)` on a module-level `routes`
(`web.RouteTableDef`); `app.py` adds every module's routes. The decorator records the request
body and answer types (msgspec Structs) so that `/openapi.json` is derived from the same types the
handlers decode and encode, with no second schema.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import msgspec
from aiohttp import web

from trellis_core.bus import Bus
from trellis_core.events import Problem
from trellis_core.settings import Settings
from trellis_store.api import Principal, Role, StoreError
from trellis_store.client import StoreClient

T = TypeVar("T")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

PROBLEM_JSON = "application/problem+json"
ROLE_RANK: dict[str, int] = {"viewer": 0, "operator": 1, "admin": 2}
MAX_BODY_BYTES = 4 * 1024 * 1024
_STATUS_OF_CODE = {
    "not_found": 404,
    "conflict": 409,
    "invalid": 422,
    "precondition_failed": 412,
    "forbidden": 403,
    "unavailable": 503,
    "internal": 500,
}


@dataclass
class Gateway:
    """The gateway's connections and settings, one per app (`request.app[GATEWAY]`)."""

    bus: Bus
    store: StoreClient
    settings: Settings
    admin_token_sha256: str = ""  # empty: `POST /v1/tenants` is refused
    callback_key: bytes = b""
    counters: dict[tuple[str, str, int], int] = field(default_factory=dict)  # (method, route, status) -> count


GATEWAY = web.AppKey("gateway", Gateway)
PRINCIPAL = "trellis.principal"  # request[PRINCIPAL]: set by the auth middleware on /v1 routes


class ProblemDetail(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """RFC 9457 problem details; `path` names the field that was wrong, `problems` template errors."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str = ""
    path: str = ""
    problems: tuple[Problem, ...] = ()


class ApiProblem(web.HTTPException):
    """Raise it from a handler: the middleware answers with its problem body."""

    def __init__(
        self, status: int, title: str, detail: str = "", *, path: str = "", problems: tuple[Problem, ...] = ()
    ):
        self.status_code = status
        super().__init__()
        self.problem = ProblemDetail(title=title, status=status, detail=detail, path=path, problems=problems)


def problem_response(problem: ProblemDetail, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=problem.status, body=msgspec.json.encode(problem), content_type=PROBLEM_JSON, headers=headers
    )


def store_problem(error: StoreError) -> ApiProblem:
    """The API's answer to a store refusal: not_found stays 404 (another tenant's object is absent)."""
    status = _STATUS_OF_CODE.get(error.code, 500)
    title = {
        404: "Not Found",
        409: "Conflict",
        412: "Precondition Failed",
        422: "Unprocessable Content",
        403: "Forbidden",
        503: "Service Unavailable",
    }.get(status, "Internal Server Error")
    return ApiProblem(status, title, error.message, path=error.path, problems=error.problems)


def ok(result: T | StoreError) -> T:
    """`result`, or raise the problem its store error means."""
    if isinstance(result, StoreError):
        raise store_problem(result)
    return result


def principal(request: web.Request) -> Principal:
    value = request.get(PRINCIPAL)
    if not isinstance(value, Principal):
        raise ApiProblem(401, "Unauthorized", "an Authorization: Bearer <token> header is required")
    return value


def require(request: web.Request, role: Role) -> Principal:
    """The caller, if their role is at least `role`; else 403 (their own tenant's object, wrong role)."""
    who = principal(request)
    if ROLE_RANK[who.role] < ROLE_RANK[role]:
        raise ApiProblem(403, "Forbidden", f"this needs the {role} role; the token has {who.role}")
    return who


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def remote(request: web.Request) -> str:
    return request.remote or ""


async def read_body(request: web.Request, type_: type[T]) -> T:
    """The JSON body decoded as `type_`; a 422 problem naming the field when it is not one."""
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise ApiProblem(413, "Content Too Large", f"the body is over {MAX_BODY_BYTES} bytes")
    data = await request.read()
    if not data:
        raise ApiProblem(422, "Unprocessable Content", "a JSON body is required")
    try:
        return msgspec.json.decode(data, type=type_)
    except msgspec.ValidationError as exc:
        message = str(exc)
        path = message.rsplit("at `$", 1)[1].rstrip("`") if "at `$" in message else ""
        raise ApiProblem(422, "Unprocessable Content", message, path=path.lstrip(".")) from None
    except msgspec.DecodeError as exc:
        raise ApiProblem(400, "Bad Request", f"the body is not JSON: {exc}") from None


def json_response(value: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status, body=msgspec.json.encode(value), content_type="application/json", headers=headers
    )


# ---- the endpoint registry (OpenAPI) ----------------------------------------------------------


@dataclass(frozen=True)
class EndpointDoc:
    method: str
    path: str
    summary: str
    body: type[Any] | None
    response: type[Any] | None
    status: int
    role: Role | None  # None: no bearer token (health, callbacks, webhooks, tenants' admin token)
    query: tuple[tuple[str, str], ...] = ()  # (name, description)
    produces: tuple[str, ...] = ("application/json",)
    errors: tuple[int, ...] = ()


ENDPOINTS: list[EndpointDoc] = []


def endpoint(
    routes: web.RouteTableDef,
    method: str,
    path: str,
    *,
    summary: str,
    body: type[Any] | None = None,
    response: type[Any] | None = None,
    status: int = 200,
    role: Role | None = "viewer",
    query: tuple[tuple[str, str], ...] = (),
    produces: tuple[str, ...] = ("application/json",),
    errors: tuple[int, ...] = (),
) -> Callable[[Handler], Handler]:
    """Route `method path` to the handler and record it for `/openapi.json`. `role` is the least
    role that may call it (the auth middleware checks the token; handlers call `require` for more)."""

    def register(handler: Handler) -> Handler:
        ENDPOINTS.append(EndpointDoc(method, path, summary, body, response, status, role, query, produces, errors))
        routes.route(method, path)(handler)
        return handler

    return register
