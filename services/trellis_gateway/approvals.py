"""Deciding an approval activity: through its signed callback URL (no bearer token: an external
system such as a ticket tracker or a chat bot holds the URL), or with a bearer token whose user
is among the approval's approvers.

Either way the decision is an `ApprovalDecided` on the run's subject for the approval's attempt,
decided_by "callback" or the user. Its dedupe id is per activity attempt, so of two racing
decisions JetStream keeps the first and the second is answered 409.

Who decides with a bearer token: when the hook lists approvers (`ApprovalSpec.approvers`, kept on
the approval row), only a token whose user is listed (compared case-insensitively, any role: a
listed viewer may decide; an operator or admin not listed may not, 403). When it lists none, any
operator or admin of the run's tenant (a viewer: 403). Another tenant's run or approval is 404.

Callback refusals: a malformed token or a bad signature is 404 (nothing says a token exists),
an expired token or one of an earlier attempt is 410 Gone, a token used before is 409.

Every refusal of a caller who is known (a bearer token's user, or a callback whose signature
holds: actor "callback") is kept in the audit trail of the caller's tenant as `approval.refused`
with the run, the activity and why; a callback that proves nothing is only logged.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

import msgspec
from aiohttp import web

from trellis_core import callbacks, subjects
from trellis_core.errors import TrellisError
from trellis_core.events import ApprovalDecided
from trellis_core.logs import get_logger
from trellis_gateway.context import (
    GATEWAY,
    ROLE_RANK,
    ApiProblem,
    Gateway,
    endpoint,
    json_response,
    ok,
    read_body,
    remote,
    require,
)
from trellis_gateway.launch import audit
from trellis_gateway.runs_routes import valid_run_id
from trellis_store.api import Approval, ApprovalGet, CallbackRedeem, Principal, Redeemed, StoreError

routes = web.RouteTableDef()
log = get_logger("gateway.approvals")
CALLBACK_ACTOR = "callback"


MAX_COMMENT_CHARS = 4096  # a decision's comment goes on the bus and into the run's record


class DecisionBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    decision: Literal["approve", "reject"]
    comment: Annotated[str, msgspec.Meta(max_length=MAX_COMMENT_CHARS)] = ""


class Decided(msgspec.Struct, frozen=True, kw_only=True):
    run_id: str
    activity_id: str
    attempt: int
    decision: Literal["approved", "rejected"]
    decided_by: str


def _decision(body: DecisionBody) -> Literal["approved", "rejected"]:
    return "approved" if body.decision == "approve" else "rejected"


async def _publish(gateway: Gateway, decided: ApprovalDecided) -> None:
    """Publish the decision; 409 if one for this attempt is on the bus already (dedupe)."""
    ack = await gateway.bus.publish_event(decided)
    if ack.duplicate:
        raise ApiProblem(409, "Conflict", f"approval {decided.activity_id} of run {decided.run_id} was decided already")


def _answer(decided: ApprovalDecided) -> web.Response:
    return json_response(
        Decided(
            run_id=decided.run_id,
            activity_id=decided.activity_id,
            attempt=decided.attempt,
            decision=decided.decision,
            decided_by=decided.decided_by,
        )
    )


@endpoint(
    routes,
    "POST",
    "/v1/callbacks/approvals/{token}",
    summary="Decide an approval through its signed, single-use callback URL (no bearer token)",
    body=DecisionBody,
    response=Decided,
    role=None,
    errors=(404, 409, 410, 422),
)
async def callback_decision(request: web.Request) -> web.StreamResponse:
    gateway = request.app[GATEWAY]
    if not gateway.callback_key:
        raise ApiProblem(404, "Not Found", "approval callbacks are not enabled (TRELLIS_CALLBACK_KEY is not set)")
    claims = callbacks.verify(gateway.callback_key, request.match_info["token"], datetime.now(UTC))
    if isinstance(claims, str):
        status, title = (410, "Gone") if claims.endswith("expired") else (404, "Not Found")
        log.info("approval_callback_refused", why=claims, remote=remote(request))
        raise ApiProblem(status, title, claims)
    # Everything that can refuse comes before redeeming: a bad body, or an approval decided, expired
    # or of a later attempt, does not use the token up.
    body = await read_body(request, DecisionBody)
    refused = Refusal(gateway, request, claims.tenant, CALLBACK_ACTOR, claims.run_id, claims.activity_id, body)
    approval = await gateway.store.ask(
        ApprovalGet(tenant=claims.tenant, run_id=claims.run_id, activity_id=claims.activity_id), Approval
    )
    if isinstance(approval, Approval):  # not found yet: the token is signed proof; the store may lag
        if problem := _not_open(approval, claims.attempt):
            raise await refused(problem)
    elif approval.code != "not_found":
        ok(approval)
    redeemed = await gateway.store.ask(
        CallbackRedeem(tenant=claims.tenant, token_id=claims.token_id, expires_at=claims.expires_at), Redeemed
    )
    if isinstance(redeemed, StoreError) and redeemed.code == "conflict":
        raise await refused(ApiProblem(409, "Conflict", "this callback URL has been used already"))
    ok(redeemed)
    decided = ApprovalDecided(
        tenant=claims.tenant,
        run_id=claims.run_id,
        activity_id=claims.activity_id,
        attempt=claims.attempt,
        decision=_decision(body),
        decided_by=CALLBACK_ACTOR,
        comment=body.comment,
    )
    await _publish(gateway, decided)
    detail = {"activity": claims.activity_id, "attempt": claims.attempt, "decision": decided.decision}
    await audit(gateway, claims.tenant, CALLBACK_ACTOR, "approval.decided", claims.run_id, detail, remote(request))
    return _answer(decided)


class Refusal:
    """Refusing one decision: `await refused(problem)` keeps it in the audit trail (actor, run,
    activity, the decision asked for and why) and answers the problem to raise."""

    def __init__(
        self,
        gateway: Gateway,
        request: web.Request,
        tenant: str,
        actor: str,
        run_id: str,
        activity: str,
        body: DecisionBody,
    ) -> None:
        self.gateway, self.request, self.tenant, self.actor = gateway, request, tenant, actor
        self.run_id, self.activity, self.body = run_id, activity, body

    async def __call__(self, problem: ApiProblem, attempt: int | None = None) -> ApiProblem:
        why = problem.problem.detail
        detail: dict[str, object] = {"activity": self.activity, "decision": _decision(self.body), "why": why}
        if attempt is not None:
            detail["attempt"] = attempt
        detail["status"] = problem.problem.status
        where = remote(self.request)
        await audit(self.gateway, self.tenant, self.actor, "approval.refused", self.run_id, detail, where)
        log.info(
            "approval_refused", tenant=self.tenant, run=self.run_id, activity=self.activity, actor=self.actor, why=why
        )
        return problem


def _not_open(approval: Approval, attempt: int | None = None) -> ApiProblem | None:
    """409 if decided or expired, 410 if the token is of an earlier attempt than the one waiting."""
    if approval.decision:
        return ApiProblem(
            409, "Conflict", f"approval {approval.activity_id} was {approval.decision} by {approval.decided_by or '?'}"
        )
    if approval.expires_at is not None and approval.expires_at <= datetime.now(UTC):
        return ApiProblem(
            409, "Conflict", f"approval {approval.activity_id} expired at {approval.expires_at.isoformat()}"
        )
    if attempt is not None and attempt < approval.attempt:
        return ApiProblem(410, "Gone", f"this callback is for attempt {attempt}; attempt {approval.attempt} waits now")
    return None


def may_decide(who: Principal, approval: Approval) -> str:
    """Why `who` may not decide `approval` ("" if they may): a listed approver may (any role);
    with no list, any operator or admin of the tenant."""
    if approval.approvers:
        listed = {a.strip().casefold() for a in approval.approvers}
        if who.user.strip().casefold() in listed:
            return ""
        return f"{who.user} is not among the approvers of {approval.activity_id}"
    if ROLE_RANK[who.role] >= ROLE_RANK["operator"]:
        return ""
    return f"an approval with no approvers list is decided by an operator or admin; {who.user} is a {who.role}"


@endpoint(
    routes,
    "POST",
    "/v1/runs/{run_id}/approvals/{activity:.+}",
    summary="Decide a waiting approval as one of its approvers (any operator or admin if it lists none)",
    body=DecisionBody,
    response=Decided,
    errors=(403, 404, 409, 422),
)
async def bearer_decision(request: web.Request) -> web.StreamResponse:
    who = require(request, "viewer")
    gateway = request.app[GATEWAY]
    run_id = valid_run_id(request.match_info["run_id"])
    activity = request.match_info["activity"]
    try:
        subjects.activity_token(activity)
    except TrellisError:
        raise ApiProblem(404, "Not Found", f"run {run_id} has no approval {activity!r}", path="activity") from None
    body = await read_body(request, DecisionBody)
    refused = Refusal(gateway, request, who.tenant, who.user, run_id, activity, body)
    approval = await gateway.store.ask(ApprovalGet(tenant=who.tenant, run_id=run_id, activity_id=activity), Approval)
    if isinstance(approval, StoreError):
        if approval.code != "not_found":
            ok(approval)
        # Another tenant's run is absent: the refusal is kept in the caller's own tenant's trail.
        raise await refused(ApiProblem(404, "Not Found", f"run {run_id} has no approval {activity!r} waiting"))
    why = may_decide(who, approval)
    if why:
        raise await refused(ApiProblem(403, "Forbidden", why), approval.attempt)
    if problem := _not_open(approval):
        raise await refused(problem, approval.attempt)
    decided = ApprovalDecided(
        tenant=who.tenant,
        run_id=run_id,
        activity_id=activity,
        attempt=approval.attempt,
        decision=_decision(body),
        decided_by=who.user,
        comment=body.comment,
    )
    await _publish(gateway, decided)
    detail = {"activity": activity, "attempt": approval.attempt, "decision": decided.decision}
    await audit(gateway, who.tenant, who.user, "approval.decided", run_id, detail, remote(request))
    return _answer(decided)
