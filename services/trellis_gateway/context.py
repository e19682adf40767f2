"""What every gateway handler shares: the app's services, the caller, problems, typed bodies,
and the endpoint registry the OpenAPI document is generated from.

A handler module declares its routes with `@endpoint(...)` on a module-level `routes`
(`web.RouteTableDef`); `app.py` adds every module's routes. The decorator records the request
body and answer types (msgspec Structs) so that `/openapi.json` is derived from the same types the
handlers decode and encode, with no second schema.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import msgspec
from aiohttp import web

from trellis_core import sealed
from trellis_core.bus import Bus
from trellis_core.callbacks import key_bytes
from trellis_core.events import Problem
from trellis_core.logs import get_logger
from trellis_core.settings import Settings
from trellis_gateway.auth import TokenCache
from trellis_gateway.metrics import Metrics
from trellis_gateway.stream_limits import StreamLimits
from trellis_store.api import AuditRecord, Ok, Principal, Role, StoreError
from trellis_store.client import StoreClient

T = TypeVar("T")
log = get_logger("gateway")
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
    metrics: Metrics = field(default_factory=Metrics)  # `/metrics`; SSE routes: `with metrics.sse_client():`
    tokens: TokenCache = field(default_factory=TokenCache)  # verified bearer tokens, for a few seconds
    streams: StreamLimits = field(default_factory=StreamLimits)  # open SSE streams per token and tenant, capped
    # Set when the server starts shutting down: long-lived answers (SSE) end so shutdown is quick.
    stopping: asyncio.Event = field(default_factory=asyncio.Event)

    @classmethod
    def create(cls, bus: Bus, settings: Settings, store: StoreClient | None = None) -> Gateway:
        """The gateway of `settings`: the admin token kept only as its SHA-256 (ConfigError names
        TRELLIS_CALLBACK_KEY when it is set but too short)."""
        return cls(
            bus=bus,
            store=store or StoreClient(bus.nc),
            settings=settings,
            admin_token_sha256=sha256_hex(settings.admin_token) if settings.admin_token else "",
            callback_key=key_bytes(settings.callback_key) if settings.callback_key else b"",
        )

    @property
    def counters(self) -> dict[tuple[str, str, int], int]:
        """Requests answered by (method, route, status)."""
        return self.metrics.requests


GATEWAY = web.AppKey("gateway", Gateway)
OPENAPI = web.AppKey("openapi", bytes)  # the encoded `/openapi.json` of this app's routes
PRINCIPAL = web.RequestKey("principal", Principal)  # set by the auth middleware on bearer routes


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
        self,
        status: int,
        title: str,
        detail: str = "",
        *,
        path: str = "",
        problems: tuple[Problem, ...] = (),
        headers: dict[str, str] | None = None,
    ):
        self.status_code = status
        super().__init__(headers=headers)
        self.problem = ProblemDetail(title=title, status=status, detail=detail, path=path, problems=problems)
        self.problem_headers = dict(headers or {})


# `sealed.TOKEN_PATTERN` over the encoded bytes: a token is ASCII that JSON never escapes, so its
# JSON form is the token itself and one substitution over the body masks every one, wherever it is
# (a variable, an output, a rendered string, an audit detail, a store answer passed on as is).
_TOKEN_BYTES = re.compile(sealed.TOKEN_PATTERN.pattern.encode())
_TOKEN_START = b"[[trellis-sealed:"
_MASK_BYTES = sealed.MASK.encode()


def masked(body: bytes) -> bytes:
    """`body` with every sealed token read `********`: what every answer and SSE frame goes through.
    Tokens are ciphertext, not secrets, but no display needs them and none shows them."""
    return _TOKEN_BYTES.sub(_MASK_BYTES, body) if _TOKEN_START in body else body


def problem_response(problem: ProblemDetail, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=problem.status, body=masked(msgspec.json.encode(problem)), content_type=PROBLEM_JSON, headers=headers
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
        raise ApiProblem(
            401,
            "Unauthorized",
            "an Authorization: Bearer <token> header is required",
            headers={"WWW-Authenticate": 'Bearer realm="trellis"'},
        )
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
    if has_nul(data):
        raise ApiProblem(422, "Unprocessable Content", "the body has a NUL character (\\u0000) in a string")
    try:
        return msgspec.json.decode(data, type=type_)
    except msgspec.ValidationError as exc:
        raise ApiProblem(422, "Unprocessable Content", str(exc), path=error_path(str(exc))) from None
    except msgspec.DecodeError as exc:
        raise ApiProblem(400, "Bad Request", f"the body is not JSON: {exc}") from None


# A whole run of backslashes (never a part of one: the lookbehind) taken possessively, then u0000:
# linear in the body, where `(\\+)u0000` retried every suffix of a long run (quadratic, a frozen loop).
_ESCAPED_NUL = re.compile(rb"(?<!\\)(\\++)u0000")


def has_nul(data: bytes) -> bool:
    """Whether JSON text has a NUL in a string: PostgreSQL stores none, so none is accepted.
    (`\\u0000` is NUL when its backslash is not itself escaped: an odd run of backslashes.)"""
    return b"\x00" in data or any(len(m[1]) % 2 == 1 for m in _ESCAPED_NUL.finditer(data))


_FIELD_NAMED = re.compile(r"(?:missing required field|unknown field) `([^`]+)`")
_WHERE = re.compile(r"(?:at|in) `\$([^`]*)`")


def error_path(message: str) -> str:
    """The field a msgspec validation message is about, dotted: `template.name`, `sources[0].path`
    (a missing or unknown field is named after the object that lacks it; a bad mapping key or
    value names the mapping, as msgspec does not say which key)."""
    found = _WHERE.search(message)
    where = found[1].lstrip(".") if found else ""
    where = where.replace("[...]", "")
    named = _FIELD_NAMED.search(message)
    if named:
        where = f"{where}.{named[1]}" if where else named[1]
    return where


def query_int(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    """An integer query parameter within [low, high]; a 422 problem naming it otherwise."""
    text = request.query.get(name, "")
    if text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise ApiProblem(422, "Unprocessable Content", f"{name} must be an integer from {low} to {high}", path=name)
    return value


async def record(request: web.Request, entry: AuditRecord) -> None:
    """Keep `entry` in the audit trail. A store that refuses it is logged, not answered: the change
    it records is already made (and a new token already issued) and must reach the caller."""
    answer = await request.app[GATEWAY].store.ask(entry, Ok)
    if isinstance(answer, StoreError):
        log.error("audit_record_failed", tenant=entry.tenant, action=entry.action, error=answer.message)


def json_response(value: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """`value` as JSON, every sealed token in it masked (the one place answers are encoded)."""
    return json_body_response(msgspec.json.encode(value), status=status, headers=headers)


def json_body_response(
    body: bytes | memoryview, *, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """JSON already encoded (a store answer passed on as is), every sealed token in it masked."""
    return web.Response(status=status, body=masked(bytes(body)), content_type="application/json", headers=headers)


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
    headers: tuple[tuple[str, str], ...] = ()  # request headers it reads: (name, description)


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
    headers: tuple[tuple[str, str], ...] = (),
) -> Callable[[Handler], Handler]:
    """Route `method path` to the handler and record it for `/openapi.json`. `role` is the least
    role that may call it (the auth middleware checks the token; handlers call `require` for more).
    `errors` lists the problem statuses worth naming beyond those the document adds itself (401 and
    403 with a role, 422 with a body, 404 with a path parameter, 503); `headers` the request headers
    it reads (`If-Match`, `Idempotency-Key`, `Last-Event-ID`)."""

    def register(handler: Handler) -> Handler:
        doc = EndpointDoc(method, path, summary, body, response, status, role, query, produces, errors, headers)
        ENDPOINTS.append(doc)
        routes.route(method, path)(handler)
        return handler

    return register


def endpoint_doc(method: str, path: str) -> EndpointDoc | None:
    """The registered doc of the route `method path` (its template, as registered)."""
    for doc in ENDPOINTS:
        if doc.method == method and doc.path == path:
            return doc
    return None
