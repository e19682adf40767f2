"""The hook-gateway's aiohttp application and service: every gateway module's routes behind three
middlewares (per-request metrics, problem+json for every error, bearer-token auth), and `serve`,
which listens on `TRELLIS_GATEWAY_LISTEN` until `stop` is set."""

from __future__ import annotations

import asyncio
import importlib
import time
from collections.abc import Callable
from types import ModuleType

import msgspec
import nats.errors
from aiohttp import web
from aiohttp.web_urldispatcher import AbstractResource

from trellis_core.bus import Bus
from trellis_core.errors import ConfigError
from trellis_core.logs import get_logger
from trellis_core.settings import Settings
from trellis_gateway import openapi
from trellis_gateway.auth import bearer_token, verify_token
from trellis_gateway.context import (
    ENDPOINTS,
    GATEWAY,
    MAX_BODY_BYTES,
    OPENAPI,
    PRINCIPAL,
    ApiProblem,
    EndpointDoc,
    Gateway,
    Handler,
    ProblemDetail,
    problem_response,
    require,
    store_problem,
)
from trellis_gateway.schedule_loop import run_schedules
from trellis_store.api import StoreError

log = get_logger("gateway")

# Every module that declares gateway routes (a module-level `routes` RouteTableDef).
ROUTE_MODULES: tuple[str, ...] = (
    "trellis_gateway.health",
    "trellis_gateway.tenants_routes",
    "trellis_gateway.templates_routes",
    "trellis_gateway.environments_routes",
    "trellis_gateway.runs_routes",
    "trellis_gateway.streams",
    "trellis_gateway.approvals",
    "trellis_gateway.webhooks",
    "trellis_gateway.tfstate_routes",
    "trellis_gateway.actions_routes",
    "trellis_gateway.schedules_routes",
    "trellis_gateway.drift_routes",
    "trellis_gateway.console_routes",
    "trellis_gateway.catalog_routes",
)
_DOCS = web.AppKey("endpoint_docs", dict[tuple[str, str], EndpointDoc])  # (method, route) -> its doc
UNMATCHED = "unmatched"  # the metrics' route label of a request no route matched
SHUTDOWN_SECONDS = 5.0
_BEARER_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="trellis"'}
_KEPT_HEADERS = ("Allow", "Retry-After")  # of aiohttp's own errors (405 names the allowed methods)


def route_modules() -> list[ModuleType]:
    return [importlib.import_module(name) for name in ROUTE_MODULES]


def make_app(gateway: Gateway) -> web.Application:
    """The application of every gateway module's routes, serving `gateway`."""
    app = web.Application(middlewares=[_measure, _problems, _authenticate], client_max_size=MAX_BODY_BYTES)
    app[GATEWAY] = gateway
    for module in route_modules():
        app.add_routes(module.routes)
    registered = {(route.method, _template(route.resource)) for route in app.router.routes()}
    docs = [doc for doc in ENDPOINTS if (doc.method, openapi.openapi_path(doc.path)) in registered]
    app[_DOCS] = {(doc.method, openapi.openapi_path(doc.path)): doc for doc in docs}
    app[OPENAPI] = msgspec.json.encode(openapi.document(docs))
    app.on_shutdown.append(_stopping)
    return app


async def _stopping(app: web.Application) -> None:
    app[GATEWAY].stopping.set()


def _template(resource: AbstractResource | None) -> str:
    return resource.canonical if resource is not None else UNMATCHED


def _route_of(request: web.Request) -> str:
    route = request.match_info.route
    if request.match_info.http_exception is not None:
        return UNMATCHED
    return _template(route.resource)


