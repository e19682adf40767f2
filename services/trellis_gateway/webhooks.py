"""Webhook triggers: `POST /v1/hooks/{environment}/{secret}` starts a deploy (a git push hook).

No bearer token: the secret in the URL is the credential, set per environment (`WebhookRotate`)
and kept by the store as its SHA-256 only, which is also how it is looked up. An unknown
environment or a wrong secret are the same 404. A delivery id header (`Idempotency-Key`, or
GitHub's `X-GitHub-Delivery`, GitLab's `X-Gitlab-Event-UUID`) makes a redelivered hook start one run.
"""

from __future__ import annotations

from aiohttp import web

from trellis_gateway.context import GATEWAY, ApiProblem, endpoint, json_response, remote, sha256_hex, store_problem
from trellis_gateway.launch import start_run
from trellis_gateway.runs_routes import MAX_IDEMPOTENCY_KEY, RunAccepted
from trellis_store.api import StoreError, WebhookResolve, WebhookTarget

routes = web.RouteTableDef()
WEBHOOK_ACTOR = "webhook"
DELIVERY_HEADERS = ("Idempotency-Key", "X-GitHub-Delivery", "X-Gitlab-Event-UUID")


def delivery_id(request: web.Request) -> str:
    for header in DELIVERY_HEADERS:
        if value := request.headers.get(header, ""):
            return f"webhook:{value[:MAX_IDEMPOTENCY_KEY]}"
    return ""


@endpoint(
    routes,
    "POST",
    "/v1/hooks/{environment}/{secret}",
    summary="Start a deploy of the environment whose webhook secret this is (no bearer token)",
    response=RunAccepted,
    status=202,
    role=None,
    errors=(404, 409),
    headers=tuple((name, "a delivery id: a redelivered hook starts one run") for name in DELIVERY_HEADERS),
)
async def webhook(request: web.Request) -> web.StreamResponse:
    gateway = request.app[GATEWAY]
    environment = request.match_info["environment"]
    asked = WebhookResolve(environment=environment, secret_sha256=sha256_hex(request.match_info["secret"]))
    target = await gateway.store.ask(asked, WebhookTarget)
    if isinstance(target, StoreError):
        if target.code == "not_found":
            raise ApiProblem(404, "Not Found", f"no webhook for environment {environment!r} with this secret")
        raise store_problem(target)
    created = await start_run(
        gateway,
        WEBHOOK_ACTOR,
        target.tenant,
        target.environment,
        "deploy",
        idempotency_key=delivery_id(request),
        remote=remote(request),
    )
    return json_response(
        RunAccepted(run_id=created.run_id), status=202, headers={"Location": f"/v1/runs/{created.run_id}"}
    )
