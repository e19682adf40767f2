"""The web console: its static files (in the package, next to this module, so `pip install` alone
serves it) and `GET /v1/whoami`, which tells the console whose token it holds.

The console is a client of the public `/v1` routes and nothing else: whatever it does, a script
holding the same token can do. Its files need no token (they hold no data); every `/v1` call they
make carries the bearer token the user signed in with, kept in the tab's session storage.
"""

from __future__ import annotations

import hashlib
import mimetypes
from functools import cache
from pathlib import Path

import msgspec
from aiohttp import web

from trellis_gateway.context import endpoint, json_response, require
from trellis_store.api import Role

routes = web.RouteTableDef()

CONSOLE_DIR = Path(__file__).with_name("console")
PREFIX = "/console/"
_TYPES = {".js": "text/javascript", ".css": "text/css", ".html": "text/html", ".svg": "image/svg+xml"}
# Same origin only: no inline script or style, nothing from elsewhere, never framed.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


class WhoAmI(msgspec.Struct, frozen=True, kw_only=True):
    tenant: str
    role: Role
    user: str


@endpoint(routes, "GET", "/v1/whoami", summary="The tenant, role and user the bearer token speaks for", response=WhoAmI)
async def whoami(request: web.Request) -> web.Response:
    who = require(request, "viewer")
    return json_response(WhoAmI(tenant=who.tenant, role=who.role, user=who.user))


@cache
def _asset(relative: str) -> tuple[bytes, str, str] | None:
    """(content, content type, ETag) of a console file, or None; read once per process."""
    path = (CONSOLE_DIR / relative).resolve()
    if not path.is_relative_to(CONSOLE_DIR.resolve()) or not path.is_file():
        return None
    content = path.read_bytes()
    kind = _TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    if kind.startswith("text/") or kind.endswith(("javascript", "+xml", "json")):
        kind += "; charset=utf-8"
    return content, kind, '"' + hashlib.sha256(content).hexdigest()[:32] + '"'


def _serve(request: web.Request, relative: str) -> web.Response:
    found = _asset(relative)
    if found is None:
        raise web.HTTPNotFound(text=f"the console has no file {relative!r}")
    content, kind, etag = found
    headers = {**SECURITY_HEADERS, "ETag": etag, "Cache-Control": "no-cache"}  # revalidate: an upgrade shows at once
    if request.headers.get("If-None-Match") == etag:
        return web.Response(status=304, headers=headers)
    return web.Response(body=content, headers={**headers, "Content-Type": kind})


@routes.get("/")
async def root(request: web.Request) -> web.Response:
    raise web.HTTPFound(PREFIX)


@routes.get("/console")
async def console_bare(request: web.Request) -> web.Response:
    raise web.HTTPFound(PREFIX)


@routes.get(PREFIX + "{path:.*}")
async def console_file(request: web.Request) -> web.Response:
    """A console file; `/console/` is the page (its views are routed in the browser: `#/runs/ID`)."""
    return _serve(request, request.match_info["path"] or "index.html")