@web.middleware
async def _measure(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count every answer by method, route template and status, and time it."""
    started = time.perf_counter()
    response = await handler(request)
    metrics = request.app[GATEWAY].metrics
    metrics.observe(request.method, _route_of(request), response.status, time.perf_counter() - started)
    return response


@web.middleware
async def _problems(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error as application/problem+json: ours, aiohttp's own (404, 405, 413) and the
    unexpected (500, logged, nothing of the internals in the answer). Logs name the route template,
    never the path: paths hold credentials (webhook secrets, approval callback tokens)."""
    try:
        return await handler(request)
    except ApiProblem as exc:
        return problem_response(exc.problem, exc.problem_headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        detail = exc.text or ""
        if detail == f"{exc.status}: {exc.reason}":
            detail = ""
        headers = {name: exc.headers[name] for name in _KEPT_HEADERS if name in exc.headers}
        return problem_response(ProblemDetail(title=exc.reason, status=exc.status, detail=detail), headers)
    except asyncio.CancelledError:
        raise
    except (nats.errors.Error, ConnectionError) as exc:
        log.warning("gateway_bus_unavailable", method=request.method, route=_route_of(request), error=repr(exc))
        problem = ProblemDetail(title="Service Unavailable", status=503, detail="the bus is not reachable; retry")
        return problem_response(problem)
    except Exception:
        log.exception("gateway_handler_failed", method=request.method, route=_route_of(request))
        problem = ProblemDetail(title="Internal Server Error", status=500, detail="an unexpected error (logged)")
        return problem_response(problem)


@web.middleware
async def _authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    """On a route whose least role is set: the bearer token's principal at request[PRINCIPAL],
    401 (with a Bearer challenge) without a known token, 403 when its role is too low."""
    method = "GET" if request.method == "HEAD" else request.method  # aiohttp answers HEAD with GET's handler
    doc = request.app[_DOCS].get((method, _route_of(request)))
    if doc is None or doc.role is None:
        return await handler(request)
    token = bearer_token(request.headers.get("Authorization"))
    if token is None:
        raise ApiProblem(
            401, "Unauthorized", "an Authorization: Bearer <token> header is required", headers=_BEARER_CHALLENGE
        )
    gateway = request.app[GATEWAY]
    verified = await verify_token(gateway.store, gateway.tokens, token)
    if isinstance(verified, StoreError):
        if verified.code == "not_found":
            raise ApiProblem(
                401, "Unauthorized", "the bearer token is not known (or was revoked)", headers=_BEARER_CHALLENGE
            )
        raise store_problem(verified)
    if verified.cached:
        gateway.metrics.auth_cache_hits += 1
    else:
        gateway.metrics.auth_cache_misses += 1
    request[PRINCIPAL] = verified.principal
    require(request, doc.role)
    return await handler(request)


def parse_listen(listen: str) -> tuple[str, int]:
    """`host:port` (`[::1]:8080` for IPv6; port 0 picks a free one)."""
    host, sep, port = listen.rpartition(":")
    host = host.strip("[]")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"TRELLIS_GATEWAY_LISTEN={listen!r}: write host:port (e.g. 127.0.0.1:8080)")
    return host or "0.0.0.0", int(port)


def base_url(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


async def serve(
    bus: Bus,
    settings: Settings,
    stop: asyncio.Event,
    ready: asyncio.Event | None = None,
    *,
    bound: Callable[[str], None] | None = None,
) -> None:
    """Serve the gateway on `settings.gateway_listen` until `stop` is set, then shut down
    gracefully (requests in flight get SHUTDOWN_SECONDS; SSE streams see `gateway.stopping`).
    `bound(url)` is told the listening URL (with the real port when the setting's port is 0)
    before `ready` is set."""
    host, port = parse_listen(settings.gateway_listen)
    gateway = Gateway.create(bus, settings)
    runner = web.AppRunner(make_app(gateway), access_log=None, handle_signals=False, shutdown_timeout=SHUTDOWN_SECONDS)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        actual = runner.addresses[0][1] if runner.addresses else port
        url = base_url(host, actual)
        log.info("gateway_started", url=url)
        if bound is not None:
            bound(url)
        if ready is not None:
            ready.set()
        async with asyncio.TaskGroup() as tasks:  # the schedule loop leads on one replica (docs/schedules.md)
            tasks.create_task(run_schedules(gateway, stop))
            await stop.wait()
    finally:
        gateway.stopping.set()
        await runner.cleanup()
        await gateway.store.close()
        log.info("gateway_stopped")
